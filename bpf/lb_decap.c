// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lb_decap.c — the backend side of the balancer's ipip mode, for kernels without ipip/ip6tnl
 * drivers: at XDP, strips an outer IPv4 or IPv6 header carrying IPv4 (IPIP, 4) or IPv6 (41), sets
 * the Ethernet type to the inner packet's, and passes the inner packet up the stack — only when the
 * outer destination is one of this host's addresses and the outer source one of the balancers'
 * (both in mptcpx_dc_addrs; any destination with lb_decap_any_dst), and the inner packet is an
 * unfragmented TCP segment to a VIP (mptcpx_dc_vips; IPv4 options and IPv6 extension headers read by
 * the shared parser, mx_parse_ip). An outer packet refused for any of these is
 * counted (struct lb_decap_stats) and passed untouched: the stack, which has no tunnel for it,
 * discards it. Everything else passes untouched too. Outer headers with IPv4 options or IPv6
 * extension headers, and outer fragments, are left to the stack.
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
#include "include/mx_parse.h"

#define IP_MF_OFFSET_BE bpf_htons(0x3fff)
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41

#ifndef LB_DECAP_MAX_ADDRS
#define LB_DECAP_MAX_ADDRS 1024
#endif
#ifndef LB_DECAP_MAX_VIPS
#define LB_DECAP_MAX_VIPS 1024
#endif

/* Decapsulate whatever the outer destination (else only to an LB_DC_ADDR_LOCAL address). Packet
 * tests only: the loader never sets it. */
const volatile __u8 lb_decap_any_dst = 0;

/* This host's addresses and the balancers' source addresses (IPv4 as ::ffff:a.b.c.d) -> what they
 * are (enum lb_dc_addr_flags). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_DECAP_MAX_ADDRS);
	__type(key, __u8[16]);
	__type(value, enum lb_dc_addr_flags);
} mptcpx_dc_addrs SEC(".maps");

/* The inner destinations accepted: VIP address, TCP port (0: every port), IPPROTO_TCP -> unused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_DECAP_MAX_VIPS);
	__type(key, struct lb_vip_key);
	__type(value, __u32);
} mptcpx_dc_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_decap_stats);
} mptcpx_dc_stats SEC(".maps");

/* Per-CPU scratch word through which the inner IPv6 extension headers' offsets are laundered (see
 * mx_launder16 in mx_parse.h). Never pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} mptcpx_dc_scr SEC(".maps");

/* Whether addr is in mptcpx_dc_addrs with flag. */
static __always_inline int dc_addr_is(const __u8 addr[16], __u32 flag)
{
	__u32 *f = bpf_map_lookup_elem(&mptcpx_dc_addrs, addr);
	return f && (*f & flag);
}

/* Whether the inner packet at offset off of the frame (IP version v) is a TCP segment to a VIP:
 * MX_IP_DST_TCP if so, else why not (a TCP segment to no VIP is MX_IP_DST_OTHER). */
static __always_inline int dc_inner_ok(void *data, void *data_end, __u32 off, int v)
{
	struct lb_vip_key vk = {.proto = IPPROTO_TCP_};
	__be16 port;
	__u32 zero = 0;
	__u32 *scr = bpf_map_lookup_elem(&mptcpx_dc_scr, &zero);
	if (!scr)
		return MX_IP_DST_MALFORMED; /* unreachable: a one-entry array */
	int st = mx_ip_tcp_dst(data, data_end, off, v, (__u16 *)scr, vk.addr, &port);
	if (st != MX_IP_DST_TCP)
		return st;
	vk.port = port;
	if (bpf_map_lookup_elem(&mptcpx_dc_vips, &vk))
		return MX_IP_DST_TCP;
	vk.port = 0;
	if (bpf_map_lookup_elem(&mptcpx_dc_vips, &vk))
		return MX_IP_DST_TCP;
	return MX_IP_DST_OTHER;
}

SEC("xdp")
int mptcpx_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct lb_decap_stats *st = bpf_map_lookup_elem(&mptcpx_dc_stats, &zero);
	if (!st)
		return XDP_PASS; /* unreachable: a one-entry array */

	st->packets++;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;

	__u8 src[16] = {}, dst[16] = {};
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
		((__u32 *)src)[2] = bpf_htonl(0xffff);
		((__u32 *)src)[3] = iph->saddr;
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
		__builtin_memcpy(src, &ip6->saddr, 16);
		__builtin_memcpy(dst, &ip6->daddr, 16);
		inner = ip6->nexthdr;
		outer = sizeof(*ip6);
	} else {
		return XDP_PASS;
	}
	if (!lb_decap_any_dst && !dc_addr_is(dst, LB_DC_ADDR_LOCAL)) {
		st->refused_dst++;
		return XDP_PASS;
	}
	if (!dc_addr_is(src, LB_DC_ADDR_BALANCER)) {
		st->refused_source++;
		return XDP_PASS;
	}

	/* The inner header must be what the outer one says it is, and go to a VIP. */
	int v = inner == IPPROTO_IPIP_ ? 4 : 6;
	__u8 *in = (void *)(eth + 1) + outer;
	if ((void *)(in + 1) > data_end || (in[0] >> 4) != v) {
		st->malformed++;
		return XDP_PASS;
	}
	switch (dc_inner_ok(data, data_end, sizeof(*eth) + outer, v)) {
	case MX_IP_DST_TCP:
		break;
	case MX_IP_DST_OTHER:
		st->refused_inner++;
		return XDP_PASS;
	default:
		st->malformed++;
		return XDP_PASS;
	}

	struct ethhdr e;
	__builtin_memcpy(&e, eth, sizeof(e));
	e.h_proto = inner == IPPROTO_IPIP_ ? ETH_P_IP_BE : ETH_P_IPV6_BE;
	if (bpf_xdp_adjust_head(ctx, outer)) {
		st->malformed++;
		return XDP_PASS;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED; /* unreachable: the frame held the inner header */
	__builtin_memcpy(eth, &e, sizeof(e));
	st->decap++;
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
