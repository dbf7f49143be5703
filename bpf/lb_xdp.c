// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lb_xdp.c — the MPTCP-aware L4 load balancer, at the XDP hook, with direct server return.
 *
 * Frames to a VIP (IPv4/IPv6 address + TCP port) go to a backend: the one the flow table remembers;
 * for an MP_JOIN SYN (VIPs with LB_VIP_JOIN_STEERING), the one that holds the join's token; otherwise
 * the one of the VIP's Maglev table at the 5-tuple's hash (always for a SYN, which opens a connection;
 * a non-SYN packet of no known flow is forwarded so, and nothing is stored). Tokens are learned, with
 * no control-plane round trip, from the client's MP_CAPABLE third ACK or first data packet, which
 * carry the server's key: token = SHA-256(key)[0:4], once per flow, and only on a flow whose SYN the
 * balancer placed. Forwarding rewrites the MACs (l2) or adds an outer
 * IPv4/IPv6 header to the backend's address (ipip), then XDP_TX or XDP_REDIRECT. Everything else
 * passes untouched; so does a VIP frame that cannot be forwarded (no backend, bad config), and a
 * malformed one. Only an unknown-token join under the drop policy is dropped.
 *
 * A frame that would not fit the egress MTU once encapsulated (ipip) is answered, as a router would,
 * with an ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big" built in place and
 * sent back with XDP_TX; IPv4 without DF is passed to the stack. Generic XDP sees the stack's GRO
 * aggregates, larger than any wire frame: those are passed to the stack, never forwarded or answered.
 *
 * The headers are found by the parser every program shares (bpf/include/mx_parse.h, mx_parse_hdrs,
 * through lb_parse); untagged IPv4, and untagged IPv6 carrying TCP directly, the common frames, are
 * read at constant offsets before it, at no extra cost. Frames with up to MAX_VLAN_TAGS
 * 802.1Q/802.1AD tags, and IPv6 with hop-by-hop, routing, destination options and AH headers, are
 * balanced. l2 rewrites the MACs and keeps the tags; ipip puts the outer header after the Ethernet
 * header and its tags (the innermost EtherType becomes the outer header's) and encapsulates the
 * whole IP packet, extension headers included. VLAN tags do not count against an MTU. A tagged
 * frame too big for ipip is passed, counted in mtu, not answered with an ICMP error (the stack,
 * which knows the VLAN's device, does that). Any fragment (IPv4 MF or offset, an IPv6 fragment
 * header) is passed untouched; a tag or an extension header cut short, more extension headers than
 * MAX_IPV6_EXT_HDRS, a TCP header past MAX_L4_OFFSET are malformed: passed, counted. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/mx_lb.h"
#include "include/mx_parse.h"
#include "include/mx_sha256.h"

/* lb_learn's SHA-256 digest, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mx_sha256_digest);
} mptcpx_lb_sha SEC(".maps");

#define IP_MF_OFFSET_BE bpf_htons(0x3fff)
#define IP_DF_BE bpf_htons(0x4000)
#define IPPROTO_ICMP_ 1
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define IPPROTO_ICMPV6_ 58
#define ICMP_DEST_UNREACH_ 3
#define ICMP_FRAG_NEEDED_ 4
#define ICMPV6_PKT_TOOBIG_ 2

/* ICMP "fragmentation needed" (RFC 1191) and ICMPv6 "packet too big" (RFC 4443 3.2) headers
 * (linux/icmp.h pulls in libc headers). */
struct lb_icmp4 {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 unused;
	__be16 mtu; /* next-hop MTU */
};

struct lb_icmp6 {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 mtu;
};

/* IP length fields top out here; a larger packet (BIG TCP, only ever a GRO/GSO aggregate) carries 0. */
#define IP_MAX_LEN 0xffff

/* How much of the invoking packet an ICMP error quotes: as much as fits in a 576-byte IPv4 datagram
 * (RFC 1812 4.3.2.3; RFC 792's minimum is the IP header and 8 bytes), and in the 1280-byte IPv6
 * minimum MTU (RFC 4443 2.4(c), a MUST). Both are multiples of 4 (bpf_csum_diff). */
#define LB_ICMP4_QUOTE (576 - sizeof(struct iphdr) - sizeof(struct lb_icmp4))
#define LB_ICMP6_QUOTE (1280 - sizeof(struct ipv6hdr) - sizeof(struct lb_icmp6))

/* The new-flow rate guard. late 0: may a new flow be stored? Yes while this CPU's window has stored
 * fewer than lb_new_flow_rate; else no, and the guard is engaged (over_ns). late 1: may the
 * MP_CAPABLE third ACK of a flow that is not in the table be placed now (its token learned, the flow
 * stored)? Only while the guard is engaged (its SYN was most likely refused: its joins need the
 * token), within a budget of its own of lb_new_flow_rate per window, so that neither a SYN flood
 * starves the learning nor forged third ACKs flood the tables. Engaged: any CPU refused a flow in
 * the last two windows (mptcpx_lb_guard_on). With no guard (rate 0), every new
 * flow is stored and nothing is learned late. Global: verified once. */
__attribute__((noinline)) int lb_guard_admit(__u64 now, __u32 late)
{
	__u32 zero = 0, rate = lb_new_flow_rate;
	if (!rate)
		return !late;
	struct lb_guard *g = bpf_map_lookup_elem(&mptcpx_lb_guard, &zero);
	__u64 *on = bpf_map_lookup_elem(&mptcpx_lb_guard_on, &zero);
	if (!g || !on)
		return !late;
	if (lb_age(now, g->win_ns) >= LB_GUARD_WINDOW_NS) {
		g->win_ns = now;
		g->flows = 0;
		g->late = 0;
	}
	if (late) {
		__u64 over = *on;
		if (!over || lb_age(now, over) > 2 * LB_GUARD_WINDOW_NS || g->late >= rate)
			return 0;
		g->late++;
		return 1;
	}
	if (g->flows >= rate) {
		if (lb_age(now, *on) >= LB_GUARD_WINDOW_NS / 8)
			*on = now;
		return 0;
	}
	g->flows++;
	return 1;
}

/* Would lb_guard_admit(now, 0) admit a new flow? 1 when it surely would; 0 when it may not. Changes
 * nothing (lb_guard_admit may start a new window, and engages the guard). */
static __always_inline int lb_guard_would_admit(__u64 now)
{
	__u32 zero = 0, rate = lb_new_flow_rate;
	if (!rate)
		return 1;
	struct lb_guard *g = bpf_map_lookup_elem(&mptcpx_lb_guard, &zero);
	return g && (lb_age(now, g->win_ns) >= LB_GUARD_WINDOW_NS || g->flows < rate);
}

/* Puts struct lb_event in the object's BTF for bpf2go (-type lb_event); never used. */
const struct lb_event *lb_event_btf __attribute__((unused));

enum lb_mp_kind {
	LB_MP_NONE = 0,
	LB_MP_KEYS = 1, /* MP_CAPABLE with both keys (third ACK, or ACK + data) */
	LB_MP_JOIN = 2, /* MP_JOIN SYN */
};

struct lb_mp {
	__u32 kind;  /* enum lb_mp_kind */
	__u32 token; /* MP_JOIN SYN: receiver's token, host order */
	__u64 rkey;  /* MP_CAPABLE: receiver's (the server's) key */
};

static __always_inline __u64 lb_load_be64(const __u8 *p)
{
	__u64 v;
	__builtin_memcpy(&v, p, sizeof(v));
	return bpf_be64_to_cpu(v);
}

static __always_inline __u32 lb_load_be32(const __u8 *p)
{
	__u32 v;
	__builtin_memcpy(&v, p, sizeof(v));
	return bpf_ntohl(v);
}

/* What lb_scan returns: the kind of MPTCP option found (enum lb_mp_kind) in bits 0-1, the malformed
 * and unwalked flags, and the option's offset from the start of the TCP options in bits 8-13. */
#define LB_SCAN_KIND 0x3
#define LB_SCAN_MALFORMED (1 << 2)
#define LB_SCAN_UNWALKED (1 << 3) /* the options were not walked to their end (LB_MAX_TCP_OPTIONS) */
#define LB_SCAN_OFF_SHIFT 8
#define LB_SCAN_OFF_MASK 0x3f
#define LB_SCAN_SYN (1 << 0) /* lb_scan's flags */
#define LB_SCAN_ACK (1 << 1)

/* What lb_parse returns: the TCP header's offset in bits 0-10, the number of VLAN tags before the
 * IP header in bits 16-17, and flags. */
#define LB_PARSE_L4_MASK 0x7ff
#define LB_PARSE_TAGS_SHIFT 16
#define LB_PARSE_TAGS_MASK 0x3
#define LB_PARSE_V6 (1 << 24)        /* the IP header is IPv6 */
#define LB_PARSE_PASS (1 << 25)      /* not for the balancer: not IP, not TCP, or a fragment */
#define LB_PARSE_MALFORMED (1 << 26) /* a broken or truncated header: passed, counted */
_Static_assert(MAX_L4_OFFSET <= LB_PARSE_L4_MASK, "lb_parse's TCP offset field");
_Static_assert(MAX_VLAN_TAGS <= LB_PARSE_TAGS_MASK, "lb_parse's VLAN tag count field");

/* Where the IP and TCP headers of the frame at ctx lie, found by the parser every program shares
 * (mx_parse_hdrs): up to MAX_VLAN_TAGS 802.1Q/802.1AD tags, IPv4 or IPv6 with up to
 * MAX_IPV6_EXT_HDRS extension headers. Any fragment (IPv4 MF or offset, an IPv6 fragment header)
 * is passed, as is what carries no TCP; a TCP header deeper than MAX_L4_OFFSET is malformed.
 * Returns the LB_PARSE_* fields. Global, so verified once, on its own: the caller sees one unknown
 * value, not one state per shape of frame. */
__attribute__((noinline)) int lb_parse(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *scr = bpf_map_lookup_elem(&mptcpx_lb_scr, &zero);
	struct mx_hdrs h;

	if (!scr)
		return LB_PARSE_PASS;
	int hs = mx_parse_hdrs(data, data_end, (__u16 *)scr, &h);
	if (hs == MX_HDRS_OTHER)
		return LB_PARSE_PASS;
	if (hs != MX_HDRS_TCP || h.l4 > MAX_L4_OFFSET)
		return LB_PARSE_MALFORMED;
	if (h.frag)
		return LB_PARSE_PASS;
	__u32 ntags = (h.l3 - sizeof(struct ethhdr)) / sizeof(struct vlan_hdr_);
	return (h.l4 & LB_PARSE_L4_MASK) | (ntags & LB_PARSE_TAGS_MASK) << LB_PARSE_TAGS_SHIFT |
	       (h.v6 ? LB_PARSE_V6 : 0);
}

/* Find the MPTCP option that matters to the balancer among the TCP options of the header at th_off
 * in the frame (th_off <= LB_PARSE_L4_MASK, the header already checked to lie inside the frame);
 * flags are LB_SCAN_SYN and LB_SCAN_ACK. Returns the LB_SCAN_* bits; the caller reads the option's fields.
 *
 * Global, so verified once, on its own: what the caller sees is one unknown return value, not one
 * state per way out of the walk. Verifiers before 6.4 otherwise carry every exit of the walk
 * through the rest of the balancer (Linux 6.1 gives up after a million instructions). */
__attribute__((noinline)) int lb_scan(struct xdp_md *ctx, __u32 th_off, __u32 flags)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	__u32 *scr = bpf_map_lookup_elem(&mptcpx_lb_scr, &zero);
	struct tcphdr *th = data + (th_off & LB_PARSE_L4_MASK);

	if (!scr || (void *)(th + 1) > data_end)
		return 0;
	__u32 optlen = th->doff * 4;
	if (optlen < sizeof(*th))
		return 0;
	optlen -= sizeof(*th);
	__u8 *opts = (__u8 *)(th + 1);
	int syn = flags & LB_SCAN_SYN, ack = flags & LB_SCAN_ACK;
	__u32 off = 0;

	for (int i = 0; i < LB_MAX_TCP_OPTIONS; i++) {
		/* One range for off on every path into the next iteration, so the verifier prunes. */
		off = lb_launder(scr, off) & 0x3f;
		if (off >= optlen || off >= TCP_OPTIONS_MAX_LEN)
			return 0;
		__u8 *p = opts + off;
		if ((void *)(p + 1) > data_end)
			return 0;
		__u8 kind = p[0];
		if (kind == TCPOPT_EOL_)
			return 0;
		if (kind == TCPOPT_NOP_) {
			off++;
			continue;
		}
		if (off + 2 > optlen || (void *)(p + 2) > data_end)
			return LB_SCAN_MALFORMED;
		__u32 len = p[1];
		if (len < 2 || off + len > optlen)
			return LB_SCAN_MALFORMED;
		__u32 next = off + len;
		asm volatile("" : "+r"(next));
		if (kind == TCPOPT_MPTCP && len >= 12) {
			if ((void *)(p + 12) > data_end)
				return 0;
			__u8 subtype = p[2] >> 4;
			if (subtype == MPTCPOPT_MP_JOIN && syn && !ack && len == 12)
				return LB_MP_JOIN | off << LB_SCAN_OFF_SHIFT;
			/* v1 MP_CAPABLE with both keys: sender's key, then receiver's key. */
			if (subtype == MPTCPOPT_MP_CAPABLE && !syn && ack && (p[2] & 0x0f) == 1 &&
			    (len == 20 || len == 22 || len == 24)) {
				if ((void *)(p + 20) > data_end)
					return 0;
				return LB_MP_KEYS | off << LB_SCAN_OFF_SHIFT;
			}
		}
		off = next;
	}
	/* Out of iterations before the end of the options: what lies further is unknown. The last
	 * iteration may have reached the end exactly (40 NOPs, say): then all was walked. */
	if ((lb_launder(scr, off) & 0x3f) < optlen)
		return LB_SCAN_UNWALKED;
	return 0;
}

/* The words of the SYN options Linux writes before any MPTCP option: MSS (its value masked),
 * SACK-permitted with the timestamps' kind and length, then (after the timestamps' 8 bytes) NOP and
 * window scale (the shift masked); and the MPTCP options that may follow: MP_CAPABLE of length 4
 * (the SYN's, no key; the version masked), MP_JOIN of length 12 (the flags masked). */
#define LB_SYN_MSS_BE bpf_htonl(0x02040000)
#define LB_SYN_MSS_MASK_BE bpf_htonl(0xffff0000)
#define LB_SYN_SACK_TS_BE bpf_htonl(0x0402080a)
#define LB_SYN_WS_BE bpf_htonl(0x01030300)
#define LB_SYN_WS_MASK_BE bpf_htonl(0xffffff00)
#define LB_SYN_MPC_BE bpf_htonl(0x1e040000)
#define LB_SYN_JOIN_BE bpf_htonl(0x1e0c1000)
#define LB_SYN_MPTCP_MASK_BE bpf_htonl(0xfffff000)

/* Whether the optlen bytes of options at opts (in the frame) are one of the SYN layouts Linux sends:
 * what lb_scan would find in them, found with a few loads and no walk; a join's token goes to mp.
 * Every option of these is well-formed and walked to the end, and only an MP_JOIN matters. */
static __always_inline int lb_syn_layout(__u8 *opts, void *data_end, __u64 optlen, struct lb_mp *mp)
{
	if ((void *)(opts + 20) > data_end)
		return 0;
	__u64 miss = ((*(__u32 *)opts & LB_SYN_MSS_MASK_BE) ^ LB_SYN_MSS_BE) |
		     (*(__u32 *)(opts + 4) ^ LB_SYN_SACK_TS_BE) |
		     ((*(__u32 *)(opts + 16) & LB_SYN_WS_MASK_BE) ^ LB_SYN_WS_BE);
	asm volatile("" : "+r"(miss));
	if (miss)
		return 0;
	if (optlen == 20)
		return 1;
	if ((void *)(opts + 24) > data_end)
		return 0;
	__u32 w = *(__u32 *)(opts + 20) & LB_SYN_MPTCP_MASK_BE;
	if (optlen == 24 && w == LB_SYN_MPC_BE)
		return 1;
	if (optlen != 32 || w != LB_SYN_JOIN_BE || (void *)(opts + 32) > data_end)
		return 0;
	mp->kind = LB_MP_JOIN;
	mp->token = lb_load_be32(opts + 24);
	return 1;
}

/* The MPTCP option that matters to the balancer in the TCP header th, at offset th_off, of the frame
 * at ctx (the header checked to lie inside the frame, whose TCP options lb_scan walks), with its
 * token or key. Options that are malformed, or not walked to their end, are counted as malformed; a
 * SYN of the latter becomes a join of token 0 when join_unwalked (it may hide an MP_JOIN: never a
 * new flow). */
static __always_inline void lb_scan_opts(struct xdp_md *ctx, struct lb_stats *st, struct tcphdr *th,
					 __u32 th_off, int syn, int ack, int join_unwalked, struct lb_mp *mp)
{
	void *data_end = (void *)(long)ctx->data_end;

	/* The option blocks of nearly every segment, NOP, NOP, timestamps alone or followed by one of
	 * the DSS layouts Linux sends, hold nothing the balancer reads and are well-formed: no walk.
	 * The tests are the counting datapath's (mx_parse.h). */
	__u8 *opts = (__u8 *)(th + 1);
	if ((void *)(opts + 4) <= data_end) {
		__u64 optlen = th->doff * 4 - sizeof(*th);
		__u64 ts = *(__u32 *)opts ^ TCPOPT_TSTAMP_PREFIX_BE;
		if (!((optlen ^ TCPOLEN_TSTAMP_ALIGNED_) | ts) || mx_dss_layout(opts, data_end, optlen, ts))
			return;
		/* The SYN Linux sends (tcp_options_write): MSS, SACK-permitted and timestamps, NOP and
		 * window scale, then nothing, an MP_CAPABLE of 4 bytes (no key), or an MP_JOIN of 12. */
		if (syn && !ack && lb_syn_layout(opts, data_end, optlen, mp))
			return;
	}
	int r = lb_scan(ctx, th_off, (syn ? LB_SCAN_SYN : 0) | (ack ? LB_SCAN_ACK : 0));

	if (r & (LB_SCAN_MALFORMED | LB_SCAN_UNWALKED)) {
		lb_count(st, LB_STAT_MALFORMED);
		if ((r & LB_SCAN_UNWALKED) && join_unwalked) {
			mp->kind = LB_MP_JOIN;
			mp->token = 0;
		}
		return;
	}
	__u8 *p = (__u8 *)(th + 1) + ((r >> LB_SCAN_OFF_SHIFT) & LB_SCAN_OFF_MASK);
	switch (r & LB_SCAN_KIND) {
	case LB_MP_JOIN:
		if ((void *)(p + 12) <= data_end) {
			mp->kind = LB_MP_JOIN;
			mp->token = lb_load_be32(p + 4);
		}
		break;
	case LB_MP_KEYS:
		if ((void *)(p + 20) <= data_end) {
			mp->kind = LB_MP_KEYS;
			mp->rkey = lb_load_be64(p + 12);
		}
		break;
	}
}

/* Record token -> backend for the connection of flow fk, whose server key is rkey. Returns the
 * token when this flow now owns (or shares, as the same connection) the mapping, else 0. */
static __always_inline __u32 lb_learn(struct lb_stats *st, struct lb_vip_stats *vs, struct lb_backend_stats *bs,
				      const struct lb_vip *vip, __u64 rkey, __u32 backend,
				      const struct lb_flow_key *fk, __u64 now)
{
	/* The digest in per-CPU map memory: on the stack it would take 32 of the 512 bytes that this
	 * function's caller (it is inlined) and mx_sha256_key share. */
	__u32 zero = 0;
	struct mx_sha256_digest *d = bpf_map_lookup_elem(&mptcpx_lb_sha, &zero);
	if (!d || mx_sha256_key(rkey, d)) {
		lb_count(st, LB_STAT_INSERT_FAILED); /* unreachable: a per-CPU array of one entry */
		return 0;
	}

	struct lb_token_key tk = {.vip_id = vip->id, .token = d->h[0]};
	/* Digest bytes 4-11: bytes 24-31 are the server's initial data sequence number, which no pinned
	 * map should hold. */
	__u64 key_hash = ((__u64)d->h[1] << 32) | d->h[2];
	struct lb_token *t = bpf_map_lookup_elem(&mptcpx_tokens, &tk);

	if (t) {
		if (t->key_hash == key_hash || t->backend == backend) {
			/* The same connection again (a repeated key), or the backend that held the token
			 * minted it again, so its old connection is gone: refresh. */
			int changed = t->key_hash != key_hash || t->backend != backend;
			t->backend = backend;
			t->key_hash = key_hash;
			t->last_ns = now;
			if (changed) {
				lb_count(st, LB_STAT_TOKEN_LEARNED);
				lb_count_vip(vs, LB_VSTAT_TOKEN_LEARNED);
				lb_count_be(bs, LB_BSTAT_TOKEN_LEARNED);
				lb_emit(st, LB_EV_CONN_LEARNED, tk.token, backend, 0, fk, now);
			}
			return tk.token;
		}
		__u32 other = t->backend;
		if (lb_age(now, t->last_ns) <= lb_collision_idle_ns) {
			/* Two live connections, two backends, one token: keep the mapping we have. */
			lb_count(st, LB_STAT_COLLISION);
			lb_count_vip(vs, LB_VSTAT_COLLISION);
			lb_count_be(bs, LB_BSTAT_COLLISION);
			lb_emit(st, LB_EV_COLLISION, tk.token, backend, other, fk, now);
			return 0;
		}
		t->backend = backend;
		t->key_hash = key_hash;
		t->last_ns = now;
		lb_count(st, LB_STAT_TOKEN_REPLACED);
		lb_count(st, LB_STAT_TOKEN_LEARNED);
		lb_count_vip(vs, LB_VSTAT_TOKEN_REPLACED);
		lb_count_vip(vs, LB_VSTAT_TOKEN_LEARNED);
		lb_count_be(bs, LB_BSTAT_TOKEN_REPLACED);
		lb_count_be(bs, LB_BSTAT_TOKEN_LEARNED);
		lb_emit(st, LB_EV_TOKEN_REPLACED, tk.token, backend, other, fk, now);
		return tk.token;
	}

	struct lb_token nt = {.backend = backend, .key_hash = key_hash, .last_ns = now};
	/* BPF_NOEXIST: of two CPUs learning one token at once, the first one wins. */
	if (bpf_map_update_elem(&mptcpx_tokens, &tk, &nt, BPF_NOEXIST)) {
		lb_count(st, LB_STAT_INSERT_FAILED);
		return 0;
	}
	lb_count(st, LB_STAT_TOKEN_LEARNED);
	lb_count_vip(vs, LB_VSTAT_TOKEN_LEARNED);
	lb_count_be(bs, LB_BSTAT_TOKEN_LEARNED);
	lb_emit(st, LB_EV_CONN_LEARNED, tk.token, backend, 0, fk, now);
	return tk.token;
}

/* The number of VLAN tags before the IP header (0 to MAX_VLAN_TAGS), in bits 24-25 of the who of
 * lb_forward, lb_too_big and the functions between. */
#define LB_WHO_TAGS(n) (((n) & LB_PARSE_TAGS_MASK) << 24)
#define LB_WHO_TAGS_OF(who) (((who) >> 24) & LB_PARSE_TAGS_MASK)

/* The frame, less its VLAN tags (which a device's MTU does not count; LB_WHO_TAGS_OF(who)), is
 * longer than the ingress device's MTU allows: no wire frame, but an aggregate the stack built (GRO,
 * or a local sender's GSO skb), which generic XDP shows whole. Global, as the functions below: its
 * stack is its own (the balancer's is near the verifier's limit beside the SHA-256; 6.1 refuses a
 * chain of calls whose frames, each rounded up to 32 bytes, pass 512: lb_too_big keeps who whole
 * across this call, not its parts, to stay within 32). */
__attribute__((noinline)) int lb_aggregate(struct xdp_md *ctx, __u32 who)
{
	__u32 len = 0;
	int tags = LB_WHO_TAGS_OF(who) * sizeof(struct vlan_hdr_);
	return bpf_check_mtu(ctx, 0, &len, -tags, 0) == BPF_MTU_CHK_RET_FRAG_NEEDED;
}

static __always_inline __u16 lb_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* What lb_icmp_too_big did with a frame. */
enum lb_too_big_ret {
	LB_TB_SENT = 0,   /* answered with the ICMP error */
	LB_TB_PASS = 1,   /* IPv4 without DF, VLAN-tagged, or too short to quote: untouched */
	LB_TB_FAILED = 2, /* a helper failed once the frame was cut */
};

/* Answer the IPv4 (v6: IPv6) frame at ctx, unless it is IPv4 without DF, with an ICMP
 * "fragmentation needed" (type 3 code 4) or ICMPv6 "packet too big" (type 2) carrying next-hop MTU
 * mtu, built in place: the frame is cut to its Ethernet header and the quote (LB_ICMP4_QUOTE /
 * LB_ICMP6_QUOTE bytes of the IP packet), the new IP and ICMP headers are put in front, from the
 * VIP (the packet's destination) to the client, and the MACs are swapped. The frame carries no
 * VLAN tag (lb_too_big passes those). Returns enum lb_too_big_ret. */
static __always_inline int lb_icmp_too_big(struct xdp_md *ctx, __u32 v6, __u32 mtu)
{

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (!v6) {
		struct iphdr *iph = data + sizeof(struct ethhdr);
		if ((void *)(iph + 1) > data_end || !(iph->frag_off & IP_DF_BE))
			return LB_TB_PASS;
	}
	const int quote = v6 ? LB_ICMP6_QUOTE : LB_ICMP4_QUOTE;
	const int room = v6 ? sizeof(struct ipv6hdr) + sizeof(struct lb_icmp6)
			    : sizeof(struct iphdr) + sizeof(struct lb_icmp4);
	long len = data_end - data;

	if (len < (long)sizeof(struct ethhdr) + quote)
		return LB_TB_PASS;
	if (len > (long)sizeof(struct ethhdr) + quote &&
	    bpf_xdp_adjust_tail(ctx, (int)((long)sizeof(struct ethhdr) + quote - len)))
		return LB_TB_PASS; /* a failed adjust leaves the frame as it was */
	if (bpf_xdp_adjust_head(ctx, -room))
		return LB_TB_FAILED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;

	struct ethhdr *eth = data;
	struct ethhdr *orig = data + room; /* the client's Ethernet header, before the quote */
	if (v6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct lb_icmp6 *ic = (void *)(ip6 + 1);
		struct ipv6hdr *q = (void *)(ic + 1);
		if ((void *)ic + sizeof(*ic) + LB_ICMP6_QUOTE > data_end)
			return LB_TB_FAILED; /* unreachable: the frame was cut to this length */
		/* The MACs first: the new IPv6 header overwrites the old Ethernet header. */
		__builtin_memcpy(eth->h_dest, orig->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, orig->h_dest, ETH_ALEN);
		eth->h_proto = ETH_P_IPV6_BE;
		*(__be32 *)ip6 = bpf_htonl(6U << 28);
		ip6->payload_len = bpf_htons(sizeof(*ic) + LB_ICMP6_QUOTE);
		ip6->nexthdr = IPPROTO_ICMPV6_;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, &q->daddr, 16);
		__builtin_memcpy(&ip6->daddr, &q->saddr, 16);
		ic->type = ICMPV6_PKT_TOOBIG_;
		ic->code = 0;
		ic->check = 0;
		ic->mtu = bpf_htonl(mtu);
		/* The message, then the pseudo-header: addresses, and the upper-layer length and next
		 * header as two 32-bit words in network order, added to the sum as the helper adds
		 * words read from memory. */
		__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)&ip6->saddr, 32, 0);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)ic, 512, sum);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)((void *)ic + 512), 512, sum);
		sum = bpf_csum_diff(NULL, 0, (__be32 *)((void *)ic + 1024), sizeof(*ic) + LB_ICMP6_QUOTE - 1024, sum);
		if (sum < 0)
			return LB_TB_FAILED;
		__u64 full = (__u64)sum + bpf_htonl(sizeof(*ic) + LB_ICMP6_QUOTE) + bpf_htonl(IPPROTO_ICMPV6_);
		ic->check = lb_csum_fold((full & 0xffffffff) + (full >> 32));
		return LB_TB_SENT;
	}

	struct iphdr *iph = (void *)(eth + 1);
	struct lb_icmp4 *ic = (void *)(iph + 1);
	struct iphdr *q = (void *)(ic + 1);
	if ((void *)ic + sizeof(*ic) + LB_ICMP4_QUOTE > data_end)
		return LB_TB_FAILED; /* unreachable: the frame was cut to this length */
	/* The MACs first: the new IP and ICMP headers overwrite the old Ethernet header. */
	__builtin_memcpy(eth->h_dest, orig->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, orig->h_dest, ETH_ALEN);
	eth->h_proto = ETH_P_IP_BE;
	ic->type = ICMP_DEST_UNREACH_;
	ic->code = ICMP_FRAG_NEEDED_;
	ic->check = 0;
	ic->unused = 0;
	ic->mtu = bpf_htons(mtu > IP_MAX_LEN ? IP_MAX_LEN : mtu);
	__s64 sum = bpf_csum_diff(NULL, 0, (__be32 *)ic, 512, 0);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)((void *)ic + 512), sizeof(*ic) + LB_ICMP4_QUOTE - 512, sum);
	if (sum < 0)
		return LB_TB_FAILED;
	ic->check = lb_csum_fold(sum);
	/* Version 4, IHL 5; precedence "internetwork control", as Linux sends its ICMP errors; no DF. */
	*(__u8 *)iph = 0x45;
	iph->tos = 0xc0;
	iph->tot_len = bpf_htons(sizeof(*iph) + sizeof(*ic) + LB_ICMP4_QUOTE);
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = 64;
	iph->protocol = IPPROTO_ICMP_;
	iph->check = 0;
	iph->saddr = q->daddr;
	iph->daddr = q->saddr;
	iph->check = lb_ip4_csum(iph);
	return LB_TB_SENT;
}

/* lb_too_big's who: the frame's family, VIP id and backend id in one argument. */
#define LB_TB_V6 (1U << 31)
#define LB_TB_WHO(v6, vid, bid) (((v6) ? LB_TB_V6 : 0) | ((vid) & 0xff) << 16 | ((bid) & 0xffff))
/* ... and, or'ed in, LB_WHO_TAGS: the number of VLAN tags before the IP header. */

/* The frame for a backend does not fit the egress device, whose MTU less the outer header is mtu;
 * who is LB_TB_WHO(IPv6 frame, VIP id, backend id). An aggregate is passed (an ICMP error would
 * tell its sender a wrong MTU), a packet that may not be fragmented (IPv4 DF, IPv6) answered with
 * an ICMP error, the rest passed. Counts what it did and returns the verdict. Global, so verified
 * once, not for every state of the balancer that reaches it; it looks the counters up itself and
 * takes few arguments, so that its caller keeps little across the call (the balancer's stack is at
 * the verifier's limit beside the SHA-256's). */
__attribute__((noinline)) int lb_too_big(struct xdp_md *ctx, __u32 mtu, __u32 who)
{
	__u32 zero = 0, v6 = who & LB_TB_V6, vid = (who >> 16) & 0xff, bid = who & 0xffff;
	struct lb_stats *st = bpf_map_lookup_elem(&mptcpx_lb_stats, &zero);

	if (lb_aggregate(ctx, who)) {
		lb_count(st, LB_STAT_AGGREGATE);
		return XDP_PASS;
	}
	/* A VLAN-tagged frame is not answered but passed, untouched: the stack, which knows the VLAN's
	 * device and its MTU, answers it or drops it. */
	int ret = LB_WHO_TAGS_OF(who) ? LB_TB_PASS : lb_icmp_too_big(ctx, v6, mtu);
	if (ret == LB_TB_SENT) {
		lb_count(st, LB_STAT_ICMP_TOO_BIG);
		return XDP_TX;
	}
	struct lb_vip_stats *vs = bpf_map_lookup_elem(&mptcpx_lb_vstats, &vid);
	struct lb_backend_stats *bs = bpf_map_lookup_elem(&mptcpx_lb_bstats, &bid);
	if (ret == LB_TB_PASS) {
		lb_count(st, LB_STAT_MTU);
		lb_count_vip(vs, LB_VSTAT_MTU);
		lb_count_be(bs, LB_BSTAT_MTU);
		return XDP_PASS;
	}
	lb_count(st, LB_STAT_FWD_ERROR);
	lb_count_vip(vs, LB_VSTAT_FWD_ERROR);
	lb_count_be(bs, LB_BSTAT_FWD_ERROR);
	return XDP_DROP;
}

/* Does the frame fit the MTU of backend be's device with an outer header of hdr bytes? -1 if it
 * does (or the device is unknown: left to the redirect); else what lb_too_big did, counted. who is
 * LB_TB_WHO(IPv6 frame, VIP id, backend id) with LB_WHO_TAGS: the VLAN tags, which the MTU does
 * not count. A frame within the MTU the control plane wrote into the backend (be->mtu) fits with
 * no helper call, which costs more than the rest of the check; any other frame, and every frame of
 * a backend whose MTU is not known, asks bpf_check_mtu, which decides (so an MTU raised since is
 * still used). Inlined into lb_forward, whose stack holds little. */
static __always_inline int lb_ipip_mtu(struct xdp_md *ctx, const struct lb_backend *be, __u32 hdr, __u32 who)
{
	__u32 mtu = 0;
	int tags = LB_WHO_TAGS_OF(who) * sizeof(struct vlan_hdr_);
	long len = (long)ctx->data_end - (long)ctx->data;
	asm volatile("" : "+r"(len)); /* a length, not pkt_end moved (which the verifier refuses) */
	if (len - (long)sizeof(struct ethhdr) - tags + (long)hdr <= be->mtu)
		return -1;
	if (bpf_check_mtu(ctx, be->ifindex, &mtu, (int)hdr - tags, 0) != BPF_MTU_CHK_RET_FRAG_NEEDED)
		return -1;
	return lb_too_big(ctx, mtu - hdr, who);
}

/* lb_forward's return: the verdict, with LB_FWD_SENT when the frame goes to the backend (the caller
 * counts it there, with the counters it holds). */
#define LB_FWD_SENT (1 << 8)
#define LB_FWD_VERDICT 0xff

/* Count a frame that could not be forwarded to backend bid of VIP vid. Global: the forwarding
 * path holds no counters of its own, and this is the rare path. */
__attribute__((noinline)) int lb_fwd_failed(__u32 vid, __u32 bid)
{
	__u32 zero = 0;
	struct lb_stats *st = bpf_map_lookup_elem(&mptcpx_lb_stats, &zero);
	struct lb_vip_stats *vs = bpf_map_lookup_elem(&mptcpx_lb_vstats, &vid);
	struct lb_backend_stats *bs = bpf_map_lookup_elem(&mptcpx_lb_bstats, &bid);

	lb_count(st, LB_STAT_FWD_ERROR);
	lb_count_vip(vs, LB_VSTAT_FWD_ERROR);
	lb_count_be(bs, LB_BSTAT_FWD_ERROR);
	return 0;
}

/* Send the frame to backend be by rewriting its MACs. */
static __always_inline int lb_fwd_l2(struct xdp_md *ctx, const struct lb_backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	if (be->ifindex == ctx->ingress_ifindex)
		return XDP_TX | LB_FWD_SENT;
	return bpf_redirect(be->ifindex, 0) | LB_FWD_SENT;
}

/* Send the frame to backend be inside an outer IPv4 or IPv6 header (the backend address's family)
 * to the backend's address. inner_len is the inner IP packet's length, tos its traffic class. */
static __always_inline int lb_fwd_ipip(struct xdp_md *ctx, const struct lb_backend *be, __u32 who,
				       __u32 inner_len, __u8 tos, __u32 hash)
{
	int inner_v6 = who & LB_TB_V6;
	int outer_v6 = !lb_is_v4mapped(be->addr);
	int hdr = outer_v6 ? (int)sizeof(struct ipv6hdr) : (int)sizeof(struct iphdr);
	__u8 proto = inner_v6 ? IPPROTO_IPV6_ : IPPROTO_IPIP_;

	/* The encapsulated frame must fit the egress device's MTU, or the device drops it (veth
	 * silently). Checked before growing the frame. A sender that forbids fragmentation learns the
	 * MTU left inside the tunnel from an ICMP error (path MTU discovery, RFC 1191 / RFC 8201); an
	 * IPv4 packet without DF, which a router would fragment, is passed to the stack untouched
	 * (the balancer fragments nothing, and its decapsulator reassembles nothing). An aggregate is
	 * no packet of the sender's: an ICMP error would give it a wrong MTU. An unknown ifindex
	 * (< 0) is left to the redirect, as before. */
	int verdict = lb_ipip_mtu(ctx, be, hdr, who);
	if (verdict >= 0)
		return verdict;
	if (inner_len + hdr > 0xffff || bpf_xdp_adjust_head(ctx, -hdr)) {
		lb_fwd_failed((who >> 16) & 0xff, who & 0xffff);
		return XDP_PASS;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ntags = LB_WHO_TAGS_OF(who);

	/* The VLAN tags (tag protocol and control words) move back to follow the MACs, ahead of the
	 * outer header that now overlaps where they were; the innermost EtherType becomes the outer
	 * header's. */
	for (__u32 i = 0; i < MAX_VLAN_TAGS; i++) {
		if (i >= ntags)
			break;
		__u32 *to = data + __builtin_offsetof(struct ethhdr, h_proto) + i * sizeof(struct vlan_hdr_);
		__u32 *from = (void *)to + hdr;
		if ((void *)(from + 1) > data_end)
			return XDP_ABORTED; /* unreachable: the frame just grew by this much */
		*to = *from;
	}
	void *l3 = data + sizeof(*eth) + ntags * sizeof(struct vlan_hdr_);
	__be16 *etype = l3 - sizeof(__be16);

	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED; /* unreachable: the frame just grew by this much */
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	if (outer_v6) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return XDP_ABORTED; /* unreachable: the frame just grew by this much */
		*etype = ETH_P_IPV6_BE;
		/* version 6, the inner traffic class, the 5-tuple's hash as flow label (ECMP entropy). */
		__u32 vtcfl = (6U << 28) | ((__u32)tos << 20) | (hash & 0xfffff);
		*(__be32 *)ip6 = bpf_htonl(vtcfl);
		ip6->payload_len = bpf_htons(inner_len);
		ip6->nexthdr = proto;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, be->src_addr, 16);
		__builtin_memcpy(&ip6->daddr, be->addr, 16);
	} else {
		struct iphdr *iph = l3;
		if ((void *)(iph + 1) > data_end)
			return XDP_ABORTED; /* unreachable: the frame just grew by this much */
		*etype = ETH_P_IP_BE;
		iph->version = 4;
		iph->ihl = 5;
		iph->tos = tos;
		iph->tot_len = bpf_htons(inner_len + sizeof(*iph));
		iph->id = 0;
		iph->frag_off = 0;
		iph->ttl = 64;
		iph->protocol = proto;
		iph->check = 0;
		__builtin_memcpy(&iph->saddr, be->src_addr + 12, 4);
		__builtin_memcpy(&iph->daddr, be->addr + 12, 4);
		iph->check = lb_ip4_csum(iph);
	}
	if (be->ifindex == ctx->ingress_ifindex)
		return XDP_TX | LB_FWD_SENT;
	return bpf_redirect(be->ifindex, 0) | LB_FWD_SENT;
}

/* lb_forward's who: LB_TB_WHO and the VIP's forwarding mode. */
#define LB_FWD_WHO_IPIP (1U << 30)

/* Send the frame to the backend, of the VIP, that who names (LB_TB_WHO, with LB_FWD_WHO_IPIP for an
 * ipip VIP: the balancer rewrites l2 frames itself, with lb_fwd_l2); inner_len is the IP packet's
 * length, tos its traffic class, hash the 5-tuple's. Returns
 * the verdict, with LB_FWD_SENT when the frame goes to the backend: the caller counts that, so that
 * the path of a forwarded frame looks no counter up here. Global, so verified once, not for every
 * way the balancer decided (verifiers before 6.4 otherwise walk it for each). */
__attribute__((noinline)) int lb_forward(struct xdp_md *ctx, __u32 who, __u32 inner_len, __u32 tos, __u32 hash)
{
	__u32 bid = who & 0xffff;
	struct lb_backend *be = bpf_map_lookup_elem(&mptcpx_backends, &bid);

	if (!be)
		return XDP_PASS; /* unreachable: the caller found the backend */
	/* Generic XDP runs after GRO: an aggregate forwarded whole would be refused by the egress
	 * device (longer than its MTU) or sent unsegmented. The stack gets it, counted. Native XDP
	 * never sees one: a frame longer than LB_WIRE_FRAME_MAX is one of a larger MTU there. */
	if ((long)ctx->data_end - (long)ctx->data > LB_WIRE_FRAME_MAX && lb_aggregate(ctx, who)) {
		__u32 zero = 0;
		lb_count(bpf_map_lookup_elem(&mptcpx_lb_stats, &zero), LB_STAT_AGGREGATE);
		return XDP_PASS;
	}
	if (who & LB_FWD_WHO_IPIP)
		return lb_fwd_ipip(ctx, be, who & ~LB_FWD_WHO_IPIP, inner_len, (__u8)tos, hash);
	return lb_fwd_l2(ctx, be);
}

SEC("xdp")
int mptcpx_lb(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct lb_stats *st = bpf_map_lookup_elem(&mptcpx_lb_stats, &zero);

	lb_count(st, LB_STAT_PACKETS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;

	struct lb_flow_key fk = {.proto = IPPROTO_TCP_};
	struct tcphdr *th;
	__u32 inner_len, ntags = 0, l4 = 0;
	__u8 tos;
	int v6;

	/* Untagged IPv4, and untagged IPv6 with TCP straight after its header, are read at constant
	 * offsets here: the commonest frames pay for no call and no laundered offset. Every other frame
	 * (VLAN tags, IPv6 extension headers, and whatever is not IP/TCP at all) is located by the
	 * shared parser (lb_parse); both paths check the IP header below alike. */
	__be16 proto = eth->h_proto;
	struct ipv6hdr *ip6q = (void *)(eth + 1);
	if (proto == ETH_P_IP_BE) {
		v6 = 0;
	} else if (proto == ETH_P_IPV6_BE && (void *)(ip6q + 1) <= data_end && ip6q->nexthdr == IPPROTO_TCP_) {
		v6 = 1;
		l4 = sizeof(*eth) + sizeof(*ip6q);
	} else {
		int r = lb_parse(ctx);
		if (r & LB_PARSE_PASS)
			return XDP_PASS;
		if (r & LB_PARSE_MALFORMED)
			goto malformed;
		v6 = !!(r & LB_PARSE_V6);
		ntags = (r >> LB_PARSE_TAGS_SHIFT) & LB_PARSE_TAGS_MASK;
		l4 = r & LB_PARSE_L4_MASK;
	}
	void *l3 = data + sizeof(*eth) + ntags * sizeof(struct vlan_hdr_);

	if (!v6) {
		struct iphdr *iph = l3;
		if ((void *)(iph + 1) > data_end)
			goto malformed;
		__u32 ihl = iph->ihl * 4;
		if (iph->version != 4 || ihl < sizeof(*iph) || (void *)iph + ihl > data_end)
			goto malformed;
		if (iph->protocol != IPPROTO_TCP_ || (iph->frag_off & IP_MF_OFFSET_BE))
			return XDP_PASS;
		inner_len = bpf_ntohs(iph->tot_len);
		/* A total length of 0 in a frame longer than any IPv4 length field can say is BIG TCP
		 * (an aggregate of generic XDP): its length is the frame's. */
		if (!inner_len) {
			long l3_len = data_end - (void *)iph;
			if (l3_len <= IP_MAX_LEN)
				goto malformed;
			inner_len = l3_len;
		} else if (inner_len < ihl + sizeof(*th) || (void *)iph + inner_len > data_end) {
			goto malformed;
		}
		th = (void *)iph + ihl;
		l4 = sizeof(*eth) + ntags * sizeof(struct vlan_hdr_) + ihl;
		tos = iph->tos;
		((__u32 *)fk.src)[2] = bpf_htonl(0xffff);
		((__u32 *)fk.src)[3] = iph->saddr;
		((__u32 *)fk.dst)[2] = bpf_htonl(0xffff);
		((__u32 *)fk.dst)[3] = iph->daddr;
	} else {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			goto malformed;
		if (ip6->version != 6)
			goto malformed;
		/* The extension headers (lb_parse walked them) are part of the payload. */
		__u32 ext = l4 - (sizeof(*eth) + ntags * sizeof(struct vlan_hdr_) + sizeof(*ip6));
		inner_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		/* Likewise a payload length of 0 (BIG TCP without a jumbo option). */
		if (inner_len == sizeof(*ip6)) {
			long l3_len = data_end - (void *)ip6;
			if (l3_len <= IP_MAX_LEN + (long)sizeof(*ip6))
				goto malformed;
			inner_len = l3_len;
		} else if (inner_len < sizeof(*ip6) + ext + sizeof(*th) || (void *)ip6 + inner_len > data_end) {
			goto malformed;
		}
		th = data + (l4 & LB_PARSE_L4_MASK);
		tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		__builtin_memcpy(fk.src, &ip6->saddr, 16);
		__builtin_memcpy(fk.dst, &ip6->daddr, 16);
	}

	/* The frame's shape, as lb_forward's who needs it: one value kept to the end, not two. */
	__u32 shape = LB_TB_WHO(v6, 0, 0) | LB_WHO_TAGS(ntags);

	if ((void *)(th + 1) > data_end)
		goto malformed;
	__u32 thl = th->doff * 4;
	if (thl < sizeof(*th) || (void *)th + thl > data_end)
		goto malformed;
	fk.sport = th->source;
	fk.dport = th->dest;

	struct lb_vip_key vk = {.port = th->dest, .proto = IPPROTO_TCP_};
	__builtin_memcpy(vk.addr, fk.dst, 16);
	struct lb_vip *vip = bpf_map_lookup_elem(&mptcpx_vips, &vk);
	if (!vip)
		return XDP_PASS;
	lb_count(st, LB_STAT_VIP);

	int syn = th->syn, ack = th->ack;
	int steering = vip->flags & LB_VIP_JOIN_STEERING;
	int opening = syn && !ack;
	struct lb_mp mp = {};
	lb_scan_opts(ctx, st, th, l4, syn, ack, steering && opening, &mp);

	/* Looked up after the option scan, and never NULL past here (the ids are below the maps'
	 * sizes: PutVIP checks), so that the verifier does not walk the scan, or what follows,
	 * once more for a NULL pointer. */
	__u32 vid = vip->id;
	/* The flow tables' key: the 5-tuple's first 24 bytes, with the VIP's id. */
	fk.vip_id = vid;
	struct lb_flow_id *fid = (struct lb_flow_id *)&fk;
	struct lb_vip_stats *vs = bpf_map_lookup_elem(&mptcpx_lb_vstats, &vid);
	if (!vs) {
		lb_count(st, LB_STAT_NO_BACKEND);
		return XDP_PASS;
	}
	lb_count_vip(vs, LB_VSTAT_PACKETS);

	__u64 now = lb_now();
	struct lb_backend *be = NULL;
	__u32 bid = 0, token = 0;
	__u32 placed = LB_BSTAT_MAX; /* the per-backend counter of how it was placed, if any */

	struct lb_backend_stats *bs = NULL;

	/* The common SYN, which opens a connection and steers no join, and whose 5-tuple no flow holds:
	 * Maglev's backend, stored with BPF_NOEXIST, which fails when the flow table has the 5-tuple.
	 * One walk of the flow table's bucket where the general path below takes two (its lookup, then
	 * the insert's). Any other case (a flow of that 5-tuple in either table, no backend, the rate
	 * guard refusing, or perhaps refusing) goes on below, which decides it as it would have without
	 * the shortcut. The guard admits the flow once it is stored: nothing runs on this CPU between
	 * lb_guard_would_admit and lb_guard_admit. */
	if (opening && !(steering && mp.kind == LB_MP_JOIN)) {
		if (!lb_phint_may_hold(fid) || !bpf_map_lookup_elem(&mptcpx_pflows, fid))
			be = lb_pick(vip, lb_flow_hash(&fk), &bid);
		if (be && lb_guard_would_admit(now)) {
			struct lb_flow nf = {.backend = bid, .last_ns = now, .flags = LB_FLOW_OPENED};
			if (!bpf_map_update_elem(&mptcpx_flows, fid, &nf, BPF_NOEXIST)) {
				lb_guard_admit(now, 0);
				bs = bpf_map_lookup_elem(&mptcpx_lb_bstats, &bid);
				lb_count(st, LB_STAT_NEW_FLOW);
				lb_count_vip(vs, LB_VSTAT_NEW_FLOW);
				lb_count_be(bs, LB_BSTAT_NEW_FLOW);
				goto forward;
			}
		}
		be = NULL;
		bid = 0;
	}

	/* The flow table (Maglev can find these again), then the protected one (steered joins, flows
	 * of draining backends). */
	struct lb_flow *f = bpf_map_lookup_elem(&mptcpx_flows, fid);
	int prot = 0;
	if (!f) {
		f = bpf_map_lookup_elem(&mptcpx_pflows, fid);
		prot = f != NULL;
	}
	/* A packet of a known flow follows it. A SYN never re-places a flow that holds a live token,
	 * nor clears the token (a spoofed SYN with a subflow's 5-tuple): a plain SYN follows the flow,
	 * a join SYN of another token is judged as a join (an unknown one dropped by policy) but
	 * stores nothing. That connection's own join again (retransmitted) is steered as before. Any
	 * other SYN opens a connection: Maglev decides, whatever a stale entry of a reused 5-tuple
	 * says (as Katran). */
	int follow = 0, guard = 0;
	if (f) {
		/* Read here, right under the test of f: clang may fuse the tests below into one flag
		 * (f == NULL | !opening), whose bounds Linux 6.1's verifier loses, and would then see a
		 * read of f on the way where f is NULL. */
		__u32 ftok = f->token, fbe = f->backend;
		asm volatile("" : "+r"(ftok), "+r"(fbe));
		if (!opening) {
			follow = 1;
		} else if (ftok && !(mp.kind == LB_MP_JOIN && mp.token == ftok)) {
			struct lb_token_key tk = {.vip_id = vip->id, .token = ftok};
			struct lb_token *t = bpf_map_lookup_elem(&mptcpx_tokens, &tk);
			guard = t && t->backend == fbe;
			follow = guard && !(steering && mp.kind == LB_MP_JOIN);
		}
	}
	if (follow) {
		bid = f->backend;
		be = lb_backend_usable(bid, 0);
	}

	int insert = 0; /* 1: a new flow for the flow table, 2: for the protected table */
	int late = 0;   /* a third ACK placed late: its token is learned, its flow stored */
	int hit = be != NULL;
	__u32 nflags = LB_FLOW_OPENED;
	if (hit) {
		/* An established flow: refresh it, and now and then its connection's token. */
		lb_count(st, LB_STAT_FLOW_HIT);
		/* Written once per LB_LAST_NS_GRAIN at most: on a stream of packets the flow's cache
		 * line is only read, so CPUs that share a flow do not pass it to and fro. */
		if (lb_age(now, f->last_ns) >= LB_LAST_NS_GRAIN)
			f->last_ns = now;
		token = f->token;
		/* The token table is read only when the flow cannot tell that the token is fresh: its
		 * tok_seen is the token's last_ns when this flow last read it, and last_ns only grows,
		 * so a token stale now was seen at least as long ago (see LB_TOK_SEEN_SHIFT): what is
		 * refreshed, and when, is as if the table were read on every packet. */
		if (token && steering && mp.kind != LB_MP_KEYS &&
		    (__u32)(now >> LB_TOK_SEEN_SHIFT) - f->tok_seen >=
			    (__u32)(lb_token_refresh_ns >> LB_TOK_SEEN_SHIFT)) {
			struct lb_token_key tk = {.vip_id = vip->id, .token = token};
			struct lb_token *t = bpf_map_lookup_elem(&mptcpx_tokens, &tk);
			if (t && t->backend == bid) {
				if (lb_age(now, t->last_ns) > lb_token_refresh_ns)
					t->last_ns = now;
				f->tok_seen = t->last_ns >> LB_TOK_SEEN_SHIFT;
			}
		}
		/* A draining backend's flow cannot be found by Maglev again: protect it. */
		if (!prot && (be->flags & LB_BACKEND_DRAINING)) {
			struct lb_flow pf = *f;
			struct lb_flow *pp = NULL;
			lb_phint_mark(fid);
			if (bpf_map_update_elem(&mptcpx_pflows, fid, &pf, BPF_NOEXIST))
				lb_count(st, LB_STAT_INSERT_FAILED);
			else
				pp = bpf_map_lookup_elem(&mptcpx_pflows, fid);
			if (pp) {
				/* What this packet changes below (a token learned) goes to the copy. */
				bpf_map_delete_elem(&mptcpx_flows, fid);
				f = pp;
				prot = 1;
			}
		}
	} else if (steering && mp.kind == LB_MP_JOIN) {
		struct lb_token_key tk = {.vip_id = vip->id, .token = mp.token};
		struct lb_token *t = mp.token ? bpf_map_lookup_elem(&mptcpx_tokens, &tk) : NULL;
		if (t) {
			bid = t->backend;
			be = lb_backend_usable(bid, 0);
		}
		if (be) {
			token = mp.token;
			lb_count(st, LB_STAT_JOIN_STEERED);
			lb_count_vip(vs, LB_VSTAT_JOIN_STEERED);
			placed = LB_BSTAT_JOIN_STEERED;
			lb_emit(st, LB_EV_JOIN_STEERED, token, bid, 0, &fk, now);
			insert = 2;
		} else {
			lb_count(st, LB_STAT_JOIN_UNKNOWN);
			lb_emit(st, LB_EV_JOIN_UNKNOWN, mp.token, 0, 0, &fk, now);
			if (vip->unknown_join == LB_JOIN_PASS) {
				lb_count_vip(vs, LB_VSTAT_JOIN_UNKNOWN_PASS);
				return XDP_PASS;
			}
			if (vip->unknown_join != LB_JOIN_HASH) {
				lb_count(st, LB_STAT_JOIN_DROPPED);
				lb_count_vip(vs, LB_VSTAT_JOIN_UNKNOWN_DROP);
				return XDP_DROP;
			}
			lb_count_vip(vs, LB_VSTAT_JOIN_UNKNOWN_HASH);
			be = lb_pick(vip, lb_flow_hash(&fk), &bid);
			placed = LB_BSTAT_JOIN_HASHED;
			insert = 1;
		}
		nflags |= LB_FLOW_LEARNED; /* a join carries no key */
		if (guard)
			insert = 0;
	} else {
		be = lb_pick(vip, lb_flow_hash(&fk), &bid);
		if (be && opening) {
			lb_count(st, LB_STAT_NEW_FLOW);
			lb_count_vip(vs, LB_VSTAT_NEW_FLOW);
			placed = LB_BSTAT_NEW_FLOW;
			insert = 1;
		} else if (be) {
			/* A non-SYN miss (a flow lost or never seen, or a spoofed packet): forwarded by
			 * Maglev, nothing stored, so that no flood of them evicts anything; but for the
			 * third ACK of a flow the rate guard did not store, placed late (lb_guard_admit). */
			lb_count(st, LB_STAT_NONSYN_MISS);
			if (steering && mp.kind == LB_MP_KEYS && lb_guard_admit(now, 1)) {
				lb_count(st, LB_STAT_LATE_LEARN);
				late = 1;
				insert = 1;
				nflags |= LB_FLOW_LEARNED;
			}
		}
	}
	if (!be) {
		lb_count(st, LB_STAT_NO_BACKEND);
		lb_count_vip(vs, LB_VSTAT_NO_BACKEND);
		return XDP_PASS;
	}
	/* Never NULL: bid indexed the backend table, of the same size. */
	bs = bpf_map_lookup_elem(&mptcpx_lb_bstats, &bid);
	if (!bs) {
		lb_count(st, LB_STAT_NO_BACKEND);
		lb_count_vip(vs, LB_VSTAT_NO_BACKEND);
		return XDP_PASS;
	}
	lb_count_be(bs, placed);

	/* A new flow over the rate guard's limit is forwarded, not stored; a stale entry of its 5-tuple
	 * goes, so that its packets follow Maglev as the SYN did. */
	if (insert == 1 && !late && !lb_guard_admit(now, 0)) {
		lb_count(st, LB_STAT_GUARDED);
		lb_count_vip(vs, LB_VSTAT_GUARDED);
		insert = 0;
		if (f)
			bpf_map_delete_elem(prot ? (void *)&mptcpx_pflows : (void *)&mptcpx_flows, fid);
	}

	/* A token is learned on a flow whose SYN the balancer placed, once; or on a third ACK placed
	 * late (the rate guard did not store its SYN). */
	int learn = late;
	if (hit && steering && mp.kind == LB_MP_KEYS && (f->flags & LB_FLOW_OPENED) &&
	    !(f->flags & LB_FLOW_LEARNED) && !f->token) {
		f->flags |= LB_FLOW_LEARNED;
		learn = 1;
	}
	if (learn) {
		__u32 learned = lb_learn(st, vs, bs, vip, mp.rkey, bid, &fk, now);
		if (late)
			token = learned;
		else if (learned)
			f->token = learned;
	}
	if (insert) {
		struct lb_flow nf = {.backend = bid, .token = token, .last_ns = now, .flags = nflags};
		/* The flow table is LRU: a full one evicts its least recently used flow (Maglev finds
		 * it again). The protected one refuses when full: counted, the packet still goes. */
		long err;
		if (insert == 2) {
			lb_phint_mark(fid);
			err = bpf_map_update_elem(&mptcpx_pflows, fid, &nf, BPF_ANY);
			if (!err && f && !prot)
				bpf_map_delete_elem(&mptcpx_flows, fid);
		} else {
			err = bpf_map_update_elem(&mptcpx_flows, fid, &nf, BPF_ANY);
			if (!err && prot)
				bpf_map_delete_elem(&mptcpx_pflows, fid);
		}
		if (err)
			lb_count(st, LB_STAT_INSERT_FAILED);
	}

forward:;
	int ret;
	if (vip->forward == LB_FWD_IPIP) {
		/* The hash is the outer IPv6 header's flow label; an outer IPv4 header has none. */
		__u32 hash = lb_is_v4mapped(be->addr) ? 0 : lb_flow_hash(&fk);
		ret = lb_forward(ctx, LB_TB_WHO(0, vid, bid) | shape | LB_FWD_WHO_IPIP, inner_len, tos, hash);
		if (ret & LB_FWD_SENT)
			lb_count(st, LB_STAT_FWD_IPIP);
	} else {
		/* l2 here, not in lb_forward: a rewrite of two addresses costs less than the call. */
		if ((long)ctx->data_end - (long)ctx->data > LB_WIRE_FRAME_MAX && lb_aggregate(ctx, shape)) {
			lb_count(st, LB_STAT_AGGREGATE);
			return XDP_PASS;
		}
		ret = lb_fwd_l2(ctx, be);
		if (ret & LB_FWD_SENT)
			lb_count(st, LB_STAT_FWD_L2);
	}
	if (ret & LB_FWD_SENT)
		lb_count_be(bs, LB_BSTAT_FORWARDED);
	return ret & LB_FWD_VERDICT;

malformed:
	lb_count(st, LB_STAT_MALFORMED);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
