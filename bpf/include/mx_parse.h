/* mx_parse.h — the header parser shared by every program: Ethernet/VLAN/IPv4/IPv6/TCP options and
 * the classification of MPTCP options (RFC 8684) into enum mx_class. Pure: it never writes a packet.
 *
 * Offsets are kept as scalars relative to the frame start. Where paths of different lengths meet (the
 * start of the TCP header, each IPv6 extension header, each TCP option), the offset is passed through
 * map memory ("laundered") so that the verifier sees one range on every path and can prune, instead of
 * exploring every combination of header lengths. */
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


/* NOP, NOP, kind 8 (timestamps), length 10 as one 32-bit load from the packet; 12 bytes in all. */
#define TCPOPT_TSTAMP_PREFIX_BE bpf_htonl(0x0101080a)
#define TCPOLEN_TSTAMP_ALIGNED_ 12

enum mx_parse_status {
	MX_PARSE_DONE = 0,
	MX_PARSE_TRUNCATED = 1,
	MX_PARSE_MPTCP = 2, /* direct mode only, or'ed in: the frame carries an MPTCP option */
};

/* The verifier forgets where v came from: it reloads it from map memory (slot) as an unknown 16-bit
 * value. */
static __always_inline __u32 mx_launder16(__u16 *slot, __u32 v)
{
	*(volatile __u16 *)slot = v;
	return *(volatile __u16 *)slot;
}

static __always_inline __u32 mx_launder(struct mx_result *r, __u32 v)
{
	return mx_launder16(&r->launder, v);
}

/* Count one option of class cls. The class goes through map memory (as r->last, which mx_commit
 * uses) so that every classification reaches the count as the same unknown index: otherwise the
 * verifier carries each constant class into the next iteration of the option walk as a separate
 * state. */
#ifdef MX_COUNT_DIRECT
/* Direct mode (XDP): a frame is never parsed twice, so counts go straight to the counters the
 * result lives beside, with no commit step. */
static __always_inline struct mx_counters *mx_counters_of(struct mx_result *r)
{
	return (void *)r - __builtin_offsetof(struct mx_counters, scratch);
}

static __always_inline void mx_add(struct mx_result *r, __u32 cls)
{
	*(volatile __u8 *)&r->last = cls;
	cls = *(volatile __u8 *)&r->last & (MX_CLASS_MAX - 1);
	mx_counters_of(r)->options[cls]++;
}

static __always_inline void mx_set_tcp(struct mx_result *r)
{
	mx_counters_of(r)->packets[MX_PKT_TCP]++;
}
#else
static __always_inline void mx_add(struct mx_result *r, __u32 cls)
{
	*(volatile __u8 *)&r->last = cls;
	cls = *(volatile __u8 *)&r->last & (MX_CLASS_MAX - 1);
	r->classes[cls]++;
	r->seen |= 1 << cls;
}

static __always_inline void mx_set_tcp(struct mx_result *r)
{
	r->tcp = 1;
}
#endif

/* Count one option of a class known at compile time. */
static __always_inline void mx_add_const(struct mx_result *r, const __u32 cls)
{
#ifdef MX_COUNT_DIRECT
	mx_counters_of(r)->options[cls]++;
#else
	r->last = cls;
	r->classes[cls]++;
	r->seen |= 1 << cls;
#endif
}

/* The length of a DSS option without checksum, from its flags: 4, plus 4 or 8 for the data ACK,
 * plus 4 or 8 + 4 + 2 for a mapping (which may carry 2 more bytes of checksum). */
static __always_inline __u32 mx_dss_len(__u8 flags)
{
	return 4 + ((flags & DSS_DATA_ACK) ? 4 + ((flags & DSS_ACK64) ? 4 : 0) : 0) +
	       ((flags & DSS_MAPPING) ? 10 + ((flags & DSS_DSN64) ? 4 : 0) : 0);
}

/* Classify one MPTCP option of total length len (>= 2) starting at p. */
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

	/* DSS first: it is on nearly every MPTCP segment. */
	if (subtype == MPTCPOPT_DSS) {
		__u32 want = mx_dss_len(b3);
		if (len == want || ((b3 & DSS_MAPPING) && len == want + 2))
			return MX_DSS;
		return MX_MALFORMED;
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

/* What the walk returns: st, and in direct mode whether it met an MPTCP option (the counters'
 * program counts the frame as MPTCP from that; TC reads r->mptcp in mx_commit). */
static __always_inline int mx_walk_ret(struct mx_result *r, int st)
{
#ifdef MX_COUNT_DIRECT
	return st | (r->mptcp ? MX_PARSE_MPTCP : 0);
#else
	return st;
#endif
}

/* The first word of the DSS options Linux sends (RFC 8684 3.3; net/mptcp/options.c,
 * mptcp_write_options), after NOP, NOP, timestamps: kind 30, length, subtype DSS, flags. A pure
 * data ACK (64-bit), length 12; a data ACK and a mapping (both 64-bit, DATA_FIN or not), length 26
 * followed by two bytes of padding, or 28 with the DSS checksum. */
#define MX_DSS_ACK64_BE bpf_htonl(0x1e0c2003)
#define MX_DSS_MAP64_BE bpf_htonl(0x1e1a200f)
#define MX_DSS_MAP64_CSUM_BE bpf_htonl(0x1e1c200f)
#define MX_DSS_FIN_BE bpf_htonl(0x10)

/* Whether the options (optlen bytes at opts, in the frame) are NOP, NOP, timestamps (ts is zero)
 * followed by one well-formed DSS of the layouts Linux sends and nothing else: what the walk would
 * count as one DSS and nothing more, found with a few loads and no walk (Linux's own fast path,
 * mptcp_parse_option, keys on the same layouts). The two bytes after a 26-byte DSS are padding the
 * walk would stop at or step over: EOL, or NOP then NOP or EOL. */
static __always_inline int mx_dss_layout(__u8 *opts, void *data_end, __u64 optlen, __u64 ts)
{
	if (ts || (void *)(opts + 16) > data_end)
		return 0;
	__u64 w = *(__u32 *)(opts + 12);
	/* optlen goes on into the walk: tested only through miss, which the compiler may not look
	 * through, so that the verifier learns nothing about it on the way (see mx_walk_tcp). */
	__u64 miss = (optlen ^ 24) | (w ^ MX_DSS_ACK64_BE);
	asm volatile("" : "+r"(miss));
	if (!miss)
		return 1;
	if ((void *)(opts + 40) > data_end)
		return 0;
	w &= ~MX_DSS_FIN_BE;
	__u8 pad0 = opts[38], pad1 = opts[39];
	__u64 bad = w == MX_DSS_MAP64_CSUM_BE ? 0 :
		    w != MX_DSS_MAP64_BE ? 1 :
		    pad0 == TCPOPT_EOL_ ? 0 :
		    pad0 == TCPOPT_NOP_ && pad1 <= TCPOPT_NOP_ ? 0 : 1;
	miss = (optlen ^ 40) | bad;
	asm volatile("" : "+r"(miss));
	return !miss;
}

/* Walk the TCP header at offset l4 of the frame (l4 bounded: laundered, or a constant). quick, a
 * compile-time constant, recognizes a lone NOP, NOP, timestamps block before the walk. */
static __always_inline int mx_walk_tcp(void *data, void *data_end, __u32 l4, struct mx_result *r,
				       const int quick)
{
	struct tcphdr *th = data + l4;
	if ((void *)(th + 1) > data_end)
		return MX_PARSE_TRUNCATED;
	__u64 hl = th->doff * 4;
	if (hl < sizeof(*th)) {
		mx_add(r, MX_MALFORMED);
		return MX_PARSE_DONE;
	}
	if ((void *)th + hl > data_end)
		return MX_PARSE_TRUNCATED;

	int syn = th->syn, ack = th->ack;
	__u8 *opts = (__u8 *)(th + 1);
	__u64 optlen = hl - sizeof(*th);
	__u32 off = 0;

	/* The commonest option block of all, NOP, NOP, timestamps and nothing else: done. Only where
	 * asked (the constant-offset walk of XDP): elsewhere the extra path multiplies the states the
	 * verifier explores past what it allows. */
	if (quick && (void *)(opts + 4) <= data_end) {
		/* One test of both facts, so that the verifier learns nothing about optlen here and
		 * meets the walk below in the state it would have met anyway. */
		__u64 ts = *(__u32 *)opts ^ TCPOPT_TSTAMP_PREFIX_BE;
		__u64 miss = (optlen ^ TCPOLEN_TSTAMP_ALIGNED_) | ts;
		asm volatile("" : "+r"(miss));
		if (!miss)
			return MX_PARSE_DONE;
		if (mx_dss_layout(opts, data_end, optlen, ts)) {
			mx_add_const(r, MX_DSS);
			return MX_PARSE_DONE | MX_PARSE_MPTCP;
		}
	}
#ifdef MX_COUNT_DIRECT
	/* Only the walk reads and sets it (the paths above need no store). */
	r->mptcp = 0;
#endif

	for (int i = 0; i < MAX_TCP_OPTIONS; i++) {
		/* off never exceeds 40 here; the mask gives it one range on every path. */
		off &= 0x3f;
		if (off >= optlen || off >= TCP_OPTIONS_MAX_LEN)
			break;
		__u8 *p = opts + off;
		if ((void *)(p + 1) > data_end)
			return mx_walk_ret(r, MX_PARSE_TRUNCATED);
		__u8 kind = p[0];
		if (kind == TCPOPT_EOL_)
			break;
		if (kind == TCPOPT_NOP_) {
			/* NOP, NOP, timestamps (RFC 7323 appendix A) opens almost every segment: when the
			 * 12 bytes fit in the header, step over them at once, as the walk would. */
			if (off + TCPOLEN_TSTAMP_ALIGNED_ <= optlen && (void *)(p + 4) <= data_end &&
			    *(__u32 *)p == TCPOPT_TSTAMP_PREFIX_BE)
				off += TCPOLEN_TSTAMP_ALIGNED_;
			else
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
			return mx_walk_ret(r, MX_PARSE_TRUNCATED);
		__u32 len = p[1];
		if (len < 2 || off + len > optlen) {
			mx_add(r, MX_MALFORMED);
			break;
		}
		/* Computed before the classification narrows len on each path, and hidden from the
		 * compiler, so that every path reaches the next iteration alike. */
		__u32 next = off + len;
		asm volatile("" : "+r"(next));
		if (kind == TCPOPT_MPTCP) {
			/* A well-formed DSS is on nearly every MPTCP segment: count it with constants,
			 * which needs no laundering (see mx_add). Anything else is classified in full. */
			if (len >= 4 && (void *)(p + 4) <= data_end && (p[2] >> 4) == MPTCPOPT_DSS &&
			    len == mx_dss_len(p[3]))
				mx_add_const(r, MX_DSS);
			else
				mx_add(r, mx_classify(p, len, data_end, syn, ack));
		}
		off = next;
	}
	return mx_walk_ret(r, MX_PARSE_DONE);
}

/* Walk the TCP header at offset l4 of the frame, whatever the headers before it were. */
static __always_inline int mx_parse_tcp(void *data, void *data_end, __u32 l4, struct mx_result *r)
{
	mx_set_tcp(r);
	l4 = mx_launder(r, l4);
	if (l4 > MAX_L4_OFFSET)
		return MX_PARSE_TRUNCATED; /* no frame we can see has its TCP header this far in */
	return mx_walk_tcp(data, data_end, l4, r, 0);
}

/* What mx_parse_hdrs found. */
enum mx_hdrs_status {
	MX_HDRS_TCP = 0,       /* a TCP header at h->l4 (of an unfragmented packet, or a first fragment) */
	MX_HDRS_OTHER = 1,     /* nothing to walk: not IP, another protocol, or a later fragment */
	MX_HDRS_MALFORMED = 2, /* a broken IP header, or more IPv6 extension headers than walked */
	MX_HDRS_TRUNCATED = 3, /* a header runs past the frame, or an extension header past MAX_L4_OFFSET */
};

/* Where the headers of a frame lie, as mx_parse_hdrs found them. */
struct mx_hdrs {
	__u32 l3;   /* offset of the IP header: after Ethernet and at most MAX_VLAN_TAGS tags */
	__u32 l4;   /* offset of the TCP header (MX_HDRS_TCP; it may lie past MAX_L4_OFFSET) */
	__u32 v6;   /* the IP header is IPv6 */
	__u32 frag; /* a first fragment: IPv4 with MF, or an IPv6 fragment header of offset 0 */
};

/* The network layer from offset off of the frame, whose EtherType is proto: IPv4 (options skipped)
 * or IPv6 and up to MAX_IPV6_EXT_HDRS hop-by-hop, routing, destination options, AH and fragment
 * headers. Returns enum mx_hdrs_status and fills h (h->l3 = off). scr is a 16-bit slot of map memory
 * through which the offset of each extension header is laundered (see mx_launder). */
static __always_inline int mx_parse_ip(void *data, void *data_end, __u32 off, __be16 proto, __u16 *scr,
				       struct mx_hdrs *h)
{
	h->frag = 0;
	h->l3 = off;
	if (proto == ETH_P_IP_BE) {
		struct iphdr *iph = data + off;
		h->v6 = 0;
		if ((void *)(iph + 1) > data_end)
			return MX_HDRS_TRUNCATED;
		__u32 ihl = iph->ihl * 4;
		if (iph->version != 4 || ihl < sizeof(*iph))
			return MX_HDRS_MALFORMED;
		if ((void *)iph + ihl > data_end)
			return MX_HDRS_TRUNCATED;
		/* A non-first fragment has no TCP header to read. */
		if (iph->protocol != IPPROTO_TCP_ || (iph->frag_off & IP_OFFSET_MASK_BE))
			return MX_HDRS_OTHER;
		h->frag = (iph->frag_off & IP_MF_BE) != 0;
		h->l4 = off + ihl;
		return MX_HDRS_TCP;
	}

	if (proto != ETH_P_IPV6_BE)
		return MX_HDRS_OTHER;
	struct ipv6hdr *ip6 = data + off;
	h->v6 = 1;
	if ((void *)(ip6 + 1) > data_end)
		return MX_HDRS_TRUNCATED;
	if (ip6->version != 6)
		return MX_HDRS_MALFORMED;
	__u8 next = ip6->nexthdr;
	off += sizeof(*ip6);

	for (int i = 0; i < MAX_IPV6_EXT_HDRS; i++) {
		if (next == IPPROTO_TCP_) {
			h->l4 = off;
			return MX_HDRS_TCP;
		}
		if (next != IPPROTO_HOPOPTS_ && next != IPPROTO_ROUTING_ && next != IPPROTO_DSTOPTS_ &&
		    next != IPPROTO_AH_ && next != IPPROTO_FRAGMENT_)
			return MX_HDRS_OTHER; /* another upper-layer protocol */
		off = mx_launder16(scr, off);
		if (off > MAX_L4_OFFSET)
			return MX_HDRS_TRUNCATED;
		struct ipv6_ext_hdr_ *eh = data + off;
		/* Every extension header is at least 8 bytes long. */
		if ((void *)eh + sizeof(struct frag_hdr_) > data_end)
			return MX_HDRS_TRUNCATED;
		if (next == IPPROTO_FRAGMENT_) {
			/* A non-first fragment has no TCP header to read. */
			if (((struct frag_hdr_ *)eh)->frag_off & IP6_OFFSET_MASK_BE)
				return MX_HDRS_OTHER;
			h->frag = 1;
			next = eh->nexthdr;
			off += sizeof(struct frag_hdr_);
		} else if (next == IPPROTO_AH_) {
			next = eh->nexthdr;
			off += (eh->hdrlen + 2) * 4;
		} else {
			next = eh->nexthdr;
			off += (eh->hdrlen + 1) * 8;
		}
		/* The whole extension header must be there, whatever follows it. */
		if (data + off > data_end)
			return MX_HDRS_TRUNCATED;
	}
	if (next == IPPROTO_TCP_) {
		h->l4 = off;
		return MX_HDRS_TCP;
	}
	/* More extension headers than we walk: we cannot tell what follows. */
	if (next == IPPROTO_HOPOPTS_ || next == IPPROTO_ROUTING_ || next == IPPROTO_DSTOPTS_ ||
	    next == IPPROTO_AH_ || next == IPPROTO_FRAGMENT_)
		return MX_HDRS_MALFORMED;
	return MX_HDRS_OTHER;
}

/* The link and network layers of the frame, shared by every program: Ethernet, up to MAX_VLAN_TAGS
 * 802.1Q/802.1AD tags, then the network layer (mx_parse_ip). Returns enum mx_hdrs_status and fills
 * h. */
static __always_inline int mx_parse_hdrs(void *data, void *data_end, __u16 *scr, struct mx_hdrs *h)
{
	__u32 off = sizeof(struct ethhdr);
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return MX_HDRS_TRUNCATED;
	__be16 proto = eth->h_proto;

	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
			break;
		struct vlan_hdr_ *vh = data + off;
		if ((void *)(vh + 1) > data_end)
			return MX_HDRS_TRUNCATED;
		proto = vh->encap_proto;
		off += sizeof(*vh);
	}
	return mx_parse_ip(data, data_end, off, proto, scr, h);
}

/* The network layer: returns the offset of the TCP header, or 0 when there is none to walk. */
static __always_inline __u32 mx_parse_l3(void *data, void *data_end, struct mx_result *r, int *st)
{
	struct mx_hdrs h;
	int hs = mx_parse_hdrs(data, data_end, &r->launder, &h);

	*st = MX_PARSE_DONE;
	if (hs == MX_HDRS_TCP)
		return h.l4;
	if (hs == MX_HDRS_TRUNCATED)
		*st = MX_PARSE_TRUNCATED;
	else if (hs == MX_HDRS_MALFORMED)
		mx_add(r, MX_MALFORMED);
	return 0;
}

/* Parse one frame from data to data_end into r. */
static __always_inline int mx_parse(void *data, void *data_end, struct mx_result *r)
{
#ifdef MX_COUNT_DIRECT
	/* Untagged IPv4 without IP options, TCP, no fragment: the common frame, recognized with one
	 * bounds check and two loads (the general path below reaches the same walk after a dozen
	 * tests). Its TCP header sits at a constant offset, which the verifier follows without
	 * laundering, so the walk does not wait on a round trip through map memory either. The walk is
	 * verified once more for it. Any other frame, a shorter one included, takes the general path,
	 * which decides it exactly as before. */
	const __u32 l4c = sizeof(struct ethhdr) + sizeof(struct iphdr);
	if (data + l4c + sizeof(struct tcphdr) <= data_end) {
		/* EtherType IPv4, then version 4 and IHL 5 (the TOS byte left out); then the fragment
		 * offset and protocol TCP (the flags and TTL left out): two loads, two tests. */
		__u64 eth_ip = *(__u32 *)(data + 12) & bpf_htonl(0xffffff00);
		__u64 frag_proto = *(__u32 *)(data + sizeof(struct ethhdr) + 6) & bpf_htonl(0x1fff00ff);
		if (eth_ip == bpf_htonl(0x08004500) && frag_proto == bpf_htonl(IPPROTO_TCP_)) {
			mx_set_tcp(r);
			return mx_walk_tcp(data, data_end, l4c, r, 1);
		}
	}
	/* Untagged IPv6 straight to TCP whose options are NOP, NOP, timestamps alone or followed by
	 * one of Linux's DSS layouts (mx_dss_layout): decided here without a walk. No second copy of
	 * the walk for IPv6 (that took the verifier to 807,530 instructions): every other IPv6 frame
	 * takes the general path, as before, which decides these alike (the walk counts one DSS, or
	 * nothing, and the frame is TCP). */
	const __u32 l4v6 = sizeof(struct ethhdr) + sizeof(struct ipv6hdr);
	if (data + l4v6 + sizeof(struct tcphdr) + 4 <= data_end) {
		/* EtherType IPv6 and version 6 in one load; the next header after it. */
		__u64 eth_v = *(__u32 *)(data + 12) & bpf_htonl(0xfffff000);
		struct tcphdr *th = data + l4v6;
		__u64 hl = th->doff * 4;
		if (eth_v == bpf_htonl(0x86dd6000) && *(__u8 *)(data + sizeof(struct ethhdr) + 6) == IPPROTO_TCP_ &&
		    (void *)th + hl <= data_end) {
			__u8 *opts = (__u8 *)(th + 1);
			__u64 optlen = hl - sizeof(*th);
			__u64 ts = *(__u32 *)opts ^ TCPOPT_TSTAMP_PREFIX_BE;
			__u64 miss = (optlen ^ TCPOLEN_TSTAMP_ALIGNED_) | ts;
			asm volatile("" : "+r"(miss));
			if (!miss) {
				mx_set_tcp(r);
				return MX_PARSE_DONE;
			}
			if (mx_dss_layout(opts, data_end, optlen, ts)) {
				mx_set_tcp(r);
				mx_add_const(r, MX_DSS);
				return MX_PARSE_DONE | MX_PARSE_MPTCP;
			}
		}
	}
#endif
	int st;
	__u32 l4 = mx_parse_l3(data, data_end, r, &st);
	if (!l4)
		return st;
	return mx_parse_tcp(data, data_end, l4, r);
}

/* Add one parsed frame, standing for n wire packets, to the counters. Only the classes the frame
 * holds are written: none for plain TCP, one for most MPTCP segments. */
static __always_inline void mx_commit(struct mx_counters *c, struct mx_result *r, __u64 n)
{
	if (r->truncated)
		mx_add(r, MX_MALFORMED);
	c->packets[MX_PKT_TOTAL] += n;
	if (r->tcp)
		c->packets[MX_PKT_TCP] += n;
	if (r->mptcp)
		c->packets[MX_PKT_MPTCP] += n;

	__u32 seen = r->seen;
	if (!seen)
		return;
	if (!(seen & (seen - 1))) { /* one class: the one counted last */
		__u32 cls = r->last & (MX_CLASS_MAX - 1);
		c->options[cls] += r->classes[cls] * n;
		return;
	}
#pragma unroll
	for (int i = 0; i < MX_CLASS_MAX; i++)
		if (seen & (1 << i))
			c->options[i] += r->classes[i] * n;
}

/* What mx_ip_tcp_dst found. */
enum mx_ip_dst {
	MX_IP_DST_TCP = 0,       /* an unfragmented TCP segment: addr and port are set */
	MX_IP_DST_OTHER = 1,     /* another protocol, or a fragment */
	MX_IP_DST_MALFORMED = 2, /* a broken IP header, or the headers run past the frame */
};

/* The destination of the IP packet at offset off of the frame (no link-layer header before it), of
 * IP version v (4 or 6): its address (IPv4 as ::ffff:a.b.c.d) and TCP destination port, as the
 * balancer's VIP lookup sees them. The headers are read as mx_parse_ip reads them (IPv4 options,
 * IPv6 extension headers: the balancer forwards those), with scr its laundering slot. Pure, like
 * the rest of this file. */
static __always_inline int mx_ip_tcp_dst(void *data, void *data_end, __u32 off, int v, __u16 *scr,
					 __u8 addr[16], __be16 *port)
{
	struct mx_hdrs h;
	int hs = mx_parse_ip(data, data_end, off, v == 4 ? ETH_P_IP_BE : ETH_P_IPV6_BE, scr, &h);

	if (hs == MX_HDRS_OTHER)
		return MX_IP_DST_OTHER;
	if (hs != MX_HDRS_TCP || h.l4 > MAX_L4_OFFSET)
		return MX_IP_DST_MALFORMED;
	if (h.frag)
		return MX_IP_DST_OTHER;
	struct tcphdr *th = data + (h.l4 & 0x7ff);
	if ((void *)(th + 1) > data_end)
		return MX_IP_DST_MALFORMED;
	*port = th->dest;
	void *ip = data + (off & 0x7ff);
	if (v == 4) {
		struct iphdr *iph = ip;
		if ((void *)(iph + 1) > data_end)
			return MX_IP_DST_MALFORMED;
		__builtin_memset(addr, 0, 10);
		addr[10] = 0xff;
		addr[11] = 0xff;
		__builtin_memcpy(addr + 12, &iph->daddr, 4);
	} else {
		struct ipv6hdr *ip6 = ip;
		if ((void *)(ip6 + 1) > data_end)
			return MX_IP_DST_MALFORMED;
		__builtin_memcpy(addr, &ip6->daddr, 16);
	}
	return MX_IP_DST_TCP;
}
