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
#include "include/mx_tcpinfo.h"

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
	if (tp->inet_conn.icsk_inet.sk.__sk_common.skc_state == TCP_LISTEN)
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

	if (mx_tcp_addrs(&r, tp))
		return 0;

	r.cookie = bpf_get_socket_cookie(skc);
	r.token = BPF_CORE_READ(msk, token);
	r.conn_state = BPF_CORE_READ(msk, sk.icsk_inet.sk.__sk_common.skc_state);
	mx_subflow_ctx(&r, sf);

	/* The iterator holds the socket lock, as tcp_get_info() does. */
	mx_tcp_info(&r, tp);

	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

char __license[] SEC("license") = "Dual BSD/GPL";
