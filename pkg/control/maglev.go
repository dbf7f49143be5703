// Package control is the balancer's control plane: the Maglev lookup table and the backend set it is
// built from, next-hop resolution from the kernel's neighbour table, the consumer of the datapath's
// ring buffer of events, garbage collection of idle flows and tokens, and the per-VIP policy.
//
// The pure parts (Maglev, backend set, policy) need no kernel; neighbour resolution needs netlink
// (any Linux), the event consumer a BPF ring buffer (Linux 5.8).
package control

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// RingSize is the size of one VIP's Maglev lookup table, LB_RING_SIZE in bpf/include/mx_lb_types.h:
// a prime much larger than the number of backends, so that every backend's share is within a small
// fraction of its weight's share (the Maglev paper uses M ≥ 100·N).
const RingSize = 65537

// NoBackend fills the slots of a table built from no usable backend.
const NoBackend = ^uint32(0)

// MaglevEntry is one backend as the table builder sees it: a stable identity (what the
// permutation is derived from, so a backend keeps its preferences across rebuilds), the id written
// into the table, and a weight.
type MaglevEntry struct {
	Name   string // stable identity, e.g. the backend address "10.2.0.2"
	ID     uint32 // written into the table slots the backend owns
	Weight uint32 // relative share; 0 takes no slot
}

// Maglev builds a lookup table of size m (a prime) as in Eisenbud et al., "Maglev: A Fast and
// Reliable Software Network Load Balancer" (NSDI 2016), §3.4: every backend walks its own
// permutation of the slots (offset + j·skip mod m, offset and skip from two hashes of its name) and,
// taking turns, claims its next preferred slot that is still free until the table is full.
//
// Weights follow the paper's suggestion of adjusting the relative frequency of the backends' turns:
// in each round every backend adds its weight to a credit and takes one turn each time the credit
// reaches the largest weight (the rule Katran's Maglev v2 uses), so a backend with half the largest
// weight takes a turn every other round. Backends are considered in the order of their names, so the
// table depends only on the set, not on the order it is given in.
func Maglev(entries []MaglevEntry, m int) ([]uint32, error) {
	if m < 2 || !isPrime(m) {
		return nil, fmt.Errorf("maglev: table size %d is not a prime", m)
	}
	table := make([]uint32, m)
	for i := range table {
		table[i] = NoBackend
	}
	type state struct {
		offset, skip, next uint64
		weight, credit     uint64
		id                 uint32
	}
	var bs []state
	seen := make(map[string]bool, len(entries))
	var maxW uint64
	for _, e := range sortedByName(entries) {
		if seen[e.Name] {
			return nil, fmt.Errorf("maglev: backend %q given twice", e.Name)
		}
		seen[e.Name] = true
		if e.Weight == 0 {
			continue
		}
		if e.ID == NoBackend {
			return nil, fmt.Errorf("maglev: backend %q has the reserved id %#x", e.Name, e.ID)
		}
		h := sha256.Sum256([]byte(e.Name))
		h1 := binary.BigEndian.Uint64(h[0:8])
		h2 := binary.BigEndian.Uint64(h[8:16])
		bs = append(bs, state{
			offset: h1 % uint64(m),
			skip:   h2%uint64(m-1) + 1,
			weight: uint64(e.Weight),
			id:     e.ID,
		})
		maxW = max(maxW, uint64(e.Weight))
	}
	if len(bs) == 0 {
		return table, nil
	}
	if len(bs) > m {
		return nil, fmt.Errorf("maglev: %d backends for a table of %d slots", len(bs), m)
	}
	filled := 0
	for {
		for i := range bs {
			b := &bs[i]
			b.credit += b.weight
			if b.credit < maxW {
				continue
			}
			b.credit -= maxW
			// The backend's next preferred slot that is still free. A permutation visits every slot
			// once (skip and m are coprime), so this ends while any slot is free.
			for {
				slot := (b.offset + b.next*b.skip) % uint64(m)
				b.next++
				if table[slot] == NoBackend {
					table[slot] = b.id
					filled++
					break
				}
			}
			if filled == m {
				return table, nil
			}
		}
	}
}

func sortedByName(in []MaglevEntry) []MaglevEntry {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b MaglevEntry) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// ErrNoBackend is returned where a usable backend is needed and there is none.
var ErrNoBackend = errors.New("no usable backend")
