package lb

// The balancer loaded on its own, without pkg/loader's attach and pins: for the packet tests
// (prog.Run) and benchmarks of this package, and for running a capture through the balancer
// (pkg/control's Offline, replay --lb). Programs attach through pkg/loader (pkg/control).

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Balancer is the loaded XDP program (attach it to every interface of the balancer) and its maps.
type Balancer struct {
	Program *ebpf.Program
	*Maps
	// scratch is the program's own per-CPU scratch map (option-scan state), which nothing outside
	// the program reads; Close closes it with the rest.
	scratch *ebpf.Map
	// guard is the new-flow rate guard's per-CPU window (struct lb_guard), the program's own too:
	// not pinned, so a program loaded again starts a fresh window.
	guard *ebpf.Map
	// guardOn is when any CPU's guard last refused a flow (the program's own, not pinned).
	guardOn *ebpf.Map
	// clock is the program's per-CPU clock cache (struct lb_clock, lb_now), sha its per-CPU
	// SHA-256 digest: its own too.
	clock, sha *ebpf.Map
}

// Load loads the balancer's program and creates (or, with cfg.PinPath, reuses) its maps.
func Load(cfg Config) (*Balancer, error) {
	spec, err := Spec(cfg)
	if err != nil {
		return nil, err
	}
	var objs datapath.LbObjects
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinPath}}
	if err := spec.LoadAndAssign(&objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load balancer program: %+v", ve)
		}
		return nil, fmt.Errorf("load balancer program: %w", err)
	}
	return &Balancer{
		Program: objs.MptcpxLb,
		Maps: &Maps{
			VIPs: objs.MptcpxVips, Backends: objs.MptcpxBackends, Ring: objs.MptcpxRing,
			Flows: objs.MptcpxFlows, Tokens: objs.MptcpxTokens, Stats: objs.MptcpxLbStats,
			Events: objs.MptcpxLbEvts, VIPStats: objs.MptcpxLbVstats, BackendStats: objs.MptcpxLbBstats,
			PFlows: objs.MptcpxPflows, PHint: objs.MptcpxLbPhint,
		},
		scratch: objs.MptcpxLbScr,
		guard:   objs.MptcpxLbGuard,
		guardOn: objs.MptcpxLbGuardOn,
		clock:   objs.MptcpxLbClock,
		sha:     objs.MptcpxLbSha,
	}, nil
}

// Close releases the program and every map Load opened (pinned maps stay pinned).
func (b *Balancer) Close() error {
	err := b.Program.Close()
	return errors.Join(err, b.Maps.Close(), b.scratch.Close(), b.guard.Close(), b.guardOn.Close(), b.clock.Close(), b.sha.Close())
}
