/* mx_maps.h — the maps every counting program shares (one set per interface, pinned by the loader). */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "mx_types.h"
#include "mx_parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MX_DIR_MAX);
	__type(key, __u32);
	__type(value, struct mx_counters);
} mptcpx_counters SEC(".maps");

/* Attach state, written by the loader; the programs never read it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mx_meta);
} mptcpx_meta SEC(".maps");

static __always_inline struct mx_counters *mx_counters_for(__u32 dir)
{
	return bpf_map_lookup_elem(&mptcpx_counters, &dir);
}

/* The cleared parse result that lives beside a direction's counters. XDP and TC ingress never run
 * nested on one CPU (both run in softirq), nor does TC egress (it runs with bottom halves off). */
static __always_inline struct mx_result *mx_scratch(struct mx_counters *c)
{
	struct mx_result *r = &c->scratch;
	__builtin_memset(r, 0, sizeof(*r));
	return r;
}
