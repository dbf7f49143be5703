package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// Policy is how a balancer treats its VIPs' traffic.
type Policy struct {
	Forward      lb.Forward     // l2 (backends on a link of the balancer) or ipip
	UnknownJoin  lb.UnknownJoin // what happens to an MP_JOIN SYN with an unknown token
	JoinSteering bool           // steer MP_JOIN SYNs by token (false: plain 5-tuple balancing)
}

// DefaultPolicy steers joins, drops unknown ones and forwards at layer 2.
var DefaultPolicy = Policy{Forward: lb.ForwardL2, UnknownJoin: lb.JoinDrop, JoinSteering: true}

// PolicyUpdate changes some of a VIP's policy: a nil field keeps the VIP's current value
// (DefaultPolicy's for a new VIP), so that attaching again with only --vip changes nothing.
type PolicyUpdate struct {
	Forward      *lb.Forward
	UnknownJoin  *lb.UnknownJoin
	JoinSteering *bool
}

// Set is the update that sets every field to p's.
func (p Policy) Set() PolicyUpdate {
	return PolicyUpdate{Forward: &p.Forward, UnknownJoin: &p.UnknownJoin, JoinSteering: &p.JoinSteering}
}

// apply returns p with the fields u sets.
func (u PolicyUpdate) apply(p Policy) Policy {
	if u.Forward != nil {
		p.Forward = *u.Forward
	}
	if u.UnknownJoin != nil {
		p.UnknownJoin = *u.UnknownJoin
	}
	if u.JoinSteering != nil {
		p.JoinSteering = *u.JoinSteering
	}
	return p
}

// Balancer is the control plane of one balancer: its pinned maps, the backend set they hold and
// the resolver of its network namespace. Every change is written to the maps at once, so any
// number of short-lived processes (the CLI) and one long-running one (`lb run`) can share a
// balancer. A balancer from Open or Attach makes every change (PutVIP, DeleteVIP, AddBackends,
// Drain, Remove) under the loader's lock, on the backend set re-read once the lock is held.
type Balancer struct {
	Maps    *lb.Maps
	Weights *ebpf.Map // backend id → weight, the control plane's own pinned map
	// Health is the control plane's pinned map of (VIP, backend) health (loader.PinLBHealth): a
	// backend down for a VIP takes no slot of that VIP's table. Nil: nothing is checked.
	Health   *ebpf.Map
	Resolver *Resolver

	set      *BackendSet
	health   map[loader.HealthKey]loader.HealthEntry // Health as read by the last reload
	removing []uint32                                // ids whose removal was begun (weight 0) and not finished

	// Set by Open and Attach.
	loader *loader.Loader
	netns  string // as given (`ip netns` name, or empty)
	nsDir  string // as the pins name it
	pinned *loader.LBMaps
	lock   func() (func(), error)
}

// OpenBalancer reads the backend set back from maps that the caller opened (and closes), for a
// balancer loaded without pins. The resolver is used, and owned, by the balancer from then on
// (Close closes it). Changes take no lock: the caller serialises them.
func OpenBalancer(maps *lb.Maps, weights *ebpf.Map, res *Resolver) (*Balancer, error) {
	return openBalancer(maps, weights, nil, res)
}

// openBalancer is OpenBalancer with a health map (nil: none).
func openBalancer(maps *lb.Maps, weights, health *ebpf.Map, res *Resolver) (*Balancer, error) {
	b := &Balancer{Maps: maps, Weights: weights, Health: health, Resolver: res, lock: func() (func(), error) { return func() {}, nil }}
	if err := b.reload(); err != nil {
		return nil, err
	}
	return b, nil
}

// Close releases the resolver, and the pinned maps of a balancer from Open or Attach.
func (b *Balancer) Close() {
	if b.Resolver != nil {
		b.Resolver.Close()
	}
	if b.pinned != nil {
		b.pinned.Close()
	}
}

func (b *Balancer) reload() error {
	bes, err := b.Maps.ListBackends()
	if err != nil {
		return err
	}
	var existing []Backend
	b.removing = b.removing[:0]
	for _, e := range bes {
		var w uint32
		if err := b.Weights.Lookup(e.ID, &w); err != nil {
			return fmt.Errorf("read weight of backend %d: %w", e.ID, err)
		}
		if w == 0 {
			// Remove writes weight 0 first: a process stopped after that left the removal to
			// finish (finishRemovals), and the backend is not one of the set any more.
			b.removing = append(b.removing, e.ID)
			continue
		}
		st := Active
		if e.Draining {
			st = Draining
		}
		existing = append(existing, Backend{ID: e.ID, Addr: e.Addr, Weight: w, State: st})
	}
	set, err := NewBackendSet(int(b.Backends().MaxEntries()), existing...)
	if err != nil {
		return fmt.Errorf("backend table: %w", err)
	}
	health, err := loader.ReadHealth(b.Health)
	if err != nil {
		return err
	}
	b.set, b.health = set, health
	return nil
}

// Backends is the datapath's backend table.
func (b *Balancer) Backends() *ebpf.Map { return b.Maps.Backends }

// onLink reports whether backends must be on a link of the balancer: any VIP forwarding at l2.
func (b *Balancer) onLink() (bool, error) {
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return false, err
	}
	for _, v := range vips {
		if v.Forward == lb.ForwardL2 {
			return true, nil
		}
	}
	return false, nil
}

// PutVIP adds a VIP (or changes its policy), giving it the lowest free ring id, and writes its
// Maglev table.
func (b *Balancer) PutVIP(addr netip.AddrPort, p Policy) (v lb.VIP, err error) {
	return b.UpdateVIP(addr, p.Set())
}

// UpdateVIP adds a VIP with DefaultPolicy changed by u, or changes the fields u sets of an
// existing VIP's policy. A VIP that starts forwarding at l2 is refused while a backend is not on a
// link of the balancer.
func (b *Balancer) UpdateVIP(addr netip.AddrPort, u PolicyUpdate) (v lb.VIP, err error) {
	err = b.locked(func() error { v, err = b.putVIP(addr, u); return err })
	return v, err
}

func (b *Balancer) putVIP(addr netip.AddrPort, u PolicyUpdate) (lb.VIP, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if err := b.checkVIP(addr); err != nil {
		return lb.VIP{}, err
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return lb.VIP{}, err
	}
	used := map[uint32]bool{}
	cur, found := DefaultPolicy, false
	v := lb.VIP{Addr: addr, ID: lb.MaxVIPs}
	for _, o := range vips {
		used[o.ID] = true
		if o.Addr == addr {
			v.ID, found = o.ID, true
			cur = Policy{Forward: o.Forward, UnknownJoin: o.UnknownJoin, JoinSteering: o.JoinSteering}
		}
	}
	p := u.apply(cur)
	v.Forward, v.UnknownJoin, v.JoinSteering = p.Forward, p.UnknownJoin, p.JoinSteering
	if p.Forward == lb.ForwardL2 && (!found || cur.Forward != lb.ForwardL2) && b.Resolver != nil {
		for _, be := range b.set.List() {
			if _, err := b.Resolver.Route(be.Addr, true); err != nil {
				return lb.VIP{}, fmt.Errorf("vip %s: l2 forwarding needs every backend on a link of the balancer: %w", addr, err)
			}
		}
	}
	if v.ID == lb.MaxVIPs {
		var err error
		if v.ID, err = b.freeVIPID(used, "vip", addr); err != nil {
			return lb.VIP{}, err
		}
		// A new VIP inherits nothing of a deleted one that had its id.
		if err := b.clearHealth(func(k loader.HealthKey) bool { return k.VIP == v.ID }); err != nil {
			return lb.VIP{}, err
		}
	}
	// The table first, so that the VIP never answers with an empty one.
	if err := b.writeRing(v.ID); err != nil {
		return lb.VIP{}, err
	}
	if err := stepDone("vip: table written"); err != nil {
		return lb.VIP{}, err
	}
	if err := b.Maps.PutVIP(v); err != nil {
		return lb.VIP{}, err
	}
	slog.Debug("vip", "addr", v.Addr, "id", v.ID, "forward", v.Forward, "unknown_join", v.UnknownJoin, "join_steering", v.JoinSteering)
	return v, nil
}

// checkVIP refuses what cannot be a service address: no port, an unspecified, multicast,
// broadcast or loopback address, a backend's address, or an address of the balancer itself (its
// own traffic would be balanced away).
func (b *Balancer) checkVIP(addr netip.AddrPort) error {
	a := addr.Addr()
	switch {
	case !a.IsValid() || addr.Port() == 0:
		return fmt.Errorf("vip %s: want ADDR:PORT with a port", addr)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("vip %s: an unspecified, multicast, broadcast or loopback address cannot be a service address", addr)
	}
	for _, be := range b.set.List() {
		if be.Addr == a {
			return fmt.Errorf("vip %s: %s is a backend's address", addr, a)
		}
	}
	if b.Resolver != nil {
		local, err := b.Resolver.IsLocal(a)
		if err != nil {
			return fmt.Errorf("vip %s: %w", addr, err)
		}
		if local {
			return fmt.Errorf("vip %s: %s is an address of the balancer itself (its own traffic would be balanced away)", addr, a)
		}
	}
	return nil
}

// DeleteVIP removes a VIP and its tokens, and its backends' health; its traffic goes to the
// balancer's stack again.
func (b *Balancer) DeleteVIP(addr netip.AddrPort) error {
	return b.locked(func() error {
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
		vips, err := b.Maps.ListVIPs()
		if err != nil {
			return err
		}
		if err := b.Maps.DeleteVIP(addr); err != nil {
			return err
		}
		for _, v := range vips {
			if v.Addr == addr {
				return b.clearHealth(func(k loader.HealthKey) bool { return k.VIP == v.ID })
			}
		}
		return nil
	})
}

func (b *Balancer) writeRing(vipID uint32) error {
	table, err := b.vipTable(vipID, nil)
	if err != nil {
		return err
	}
	return b.Maps.WriteRing(vipID, table)
}

// vipTable is the Maglev table of VIP vipID: the set's active backends without those its health
// checks hold down. all, if not nil, is the table of every active backend (reused when none is
// down for this VIP). The table is a pure function of the backend set and the health map, so
// every process (and every instance of a fleet that sees the same health) computes the same.
func (b *Balancer) vipTable(vipID uint32, all []uint32) ([]uint32, error) {
	down := map[uint32]bool{}
	for k, e := range b.health {
		if k.VIP == vipID && e.State == loader.HealthDown {
			down[k.Backend] = true
		}
	}
	if len(down) == 0 && all != nil {
		return all, nil
	}
	return b.set.Table(func(be Backend) bool { return !down[be.ID] })
}

// clearHealth deletes the health entries that match (and their copy read by reload); the caller
// holds the lock.
func (b *Balancer) clearHealth(match func(loader.HealthKey) bool) error {
	if b.Health == nil {
		return nil
	}
	for k := range b.health {
		if !match(k) {
			continue
		}
		if err := b.Health.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear health of backend %d for vip %d: %w", k.Backend, k.VIP, err)
		}
		delete(b.health, k)
	}
	return nil
}

// rebuild rewrites every VIP's table from the current set.
func (b *Balancer) rebuild() error { return b.writeRings(false) }

// writeRings writes the table the set and the health map compute for each VIP (vipTable) into
// its ring; with onlyDiffering, only into the rings that hold another one.
func (b *Balancer) writeRings(onlyDiffering bool) error {
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return err
	}
	all, err := b.set.Table(nil)
	if err != nil {
		return err
	}
	for _, v := range vips {
		if v.JoinPort {
			continue // its owner in every slot (PutJoinPort), whatever the set
		}
		table, err := b.vipTable(v.ID, all)
		if err != nil {
			return err
		}
		if onlyDiffering {
			ring, err := b.Maps.ReadRing(v.ID)
			if err != nil {
				return err
			}
			if slices.Equal(ring, table) {
				continue
			}
			slog.Info("vip table rewritten: it differed from the backend set's", "vip", v.Addr, "id", v.ID)
		}
		if err := b.Maps.WriteRing(v.ID, table); err != nil {
			return err
		}
		if err := stepDone("rebuild: a vip table written"); err != nil {
			return err
		}
	}
	return nil
}

// AddBackends adds backends (or updates their weight, or reactivates draining ones): each is
// resolved to its next hop first (waiting for the neighbour until ctx ends), written to the backend
// table, and then the tables of every VIP are rebuilt once.
func (b *Balancer) AddBackends(ctx context.Context, specs ...BackendSpec) (out []Backend, err error) {
	err = b.locked(func() error { out, err = b.addBackends(ctx, specs...); return err })
	return out, err
}

func (b *Balancer) addBackends(ctx context.Context, specs ...BackendSpec) (out []Backend, err error) {
	onLink, err := b.onLink()
	if err != nil {
		return nil, err
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return nil, err
	}
	// Whatever fails, the tables are rebuilt from the set: the backends this call wrote before the
	// failure are in them, the one that failed is not.
	defer func() { err = errors.Join(err, b.rebuild()) }()
	// In address order, so that the ids one call gives do not depend on the order of its flags.
	specs = slices.Clone(specs)
	slices.SortStableFunc(specs, func(x, y BackendSpec) int { return x.Addr.Unmap().Compare(y.Addr.Unmap()) })
	for _, s := range specs {
		for _, v := range vips {
			if v.Addr.Addr() == s.Addr.Unmap() {
				return out, fmt.Errorf("backend %s: the address of VIP %s", s.Addr, v.Addr)
			}
		}
		nh, err := b.Resolver.Resolve(ctx, s.Addr, onLink)
		if err != nil {
			return out, fmt.Errorf("backend %s: %w", s.Addr, err)
		}
		_, known := b.set.byAddr[s.Addr.Unmap()]
		be, err := b.set.Add(s)
		if err != nil {
			return out, err
		}
		if !known {
			// A new backend may get the id of a removed one whose flows and tokens GC has not
			// collected yet: it must not inherit them (their connections live on the old backend).
			if err := b.purge(be.ID); err != nil {
				_, _ = b.set.Remove(be.Addr)
				return out, fmt.Errorf("backend %s: clear the state of its id %d: %w", s.Addr, be.ID, err)
			}
			if err := stepDone("add: id purged"); err != nil {
				return out, err
			}
		}
		// The weight first: an entry without its weight would read back as a removal begun.
		if err := b.Weights.Put(be.ID, be.Weight); err != nil {
			return out, b.undoAdd(known, be, fmt.Errorf("write weight of backend %d: %w", be.ID, err))
		}
		if err := stepDone("add: weight written"); err != nil {
			return out, err
		}
		if err := b.putBackend(be, nh); err != nil {
			return out, b.undoAdd(known, be, err)
		}
		if err := stepDone("add: entry written"); err != nil {
			return out, err
		}
		slog.Debug("backend added", "addr", be.Addr, "id", be.ID, "weight", be.Weight, "iface", nh.Iface, "mac", nh.DstMAC.String())
		out = append(out, be)
	}
	return out, nil
}

// undoAdd takes a new backend whose add failed out of the set and the maps again (an existing
// backend keeps its entry), and returns err.
func (b *Balancer) undoAdd(known bool, be Backend, err error) error {
	if !known {
		_, _ = b.set.Remove(be.Addr)
		_ = b.Maps.DeleteBackend(be.ID)
		_ = b.Weights.Put(be.ID, uint32(0))
	}
	return err
}

// PutJoinPort makes addr (a VIP's address with a backend's join port, `lb backend-setup` on that
// backend) route every packet to backend owner, forwarded as forward: a VIP entry whose ring holds
// owner in every slot, without join steering. Every balancer given the same join ports routes the
// joins alike, with no state. The owner must be one of the backends.
func (b *Balancer) PutJoinPort(addr netip.AddrPort, owner netip.Addr, forward lb.Forward) (v lb.VIP, err error) {
	err = b.locked(func() error { v, err = b.putJoinPort(addr, owner, forward); return err })
	return v, err
}

func (b *Balancer) putJoinPort(addr netip.AddrPort, owner netip.Addr, forward lb.Forward) (lb.VIP, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if err := b.checkVIP(addr); err != nil {
		return lb.VIP{}, err
	}
	be, ok := b.set.Get(owner)
	if !ok {
		return lb.VIP{}, fmt.Errorf("join port %s: backend %s is not one of the balancer's", addr, owner)
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return lb.VIP{}, err
	}
	used := map[uint32]bool{}
	v := lb.VIP{Addr: addr, ID: lb.MaxVIPs, Forward: forward, UnknownJoin: lb.JoinPass, JoinPort: true}
	for _, o := range vips {
		used[o.ID] = true
		if o.Addr == addr {
			if !o.JoinPort {
				return lb.VIP{}, fmt.Errorf("join port %s: a VIP of its own already", addr)
			}
			v.ID = o.ID
		}
	}
	if v.ID == lb.MaxVIPs {
		var err error
		if v.ID, err = b.freeVIPID(used, "join port", addr); err != nil {
			return lb.VIP{}, err
		}
	}
	ring := make([]uint32, lb.RingSize)
	for i := range ring {
		ring[i] = be.ID
	}
	if err := b.Maps.WriteRing(v.ID, ring); err != nil {
		return lb.VIP{}, err
	}
	if err := b.Maps.PutVIP(v); err != nil {
		return lb.VIP{}, err
	}
	slog.Debug("join port", "addr", v.Addr, "id", v.ID, "backend", owner, "forward", v.Forward)
	return v, nil
}

// freeVIPID returns the lowest ring id not in used.
func (b *Balancer) freeVIPID(used map[uint32]bool, what string, addr netip.AddrPort) (uint32, error) {
	for id := uint32(0); id < b.Maps.Ring.MaxEntries()/lb.RingSize; id++ {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%s %s: the VIP table is full", what, addr)
}

// JoinPortOwner returns the backend id a join port's ring holds.
func (b *Balancer) JoinPortOwner(v lb.VIP) (uint32, error) {
	var id uint32
	if err := b.Maps.Ring.Lookup(v.ID*lb.RingSize, &id); err != nil {
		return 0, fmt.Errorf("join port %s: read its ring: %w", v.Addr, err)
	}
	return id, nil
}

// deleteJoinPorts deletes the join ports of backend id.
func (b *Balancer) deleteJoinPorts(id uint32) error {
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return err
	}
	for _, v := range vips {
		if !v.JoinPort {
			continue
		}
		owner, err := b.JoinPortOwner(v)
		if err != nil {
			return err
		}
		if owner == id {
			if err := b.Maps.DeleteVIP(v.Addr); err != nil {
				return err
			}
		}
	}
	return nil
}

// purge deletes every flow and token that points at backend id, its join ports and its health.
func (b *Balancer) purge(id uint32) error {
	if err := b.deleteJoinPorts(id); err != nil {
		return err
	}
	if err := b.clearHealth(func(k loader.HealthKey) bool { return k.Backend == id }); err != nil {
		return err
	}
	flows, err := b.Maps.ListFlows()
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range flows {
		if f.Backend == id {
			if err := b.Maps.DeleteFlows([]lb.Flow{f}); err != nil {
				errs = append(errs, err)
			}
		}
	}
	tokens, err := b.Maps.ListTokens()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, t := range tokens {
		if t.Backend == id {
			if err := b.Maps.DeleteToken(t.VIPID, t.Token); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// mtuOf is the MTU the backend entry holds for next hop nh (lb.Backend.MTU: 0 for one that does
// not fit it).
func mtuOf(nh NextHop) int {
	if nh.MTU <= 0 || nh.MTU > 0xffff {
		return 0
	}
	return nh.MTU
}

func (b *Balancer) putBackend(be Backend, nh NextHop) error {
	return b.Maps.PutBackend(lb.Backend{
		ID: be.ID, Addr: be.Addr, SrcAddr: nh.SrcAddr, MAC: nh.DstMAC, SrcMAC: nh.SrcMAC,
		Ifindex: nh.Ifindex, Draining: be.State == Draining, MTU: nh.MTU,
	})
}

// Drain stops new connections to a backend: it leaves every VIP's table (and is flagged draining,
// which the datapath also honours for the moment until the tables are rewritten); its flows and the
// joins of its connections still reach it.
func (b *Balancer) Drain(addrs ...netip.Addr) ([]Backend, error) { return b.each(addrs, b.drain) }

// each applies fn to every address under one hold of the lock, stopping at the first error.
func (b *Balancer) each(addrs []netip.Addr, fn func(netip.Addr) (Backend, error)) (out []Backend, err error) {
	err = b.locked(func() error {
		for _, a := range addrs {
			be, err := fn(a)
			if err != nil {
				return err
			}
			out = append(out, be)
		}
		return nil
	})
	return out, err
}

func (b *Balancer) drain(addr netip.Addr) (Backend, error) {
	be, err := b.set.Drain(addr)
	if err != nil {
		return be, err
	}
	cur, ok, err := b.Maps.Backend(be.ID)
	if err != nil {
		return be, err
	}
	if ok {
		cur.Draining = true
		if err := b.Maps.PutBackend(cur); err != nil {
			return be, err
		}
		if err := stepDone("drain: entry flagged"); err != nil {
			return be, err
		}
	}
	slog.Debug("backend draining", "addr", be.Addr, "id", be.ID)
	return be, b.rebuild()
}

// Remove takes a backend out: the tables first, then its entry, so that its flows are placed anew
// and its connections' joins follow the unknown-join policy.
func (b *Balancer) Remove(addrs ...netip.Addr) ([]Backend, error) { return b.each(addrs, b.remove) }

// The steps are ordered so that a process stopped between any two leaves a state the next change
// (of any process) completes: weight 0 first marks the removal as begun (reload then leaves the
// backend out of the set, and finishRemovals ends the removal), then the tables without it, then
// its entry.
func (b *Balancer) remove(addr netip.Addr) (Backend, error) {
	be, err := b.set.Remove(addr)
	if err != nil {
		return be, err
	}
	if err := b.Weights.Put(be.ID, uint32(0)); err != nil {
		return be, fmt.Errorf("clear weight of backend %d: %w", be.ID, err)
	}
	if err := stepDone("remove: weight cleared"); err != nil {
		return be, err
	}
	if err := b.rebuild(); err != nil {
		return be, err
	}
	if err := stepDone("remove: tables rebuilt"); err != nil {
		return be, err
	}
	if err := b.deleteJoinPorts(be.ID); err != nil {
		return be, err
	}
	if err := b.Maps.DeleteBackend(be.ID); err != nil {
		return be, err
	}
	if err := b.clearHealth(func(k loader.HealthKey) bool { return k.Backend == be.ID }); err != nil {
		return be, err
	}
	slog.Debug("backend removed", "addr", be.Addr, "id", be.ID)
	return be, nil
}

// stepHook, when set (by tests), runs after each step of a multi-step change; an error stops the
// change there, as a process killed at that point would.
var stepHook func(step string) error

func stepDone(step string) error {
	if stepHook == nil {
		return nil
	}
	return stepHook(step)
}

// finishRemovals ends the removals that a stopped process began: the tables without those
// backends, then their entries.
func (b *Balancer) finishRemovals() error {
	if len(b.removing) == 0 {
		return nil
	}
	if err := b.rebuild(); err != nil {
		return err
	}
	for _, id := range b.removing {
		if err := b.Maps.DeleteBackend(id); err != nil {
			return err
		}
		slog.Info("finished the removal of a backend begun by a stopped process", "id", id)
	}
	b.removing = b.removing[:0]
	return nil
}

// List returns the backend set ordered by id.
func (b *Balancer) List() []Backend { return b.set.List() }

// RefreshNextHops re-reads every backend's next hop from the kernel and rewrites the entries whose
// MAC, interface or source changed; a backend whose neighbour the kernel has lost is solicited and
// keeps its last known MAC meanwhile. It returns the backends it rewrote.
func (b *Balancer) RefreshNextHops(ctx context.Context) ([]Backend, error) {
	onLink, err := b.onLink()
	if err != nil {
		return nil, err
	}
	var changed []Backend
	var errs []error
	for _, be := range b.set.List() {
		cur, ok, err := b.Maps.Backend(be.ID)
		if err != nil || !ok {
			errs = append(errs, err)
			continue
		}
		nh, err := b.Resolver.Lookup(be.Addr, onLink)
		if err != nil {
			errs = append(errs, fmt.Errorf("backend %s: %w", be.Addr, err))
			continue
		}
		if nh.DstMAC == nil {
			slog.Warn("backend neighbour unresolved: soliciting, keeping the last MAC", "addr", be.Addr, "state", nh.State, "mac", cur.MAC.String())
			_ = b.Resolver.solicit(nh)
			continue
		}
		if bytes.Equal(nh.DstMAC, cur.MAC) && bytes.Equal(nh.SrcMAC, cur.SrcMAC) && nh.Ifindex == cur.Ifindex &&
			(!nh.SrcAddr.IsValid() || nh.SrcAddr == cur.SrcAddr) && mtuOf(nh) == cur.MTU {
			continue
		}
		if !nh.SrcAddr.IsValid() {
			nh.SrcAddr = cur.SrcAddr
		}
		if err := b.putBackend(be, nh); err != nil {
			errs = append(errs, err)
			continue
		}
		slog.Info("backend next hop changed", "addr", be.Addr, "id", be.ID, "mac", nh.DstMAC.String(), "was", cur.MAC.String(),
			"iface", nh.Iface, "mtu", nh.MTU, "mtu_was", cur.MTU)
		changed = append(changed, be)
	}
	return changed, errors.Join(slices.DeleteFunc(errs, func(e error) bool { return e == nil })...)
}

// Watches reports whether a neighbour event concerns one of the backends (or their gateways).
func (b *Balancer) Watches(ev NeighEvent) bool {
	for _, be := range b.set.List() {
		if be.Addr == ev.Addr {
			return true
		}
	}
	cur, err := b.Maps.ListBackends()
	if err != nil {
		return true
	}
	for _, c := range cur {
		if c.Ifindex == ev.Ifindex {
			return true // a gateway of an ipip backend, or a neighbour on a backend link
		}
	}
	return false
}
