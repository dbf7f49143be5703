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
	StatMTU                       // ipip frames that would exceed the egress MTU once encapsulated (passed)
	NumStats
)

var statNames = [NumStats]string{
	"packets", "vip", "flow_hit", "new_flow", "token_learned", "join_steered", "join_unknown",
	"join_dropped", "collision", "fwd_l2", "fwd_ipip", "no_backend", "fwd_error", "decap", "malformed",
	"event_lost", "token_replaced", "mtu",
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
