/* mx_lb.h — maps, configuration and helpers of the load balancer (lb_xdp.c): one set of maps per
 * balancer, shared by every interface its program is attached to. Types in mx_lb_types.h. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mx_consts.h"
#include "mx_lb_types.h"

#ifndef LB_EVENTS_BYTES
#define LB_EVENTS_BYTES (256 * 1024)
#endif
/* Ring slots tried, from the flow's own, before a new flow gives up on finding a backend that takes
 * new connections (the control plane rebuilds the ring without a draining or removed backend; this
 * covers the window until it has). */
#ifndef LB_PICK_PROBES
#define LB_PICK_PROBES 8
#endif

/* TCP options walked per frame. Every option, a NOP included, is at least one byte of at most 40, so
 * 40 iterations walk any option block to its end: no MP_JOIN hides behind padding. A frame whose
 * options are not walked to the end (a smaller bound set at build time) counts as malformed, and a
 * SYN of it to a steering VIP as an unknown join. */
#ifndef LB_MAX_TCP_OPTIONS
#define LB_MAX_TCP_OPTIONS 40
#endif

/* Frames longer than this are checked against the ingress device's MTU before they are forwarded:
 * longer than the MTU, a frame is no wire frame but an aggregate the stack built (generic XDP runs
 * after GRO), passed to the stack (LB_STAT_AGGREGATE). Ethernet at MTU 1500: shorter frames cost no
 * helper call. */
#ifndef LB_WIRE_FRAME_MAX
#define LB_WIRE_FRAME_MAX (14 + 1500)
#endif

/* --- configuration, set from Go before load --- */

/* Seed of the 5-tuple hash (Maglev slot and IPv6 outer flow label). */
const volatile __u32 lb_hash_seed = 0x6d707463;
/* A token mapping whose connection has been silent this long may be taken over by a new connection
 * of another backend that computed the same token; until then the new one is a collision. */
const volatile __u64 lb_collision_idle_ns = 120ULL * 1000000000ULL;
/* How stale a token's last_ns may get before a packet of one of its flows refreshes it. */
const volatile __u64 lb_token_refresh_ns = 1000000000ULL;

/* The new-flow rate guard: at most this many new flows stored per CPU per LB_GUARD_WINDOW_NS (one
 * second); a new flow over it is still forwarded by Maglev, but not stored (LB_STAT_GUARDED). 0: no
 * guard, every new flow is stored. Katran's default (MAX_CONN_RATE). */
const volatile __u32 lb_new_flow_rate = 125000;

#ifndef LB_GUARD_WINDOW_NS
#define LB_GUARD_WINDOW_NS 1000000000ULL
#endif

/* --- maps --- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, struct lb_vip_key);
	__type(value, struct lb_vip);
} mptcpx_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
} mptcpx_backends SEC(".maps");

/* The Maglev lookup tables of every VIP, one after the other: slot s of VIP id is
 * ring[id * LB_RING_SIZE + s], holding a backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_VIPS * LB_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} mptcpx_ring SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_FLOWS);
	__type(key, struct lb_flow_id);
	__type(value, struct lb_flow);
} mptcpx_flows SEC(".maps");

/* Flows Maglev cannot recompute (steered joins, flows of draining backends): not LRU, so that no
 * flood evicts them; a full table refuses new ones (counted in LB_STAT_INSERT_FAILED). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_PFLOWS);
	__type(key, struct lb_flow_id);
	__type(value, struct lb_flow);
} mptcpx_pflows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_MAX_TOKENS);
	__type(key, struct lb_token_key);
	__type(value, struct lb_token);
} mptcpx_tokens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_stats);
} mptcpx_lb_stats SEC(".maps");

/* Per-VIP-id and per-backend counters (enum lb_vip_stat, enum lb_backend_stat). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct lb_vip_stats);
} mptcpx_lb_vstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend_stats);
} mptcpx_lb_bstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, LB_EVENTS_BYTES);
} mptcpx_lb_evts SEC(".maps");

/* The rate guard's window (struct lb_guard), per CPU: no lock, no shared cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_guard);
} mptcpx_lb_guard SEC(".maps");

/* When any CPU's guard last refused a new flow (lb_now, 0: never), one entry shared by
 * every CPU: the guard is engaged for two windows after that. Written at most eight times a window
 * (a SYN and its third ACK may meet different CPUs: veth, no RSS). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mptcpx_lb_guard_on SEC(".maps");

/* lb_now's cache, per CPU (struct lb_clock). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_clock);
} mptcpx_lb_clock SEC(".maps");

/* Per-CPU scratch word: a value written and read back through map memory is unknown to the
 * verifier (see mx_launder in mx_parse.h), which lets it prune the TCP options loop. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} mptcpx_lb_scr SEC(".maps");

static __always_inline __u32 lb_launder(__u32 *slot, __u32 v)
{
	*(volatile __u32 *)slot = v;
	return *(volatile __u32 *)slot;
}

/* The protected table's hint: slot lb_phint_slot(k) of a key k holds the low byte of the epoch in
 * which k was last marked (struct lb_phint; epoch 0: no control plane keeps the hint, and it says
 * nothing). Every key is marked with the current epoch before it is put into the protected table,
 * by the datapath and the control plane alike, and the control plane's GC marks every key of the
 * table again and then moves to the next epoch: so a key the table holds has a slot of this epoch
 * or the one before, and a slot older than that proves the table does not hold the key. A new SYN
 * then skips the table's lookup, a cold bucket in a table of its own, for one byte of a 64-KiB
 * array. Slots are shared (a hash of the key), and a byte's epoch wraps, which only ever makes a
 * lookup happen that was not needed. The array is memory-mapped: the control plane writes single
 * bytes, never a whole value over the datapath's marks. Epoch 1 marks but is not trusted: the
 * control plane starts the hint in it, marks every key the table holds, and then moves to
 * LB_PHINT_TRUSTED (pkg/lb.Maps.RefreshProtectHint). */
#define LB_PHINT_SLOTS 65536
#define LB_PHINT_TRUSTED 2
struct lb_phint {
	__u32 epoch; /* written by the control plane only */
	__u32 pad;
	__u8 slot[LB_PHINT_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct lb_phint);
} mptcpx_lb_phint SEC(".maps");

/* Key k's slot: a mix of its words, as pkg/lb.protectHintSlot. */
static __always_inline __u32 lb_phint_slot(const struct lb_flow_id *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = (w[0] ^ w[1] ^ w[2] ^ w[3]) * 0x9e3779b1U;
	h ^= w[4] * 0x85ebca6bU;
	h ^= w[5] * 0xc2b2ae35U;
	h ^= h >> 15;
	h *= 0x2c1b3c6dU;
	h ^= h >> 12;
	return h & (LB_PHINT_SLOTS - 1);
}

/* Mark key k, before it goes into the protected table. */
static __always_inline void lb_phint_mark(const struct lb_flow_id *k)
{
	__u32 zero = 0;
	struct lb_phint *h = bpf_map_lookup_elem(&mptcpx_lb_phint, &zero);
	if (!h)
		return;
	__u32 e = h->epoch;
	if (e)
		h->slot[lb_phint_slot(k)] = (__u8)e;
}

/* Whether the protected table may hold key k: 0 only when the hint proves it does not. */
static __always_inline int lb_phint_may_hold(const struct lb_flow_id *k)
{
	__u32 zero = 0;
	struct lb_phint *h = bpf_map_lookup_elem(&mptcpx_lb_phint, &zero);
	if (!h)
		return 1;
	__u32 e = h->epoch;
	return e < LB_PHINT_TRUSTED || (__u8)(e - h->slot[lb_phint_slot(k)]) <= 1;
}

/* --- helpers --- */

/* The balancer's clock: CLOCK_MONOTONIC (bpf_ktime_get_ns) read once per CPU per timer tick, as of
 * the first packet this CPU saw in the tick. Reading the clock source costs a helper call, and in a
 * VM a paravirtual clock or TSC read: about a quarter of a flow hit's own work in a profile here
 * (docs/lb.md, "What a packet costs");
 * the tick count (bpf_jiffies64) is inlined by the verifier into a load, and so is the per-CPU
 * lookup (Linux 6.10 and later). The value lags the clock by less than a tick (1-10 ms), finer than
 * anything it times (LB_LAST_NS_GRAIN, the token refresh, the collision idle time, the rate
 * guard's window), and is never ahead of it: what the datapath stamps is never in the future of
 * the control plane's CLOCK_MONOTONIC. A stamp the control plane wrote (lb.Monotonic) may be up to
 * a tick ahead of lb_now: ages are taken with lb_age. */
static __always_inline __u64 lb_now(void)
{
	__u32 zero = 0;
	struct lb_clock *c = bpf_map_lookup_elem(&mptcpx_lb_clock, &zero);
	/* jiffies + 1: the cache's zero value stands for no tick yet, and jiffies_64 may be 0 (it
	 * starts near its 32-bit wrap, not at 0, but nothing here relies on that). */
	__u64 tick = bpf_jiffies64() + 1;

	if (!c)
		return bpf_ktime_get_ns();
	if (c->tick != tick) {
		c->tick = tick;
		c->ns = bpf_ktime_get_ns();
	}
	return c->ns;
}

/* How long ago then was, at now; 0 for a then after now (a stamp of the precise clock). */
static __always_inline __u64 lb_age(__u64 now, __u64 then)
{
	return now > then ? now - then : 0;
}

static __always_inline void lb_count(struct lb_stats *st, __u32 stat)
{
	if (st && stat < LB_STAT_MAX)
		st->count[stat]++;
}

static __always_inline void lb_count_vip(struct lb_vip_stats *vs, __u32 stat)
{
	if (vs && stat < LB_VSTAT_MAX)
		vs->count[stat]++;
}

static __always_inline void lb_count_be(struct lb_backend_stats *bs, __u32 stat)
{
	if (bs && stat < LB_BSTAT_MAX)
		bs->count[stat]++;
}

/* A full ring buffer costs the event, never the packet (counted in LB_STAT_EVENT_LOST). No event
 * wakes the consumer while the ring holds less than LB_EVENTS_WAKE_BYTES (BPF_RB_NO_WAKEUP): the
 * consumer reads on a short timer (pkg/control's ConsumeEvents), so an event waits at most that
 * long, and a burst wakes it once the ring is a quarter full. The counters that operators need
 * (per backend: joins steered, tokens learned, collisions; per VIP: unknown joins by outcome) do
 * not depend on events. */
#ifndef LB_EVENTS_WAKE_BYTES
#define LB_EVENTS_WAKE_BYTES (LB_EVENTS_BYTES / 4)
#endif

static __always_inline void lb_emit(struct lb_stats *st, __u32 type, __u32 token, __u32 backend, __u32 other,
				    const struct lb_flow_key *fk, __u64 now)
{
	struct lb_event *e = bpf_ringbuf_reserve(&mptcpx_lb_evts, sizeof(*e), 0);
	if (!e) {
		lb_count(st, LB_STAT_EVENT_LOST);
		return;
	}
	e->type = type;
	e->token = token;
	e->backend = backend;
	e->other = other;
	__builtin_memcpy(&e->flow, fk, sizeof(e->flow));
	e->ts_ns = now;
	/* The pending data counts this record too (reserved, not yet submitted). */
	__u64 pending = bpf_ringbuf_query(&mptcpx_lb_evts, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(e, pending >= LB_EVENTS_WAKE_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

static __always_inline __u32 lb_rol32(__u32 w, __u32 s)
{
	return (w << s) | (w >> (32 - s));
}

#define LB_JHASH_MIX(a, b, c)                      \
	do {                                       \
		a -= c; a ^= lb_rol32(c, 4); c += b;  \
		b -= a; b ^= lb_rol32(a, 6); a += c;  \
		c -= b; c ^= lb_rol32(b, 8); b += a;  \
		a -= c; a ^= lb_rol32(c, 16); c += b; \
		b -= a; b ^= lb_rol32(a, 19); a += c; \
		c -= b; c ^= lb_rol32(b, 4); b += a;  \
	} while (0)

#define LB_JHASH_FINAL(a, b, c)                    \
	do {                                       \
		c ^= b; c -= lb_rol32(b, 14);         \
		a ^= c; a -= lb_rol32(c, 11);         \
		b ^= a; b -= lb_rol32(a, 25);         \
		c ^= b; c -= lb_rol32(b, 16);         \
		a ^= c; a -= lb_rol32(c, 4);          \
		b ^= a; b -= lb_rol32(a, 14);         \
		c ^= b; c -= lb_rol32(b, 24);         \
	} while (0)

/* The 5-tuple hash: Linux's jhash2 over ten 32-bit words, read in host order: the source address,
 * the destination address, the ports, the protocol (with three zero bytes). pkg/lb.FlowHash is the
 * same function in Go. struct lb_flow_key holds the words in another order (its first 24 bytes are
 * the flow tables' key), and the VIP's id is not hashed: the hash is the 5-tuple's alone. */
static __always_inline __u32 lb_flow_hash(const struct lb_flow_key *fk)
{
	const __u32 *k = (const __u32 *)fk;
	/* The words of fk: src 0-3, ports 4, vip_id 5, dst 6-9, proto 10. */
	__u32 a, b, c;

	a = b = c = 0xdeadbeef + (10 << 2) + lb_hash_seed;
	a += k[0]; b += k[1]; c += k[2];
	LB_JHASH_MIX(a, b, c);
	a += k[3]; b += k[6]; c += k[7];
	LB_JHASH_MIX(a, b, c);
	a += k[8]; b += k[9]; c += k[4];
	LB_JHASH_MIX(a, b, c);
	a += k[10];
	LB_JHASH_FINAL(a, b, c);
	return c;
}

/* A backend that may take a packet: of an existing flow or join (any active backend), or of a new
 * flow (active and not draining). */
static __always_inline struct lb_backend *lb_backend_usable(__u32 id, int new_flow)
{
	struct lb_backend *be = bpf_map_lookup_elem(&mptcpx_backends, &id);
	if (!be || !(be->flags & LB_BACKEND_ACTIVE) || !be->ifindex)
		return NULL;
	if (new_flow && (be->flags & LB_BACKEND_DRAINING))
		return NULL;
	return be;
}

/* Maglev: the id of the backend of slot hash % LB_RING_SIZE of VIP vip_id's table, or of the next
 * slots when that one's backend takes no new flows; -1 if none does. A join port's table
 * (join_port) holds its owner only, which takes its joins while draining too. Global, so verified
 * once, not at each of its callers' states (verifiers before 6.4 walk its probes for each). */
__attribute__((noinline)) int lb_pick_id(__u32 vip_id, __u32 join_port, __u32 hash)
{
	if (vip_id >= LB_MAX_VIPS)
		return -1;
	__u32 base = vip_id * LB_RING_SIZE;
	__u32 slot = hash % LB_RING_SIZE;

	for (int i = 0; i < LB_PICK_PROBES; i++) {
		__u32 idx = base + slot;
		__u32 *b = bpf_map_lookup_elem(&mptcpx_ring, &idx);
		if (!b)
			return -1;
		__u32 id = *b;
		if (id < LB_MAX_BACKENDS && lb_backend_usable(id, !join_port))
			return id;
		slot = slot + 1 == LB_RING_SIZE ? 0 : slot + 1;
	}
	return -1;
}

/* lb_pick_id's backend, with its id in *id; NULL if none. */
static __always_inline struct lb_backend *lb_pick(const struct lb_vip *vip, __u32 hash, __u32 *id)
{
	int b = lb_pick_id(vip->id, vip->flags & LB_VIP_JOIN_PORT, hash);
	if (b < 0)
		return NULL;
	*id = b;
	return lb_backend_usable(b, 0);
}

static __always_inline int lb_is_v4mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* The ones'-complement checksum of a 20-byte IPv4 header whose check field is zero. */
static __always_inline __u16 lb_ip4_csum(const struct iphdr *iph)
{
	const __u16 *p = (const __u16 *)iph;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < (int)sizeof(*iph) / 2; i++)
		sum += p[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}
