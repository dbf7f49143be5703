/* mx_lb_types.h — types shared between the load-balancer programs (lb_xdp.c, lb_decap.c) and Go
 * (pkg/lb, pkg/control). Addresses are 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d. All multi-byte
 * fields on the wire side (addresses, ports, tokens as seen in packets) are kept in network byte order
 * unless named _h (host order). Append only. */
#pragma once

#include <linux/types.h>

#ifndef LB_MAX_VIPS
#define LB_MAX_VIPS 64
#endif
#ifndef LB_MAX_BACKENDS
#define LB_MAX_BACKENDS 4096
#endif
/* Maglev lookup table size per VIP: a prime much larger than the backend count. */
#ifndef LB_RING_SIZE
#define LB_RING_SIZE 65537
#endif
#ifndef LB_MAX_FLOWS
#define LB_MAX_FLOWS 1048576
#endif
#ifndef LB_MAX_TOKENS
#define LB_MAX_TOKENS 1048576
#endif
/* Flows that Maglev cannot find again (steered joins, flows of draining backends) live in a plain
 * hash map, which a flood cannot evict from; lb run's GC removes them when idle. */
#ifndef LB_MAX_PFLOWS
#define LB_MAX_PFLOWS 262144
#endif

enum lb_forward {
	LB_FWD_L2 = 0,   /* rewrite the destination MAC, keep the VIP (backend has it on loopback) */
	LB_FWD_IPIP = 1, /* IPv4-in-IPv4 / IPv6-in-IPv6 to the backend's address */
};

enum lb_unknown_join {
	LB_JOIN_DROP = 0, /* default: a forged or stale join never reaches a backend */
	LB_JOIN_HASH = 1, /* treat it as a new flow (Maglev on the 5-tuple) */
	LB_JOIN_PASS = 2, /* hand it to the kernel stack */
};

enum lb_vip_flags {
	LB_VIP_JOIN_STEERING = 1 << 0, /* steer MP_JOIN SYNs by token (off: plain 5-tuple balancing) */
	/* A backend's join port (VIP address, port P): its ring holds that backend in every slot,
	 * written alike on every balancer, so its joins need no state; a draining owner still takes
	 * them (the joins of its existing connections). */
	LB_VIP_JOIN_PORT = 1 << 1,
};

struct lb_vip_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP */
	__u8 pad;
};

struct lb_vip {
	__u32 id;           /* index into the Maglev ring: ring[id * LB_RING_SIZE + h % LB_RING_SIZE] */
	__u32 flags;        /* enum lb_vip_flags */
	__u32 forward;      /* enum lb_forward */
	__u32 unknown_join; /* enum lb_unknown_join */
};

enum lb_backend_flags {
	LB_BACKEND_ACTIVE = 1 << 0,   /* present in the table */
	LB_BACKEND_DRAINING = 1 << 1, /* no new connections; existing flows and their joins still reach it */
};

struct lb_backend {
	__u8 addr[16];    /* tunnel destination (ipip), next hop (l2) */
	__u8 mac[6];      /* next-hop MAC, resolved by the control plane from the neighbour table */
	__u8 src_mac[6];  /* MAC of the egress interface */
	__u32 ifindex;    /* egress interface */
	__u16 flags;      /* enum lb_backend_flags */
	/* The egress interface's MTU as the control plane last saw it (0: not known). An ipip frame
	 * that fits it is sent without asking the kernel; any other goes to bpf_check_mtu. The two
	 * 16-bit fields were one 32-bit flags word, of which only the low bits were ever used: the
	 * layout is unchanged. */
	__u16 mtu;
	__u8 src_addr[16]; /* outer source address for ipip (the balancer's address on the egress link) */
};


/* The key of the flow tables: a flow to a VIP named by the VIP's id (its address and port), not by
 * its address: 24 bytes, where the 5-tuple takes 40. A table's entry (the kernel's header, key and
 * value) is then 96 bytes, of which a lookup touches at most two cache lines and often one; with
 * the 5-tuple it was 112 bytes and always two. */
struct lb_flow_id {
	__u8 src[16];
	__be16 sport;
	__be16 dport;
	__u32 vip_id;
};

/* A TCP 5-tuple as the client sent it (dst is the VIP), as events carry it; its first 24 bytes are
 * the flow's lb_flow_id (vip_id 0 until the VIP is known), so that one struct on the stack serves
 * as both. lb_flow_hash reads the 5-tuple's words in the order pkg/lb.FlowHash defines. */
struct lb_flow_key {
	__u8 src[16];
	__be16 sport;
	__be16 dport;
	__u32 vip_id;
	__u8 dst[16];
	__u8 proto;
	__u8 pad[3];
};

enum lb_flow_flags {
	LB_FLOW_OPENED = 1 << 0,  /* opened by a SYN the balancer placed (or written by the control plane) */
	LB_FLOW_LEARNED = 1 << 1, /* a token was learned (or tried, a collision) on it: never again */
};

struct lb_flow {
	__u32 backend;
	__u32 token;    /* the server's token once learned (0 before); host order */
	__u64 last_ns;  /* lb_now of the last packet (up to LB_LAST_NS_GRAIN older) */
	__u32 flags;    /* enum lb_flow_flags */
	__u32 tok_seen; /* the token's last_ns >> LB_TOK_SEEN_SHIFT when this flow last read it (0: never) */
};

/* lb_flow.tok_seen's unit: 2^20 ns (about 1 ms), so that 32 bits span 52 days. A flow reads the
 * token table when now, in that unit, is at least lb_token_refresh_ns (in that unit, rounded down)
 * past tok_seen: never later than the token turns stale, since floor(a) - floor(b) >= floor(a - b).
 * Flows idle for 52 days (the flow table's GC removes them long before) could wrap. */
#define LB_TOK_SEEN_SHIFT 20

/* How stale a flow's last_ns may get before a packet of it writes it again: 2^20 ns (about 1 ms),
 * far below any idle timeout, and a flow's entry is written at most a thousand times a second. */
#define LB_LAST_NS_GRAIN (1ULL << 20)

struct lb_token_key {
	__u32 vip_id;
	__u32 token; /* host order, as ss -M prints it */
};

struct lb_token {
	__u32 backend;
	__u32 pad;
	__u64 key_hash; /* bytes 4-11 of SHA-256(server key), big-endian: tells a collision from a repeat
			 * (not bytes 24-31, the server's initial data sequence number) */
	__u64 last_ns;
};

/* The new-flow rate guard's state on one CPU (the value of mptcpx_lb_guard, per-CPU): a window of
 * LB_GUARD_WINDOW_NS from win_ns in which at most lb_new_flow_rate new flows are stored (flows), and
 * as many tokens learned late (late; see lb_guard_admit in lb_xdp.c). */
struct lb_guard {
	__u64 win_ns;
	__u32 flows;
	__u32 late;
};

/* lb_now's cache on one CPU (the value of mptcpx_lb_clock): the tick (bpf_jiffies64() + 1) in which
 * the clock was last read, and what it read. */
struct lb_clock {
	__u64 tick;
	__u64 ns;
};

/* Per-CPU counters of the balancer, one slot per enum value. */
enum lb_stat {
	LB_STAT_PACKETS = 0,       /* every frame seen */
	LB_STAT_VIP = 1,           /* frames to a VIP */
	LB_STAT_FLOW_HIT = 2,      /* frames of a known flow */
	LB_STAT_NEW_FLOW = 3,      /* new flows placed by Maglev */
	LB_STAT_TOKEN_LEARNED = 4, /* tokens computed from an MP_CAPABLE third ACK or first data */
	LB_STAT_JOIN_STEERED = 5,  /* MP_JOIN SYNs steered by token */
	LB_STAT_JOIN_UNKNOWN = 6,  /* MP_JOIN SYNs with an unknown token */
	LB_STAT_JOIN_DROPPED = 7,  /* ... of which dropped by policy */
	LB_STAT_COLLISION = 8,     /* a token already held by another live connection on another backend */
	LB_STAT_FWD_L2 = 9,
	LB_STAT_FWD_IPIP = 10,
	LB_STAT_NO_BACKEND = 11,   /* VIP with no usable backend: passed */
	LB_STAT_FWD_ERROR = 12,    /* encapsulation or redirect failed: passed */
	LB_STAT_DECAP = 13,        /* frames decapsulated (lb_decap) */
	LB_STAT_MALFORMED = 14,
	LB_STAT_EVENT_LOST = 15,     /* ring buffer full: event not sent (traffic unaffected) */
	LB_STAT_TOKEN_REPLACED = 16, /* a token mapping idle past the threshold taken over by another backend */
	LB_STAT_MTU = 17,            /* ipip: too long for the egress MTU once encapsulated, and IPv4 without DF
				      * (or too short to quote): passed unencapsulated */
	LB_STAT_NONSYN_MISS = 18,    /* non-SYN frames of no known flow: forwarded by Maglev, nothing stored */
	LB_STAT_INSERT_FAILED = 19,  /* a flow or token the datapath could not store (table full, race) */
	LB_STAT_ICMP_TOO_BIG = 20,   /* ipip: too long for the egress MTU once encapsulated (IPv4 with DF, IPv6):
				      * answered with ICMP fragmentation needed / ICMPv6 packet too big */
	LB_STAT_AGGREGATE = 21,      /* longer than the ingress MTU: a GRO/GSO aggregate (generic XDP), never a
				      * wire frame: passed to the stack, neither forwarded nor answered */
	LB_STAT_GUARDED = 22,        /* new flows over the rate guard's limit (lb_new_flow_rate): forwarded by
				      * Maglev, not stored */
	LB_STAT_LATE_LEARN = 23,   /* third ACKs of flows not in the table, seen while the guard is engaged,
				      * whose connection was placed then (token learned, flow stored) */
	LB_STAT_MAX = 24,
};

/* Value of the per-CPU stats map (one entry): one counter per enum lb_stat. */
struct lb_stats {
	__u64 count[LB_STAT_MAX];
};

/* Per-CPU counters of one VIP id (every VIP sharing the id), one slot per enum value: the map
 * mptcpx_lb_vstats holds LB_MAX_VIPS of them, indexed by lb_vip.id. */
enum lb_vip_stat {
	LB_VSTAT_PACKETS = 0,        /* frames to the VIP */
	LB_VSTAT_NEW_FLOW = 1,       /* new flows placed by Maglev */
	LB_VSTAT_TOKEN_LEARNED = 2,  /* tokens learned */
	LB_VSTAT_JOIN_STEERED = 3,   /* MP_JOIN SYNs steered by token */
	LB_VSTAT_JOIN_UNKNOWN_DROP = 4, /* unknown-token MP_JOIN SYNs dropped by policy */
	LB_VSTAT_JOIN_UNKNOWN_HASH = 5, /* ... placed by Maglev on their 5-tuple (policy hash) */
	LB_VSTAT_JOIN_UNKNOWN_PASS = 6, /* ... passed to the stack (policy pass) */
	LB_VSTAT_COLLISION = 7,      /* token collisions */
	LB_VSTAT_TOKEN_REPLACED = 8, /* idle token mappings taken over */
	LB_VSTAT_NO_BACKEND = 9,     /* frames with no usable backend: passed */
	LB_VSTAT_MTU = 10,           /* ipip: too long for the egress MTU once encapsulated: passed (LB_STAT_MTU) */
	LB_VSTAT_FWD_ERROR = 11,     /* encapsulation failed: passed */
	LB_VSTAT_GUARDED = 12,       /* new flows over the rate guard's limit (LB_STAT_GUARDED) */
	LB_VSTAT_MAX = 13,
};

struct lb_vip_stats {
	__u64 count[LB_VSTAT_MAX];
};

/* Per-CPU counters of one backend id, one slot per enum value: the map mptcpx_lb_bstats holds
 * LB_MAX_BACKENDS of them, indexed by backend id. The control plane zeroes an id's counters when it
 * clears the backend entry, so that a reused id starts from zero. */
enum lb_backend_stat {
	LB_BSTAT_NEW_FLOW = 0,       /* new flows placed on it by Maglev */
	LB_BSTAT_TOKEN_LEARNED = 1,  /* tokens learned for its connections */
	LB_BSTAT_JOIN_STEERED = 2,   /* MP_JOIN SYNs steered to it by token */
	LB_BSTAT_JOIN_HASHED = 3,    /* unknown-token MP_JOIN SYNs placed on it by Maglev (policy hash) */
	LB_BSTAT_COLLISION = 4,      /* its new connection's token was held by another backend's live one */
	LB_BSTAT_TOKEN_REPLACED = 5, /* it took over another backend's idle token mapping */
	LB_BSTAT_FORWARDED = 6,      /* frames forwarded to it (l2 or ipip) */
	LB_BSTAT_MTU = 7,            /* ipip: frames for it too long for the egress MTU: passed (LB_STAT_MTU) */
	LB_BSTAT_FWD_ERROR = 8,      /* encapsulation toward it failed: passed */
	LB_BSTAT_MAX = 9,
};

struct lb_backend_stats {
	__u64 count[LB_BSTAT_MAX];
};

enum lb_event_type {
	LB_EV_CONN_LEARNED = 1, /* token learned for a flow */
	LB_EV_JOIN_STEERED = 2,
	LB_EV_JOIN_UNKNOWN = 3,
	LB_EV_COLLISION = 4,
	LB_EV_TOKEN_REPLACED = 5, /* an idle mapping taken over: other = the backend that held it */
};

/* One ring-buffer event. */
struct lb_event {
	__u32 type;    /* enum lb_event_type */
	__u32 token;   /* host order */
	__u32 backend; /* chosen (or, for a collision, the new) backend */
	__u32 other;   /* collision: the backend that held the token */
	struct lb_flow_key flow;
	__u64 ts_ns;
};

/* --- the backends' decapsulator (lb_decap.c) --- */

/* What an outer address is to the decapsulator: the value of mptcpx_dc_addrs (flags may combine). */
enum lb_dc_addr_flags {
	LB_DC_ADDR_LOCAL = 1 << 0,    /* an address of this host: IPIP to it is decapsulated */
	LB_DC_ADDR_BALANCER = 1 << 1, /* a balancer's outer source address: IPIP from it is accepted */
};

/* Per-CPU counters of the decapsulator (one entry). Every frame counts in packets and, if it is
 * IPv4 or IPv6 carrying IPv4 or IPv6, in at most one of the others; all but decap are passed
 * untouched. */
struct lb_decap_stats {
	__u64 packets;        /* every frame seen */
	__u64 decap;          /* decapsulated: inner packet passed up the stack */
	__u64 malformed;      /* the inner header is not what the outer one says, or is cut short */
	__u64 refused_dst;    /* outer destination not an address of this host (LB_DC_ADDR_LOCAL) */
	__u64 refused_source; /* outer source not a balancer's (LB_DC_ADDR_BALANCER) */
	__u64 refused_inner;  /* inner packet not an unfragmented TCP segment to a VIP (mptcpx_dc_vips) */
};
