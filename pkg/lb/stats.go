package lb

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Stat names one per-CPU counter of the datapath (enum lb_stat; the order is the C header's).
type Stat int

const (
	StatPackets       Stat = iota // every frame seen
	StatVIP                       // frames to a VIP
	StatFlowHit                   // frames of a known flow
	StatNewFlow                   // new flows placed by Maglev
	StatTokenLearned              // tokens recorded from an MP_CAPABLE third ACK or first data
	StatJoinSteered               // MP_JOIN SYNs steered by token
	StatJoinUnknown               // MP_JOIN SYNs with an unknown token
	StatJoinDropped               // ... of which dropped by policy
	StatCollision                 // a token held by another live connection on another backend
	StatFwdL2                     // frames forwarded by MAC rewrite
	StatFwdIPIP                   // frames forwarded encapsulated
	StatNoBackend                 // VIP frames with no usable backend (passed)
	StatFwdError                  // encapsulation failed (passed)
	StatDecap                     // frames decapsulated (decap program)
	StatMalformed                 // broken IP/TCP headers (passed) or TCP options (not learned from)
	StatEventLost                 // events lost to a full ring buffer (traffic unaffected)
	StatTokenReplaced             // idle token mappings taken over by another backend
	StatMTU                       // ipip frames too long for the egress MTU once encapsulated, IPv4 without DF (passed)
	StatNonSYNMiss                // non-SYN frames of no known flow: forwarded by Maglev, nothing stored
	StatInsertFailed              // flows or tokens the datapath could not store (table full, race)
	StatICMPTooBig                // ipip frames too long once encapsulated, answered with ICMP frag needed / packet too big
	StatAggregate                 // frames longer than the ingress MTU (generic XDP's GRO/GSO aggregates): passed
	StatGuarded                   // new flows over the rate guard's limit: forwarded by Maglev, not stored
	StatLateLearn                 // third ACKs of unstored flows placed while the guard is engaged (token learned, flow stored)
	NumStats
)

var statNames = [NumStats]string{
	"packets", "vip", "flow_hit", "new_flow", "token_learned", "join_steered", "join_unknown",
	"join_dropped", "collision", "fwd_l2", "fwd_ipip", "no_backend", "fwd_error", "decap", "malformed",
	"event_lost", "token_replaced", "mtu", "nonsyn_miss", "insert_failed", "icmp_too_big", "aggregate",
	"guarded", "late_learn",
}

func (s Stat) String() string {
	if s >= 0 && s < NumStats {
		return statNames[s]
	}
	return fmt.Sprintf("stat(%d)", int(s))
}

// Stats are the counters summed over CPUs, indexed by Stat.
type Stats [NumStats]uint64

// Map returns the counters by name.
func (s Stats) Map() map[string]uint64 {
	m := make(map[string]uint64, NumStats)
	for i, v := range s {
		m[Stat(i).String()] = v
	}
	return m
}

// Sub returns s - o, counter by counter.
func (s Stats) Sub(o Stats) Stats {
	for i := range s {
		s[i] -= o[i]
	}
	return s
}

// Monotonic is CLOCK_MONOTONIC now, the clock of LastSeen and Event.Time.
func Monotonic() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(fmt.Sprintf("clock_gettime(CLOCK_MONOTONIC): %v", err))
	}
	return time.Duration(ts.Nano())
}

// VIPStat names one per-CPU counter of a VIP id (enum lb_vip_stat; the order is the C header's).
type VIPStat int

const (
	VIPStatPackets         VIPStat = iota // frames to the VIP
	VIPStatNewFlow                        // new flows placed by Maglev
	VIPStatTokenLearned                   // tokens learned
	VIPStatJoinSteered                    // MP_JOIN SYNs steered by token
	VIPStatJoinUnknownDrop                // unknown-token MP_JOIN SYNs dropped (policy drop)
	VIPStatJoinUnknownHash                // ... placed by Maglev (policy hash)
	VIPStatJoinUnknownPass                // ... passed to the stack (policy pass)
	VIPStatCollision                      // token collisions
	VIPStatTokenReplaced                  // idle token mappings taken over
	VIPStatNoBackend                      // frames with no usable backend (passed)
	VIPStatMTU                            // ipip frames too long for the egress MTU (passed)
	VIPStatFwdError                       // encapsulation failed (passed)
	VIPStatGuarded                        // new flows over the rate guard's limit: forwarded, not stored
	NumVIPStats
)

var vipStatNames = [NumVIPStats]string{
	"packets", "new_flow", "token_learned", "join_steered", "join_unknown_drop", "join_unknown_hash",
	"join_unknown_pass", "collision", "token_replaced", "no_backend", "mtu", "fwd_error",
	"guarded",
}

func (s VIPStat) String() string {
	if s >= 0 && s < NumVIPStats {
		return vipStatNames[s]
	}
	return fmt.Sprintf("vip-stat(%d)", int(s))
}

// VIPStats are one VIP id's counters summed over CPUs, indexed by VIPStat.
type VIPStats [NumVIPStats]uint64

// BackendStat names one per-CPU counter of a backend id (enum lb_backend_stat; the order is the C
// header's).
type BackendStat int

const (
	BackendStatNewFlow       BackendStat = iota // new flows placed on it by Maglev
	BackendStatTokenLearned                     // tokens learned for its connections
	BackendStatJoinSteered                      // MP_JOIN SYNs steered to it by token
	BackendStatJoinHashed                       // unknown-token MP_JOIN SYNs placed on it by Maglev (policy hash)
	BackendStatCollision                        // its new connection's token was held by another backend's live one
	BackendStatTokenReplaced                    // it took over another backend's idle token mapping
	BackendStatForwarded                        // frames forwarded to it
	BackendStatMTU                              // ipip frames for it too long for the egress MTU (passed)
	BackendStatFwdError                         // encapsulation toward it failed (passed)
	NumBackendStats
)

var backendStatNames = [NumBackendStats]string{
	"new_flow", "token_learned", "join_steered", "join_hashed", "collision", "token_replaced",
	"forwarded", "mtu", "fwd_error",
}

func (s BackendStat) String() string {
	if s >= 0 && s < NumBackendStats {
		return backendStatNames[s]
	}
	return fmt.Sprintf("backend-stat(%d)", int(s))
}

// BackendStats are one backend id's counters summed over CPUs, indexed by BackendStat.
type BackendStats [NumBackendStats]uint64
