// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* ref_lb.c — the reference L4 balancer of the refbench benchmark, and the benchmark's sink.
 *
 * rb_ref_lb does what any XDP L4 balancer must for a TCP packet to a VIP, and nothing else: parse
 * Ethernet, IPv4 or IPv6 (no options walked, no extension headers) and TCP; look the VIP up; look
 * the 5-tuple up in an LRU flow table, or, on a SYN (and on a miss), take the backend of the VIP's
 * consistent-hash ring at the 5-tuple's hash, and remember it on a SYN; rewrite the MACs (l2) or
 * put an outer IPv4/IPv6 header in front (ipip); XDP_TX. No TCP options are read, no counters kept.
 * The hash is Linux's jhash2 over the same 40-byte key as mptcp-xdp's balancer, so that both place
 * a new flow alike (pkg/lb.FlowHash computes it in Go).
 *
 * rb_ref_lb_redir is the same balancer for a lab whose backends sit behind other interfaces than
 * the one the packet came in on (internal/lablb): it sends each frame out of its backend's ifindex
 * with bpf_redirect (XDP_TX when that is the ingress interface), as mptcp-xdp's balancer does.
 * rb_ref_lb ignores the ifindex and always XDP_TXes (the refbench veth pair's one interface).
 *
 * rb_floor forwards every frame to backend 1 (MAC rewrite): the cost of any XDP_TX program here.
 *
 * rb_sink runs on the sender's end of the veth: it counts every frame that comes back by (dst MAC,
 * outer destination address if the frame is IP-in-IP or IP-in-IPv6) and drops it. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define RB_MAX_VIPS 8
#define RB_RING_SIZE 65537
#define RB_MAX_BACKENDS 64
#ifndef RB_MAX_FLOWS
#define RB_MAX_FLOWS (1 << 20)
#endif
#define RB_MAX_SINK_KEYS 256

#define RB_IPPROTO_TCP 6
#define RB_IPPROTO_IPIP 4
#define RB_IPPROTO_IPV6 41

enum rb_forward {
	RB_FWD_L2 = 0,
	RB_FWD_IPIP = 1,
};

struct rb_vip_key {
	__u8 addr[16]; /* IPv4 as v4-mapped IPv6 */
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct rb_vip {
	__u32 id;      /* ring index, < RB_MAX_VIPS */
	__u32 forward; /* enum rb_forward */
};

struct rb_backend {
	__u8 mac[6];
	__u8 src_mac[6];
	__u8 addr[16];     /* outer destination (ipip); v4-mapped for IPv4 */
	__u8 src_addr[16]; /* outer source */
	__u32 outer_v6;    /* 1: outer IPv6 header */
	__u32 ifindex;     /* egress device of rb_ref_lb_redir */
};

struct rb_flow_key {
	__u8 src[16];
	__u8 dst[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct rb_sink_key {
	__u8 mac[6];
	__u8 pad[2];
	__u8 addr[16]; /* outer destination (v4-mapped for IPv4); zero for a frame that is not IP-in-IP */
};

const volatile __u32 rb_hash_seed = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RB_MAX_VIPS * 4);
	__type(key, struct rb_vip_key);
	__type(value, struct rb_vip);
} rb_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RB_MAX_VIPS * RB_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} rb_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct rb_backend);
} rb_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, RB_MAX_FLOWS);
	__type(key, struct rb_flow_key);
	__type(value, __u32); /* backend id */
} rb_flows SEC(".maps");

/* The sink's counters: the Go side puts a zero for every key it expects; anything else goes to
 * rb_sink_other (index 0: frames of no expected key, 1: runts). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, RB_MAX_SINK_KEYS);
	__type(key, struct rb_sink_key);
	__type(value, __u64);
} rb_sink_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} rb_sink_other SEC(".maps");

static __always_inline __u32 rb_rol32(__u32 x, int s)
{
	return (x << s) | (x >> (32 - s));
}

/* Bob Jenkins' lookup3 (as Linux's jhash2) over the ten words of the flow key. */
static __always_inline __u32 rb_hash(const struct rb_flow_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 a = 0xdeadbeef + (10 << 2) + rb_hash_seed, b = a, c = a;

#pragma unroll
	for (int i = 0; i < 9; i += 3) {
		a += w[i];
		b += w[i + 1];
		c += w[i + 2];
		a -= c; a ^= rb_rol32(c, 4); c += b;
		b -= a; b ^= rb_rol32(a, 6); a += c;
		c -= b; c ^= rb_rol32(b, 8); b += a;
		a -= c; a ^= rb_rol32(c, 16); c += b;
		b -= a; b ^= rb_rol32(a, 19); a += c;
		c -= b; c ^= rb_rol32(b, 4); b += a;
	}
	a += w[9];
	c ^= b; c -= rb_rol32(b, 14);
	a ^= c; a -= rb_rol32(c, 11);
	b ^= a; b -= rb_rol32(a, 25);
	c ^= b; c -= rb_rol32(b, 16);
	a ^= c; a -= rb_rol32(c, 4);
	b ^= a; b -= rb_rol32(a, 14);
	c ^= b; c -= rb_rol32(b, 24);
	return c;
}

static __always_inline __u16 rb_ip4_csum(const struct iphdr *iph)
{
	const __u16 *p = (const __u16 *)iph;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)(sizeof(*iph) / 2); i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* How a forwarded frame leaves: XDP_TX, or (redirect) out of the backend's device. */
static __always_inline int rb_out(struct xdp_md *ctx, const struct rb_backend *be, int redirect)
{
	if (!redirect || be->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(be->ifindex, 0);
}

/* The balancer; redirect is a constant, so each program compiles to its own straight code. */
static __always_inline int rb_balance(struct xdp_md *ctx, int redirect)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct rb_flow_key fk = {.proto = RB_IPPROTO_TCP};
	struct tcphdr *th;
	__u32 inner_len;
	__u8 tos;
	int v6;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end || iph->ihl != 5 || iph->protocol != RB_IPPROTO_TCP ||
		    (iph->frag_off & bpf_htons(0x3fff)))
			return XDP_PASS;
		th = (void *)(iph + 1);
		inner_len = bpf_ntohs(iph->tot_len);
		tos = iph->tos;
		v6 = 0;
		((__u32 *)fk.src)[2] = bpf_htonl(0xffff);
		((__u32 *)fk.src)[3] = iph->saddr;
		((__u32 *)fk.dst)[2] = bpf_htonl(0xffff);
		((__u32 *)fk.dst)[3] = iph->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != RB_IPPROTO_TCP)
			return XDP_PASS;
		th = (void *)(ip6 + 1);
		inner_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		v6 = 1;
		__builtin_memcpy(fk.src, &ip6->saddr, 16);
		__builtin_memcpy(fk.dst, &ip6->daddr, 16);
	} else {
		return XDP_PASS;
	}
	if ((void *)(th + 1) > data_end)
		return XDP_PASS;
	fk.sport = th->source;
	fk.dport = th->dest;

	struct rb_vip_key vk = {.port = th->dest, .proto = RB_IPPROTO_TCP};
	__builtin_memcpy(vk.addr, fk.dst, 16);
	struct rb_vip *vip = bpf_map_lookup_elem(&rb_vips, &vk);
	if (!vip)
		return XDP_PASS;

	__u32 bid = 0, hash = 0;
	int syn = th->syn && !th->ack;
	__u32 *fb = syn ? NULL : bpf_map_lookup_elem(&rb_flows, &fk);
	if (fb) {
		bid = *fb;
	} else {
		hash = rb_hash(&fk);
		__u32 slot = vip->id * RB_RING_SIZE + hash % RB_RING_SIZE;
		__u32 *rb = bpf_map_lookup_elem(&rb_ring, &slot);
		if (!rb)
			return XDP_PASS;
		bid = *rb;
		if (syn)
			bpf_map_update_elem(&rb_flows, &fk, &bid, BPF_ANY);
	}
	struct rb_backend *be = bpf_map_lookup_elem(&rb_backends, &bid);
	if (!be)
		return XDP_PASS;

	if (vip->forward == RB_FWD_L2) {
		__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
		return rb_out(ctx, be, redirect);
	}

	/* ipip: room for the outer header in front of the inner IP packet. */
	int outer_v6 = be->outer_v6;
	int hdr = outer_v6 ? (int)sizeof(struct ipv6hdr) : (int)sizeof(struct iphdr);
	if (!hash && outer_v6)
		hash = rb_hash(&fk); /* the flow label's entropy, as mptcp-xdp's */
	if (bpf_xdp_adjust_head(ctx, -hdr))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if (outer_v6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_ABORTED;
		__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = bpf_htonl((6U << 28) | ((__u32)tos << 20) | (hash & 0xfffff));
		ip6->payload_len = bpf_htons(inner_len);
		ip6->nexthdr = v6 ? RB_IPPROTO_IPV6 : RB_IPPROTO_IPIP;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, be->src_addr, 16);
		__builtin_memcpy(&ip6->daddr, be->addr, 16);
		return rb_out(ctx, be, redirect);
	}
	struct iphdr *iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	iph->version = 4;
	iph->ihl = 5;
	iph->tos = tos;
	iph->tot_len = bpf_htons(inner_len + sizeof(*iph));
	iph->id = 0;
	iph->frag_off = 0;
	iph->ttl = 64;
	iph->protocol = v6 ? RB_IPPROTO_IPV6 : RB_IPPROTO_IPIP;
	iph->check = 0;
	__builtin_memcpy(&iph->saddr, be->src_addr + 12, 4);
	__builtin_memcpy(&iph->daddr, be->addr + 12, 4);
	iph->check = rb_ip4_csum(iph);
	return rb_out(ctx, be, redirect);
}

SEC("xdp")
int rb_ref_lb(struct xdp_md *ctx)
{
	return rb_balance(ctx, 0);
}

SEC("xdp")
int rb_ref_lb_redir(struct xdp_md *ctx)
{
	return rb_balance(ctx, 1);
}

/* The floor: what any XDP_TX program costs here (dispatch, the statistics' clock reads): every
 * frame's MACs rewritten to backend 1's, XDP_TX. */
SEC("xdp")
int rb_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 id = 1;
	struct rb_backend *be = bpf_map_lookup_elem(&rb_backends, &id);

	if ((void *)(eth + 1) > data_end || !be)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	return XDP_TX;
}

static __always_inline void rb_sink_other_add(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&rb_sink_other, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

SEC("xdp")
int rb_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct rb_sink_key k = {};

	if ((void *)(eth + 1) > data_end) {
		rb_sink_other_add(1);
		return XDP_DROP;
	}
	__builtin_memcpy(k.mac, eth->h_dest, ETH_ALEN);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end) {
			rb_sink_other_add(1);
			return XDP_DROP;
		}
		if (iph->protocol == RB_IPPROTO_IPIP || iph->protocol == RB_IPPROTO_IPV6) {
			((__u32 *)k.addr)[2] = bpf_htonl(0xffff);
			((__u32 *)k.addr)[3] = iph->daddr;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end) {
			rb_sink_other_add(1);
			return XDP_DROP;
		}
		if (ip6->nexthdr == RB_IPPROTO_IPIP || ip6->nexthdr == RB_IPPROTO_IPV6)
			__builtin_memcpy(k.addr, &ip6->daddr, 16);
	}
	__u64 *c = bpf_map_lookup_elem(&rb_sink_counts, &k);
	if (c)
		__sync_fetch_and_add(c, 1);
	else
		rb_sink_other_add(0);
	return XDP_DROP;
}

char __license[] SEC("license") = "Dual BSD/GPL";
