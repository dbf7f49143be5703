// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc_egress.c — counts MPTCP options sent, at TC egress, per wire segment. */
#include "include/mx_tc.h"

SEC("tc")
int mptcpx_tc_out(struct __sk_buff *skb)
{
	mx_tc_count(skb, MX_DIR_EGRESS);
	return TC_ACT_UNSPEC; /* pass on to the next program or filter, untouched */
}

char __license[] SEC("license") = "Dual BSD/GPL";
