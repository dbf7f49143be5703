package control

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// This file is the balancer's Go entry point: what the CLI, the demo and the tests call. Open a
// pinned balancer with Open (or make and configure one with Attach); every change a Balancer makes
// then runs under the loader's lock, on the backend set read back from the pinned maps once the
// lock is held, so that concurrent invocations serialise and none works from a stale view.

// Spec is what Attach makes of a network namespace's balancer: its program on Ifaces (added to the
// interfaces it is attached to already), each VIP with Policy, and the Backends.
type Spec struct {
	Netns    string           // `ip netns` name; empty for the caller's namespace
	Ifaces   []string         // interfaces to attach to
	VIPs     []netip.AddrPort // services (ADDR:PORT)
	Policy   PolicyUpdate     // of every VIP in VIPs: the fields it sets (Policy.Set() for all)
	Backends []BackendSpec    // resolved to their next hops, waiting up to ctx's deadline
	Mode     loader.XDPMode   // native (auto) or generic (only when asked: docs/lb.md)
	Force    bool             // replace another tool's netlink-attached XDP program, put back by Detach
	Config   lb.Config        // the balancer program's load-time settings (PinPath is the loader's)
	// Config.HashSeed (lb.HashSeed.Datapath of a seed file) 0 keeps the seed the attached program
	// runs with, or on a first attach the published default (with a warning); a seed other than
	// the running one is refused with ErrHashSeedChange unless Rehash is set (seed.go).
	// Config.NewFlowRate 0 keeps the running program's, or on a first attach the default.
	Rehash bool
}

// Open opens the balancer pinned for a network namespace and reads its backend set back. Close it
// when done. It takes no lock: reads need none (the maps are shared with the running datapath), and
// every change takes the loader's lock itself.
func Open(l *loader.Loader, netnsName string) (*Balancer, error) {
	m, err := l.OpenLB(netnsName)
	if err != nil {
		return nil, err
	}
	b, err := openPinned(l, netnsName, m)
	if err != nil {
		m.Close()
		return nil, err
	}
	return b, nil
}

func openPinned(l *loader.Loader, netnsName string, m *loader.LBMaps) (*Balancer, error) {
	nsDir, err := loader.NetnsDir(netnsName)
	if err != nil {
		return nil, err
	}
	res, err := NewResolver(netnsName)
	if err != nil {
		return nil, err
	}
	b, err := openBalancer(m.Maps, m.Weights, m.Health, res)
	if err != nil {
		res.Close()
		return nil, err
	}
	b.loader, b.netns, b.nsDir, b.pinned = l, netnsName, nsDir, m
	b.lock = l.Lock
	return b, nil
}

// ErrDetached is returned by Run when the balancer's pins are gone or are another balancer's (an
// `lb detach`, or a detach and attach again): the maps it holds steer nothing any more.
var ErrDetached = errors.New("the balancer's pins are gone or replaced")

// checkPins makes sure that the maps b works on are still the pinned, live ones.
func (b *Balancer) checkPins() error {
	if b.pinned == nil {
		return nil
	}
	path := filepath.Join(b.pinned.Dir, lb.MapVIPs)
	pinned, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrDetached, path, err)
	}
	defer pinned.Close()
	want, err1 := b.Maps.VIPs.Info()
	have, err2 := pinned.Info()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("check pins in %s: %w", b.pinned.Dir, err)
	}
	wid, _ := want.ID()
	hid, _ := have.ID()
	if wid != hid {
		return fmt.Errorf("%w: %s is map %d now, not %d", ErrDetached, path, hid, wid)
	}
	return nil
}

// Attach attaches the balancer of s.Netns to s.Ifaces (loading it and pinning its maps on the first
// attach), puts every VIP with s.Policy and adds the backends, holding the loader's lock from the
// first step to the last: no other invocation sees or changes the balancer half made. The returned
// balancer is open; Close it.
func Attach(ctx context.Context, l *loader.Loader, s Spec) (_ *Balancer, err error) {
	for _, v := range s.VIPs {
		if !v.Addr().IsValid() || v.Port() == 0 {
			return nil, fmt.Errorf("vip %s: want ADDR:PORT with a port", v)
		}
	}
	unlock, err := l.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if s.Config, err = hashSeedFor(l, s); err != nil {
		return nil, err
	}
	if s.Config, err = newFlowRateFor(l, s); err != nil {
		return nil, err
	}
	m, err := l.AttachLBLocked(loader.LBAttachOptions{Netns: s.Netns, Ifaces: s.Ifaces, Mode: s.Mode, Force: s.Force, Config: s.Config})
	if err != nil {
		return nil, err
	}
	b, err := openPinned(l, s.Netns, m)
	if err != nil {
		m.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			b.Close()
		}
	}()
	if err := b.finishRemovals(); err != nil {
		return nil, err
	}
	for _, v := range s.VIPs {
		if _, err := b.putVIP(v, s.Policy); err != nil {
			return nil, err
		}
	}
	if _, err := b.addBackends(ctx, s.Backends...); err != nil {
		return nil, err
	}
	return b, nil
}

// Detach removes the balancer: every link and every pin. The Balancer stays open (its maps still
// readable until Close) but steers nothing.
func (b *Balancer) Detach() error {
	if b.loader == nil {
		return errors.New("detach: balancer not opened from its pins")
	}
	return b.loader.DetachLB(b.netns)
}

// Netns is the balancer's network namespace as the pins name it ("host" for the initial one).
func (b *Balancer) Netns() string { return b.nsDir }

// PinDir is the directory of the balancer's pins; empty when it was not opened from them.
func (b *Balancer) PinDir() string {
	if b.pinned == nil {
		return ""
	}
	return b.pinned.Dir
}

// locked runs fn under the lock, on the backend set as the maps hold it once the lock is held.
func (b *Balancer) locked(fn func() error) error {
	unlock, err := b.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := b.resync(); err != nil {
		return err
	}
	return fn()
}

// resync reads the backend set back from the maps and finishes what a stopped process left half
// done; the caller holds the lock.
func (b *Balancer) resync() error {
	if err := b.reload(); err != nil {
		return err
	}
	return b.finishRemovals()
}
