/* mx_consts.h — protocol numbers, limits and precomputed big-endian constants. */
#pragma once

#include <linux/types.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP_BE bpf_htons(0x0800)
#define ETH_P_IPV6_BE bpf_htons(0x86DD)
#define ETH_P_8021Q_BE bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)
#define IP_OFFSET_MASK_BE bpf_htons(0x1FFF)
#define IP_MF_BE bpf_htons(0x2000)
#define IP6_OFFSET_MASK_BE bpf_htons(0xFFF8)

#define IPPROTO_HOPOPTS_ 0
#define IPPROTO_TCP_ 6
#define IPPROTO_ROUTING_ 43
#define IPPROTO_FRAGMENT_ 44
#define IPPROTO_AH_ 51
#define IPPROTO_DSTOPTS_ 60

#define TCPOPT_EOL_ 0
#define TCPOPT_NOP_ 1
#define TCPOPT_MPTCP 30

/* MPTCP option subtypes (RFC 8684). */
#define MPTCPOPT_MP_CAPABLE 0
#define MPTCPOPT_MP_JOIN 1
#define MPTCPOPT_DSS 2
#define MPTCPOPT_ADD_ADDR 3
#define MPTCPOPT_RM_ADDR 4
#define MPTCPOPT_MP_PRIO 5
#define MPTCPOPT_MP_FAIL 6
#define MPTCPOPT_MP_FASTCLOSE 7
#define MPTCPOPT_MP_TCPRST 8

/* DSS flags. */
#define DSS_DATA_ACK 0x01
#define DSS_ACK64 0x02
#define DSS_MAPPING 0x04
#define DSS_DSN64 0x08

#define ADD_ADDR_ECHO 0x01

/* Limits, overridable at build time. */
#ifndef MAX_VLAN_TAGS
#define MAX_VLAN_TAGS 2
#endif
#ifndef MAX_IPV6_EXT_HDRS
#define MAX_IPV6_EXT_HDRS 8
#endif
/* TCP options occupy at most 40 bytes; every option is at least one byte. */
#define TCP_OPTIONS_MAX_LEN 40
#ifndef MAX_TCP_OPTIONS
#define MAX_TCP_OPTIONS TCP_OPTIONS_MAX_LEN
#endif
/* How much of an skb TC programs make linear before parsing. */
#ifndef TC_PULL_LEN
#define TC_PULL_LEN 256
#endif
/* Deepest TCP header offset walked (Ethernet, VLANs, IPv6 and its extension headers). A frame whose
 * TCP header lies deeper is counted malformed: we cannot see it. */
#ifndef MAX_L4_OFFSET
#define MAX_L4_OFFSET 1024
#endif
