// Package mptcp holds the MPTCP wire format as the datapath sees it: the option classes the eBPF
// parser counts (in the same order as enum mx_class in bpf/include/mx_types.h) and a reference parser
// in Go that classifies a frame exactly as the eBPF programs do. It needs no kernel support.
package mptcp

import "fmt"

// Class is the class of one MPTCP option (TCP option kind 30), as counted by the datapath.
type Class uint8

// The classes, in the order of enum mx_class. The numbers are the index into the counters map.
const (
	MPCapableSYN Class = iota
	MPCapableSYNACK
	MPCapableACK
	MPCapableData
	MPJoinSYN
	MPJoinSYNACK
	MPJoinACK
	DSS
	AddAddr
	AddAddrEcho
	RemoveAddr
	MPPrio
	MPFail
	MPFastclose
	MPTCPRst
	Malformed
	NumClasses int = iota
)

var classNames = [...]string{
	MPCapableSYN:    "mp_capable_syn",
	MPCapableSYNACK: "mp_capable_synack",
	MPCapableACK:    "mp_capable_ack",
	MPCapableData:   "mp_capable_data",
	MPJoinSYN:       "mp_join_syn",
	MPJoinSYNACK:    "mp_join_synack",
	MPJoinACK:       "mp_join_ack",
	DSS:             "dss",
	AddAddr:         "add_addr",
	AddAddrEcho:     "add_addr_echo",
	RemoveAddr:      "remove_addr",
	MPPrio:          "mp_prio",
	MPFail:          "mp_fail",
	MPFastclose:     "mp_fastclose",
	MPTCPRst:        "mp_tcprst",
	Malformed:       "malformed",
}

// String is the class's stable name, used in JSON, metrics labels and tables.
func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", uint8(c))
}

// Classes lists every class in counter order.
func Classes() []Class {
	out := make([]Class, NumClasses)
	for i := range out {
		out[i] = Class(i)
	}
	return out
}

// ParseClass returns the class with the given stable name.
func ParseClass(name string) (Class, error) {
	for i, n := range classNames {
		if n == name {
			return Class(i), nil
		}
	}
	return 0, fmt.Errorf("unknown MPTCP option class %q", name)
}

// PacketCounter indexes the packet totals, in the order of enum mx_pkt.
type PacketCounter uint8

// The packet totals.
const (
	PacketsTotal      PacketCounter = iota // every frame
	PacketsTCP                             // frames whose L4 is TCP (non-first fragments excluded)
	PacketsMPTCP                           // TCP frames carrying at least one MPTCP option
	NumPacketCounters int           = iota
)

var packetNames = [...]string{PacketsTotal: "total", PacketsTCP: "tcp", PacketsMPTCP: "mptcp"}

// String is the counter's stable name.
func (p PacketCounter) String() string {
	if int(p) < len(packetNames) {
		return packetNames[p]
	}
	return fmt.Sprintf("packets(%d)", uint8(p))
}
