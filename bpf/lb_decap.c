// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lb_decap.c — the backend side of the balancer's ipip mode, for kernels without ipip/ip6tnl
 * drivers: at XDP, strips an outer IPv4 or IPv6 header carrying IPv4 (IPIP, 4) or IPv6 (41) addressed
 * to one of this host's addresses (mptcpx_dc_addrs, or any with lb_decap_any_dst), sets the
 * Ethernet type to the inner packet's, and passes the inner packet up the stack. Everything else
 * passes untouched. Outer headers with IPv4 options or IPv6 extension headers, and outer fragments,
 * are left to the stack.
 *
 * The inner packet reaches the stack as a fresh frame (CHECKSUM_NONE): its TCP checksum is verified
 * in software, so it must be complete on the wire (in veth labs, turn TX checksum offload off on
 * the client, see DESIGN.md). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "include/mx_consts.h"
#include "include/mx_lb_types.h"

#define IP_MF_OFFSET_BE bpf_htons(0x3fff)
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

#ifndef LB_DECAP_MAX_ADDRS
#define LB_DECAP_MAX_ADDRS 256
#endif

/* Decapsulate whatever the outer destination (else only to an address of mptcpx_dc_addrs). */
const volatile __u8 lb_decap_any_dst = 0;

/* This host's addresses (IPv4 as ::ffff:a.b.c.d) -> unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_DECAP_MAX_ADDRS);
	__type(key, __u8[16]);
	__type(value, __u32);
} mptcpx_dc_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_stats);
} mptcpx_dc_stats SEC(".maps");

static __always_inline void dc_count(struct lb_stats *st, __u32 stat)
{
	if (st && stat < LB_STAT_MAX)
		st->count[stat]++;
}

static __always_inline int dc_ours(const __u8 addr[16])
{
	return lb_decap_any_dst || bpf_map_lookup_elem(&mptcpx_dc_addrs, addr);
}

SEC("xdp")
int mptcpx_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct lb_stats *st = bpf_map_lookup_elem(&mptcpx_dc_stats, &zero);

	dc_count(st, LB_STAT_PACKETS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;

	__u8 dst[16] = {};
	__u8 inner;
	int outer;

	if (eth->h_proto == ETH_P_IP_BE) {
		struct iphdr *iph = (void *)(eth + 1);
		if ((void *)(iph + 1) > data_end)
			return XDP_PASS;
		if (iph->protocol != IPPROTO_IPIP_ && iph->protocol != IPPROTO_IPV6_)
			return XDP_PASS;
		if (iph->version != 4 || iph->ihl != 5 || (iph->frag_off & IP_MF_OFFSET_BE))
			return XDP_PASS;
		((__u32 *)dst)[2] = bpf_htonl(0xffff);
		((__u32 *)dst)[3] = iph->daddr;
		inner = iph->protocol;
		outer = sizeof(*iph);
	} else if (eth->h_proto == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		if (ip6->version != 6 || (ip6->nexthdr != IPPROTO_IPIP_ && ip6->nexthdr != IPPROTO_IPV6_))
			return XDP_PASS;
		__builtin_memcpy(dst, &ip6->daddr, 16);
		inner = ip6->nexthdr;
		outer = sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	if (!dc_ours(dst))
		return XDP_PASS;

	/* The inner header must be what the outer one says it is. */
	__u8 *in = (void *)(eth + 1) + outer;
	if ((void *)(in + 1) > data_end || (in[0] >> 4) != (inner == IPPROTO_IPIP_ ? 4 : 6)) {
		dc_count(st, LB_STAT_MALFORMED);
		return XDP_PASS;
	}

	struct ethhdr e;
	__builtin_memcpy(&e, eth, sizeof(e));
	e.h_proto = inner == IPPROTO_IPIP_ ? ETH_P_IP_BE : ETH_P_IPV6_BE;
	if (bpf_xdp_adjust_head(ctx, outer)) {
		dc_count(st, LB_STAT_MALFORMED);
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED; /* unreachable: the frame held the inner header */
	__builtin_memcpy(eth, &e, sizeof(e));
	dc_count(st, LB_STAT_DECAP);
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
