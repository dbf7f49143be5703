package control

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// Change is one step Reconcile took.
type Change struct {
	What string `json:"what"` // interface, vip, backend
	Op   string `json:"op"`   // attach, detach, put, delete, add, weight, remove
	Name string `json:"name"`
}

func (c Change) String() string { return c.Op + " " + c.What + " " + c.Name }

// Reconcile makes the balancer of network namespace netns what d describes and returns it open,
// with the steps it took: it attaches to the interfaces of d (loading the balancer on the first
// attach), puts each VIP with its policy, adds the backends or changes their weights, and then
// removes the VIPs, backends and interfaces d does not name. What already matches is not touched,
// so steering is never interrupted; each step runs under the loader's lock, as `lb attach` and
// `lb backend` do.
func Reconcile(ctx context.Context, l *loader.Loader, netns string, d *Desired) (_ *Balancer, changes []Change, err error) {
	before, _ := l.LBLinks(netns, false) // none before a first attach
	var was []string
	for _, k := range before {
		was = append(was, k.Interface)
	}
	var oldVIPs map[netip.AddrPort]Policy
	var oldBackends map[netip.Addr]uint32
	if len(was) != 0 {
		if b, err := Open(l, netns); err == nil {
			oldVIPs, oldBackends = map[netip.AddrPort]Policy{}, map[netip.Addr]uint32{}
			if vs, err := b.Maps.ListVIPs(); err == nil {
				for _, v := range vs {
					oldVIPs[v.Addr] = Policy{Forward: v.Forward, UnknownJoin: v.UnknownJoin, JoinSteering: v.JoinSteering}
				}
			}
			for _, be := range b.List() {
				oldBackends[be.Addr] = be.Weight
			}
			b.Close()
		}
	}
	b, err := Attach(ctx, l, Spec{Netns: netns, Ifaces: d.Ifaces, Mode: d.Mode, Config: d.Config, Backends: d.Backends})
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	for _, i := range d.Ifaces {
		if !slices.Contains(was, i) {
			changes = append(changes, Change{"interface", "attach", i})
		}
	}
	for _, be := range d.Backends {
		w, ok := oldBackends[be.Addr]
		switch {
		case !ok:
			changes = append(changes, Change{"backend", "add", be.Addr.String()})
		case w != be.Weight:
			changes = append(changes, Change{"backend", "weight", fmt.Sprintf("%s %d -> %d", be.Addr, w, be.Weight)})
		}
	}
	want := map[netip.AddrPort]bool{}
	for _, v := range d.VIPs {
		want[v.Addr] = true
		if p, ok := oldVIPs[v.Addr]; ok && p == v.Policy {
			continue
		}
		if _, err := b.PutVIP(v.Addr, v.Policy); err != nil {
			return nil, changes, err
		}
		changes = append(changes, Change{"vip", "put", v.Addr.String()})
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return nil, changes, err
	}
	for _, jp := range d.JoinPorts {
		want[jp.Addr] = true
		owner, _ := b.set.Get(jp.Owner)
		same := false
		for _, v := range vips {
			if v.Addr == jp.Addr && v.JoinPort && v.Forward == jp.Forward {
				id, err := b.JoinPortOwner(v)
				same = err == nil && id == owner.ID
			}
		}
		if same {
			continue
		}
		if _, err := b.PutJoinPort(jp.Addr, jp.Owner, jp.Forward); err != nil {
			return nil, changes, err
		}
		changes = append(changes, Change{"join_port", "put", jp.Addr.String() + " -> " + jp.Owner.String()})
	}
	if vips, err = b.Maps.ListVIPs(); err != nil {
		return nil, changes, err
	}
	for _, v := range vips {
		if !want[v.Addr] {
			if err := b.DeleteVIP(v.Addr); err != nil {
				return nil, changes, err
			}
			changes = append(changes, Change{"vip", "delete", v.Addr.String()})
		}
	}
	keep := map[netip.Addr]bool{}
	for _, be := range d.Backends {
		keep[be.Addr] = true
	}
	for _, be := range b.List() {
		if !keep[be.Addr] {
			if _, err := b.Remove(be.Addr); err != nil {
				return nil, changes, err
			}
			changes = append(changes, Change{"backend", "remove", be.Addr.String()})
		}
	}
	var gone []string
	for _, i := range was {
		if !slices.Contains(d.Ifaces, i) {
			gone = append(gone, i)
		}
	}
	if len(gone) != 0 {
		if err := l.DetachLBIfaces(netns, gone); err != nil {
			return nil, changes, err
		}
		for _, i := range gone {
			changes = append(changes, Change{"interface", "detach", i})
		}
	}
	return b, changes, nil
}
