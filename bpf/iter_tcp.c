// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* iter_tcp.c — a TCP socket iterator (iter/tcp, 5.9) that writes one struct mx_subflow_rec per MPTCP
 * subflow of the network namespace it is read in. CO-RE against the kernel's BTF.
 *
 * What it visits and what it keeps:
 *  - full TCP sockets only: request sockets (TCP_NEW_SYN_RECV) and TIME_WAIT sockets are not
 *    full sockets and carry no subflow context; bpf_skc_to_tcp_sock() refuses them;
 *  - of those, MPTCP subflows only: is_mptcp set, the subflow context in icsk_ulp_data, and its
 *    MPTCP socket in the context's conn (what sk_is_mptcp() and bpf_skc_to_mptcp_sock() do; the
 *    helper itself takes only non-BTF socket pointers, which an iterator does not have);
 *  - listening subflows are skipped: they belong to a listener, not to a connection;
 *  - the MPTCP-level socket is never visited: it lives in no TCP hash table. Its token and state
 *    are copied into each of its subflows' records; its keys are never read. */
#include "include/vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "include/mx_types.h"
#include "include/mx_iter.h"

/* tcp_compute_delivery_rate() in net/ipv4/tcp.c. */
static __always_inline __u64 mx_delivery_rate(const struct tcp_sock *tp)
{
	__u32 rate = tp->rate_delivered;
	__u32 intv = tp->rate_interval_us;

	if (!rate || !intv)
		return 0;
	return (__u64)rate * tp->mss_cache * MX_USEC_PER_SEC / intv;
}

/* The subflow context's fields, as net/mptcp/diag.c's subflow_get_info() reads them. Bit fields
 * (and fields that were bit fields on older kernels, like fully_established) are read with
 * BPF_CORE_READ_BITFIELD_PROBED so any layout works. */
/* Not inlined, so that its signature carries struct mx_subflow_rec into the object's BTF (bpf2go -type). */
static __noinline void mx_subflow_ctx(struct mx_subflow_rec *r, const struct mptcp_subflow_context *sf)
{
	__u32 f = 0;
	long local_id;

	if (BPF_CORE_READ_BITFIELD_PROBED(sf, mp_capable))
		f |= MX_SF_MCAP_REM;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, request_mptcp))
		f |= MX_SF_MCAP_LOC;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, mp_join))
		f |= MX_SF_JOIN_REM;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, request_join))
		f |= MX_SF_JOIN_LOC;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, backup))
		f |= MX_SF_BKUP_REM;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, request_bkup))
		f |= MX_SF_BKUP_LOC;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, fully_established))
		f |= MX_SF_FULLY_ESTABLISHED;
	if (BPF_CORE_READ_BITFIELD_PROBED(sf, conn_finished))
		f |= MX_SF_CONNECTED;
	r->flags = f;

	/* subflow_get_local_id(): local_id is -1 until known (s16 since 6.9; u8 before). */
	local_id = (long)BPF_CORE_READ_BITFIELD_PROBED(sf, local_id);
	r->local_id = local_id < 0 ? 0 : (__u8)local_id;
	r->remote_id = BPF_CORE_READ(sf, remote_id);
	if (bpf_core_field_exists(sf->subflow_id))
		r->subflow_id = BPF_CORE_READ(sf, subflow_id);
}

SEC("iter/tcp")
int mptcpx_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct mx_subflow_rec r = {};
	const struct mptcp_subflow_context *sf;
	const struct mptcp_sock *msk;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* request or TIME_WAIT socket */
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == MX_TCP_LISTEN)
		return 0;
	if (!BPF_CORE_READ_BITFIELD_PROBED(tp, is_mptcp))
		return 0; /* plain TCP */
	/* sk_is_mptcp(): the ULP data is the subflow context, whose conn is the MPTCP socket.
	 * (bpf_skc_to_mptcp_sock() does the same, but takes no BTF pointer: not callable here.) */
	sf = (const struct mptcp_subflow_context *)tp->inet_conn.icsk_ulp_data;
	if (!sf)
		return 0;
	msk = (const struct mptcp_sock *)BPF_CORE_READ(sf, conn);
	if (!msk)
		return 0;

	const struct sock_common *c = &tp->inet_conn.icsk_inet.sk.__sk_common;
	r.family = c->skc_family;
	r.state = c->skc_state;
	r.sport = c->skc_num;
	r.dport = bpf_ntohs(c->skc_dport);
	if (r.family == MX_AF_INET6) {
		BPF_CORE_READ_INTO(&r.saddr, c, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r.daddr, c, skc_v6_daddr.in6_u.u6_addr8);
	} else if (r.family == MX_AF_INET) {
		__builtin_memcpy(r.saddr, &c->skc_rcv_saddr, 4);
		__builtin_memcpy(r.daddr, &c->skc_daddr, 4);
	} else {
		return 0;
	}

	r.cookie = bpf_get_socket_cookie(skc);
	r.token = BPF_CORE_READ(msk, token);
	r.conn_state = BPF_CORE_READ(msk, sk.icsk_inet.sk.__sk_common.skc_state);
	mx_subflow_ctx(&r, sf);

	/* tcp_get_info(), field by field (the iterator holds the socket lock, as it does). */
	r.pacing_rate = tp->inet_conn.icsk_inet.sk.sk_pacing_rate;
	r.srtt_us = tp->srtt_us >> 3;
	r.rttvar_us = tp->mdev_us >> 2;
	r.min_rtt_us = tp->rtt_min.s[0].v;
	r.snd_cwnd = tp->snd_cwnd;
	r.snd_ssthresh = tp->snd_ssthresh;
	r.snd_mss = tp->mss_cache;
	r.total_retrans = tp->total_retrans;
	r.lost = tp->lost_out;
	r.retrans = tp->retrans_out;
	r.segs_in = tp->segs_in;
	r.segs_out = tp->segs_out;
	r.data_segs_in = tp->data_segs_in;
	r.data_segs_out = tp->data_segs_out;
	r.bytes_sent = tp->bytes_sent;
	r.bytes_acked = tp->bytes_acked;
	r.bytes_received = tp->bytes_received;
	r.bytes_retrans = tp->bytes_retrans;
	r.delivery_rate = mx_delivery_rate(tp);

	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
