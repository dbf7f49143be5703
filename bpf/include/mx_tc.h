/* mx_tc.h — the TC (tcx or clsact) side of counting: parse an skb, pulling headers into the linear
 * area only when they are not there already, and count it as the wire packets it stands for. */
#pragma once

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "mx_parse.h"
#include "mx_maps.h"

static __always_inline void mx_tc_count(struct __sk_buff *skb, __u32 dir)
{
	struct mx_counters *c = mx_counters_for(dir);
	if (!c)
		return;
	struct mx_result *r = mx_scratch(c);

	int st = mx_parse((void *)(long)skb->data, (void *)(long)skb->data_end, r);
	if (st == MX_PARSE_TRUNCATED && skb->len > skb->data_end - skb->data) {
		/* Headers continue in the paged part: make them linear once and parse again.
		 * This changes where the bytes live, never what they are. */
		__u32 want = skb->len < TC_PULL_LEN ? skb->len : TC_PULL_LEN;
		__builtin_memset(r, 0, sizeof(*r));
		if (bpf_skb_pull_data(skb, want) == 0)
			st = mx_parse((void *)(long)skb->data, (void *)(long)skb->data_end, r);
	}
	if (st == MX_PARSE_TRUNCATED)
		r->truncated = 1;

	/* A GSO packet leaves as gso_segs segments, each carrying the same options. */
	__u64 n = skb->gso_segs ? skb->gso_segs : 1;
	mx_commit(c, r, n);
}
