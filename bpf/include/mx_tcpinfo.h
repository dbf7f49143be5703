/* mx_tcpinfo.h — fills a struct mx_subflow_rec from a subflow's tcp_sock and MPTCP subflow context,
 * as tcp_get_info() and net/mptcp/diag.c compute them; shared by iter_tcp.c and sockops.c. */
#pragma once

#include "mx_types.h"
#include "mx_iter.h"

/* tcp_compute_delivery_rate() in net/ipv4/tcp.c. */
static __always_inline __u64 mx_delivery_rate(const struct tcp_sock *tp)
{
	__u32 rate = tp->rate_delivered;
	__u32 intv = tp->rate_interval_us;

	if (!rate || !intv)
		return 0;
	return (__u64)rate * tp->mss_cache * MX_USEC_PER_SEC / intv;
}

/* The subflow context's flags, as net/mptcp/diag.c's subflow_get_info() reads them. Bit fields
 * (and fields that were bit fields on older kernels, like fully_established) are read with
 * BPF_CORE_READ_BITFIELD_PROBED so any layout works. Not inlined, so that its signature carries
 * enum mx_sf_flags into the object's BTF (bpf2go -type; the record's field is a plain __u32). */
static __noinline enum mx_sf_flags mx_sf_flags_of(const struct mptcp_subflow_context *sf)
{
	__u32 f = 0;

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
	return (enum mx_sf_flags)f;
}

/* The subflow context's flags and ids. Not inlined, so that its signature carries struct
 * mx_subflow_rec into the object's BTF (bpf2go -type). */
static __noinline void mx_subflow_ctx(struct mx_subflow_rec *r, const struct mptcp_subflow_context *sf)
{
	long local_id;

	r->flags = mx_sf_flags_of(sf);

	/* subflow_get_local_id(): local_id is -1 until known (s16 since 6.9; u8 before). */
	local_id = (long)BPF_CORE_READ_BITFIELD_PROBED(sf, local_id);
	r->local_id = local_id < 0 ? 0 : (__u8)local_id;
	r->remote_id = BPF_CORE_READ(sf, remote_id);
	if (bpf_core_field_exists(sf->subflow_id))
		r->subflow_id = BPF_CORE_READ(sf, subflow_id);
}

/* Family, state, addresses and ports of the socket. Returns 0, or -1 for a family other than
 * AF_INET/AF_INET6. */
static __always_inline int mx_tcp_addrs(struct mx_subflow_rec *r, const struct tcp_sock *tp)
{
	const struct sock_common *c = &tp->inet_conn.icsk_inet.sk.__sk_common;

	r->family = c->skc_family;
	r->state = c->skc_state;
	r->sport = c->skc_num;
	r->dport = bpf_ntohs(c->skc_dport);
	if (r->family == MX_AF_INET6) {
		BPF_CORE_READ_INTO(&r->saddr, c, skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&r->daddr, c, skc_v6_daddr.in6_u.u6_addr8);
	} else if (r->family == MX_AF_INET) {
		__builtin_memcpy(r->saddr, &c->skc_rcv_saddr, 4);
		__builtin_memcpy(r->daddr, &c->skc_daddr, 4);
	} else {
		return -1;
	}
	return 0;
}

/* tcp_get_info(), field by field (the caller holds the socket lock, as tcp_get_info() does). */
static __always_inline void mx_tcp_info(struct mx_subflow_rec *r, const struct tcp_sock *tp)
{
	r->pacing_rate = tp->inet_conn.icsk_inet.sk.sk_pacing_rate;
	r->srtt_us = tp->srtt_us >> 3;
	r->rttvar_us = tp->mdev_us >> 2;
	r->min_rtt_us = tp->rtt_min.s[0].v;
	r->snd_cwnd = tp->snd_cwnd;
	r->snd_ssthresh = tp->snd_ssthresh;
	r->snd_mss = tp->mss_cache;
	r->total_retrans = tp->total_retrans;
	r->lost = tp->lost_out;
	r->retrans = tp->retrans_out;
	r->segs_in = tp->segs_in;
	r->segs_out = tp->segs_out;
	r->data_segs_in = tp->data_segs_in;
	r->data_segs_out = tp->data_segs_out;
	r->bytes_sent = tp->bytes_sent;
	r->bytes_acked = tp->bytes_acked;
	r->bytes_received = tp->bytes_received;
	r->bytes_retrans = tp->bytes_retrans;
	r->delivery_rate = mx_delivery_rate(tp);
}
