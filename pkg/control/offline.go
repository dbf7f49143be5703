package control

import (
	"context"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// Offline is a balancer loaded on its own: the committed program with maps of its own, nothing
// attached and nothing pinned, configured by the same code as an attached balancer (VIPs and their
// policy, the backend set, the Maglev tables). Frames are run through Program with
// BPF_PROG_TEST_RUN, which is how `replay --lb` shows what a balancer would do with a capture.
type Offline struct {
	*Balancer
	Program *ebpf.Program
	// Seed is the 5-tuple hash seed the program runs with (Spec.Config.HashSeed, or the default).
	Seed uint32

	prog    *lb.Balancer
	weights *ebpf.Map
}

// NewOffline loads a balancer for s's VIPs (each with s.Policy) and backends, whose next hops are
// hops (by address, one for each backend: Offline reads no routing or neighbour table). s.Netns,
// s.Ifaces, s.Mode, s.Force and s.Rehash are not used; s.Config.PinPath must be empty.
func NewOffline(s Spec, hops ...NextHop) (*Offline, error) {
	return NewOfflineConfig(s.Desired(), hops...)
}

// NewOfflineConfig is NewOffline for a config file's balancer: each VIP with its own policy.
func NewOfflineConfig(d *Desired, hops ...NextHop) (_ *Offline, err error) {
	if d.Config.PinPath != "" {
		return nil, errors.New("an offline balancer pins nothing")
	}
	prog, err := lb.Load(d.Config)
	if err != nil {
		return nil, err
	}
	o := &Offline{Program: prog.Program, Seed: d.Config.HashSeed, prog: prog}
	if o.Seed == 0 {
		o.Seed = lb.DefaultHashSeed
	}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	o.weights, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: prog.Backends.MaxEntries()})
	if err != nil {
		return nil, fmt.Errorf("weights map: %w", err)
	}
	if o.Balancer, err = OpenBalancer(prog.Maps, o.weights, NewStaticResolver(hops...)); err != nil {
		return nil, err
	}
	for _, v := range d.VIPs {
		if _, err := o.putVIP(v.Addr, v.Policy.Set()); err != nil {
			return nil, err
		}
	}
	if _, err := o.addBackends(context.Background(), d.Backends...); err != nil {
		return nil, err
	}
	for _, jp := range d.JoinPorts {
		if _, err := o.putJoinPort(jp.Addr, jp.Owner, jp.Forward); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// Close releases the program and its maps.
func (o *Offline) Close() {
	if o.Balancer != nil {
		o.Balancer.Close()
	}
	if o.weights != nil {
		o.weights.Close()
	}
	_ = o.prog.Close()
}
