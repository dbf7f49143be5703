package lb

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Sizes compiled into the datapath (bpf/include/mx_lb_types.h).
const (
	MaxVIPs     = 64
	MaxBackends = 4096
	RingSize    = 65537 // Maglev lookup table size per VIP (prime)
	MaxFlows    = 1 << 20
	MaxTokens   = 1 << 20
	MaxPFlows   = 1 << 18 // protected flows: steered joins and flows of draining backends
)

// Names of the balancer's program and maps; with Config.PinPath they are also the pin names.
// They are bpf2go's (pkg/datapath), so that a name changed in the C source changes here.
const (
	ProgName     = datapath.LbProgMptcpxLb
	MapVIPs      = datapath.LbMapMptcpxVips
	MapPHint     = datapath.LbMapMptcpxLbPhint
	MapBackends  = datapath.LbMapMptcpxBackends
	MapRing      = datapath.LbMapMptcpxRing
	MapFlows     = datapath.LbMapMptcpxFlows
	MapTokens    = datapath.LbMapMptcpxTokens
	MapPFlows    = datapath.LbMapMptcpxPflows // flows Maglev cannot find again, kept out of the LRU
	MapStats     = datapath.LbMapMptcpxLbStats
	MapEvents    = datapath.LbMapMptcpxLbEvts
	MapVIPStats  = datapath.LbMapMptcpxLbVstats // per-CPU counters per VIP id
	MapBEStats   = datapath.LbMapMptcpxLbBstats // per-CPU counters per backend id
	DecapProg    = datapath.LbDecapProgMptcpxDecap
	MapDecapAddr = datapath.LbDecapMapMptcpxDcAddrs
	MapDecapStat = datapath.LbDecapMapMptcpxDcStats
)

// Forward is how frames reach a VIP's backends (enum lb_forward).
type Forward uint32

const (
	ForwardL2   Forward = 0 // rewrite the MACs, keep the VIP as destination
	ForwardIPIP Forward = 1 // IPv4/IPv6 outer header to the backend's address
)

func (f Forward) String() string {
	switch f {
	case ForwardL2:
		return "l2"
	case ForwardIPIP:
		return "ipip"
	}
	return fmt.Sprintf("forward(%d)", uint32(f))
}

// ParseForward reads "l2" or "ipip".
func ParseForward(s string) (Forward, error) {
	for _, f := range []Forward{ForwardL2, ForwardIPIP} {
		if f.String() == s {
			return f, nil
		}
	}
	return 0, fmt.Errorf("unknown forwarding mode %q (want l2 or ipip)", s)
}

// UnknownJoin is what happens to an MP_JOIN SYN whose token no backend holds (enum lb_unknown_join).
type UnknownJoin uint32

const (
	JoinDrop UnknownJoin = 0 // default: a forged or stale join never reaches a backend
	JoinHash UnknownJoin = 1 // Maglev on its 5-tuple, like a new flow
	JoinPass UnknownJoin = 2 // up the balancer's own stack
)

func (u UnknownJoin) String() string {
	switch u {
	case JoinDrop:
		return "drop"
	case JoinHash:
		return "hash"
	case JoinPass:
		return "pass"
	}
	return fmt.Sprintf("unknown-join(%d)", uint32(u))
}

// ParseUnknownJoin reads "drop", "hash" or "pass".
func ParseUnknownJoin(s string) (UnknownJoin, error) {
	for _, u := range []UnknownJoin{JoinDrop, JoinHash, JoinPass} {
		if u.String() == s {
			return u, nil
		}
	}
	return 0, fmt.Errorf("unknown join policy %q (want drop, hash or pass)", s)
}

const (
	vipJoinSteering = 1 << 0 // LB_VIP_JOIN_STEERING
	vipJoinPort     = 1 << 1 // LB_VIP_JOIN_PORT
	backendActive   = 1 << 0 // LB_BACKEND_ACTIVE
	backendDraining = 1 << 1 // LB_BACKEND_DRAINING
	flowOpened      = 1 << 0 // LB_FLOW_OPENED
	flowLearned     = 1 << 1 // LB_FLOW_LEARNED
)

// VIP is a service address: TCP to Addr is balanced over the backends of ring ID. VIPs that share
// an ID share the ring and the token space (a dual-stack service whose clients may join over the
// other family).
type VIP struct {
	Addr         netip.AddrPort
	ID           uint32 // ring index and token namespace, < MaxVIPs
	JoinSteering bool   // steer MP_JOIN SYNs by token (false: plain 5-tuple Maglev)
	Forward      Forward
	UnknownJoin  UnknownJoin
	// JoinPort: a backend's join port (the VIP's address, the backend's port): its ring holds
	// that backend in every slot, and a draining owner still takes its joins.
	JoinPort bool
}

// Backend is one entry of the backend table. The control plane resolves MAC, SrcMAC and Ifindex
// (next hop and egress interface) from the kernel's FIB and neighbour table.
type Backend struct {
	ID       uint32           // index in the backend table, < MaxBackends
	Addr     netip.Addr       // tunnel destination (ipip), next hop (l2)
	SrcAddr  netip.Addr       // outer source address for ipip: the balancer's address on the egress link
	MAC      net.HardwareAddr // next-hop MAC
	SrcMAC   net.HardwareAddr // MAC of the egress interface
	Ifindex  int              // egress interface (XDP_TX when it is the ingress one, else redirect)
	Draining bool             // no new flows; existing flows and joins of its connections still reach it
	// MTU is the egress interface's MTU as the control plane last saw it (0: not known). An ipip
	// frame within it is encapsulated with no bpf_check_mtu; any other frame, and every frame when
	// it is 0, is checked against the device's MTU by the kernel. One higher than the device's
	// lets frames through that the device then drops: the control plane follows the device
	// (control.Balancer.RefreshNextHops, on every link change while `lb run` runs).
	MTU int
}

// FlowKey is a TCP 5-tuple as the client sent it (Dst is the VIP).
type FlowKey struct {
	Src, Dst netip.AddrPort
}

// Flow is an entry of the flow table.
type Flow struct {
	FlowKey
	// VIPID is the id of the VIP the flow goes to, which the flow tables key it by (with its
	// source and ports) in place of the VIP's address: set by ListFlows and LookupFlow, where a
	// flow of a VIP deleted since has no Dst address (only its port). PutFlows reads Dst.
	VIPID    uint32
	Backend  uint32
	Token    uint32        // the server's token once learned (0 before)
	LastSeen time.Duration // CLOCK_MONOTONIC of the last packet
	// Opened: placed on a SYN (or written by the control plane: PutFlows sets it), so a token
	// may be learned on it; Learned: one was (or a collision kept it from being), never again.
	Opened, Learned bool
	// Protected: held in the protected table (steered joins, flows of draining backends), which
	// no flood evicts from; GC removes these like the others.
	Protected bool
}

// Token is an entry of the token table: the backend holding an MPTCP connection's server token.
type Token struct {
	VIPID    uint32
	Token    uint32 // host order, as `ss -M` prints it
	Backend  uint32
	KeyHash  uint64        // SHA-256(server key)[4:12]: tells a collision from a repeat
	LastSeen time.Duration // CLOCK_MONOTONIC of the last learning or refresh
}
