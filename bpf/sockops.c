// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* sockops.c — a sock_ops program (attached to the cgroup v2 root) that keeps a history of every MPTCP
 * subflow: when it was established and closed, its token, ids, addresses and flags, and, when it
 * closes, its final tcp_info figures. Readers (pkg/stats) add the closed subflows to the live ones the
 * socket iterator sees, so a connection's byte and retransmit counters never go backwards when one of
 * its subflows goes away. CO-RE against the kernel's BTF.
 *
 *  - *_ESTABLISHED_CB: a subflow (bpf_skc_to_mptcp_sock() finds its MPTCP socket) gets an entry and
 *    BPF_SOCK_OPS_STATE_CB_FLAG, so that its state changes call the program; plain TCP is left alone
 *    and costs one helper call per connection;
 *  - STATE_CB to TCP_CLOSE (tcp_set_state() calls it before the change, the socket still whole):
 *    the entry gets the final figures and the close time.
 * Every network namespace's sockets pass through the cgroup root: each entry records its namespace's
 * cookie so that a namespace's reader sees only its own. The map is an LRU hash with a fixed size;
 * readers drop closed entries older than the configured age. */
#include "include/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "include/mx_types.h"
#include "include/mx_iter.h"
#include "include/mx_tcpinfo.h"

/* Default size of the history; `mptcp-xdp history enable --max-entries` sets it at load time. */
#ifndef MX_HISTORY_ENTRIES
#define MX_HISTORY_ENTRIES 16384
#endif

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MX_HISTORY_ENTRIES);
	__type(key, __u64); /* socket cookie */
	__type(value, struct mx_sf_hist);
} mptcpx_sf_hist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mx_hist_cfg);
} mptcpx_hist_cfg SEC(".maps");

/* Reads the subflow into h->rec. Returns 0, or -1 when the socket is not an MPTCP subflow. */
static __always_inline int mx_read_subflow(struct bpf_sock_ops *skops, struct mx_sf_hist *h)
{
	const struct mptcp_subflow_context *sf;
	struct bpf_sock *sk = skops->sk;
	struct mptcp_sock *msk;
	struct tcp_sock *tp;

	if (!sk)
		return -1;
	msk = bpf_skc_to_mptcp_sock(sk);
	if (!msk)
		return -1; /* plain TCP (or a subflow whose MPTCP socket is gone) */
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return -1;
	if (mx_tcp_addrs(&h->rec, tp))
		return -1;
	h->rec.cookie = bpf_get_socket_cookie(skops);
	h->rec.token = msk->token;
	h->rec.conn_state = msk->sk.icsk_inet.sk.__sk_common.skc_state;
	sf = (const struct mptcp_subflow_context *)tp->inet_conn.icsk_ulp_data;
	if (sf)
		mx_subflow_ctx(&h->rec, sf);
	mx_tcp_info(&h->rec, tp);
	return 0;
}

static __always_inline void mx_established(struct bpf_sock_ops *skops)
{
	struct mx_sf_hist h = {};

	if (mx_read_subflow(skops, &h))
		return;
	h.netns_cookie = bpf_get_netns_cookie(skops);
	h.established_ns = bpf_ktime_get_boot_ns();
	h.est_flags = h.rec.flags;
	bpf_map_update_elem(&mptcpx_sf_hist, &h.rec.cookie, &h, BPF_ANY);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void mx_closed(struct bpf_sock_ops *skops)
{
	struct mx_sf_hist h = {}, *old;
	__u64 cookie;

	if (mx_read_subflow(skops, &h))
		return;
	cookie = h.rec.cookie;
	old = bpf_map_lookup_elem(&mptcpx_sf_hist, &cookie);
	if (old) {
		h.established_ns = old->established_ns;
		h.est_flags = old->est_flags;
		if (!h.rec.token)
			h.rec.token = old->rec.token;
	}
	/* A flag seen at establishment stays: the role (MP_CAPABLE or MP_JOIN) is the subflow's for life. */
	h.rec.flags |= h.est_flags;
	h.rec.state = TCP_CLOSE;
	h.netns_cookie = bpf_get_netns_cookie(skops);
	h.closed_ns = bpf_ktime_get_boot_ns();
	bpf_map_update_elem(&mptcpx_sf_hist, &cookie, &h, BPF_ANY);
}

SEC("sockops")
int mptcpx_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		mx_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == TCP_CLOSE)
			mx_closed(skops);
		break;
	}
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
