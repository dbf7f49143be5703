/* mx_types.h — every type that crosses between the eBPF programs and Go (mirrored by bpf2go -type). */
#pragma once

/* One class per MPTCP option (kind 30) seen on the wire. The order is a contract with Go
 * (pkg/mptcp.Class) and with the `stats` JSON; append only. */
enum mx_class {
	MX_MP_CAPABLE_SYN = 0,
	MX_MP_CAPABLE_SYNACK = 1,
	MX_MP_CAPABLE_ACK = 2,
	MX_MP_CAPABLE_DATA = 3,
	MX_MP_JOIN_SYN = 4,
	MX_MP_JOIN_SYNACK = 5,
	MX_MP_JOIN_ACK = 6,
	MX_DSS = 7,
	MX_ADD_ADDR = 8,
	MX_ADD_ADDR_ECHO = 9,
	MX_REMOVE_ADDR = 10,
	MX_MP_PRIO = 11,
	MX_MP_FAIL = 12,
	MX_MP_FASTCLOSE = 13,
	MX_MP_TCPRST = 14,
	MX_MALFORMED = 15,
	MX_CLASS_MAX = 16,
};

/* Packet totals. */
enum mx_pkt {
	MX_PKT_TOTAL = 0, /* every frame */
	MX_PKT_TCP = 1,   /* frames whose L4 is TCP (first fragments included) */
	MX_PKT_MPTCP = 2, /* TCP frames carrying at least one MPTCP option */
	MX_PKT_MAX = 3,
};

/* Index of the counters map. */
enum mx_dir {
	MX_DIR_INGRESS = 0,
	MX_DIR_EGRESS = 1,
	MX_DIR_MAX = 2,
};

/* Value of the per-CPU counters map, one per direction. */
struct mx_counters {
	__u64 packets[MX_PKT_MAX];
	__u64 options[MX_CLASS_MAX];
};

/* Slots of the per-CPU scratch map, one per program so that no two programs share one. */
enum mx_scratch_slot {
	MX_SCRATCH_XDP = 0,
	MX_SCRATCH_TC_INGRESS = 1,
	MX_SCRATCH_TC_EGRESS = 2,
	MX_SCRATCH_MAX = 3,
};

/* Attach state of one interface, kept in a pinned map so that it outlives the CLI. */
enum mx_meta_flags {
	MX_META_CLSACT_ADDED = 1 << 0, /* we created the clsact qdisc and must remove it */
	MX_META_XDP_NETLINK = 1 << 1,  /* XDP attached through netlink, not a bpf_link */
	MX_META_TC_NETLINK = 1 << 2,   /* TC attached as clsact filters, not tcx links */
};

struct mx_meta {
	__u32 ifindex;
	__u32 flags;     /* enum mx_meta_flags */
	__u32 xdp_mode;  /* 0 none, 1 native, 2 generic */
	__u32 ingress;   /* 0 xdp, 1 tc */
	__u32 egress;    /* 1 when the egress program is attached */
	__u32 pad;
	__u64 netns_ino; /* inode of the network namespace the interface lives in */
	__u64 attached_ns; /* CLOCK_REALTIME of the first attach, in nanoseconds */
};
