/* mx_parse.h — the header parser shared by every program: Ethernet/VLAN/IPv4/IPv6/TCP options and
 * the classification of MPTCP options (RFC 8684) into enum mx_class. Pure: it never writes a packet. */
#pragma once

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mx_consts.h"
#include "mx_types.h"

struct hdr_cursor {
	void *pos;
};

struct vlan_hdr_ {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_ext_hdr_ {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct frag_hdr_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* What one frame held, committed to the counters only once the parse is over. */
struct mx_result {
	__u8 tcp;
	__u8 mptcp;
	__u8 truncated; /* headers claimed more bytes than the buffer holds */
	__u8 pad;
	__u8 classes[MX_CLASS_MAX];
};

enum mx_parse_status {
	MX_PARSE_DONE = 0,
	MX_PARSE_TRUNCATED = 1,
};

/* Classify one MPTCP option of total length len starting at p. */
static __always_inline __u32 mx_classify(__u8 *p, __u32 len, void *data_end, int syn, int ack)
{
	if (len < 3 || (void *)(p + 3) > data_end)
		return MX_MALFORMED;
	__u8 subtype = p[2] >> 4;
	__u8 low = p[2] & 0x0f;
	__u8 b3 = 0;
	if (len >= 4) {
		if ((void *)(p + 4) > data_end)
			return MX_MALFORMED;
		b3 = p[3];
	}

	switch (subtype) {
	case MPTCPOPT_MP_CAPABLE:
		if (syn && !ack)
			return len == 4 ? MX_MP_CAPABLE_SYN : MX_MALFORMED;
		if (syn && ack)
			return len == 12 ? MX_MP_CAPABLE_SYNACK : MX_MALFORMED;
		if (len == 20)
			return MX_MP_CAPABLE_ACK;
		if (len == 22 || len == 24)
			return MX_MP_CAPABLE_DATA;
		return MX_MALFORMED;
	case MPTCPOPT_MP_JOIN:
		if (syn && !ack)
			return len == 12 ? MX_MP_JOIN_SYN : MX_MALFORMED;
		if (syn && ack)
			return len == 16 ? MX_MP_JOIN_SYNACK : MX_MALFORMED;
		return len == 24 ? MX_MP_JOIN_ACK : MX_MALFORMED;
	case MPTCPOPT_DSS: {
		if (len < 4)
			return MX_MALFORMED;
		__u32 want = 4;
		if (b3 & DSS_DATA_ACK)
			want += (b3 & DSS_ACK64) ? 8 : 4;
		if (b3 & DSS_MAPPING)
			want += ((b3 & DSS_DSN64) ? 8 : 4) + 4 + 2;
		if (len == want || ((b3 & DSS_MAPPING) && len == want + 2))
			return MX_DSS;
		return MX_MALFORMED;
	}
	case MPTCPOPT_ADD_ADDR:
		if (low & ADD_ADDR_ECHO)
			return (len == 8 || len == 10 || len == 20 || len == 22) ? MX_ADD_ADDR_ECHO : MX_MALFORMED;
		return (len == 16 || len == 18 || len == 28 || len == 30) ? MX_ADD_ADDR : MX_MALFORMED;
	case MPTCPOPT_RM_ADDR:
		return len >= 4 ? MX_REMOVE_ADDR : MX_MALFORMED;
	case MPTCPOPT_MP_PRIO:
		return len == 3 ? MX_MP_PRIO : MX_MALFORMED;
	case MPTCPOPT_MP_FAIL:
		return len == 12 ? MX_MP_FAIL : MX_MALFORMED;
	case MPTCPOPT_MP_FASTCLOSE:
		return len == 12 ? MX_MP_FASTCLOSE : MX_MALFORMED;
	case MPTCPOPT_MP_TCPRST:
		return len == 4 ? MX_MP_TCPRST : MX_MALFORMED;
	}
	return MX_MALFORMED;
}

static __always_inline void mx_add(struct mx_result *r, __u32 cls)
{
	if (cls < MX_CLASS_MAX)
		r->classes[cls]++;
}

/* Walk the TCP options of the header at th (whose length hl was checked against data_end). */
static __always_inline int mx_parse_tcp(struct hdr_cursor *nh, void *data_end, struct mx_result *r)
{
	struct tcphdr *th = nh->pos;

	r->tcp = 1;
	if ((void *)(th + 1) > data_end)
		return MX_PARSE_TRUNCATED;
	__u32 hl = th->doff * 4;
	if (hl < sizeof(*th)) {
		mx_add(r, MX_MALFORMED);
		return MX_PARSE_DONE;
	}
	if ((void *)th + hl > data_end)
		return MX_PARSE_TRUNCATED;

	int syn = th->syn, ack = th->ack;
	__u8 *opts = (__u8 *)(th + 1);
	__u32 optlen = hl - sizeof(*th);
	__u32 off = 0;

	for (int i = 0; i < MAX_TCP_OPTIONS; i++) {
		if (off >= optlen || off >= TCP_OPTIONS_MAX_LEN)
			break;
		__u8 *p = opts + off;
		if ((void *)(p + 1) > data_end)
			return MX_PARSE_TRUNCATED;
		__u8 kind = p[0];
		if (kind == TCPOPT_EOL_)
			break;
		if (kind == TCPOPT_NOP_) {
			off++;
			continue;
		}
		if (kind == TCPOPT_MPTCP)
			r->mptcp = 1;
		/* The length byte itself must lie inside the header. */
		if (off + 2 > optlen) {
			mx_add(r, MX_MALFORMED);
			break;
		}
		if ((void *)(p + 2) > data_end)
			return MX_PARSE_TRUNCATED;
		__u32 len = p[1];
		if (len < 2 || off + len > optlen) {
			mx_add(r, MX_MALFORMED);
			break;
		}
		if (kind == TCPOPT_MPTCP)
			mx_add(r, mx_classify(p, len, data_end, syn, ack));
		off += len;
	}
	return MX_PARSE_DONE;
}

static __always_inline int mx_parse_ipv6(struct hdr_cursor *nh, void *data_end, struct mx_result *r)
{
	struct ipv6hdr *ip6 = nh->pos;

	if ((void *)(ip6 + 1) > data_end)
		return MX_PARSE_TRUNCATED;
	if (ip6->version != 6) {
		mx_add(r, MX_MALFORMED);
		return MX_PARSE_DONE;
	}
	__u8 next = ip6->nexthdr;
	nh->pos = ip6 + 1;

	for (int i = 0; i < MAX_IPV6_EXT_HDRS; i++) {
		if (next == IPPROTO_TCP_) {
			return mx_parse_tcp(nh, data_end, r);
		}
		if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_) {
			struct ipv6_ext_hdr_ *eh = nh->pos;
			if ((void *)(eh + 1) > data_end)
				return MX_PARSE_TRUNCATED;
			next = eh->nexthdr;
			nh->pos += (eh->hdrlen + 1) * 8;
			continue;
		}
		if (next == IPPROTO_AH_) {
			struct ipv6_ext_hdr_ *eh = nh->pos;
			if ((void *)(eh + 1) > data_end)
				return MX_PARSE_TRUNCATED;
			next = eh->nexthdr;
			nh->pos += (eh->hdrlen + 2) * 4;
			continue;
		}
		if (next == IPPROTO_FRAGMENT_) {
			struct frag_hdr_ *fh = nh->pos;
			if ((void *)(fh + 1) > data_end)
				return MX_PARSE_TRUNCATED;
			/* A non-first fragment has no TCP header to read. */
			if (fh->frag_off & IP6_OFFSET_MASK_BE)
				return MX_PARSE_DONE;
			next = fh->nexthdr;
			nh->pos = fh + 1;
			continue;
		}
		return MX_PARSE_DONE; /* another upper-layer protocol */
	}
	if (next == IPPROTO_TCP_)
		return mx_parse_tcp(nh, data_end, r);
	/* More extension headers than we walk: we cannot tell what follows. */
	if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_ ||
	    next == IPPROTO_AH_ || next == IPPROTO_FRAGMENT_)
		mx_add(r, MX_MALFORMED);
	return MX_PARSE_DONE;
}

static __always_inline int mx_parse_ipv4(struct hdr_cursor *nh, void *data_end, struct mx_result *r)
{
	struct iphdr *iph = nh->pos;

	if ((void *)(iph + 1) > data_end)
		return MX_PARSE_TRUNCATED;
	__u32 ihl = iph->ihl * 4;
	if (iph->version != 4 || ihl < sizeof(*iph)) {
		mx_add(r, MX_MALFORMED);
		return MX_PARSE_DONE;
	}
	if ((void *)iph + ihl > data_end)
		return MX_PARSE_TRUNCATED;
	if (iph->protocol != IPPROTO_TCP_)
		return MX_PARSE_DONE;
	/* A non-first fragment has no TCP header to read. */
	if (iph->frag_off & IP_OFFSET_MASK_BE)
		return MX_PARSE_DONE;
	nh->pos = (void *)iph + ihl;
	return mx_parse_tcp(nh, data_end, r);
}

/* Parse one frame from data to data_end into r. */
static __always_inline int mx_parse(void *data, void *data_end, struct mx_result *r)
{
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth = nh.pos;

	if ((void *)(eth + 1) > data_end)
		return MX_PARSE_TRUNCATED;
	__be16 proto = eth->h_proto;
	nh.pos = eth + 1;

	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
			break;
		struct vlan_hdr_ *vh = nh.pos;
		if ((void *)(vh + 1) > data_end)
			return MX_PARSE_TRUNCATED;
		proto = vh->encap_proto;
		nh.pos = vh + 1;
	}

	if (proto == ETH_P_IP_BE)
		return mx_parse_ipv4(&nh, data_end, r);
	if (proto == ETH_P_IPV6_BE)
		return mx_parse_ipv6(&nh, data_end, r);
	return MX_PARSE_DONE;
}

/* Add one parsed frame, standing for n wire packets, to the counters. */
static __always_inline void mx_commit(struct mx_counters *c, struct mx_result *r, __u64 n)
{
	if (r->truncated)
		r->classes[MX_MALFORMED]++;
	c->packets[MX_PKT_TOTAL] += n;
	if (r->tcp)
		c->packets[MX_PKT_TCP] += n;
	if (r->mptcp)
		c->packets[MX_PKT_MPTCP] += n;
#pragma unroll
	for (int i = 0; i < MX_CLASS_MAX; i++)
		c->options[i] += r->classes[i] * n;
}
