/* mx_types.h — every type that crosses into Go (bpf2go -type, or held by pkg/datapath TestLayout). */
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

/* What one frame held, committed to the counters only once the parse is over. It lives in per-CPU map
 * memory (beside the counters it is committed to), not on the stack: counts kept in map memory do not
 * multiply the states the verifier has to tell apart. */
struct mx_result {
	__u8 tcp;
	__u8 mptcp;
	__u8 truncated; /* headers claimed more bytes than the buffer holds */
	__u8 last;      /* the class counted last (see mx_add) */
	__u16 launder;  /* see mx_launder */
	__u16 seen;     /* bit i set when classes[i] is not zero: mx_commit touches only those */
	__u8 classes[MX_CLASS_MAX];
} __attribute__((aligned(8))); /* so that clearing it takes three 8-byte stores */

/* Value of the per-CPU counters map, one per direction. scratch is the parse result of the frame
 * being counted: one map lookup gives a program both. */
struct mx_counters {
	__u64 packets[MX_PKT_MAX];
	__u64 options[MX_CLASS_MAX];
	struct mx_result scratch;
};

/* Attach state of one interface, kept in a pinned map so that it outlives the CLI. The fields carry
 * their enums' types so that the objects' BTF holds the values Go checks (pkg/datapath layout test). */
enum mx_meta_flags {
	MX_META_CLSACT_ADDED = 1 << 0, /* we created the clsact qdisc and must remove it */
	MX_META_XDP_NETLINK = 1 << 1,  /* XDP attached through netlink, not a bpf_link */
	MX_META_TC_NETLINK = 1 << 2,   /* TC attached as clsact filters, not tcx links */
	MX_META_INGRESS_AUTO = 1 << 3, /* attach chose the ingress hook (--ingress auto) */
	MX_META_AUTO_VETH = 1 << 4,    /* ... TC, because the device is a veth */
	MX_META_AUTO_NO_NATIVE = 1 << 5, /* ... TC, because the driver refused native XDP */
};

/* How the XDP program is attached. */
enum mx_xdp_mode {
	MX_XDP_MODE_NONE = 0,
	MX_XDP_MODE_NATIVE = 1,
	MX_XDP_MODE_GENERIC = 2,
};

/* Where ingress is counted. */
enum mx_ingress {
	MX_INGRESS_XDP = 0,
	MX_INGRESS_TC = 1,
};

struct mx_meta {
	__u32 ifindex;
	enum mx_meta_flags flags;  /* 4 bytes */
	enum mx_xdp_mode xdp_mode; /* 4 bytes */
	enum mx_ingress ingress;   /* 4 bytes */
	__u32 egress;    /* 1 when the egress program is attached */
	__u32 pad;
	__u64 netns_ino; /* inode of the network namespace the interface lives in */
	__u64 attached_ns; /* CLOCK_REALTIME of the first attach, in nanoseconds */
};

/* Subflow flags of a subflow record: the same bits, from the same fields of struct
 * mptcp_subflow_context, as the kernel's MPTCP diag reports (MPTCP_SUBFLOW_FLAG_*,
 * include/uapi/linux/mptcp.h) and `ss -ti` prints as letters (MmJjBbecv). Append only. */
enum mx_sf_flags {
	MX_SF_MCAP_REM = 1 << 0,          /* 'M' mp_capable: the initial subflow, MP_CAPABLE agreed */
	MX_SF_MCAP_LOC = 1 << 1,          /* 'm' request_mptcp: we sent MP_CAPABLE (client side) */
	MX_SF_JOIN_REM = 1 << 2,          /* 'J' mp_join: an additional subflow (MP_JOIN) */
	MX_SF_JOIN_LOC = 1 << 3,          /* 'j' request_join: we sent the MP_JOIN SYN */
	MX_SF_BKUP_REM = 1 << 4,          /* 'B' backup: the peer asked for this subflow as backup */
	MX_SF_BKUP_LOC = 1 << 5,          /* 'b' request_bkup: we asked for it as backup */
	MX_SF_FULLY_ESTABLISHED = 1 << 6, /* 'e' fully_established */
	MX_SF_CONNECTED = 1 << 7,         /* 'c' conn_finished */
};

/* One MPTCP subflow, written by the iter/tcp program (bpf_seq_write) per subflow of the network
 * namespace being read. Never carries MPTCP keys. Addresses in network order, ports in host
 * order; times in microseconds; rates in bytes per second. The tcp_info figures are computed as
 * tcp_get_info() computes them (noted per field). */
struct mx_subflow_rec {
	__u64 cookie;         /* socket cookie of the subflow (bpf_get_socket_cookie) */
	__u64 bytes_sent;     /* tcpi_bytes_sent (retransmissions included) */
	__u64 bytes_acked;    /* tcpi_bytes_acked */
	__u64 bytes_received; /* tcpi_bytes_received */
	__u64 bytes_retrans;  /* tcpi_bytes_retrans */
	__u64 delivery_rate;  /* tcpi_delivery_rate: rate_delivered * mss_cache * 1e6 / rate_interval_us */
	__u64 pacing_rate;    /* tcpi_pacing_rate: sk_pacing_rate (~0: unlimited) */
	__u32 token;          /* local token of the MPTCP connection (msk->token, as `ss -M` shows) */
	__u32 flags;          /* enum mx_sf_flags (a plain __u32, so that the history's copy converts in Go) */
	__u32 subflow_id;     /* the kernel's subflow id (MPTCP_FULL_INFO's id; 0 before 6.8) */
	__u32 srtt_us;        /* tcpi_rtt: srtt_us >> 3 */
	__u32 rttvar_us;      /* tcpi_rttvar: mdev_us >> 2 */
	__u32 min_rtt_us;     /* tcpi_min_rtt: rtt_min.s[0].v (~0 before the first sample) */
	__u32 snd_cwnd;       /* tcpi_snd_cwnd, segments */
	__u32 snd_ssthresh;   /* tcpi_snd_ssthresh */
	__u32 snd_mss;        /* tcpi_snd_mss: mss_cache */
	__u32 total_retrans;  /* tcpi_total_retrans */
	__u32 lost;           /* tcpi_lost: lost_out */
	__u32 retrans;        /* tcpi_retrans: retrans_out */
	__u32 segs_in;        /* tcpi_segs_in */
	__u32 segs_out;       /* tcpi_segs_out */
	__u32 data_segs_in;   /* tcpi_data_segs_in */
	__u32 data_segs_out;  /* tcpi_data_segs_out */
	__u16 sport;          /* local port, host order */
	__u16 dport;          /* remote port, host order */
	__u8 saddr[16];       /* local address: IPv4 in the first 4 bytes, or IPv6 */
	__u8 daddr[16];       /* remote address */
	__u8 family;          /* AF_INET 2 or AF_INET6 10 */
	__u8 state;           /* TCP state of the subflow (TCP_ESTABLISHED = 1, ...) */
	__u8 conn_state;      /* TCP-style state of the MPTCP socket */
	__u8 local_id;        /* local address id (max(0, local_id), as the diag reports it) */
	__u8 remote_id;       /* remote address id */
	__u8 pad[7];
};

/* Value of the sock_ops program's subflow history map (bpf/sockops.c), keyed by the subflow's socket
 * cookie: one entry per MPTCP subflow established while the program was attached, kept after the
 * subflow closes with its final figures. Times are bpf_ktime_get_boot_ns() (CLOCK_BOOTTIME). */
struct mx_sf_hist {
	__u64 netns_cookie;   /* bpf_get_netns_cookie() of the subflow's network namespace */
	__u64 established_ns; /* when the subflow reached ESTABLISHED (0: before the program was attached) */
	__u64 closed_ns;      /* when it went to TCP_CLOSE; 0 while it lives */
	__u32 est_flags;      /* enum mx_sf_flags as they were at establishment */
	__u32 pad;
	struct mx_subflow_rec rec; /* at establishment, then the final figures at close */
};

/* Value of the history's configuration map (one entry), set by `mptcp-xdp history enable` and read by
 * every reader: closed entries older than max_age_ns are neither shown nor kept. */
struct mx_hist_cfg {
	__u64 max_age_ns;
};
