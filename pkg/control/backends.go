package control

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// BackendState is where a backend is in its life.
type BackendState string

// Backend states.
const (
	// Active backends get new connections, in proportion to their weight.
	Active BackendState = "active"
	// Draining backends get no new connection, but their existing flows, and the MP_JOIN subflows
	// of their existing connections, still reach them.
	Draining BackendState = "draining"
)

// DefaultWeight is the weight of a backend given without one.
const DefaultWeight = 1

// MaxWeight bounds a weight, so that one backend cannot starve the others of turns beyond what the
// table can express (65537 slots).
const MaxWeight = 1000

// Backend is one member of a balancer's backend set.
type Backend struct {
	ID     uint32       `json:"id"`     // index in the datapath's backend table, stable for its life
	Addr   netip.Addr   `json:"addr"`   // next hop (l2) or tunnel destination (ipip)
	Weight uint32       `json:"weight"` // relative share of new connections
	State  BackendState `json:"state"`
}

// BackendSpec is a backend as the command line gives it: ADDR[,weight=N].
type BackendSpec struct {
	Addr   netip.Addr
	Weight uint32
}

// ParseBackendSpec parses "ADDR[,weight=N]".
func ParseBackendSpec(s string) (BackendSpec, error) {
	addrPart, rest, _ := strings.Cut(s, ",")
	a, err := netip.ParseAddr(strings.TrimSpace(addrPart))
	if err != nil {
		return BackendSpec{}, fmt.Errorf("backend %q: %w", s, err)
	}
	spec := BackendSpec{Addr: a.Unmap(), Weight: DefaultWeight}
	for rest != "" {
		var kv string
		kv, rest, _ = strings.Cut(rest, ",")
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) != "weight" {
			return BackendSpec{}, fmt.Errorf("backend %q: unknown option %q (want weight=N)", s, kv)
		}
		w, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil || w == 0 || w > MaxWeight {
			return BackendSpec{}, fmt.Errorf("backend %q: weight %q: want 1 to %d", s, v, MaxWeight)
		}
		spec.Weight = uint32(w)
	}
	return spec, nil
}

// BackendSet is a balancer's backends. IDs are allocated lowest-free and never change while a
// backend is in the set, so flows and tokens that point at an id stay right across rebuilds. It is
// not safe for concurrent use.
type BackendSet struct {
	byAddr map[netip.Addr]*Backend
	max    int
}

// NewBackendSet returns a set holding existing (as read back from the datapath's pinned tables) and
// accepting up to max backends (ids 0..max-1).
func NewBackendSet(max int, existing ...Backend) (*BackendSet, error) {
	s := &BackendSet{byAddr: map[netip.Addr]*Backend{}, max: max}
	ids := map[uint32]bool{}
	for _, b := range existing {
		b.Addr = b.Addr.Unmap()
		if _, dup := s.byAddr[b.Addr]; dup {
			return nil, fmt.Errorf("backend %s listed twice", b.Addr)
		}
		if ids[b.ID] || int(b.ID) >= max {
			return nil, fmt.Errorf("backend %s: id %d is taken or out of range", b.Addr, b.ID)
		}
		if b.State == "" {
			b.State = Active
		}
		ids[b.ID] = true
		s.byAddr[b.Addr] = &b
	}
	return s, nil
}

// Add puts a backend in the set, or updates the weight of one already there; adding a draining
// backend makes it active again. It returns the backend as it now is.
func (s *BackendSet) Add(spec BackendSpec) (Backend, error) {
	a := spec.Addr.Unmap()
	if !a.IsValid() {
		return Backend{}, fmt.Errorf("backend: invalid address")
	}
	if spec.Weight == 0 {
		spec.Weight = DefaultWeight
	}
	if b, ok := s.byAddr[a]; ok {
		b.Weight, b.State = spec.Weight, Active
		return *b, nil
	}
	used := make(map[uint32]bool, len(s.byAddr))
	for _, b := range s.byAddr {
		used[b.ID] = true
	}
	for id := 0; id < s.max; id++ {
		if !used[uint32(id)] {
			b := &Backend{ID: uint32(id), Addr: a, Weight: spec.Weight, State: Active}
			s.byAddr[a] = b
			return *b, nil
		}
	}
	return Backend{}, fmt.Errorf("backend %s: the table is full (%d backends)", a, s.max)
}

// Drain stops new connections to a backend; its existing ones and their joins keep reaching it.
func (s *BackendSet) Drain(a netip.Addr) (Backend, error) {
	b, ok := s.byAddr[a.Unmap()]
	if !ok {
		return Backend{}, fmt.Errorf("backend %s: not in the set", a)
	}
	b.State = Draining
	return *b, nil
}

// Remove takes a backend out of the set. Its flows and tokens then point at a free id: the datapath
// treats them as unknown (their packets are rebalanced, their joins follow the unknown-join policy).
func (s *BackendSet) Remove(a netip.Addr) (Backend, error) {
	b, ok := s.byAddr[a.Unmap()]
	if !ok {
		return Backend{}, fmt.Errorf("backend %s: not in the set", a)
	}
	delete(s.byAddr, a.Unmap())
	return *b, nil
}

// Get returns the backend with address a.
func (s *BackendSet) Get(a netip.Addr) (Backend, bool) {
	b, ok := s.byAddr[a.Unmap()]
	if !ok {
		return Backend{}, false
	}
	return *b, true
}

// List returns the backends ordered by id.
func (s *BackendSet) List() []Backend {
	out := make([]Backend, 0, len(s.byAddr))
	for _, b := range s.byAddr {
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b Backend) int { return int(a.ID) - int(b.ID) })
	return out
}

// Table builds the Maglev lookup table of a VIP from the set's active backends that accept returns
// true for (nil: all), e.g. those of the VIP's address family in ipip mode.
func (s *BackendSet) Table(accept func(Backend) bool) ([]uint32, error) {
	var es []MaglevEntry
	for _, b := range s.List() {
		if b.State != Active || (accept != nil && !accept(b)) {
			continue
		}
		es = append(es, MaglevEntry{Name: b.Addr.String(), ID: b.ID, Weight: b.Weight})
	}
	return Maglev(es, RingSize)
}
