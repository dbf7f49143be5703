// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc_ingress.c — counts MPTCP options received, at TC ingress, where XDP cannot be used. */
#include "include/mx_tc.h"

SEC("tc")
int mptcpx_tc_in(struct __sk_buff *skb)
{
	mx_tc_count(skb, MX_DIR_INGRESS);
	return TC_ACT_UNSPEC; /* pass on to the next program or filter, untouched */
}

char __license[] SEC("license") = "Dual BSD/GPL";
