// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_ingress.c — counts MPTCP options of every frame received, at the XDP hook. Always XDP_PASS. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* XDP parses a frame once, so it counts as it parses (see mx_add). */
#define MX_COUNT_DIRECT 1
#include "include/mx_parse.h"
#include "include/mx_maps.h"

SEC("xdp")
int mptcpx_xdp_in(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	struct mx_counters *c = mx_counters_for(MX_DIR_INGRESS);
	if (!c)
		return XDP_PASS;
	c->packets[MX_PKT_TOTAL]++;
	int st = mx_parse(data, data_end, &c->scratch);
	if (st & MX_PARSE_TRUNCATED)
		c->options[MX_MALFORMED]++;
	if (st & MX_PARSE_MPTCP)
		c->packets[MX_PKT_MPTCP]++;
	return XDP_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
