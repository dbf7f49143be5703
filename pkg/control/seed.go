package control

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The balancer's hash seed across attaches. Every attach loads the program afresh, so the seed it
// runs with is decided on each: the one given (Spec.Config.HashSeed, from a seed file), or the one
// the running program has, or on a first attach without one the published default. A seed is
// never drawn at random: every balancer of a fleet given the same seed file places every flow
// alike, and a restart places flows as before.

// ErrHashSeedChange is returned by Attach when the seed given is not the one the balancer runs
// and Spec.Rehash is not set.
var ErrHashSeedChange = errors.New("the balancer runs another hash seed")

// hashSeedFor returns cfg with the seed the attach of s must load: the caller holds the lock.
func hashSeedFor(l *loader.Loader, s Spec) (lb.Config, error) {
	cfg := s.Config
	running, ok, err := runningHashSeed(l, s.Netns)
	if err != nil {
		return cfg, fmt.Errorf("read the running balancer's hash seed (to keep it): %w", err)
	}
	switch {
	case cfg.HashSeed == 0 && (!ok || running == lb.DefaultHashSeed):
		slog.Warn("no hash seed given: flows are placed by the published default seed, so a client can choose its backend; " +
			"give every balancer of a fleet the same seed file (lb attach --hash-seed-file, docs/lb.md)")
	case cfg.HashSeed == 0:
		cfg.HashSeed = running // keep it: an attach that adds an interface re-places nothing
	case ok && cfg.HashSeed != running && !s.Rehash:
		// Neither seed is printed: the error may end up in logs.
		return cfg, fmt.Errorf("%w: a new one re-places every flow the flow tables do not hold "+
			"(new connections, flows evicted or collected, unknown joins under unknown-join=hash); "+
			"give the seed file it was attached with, or ask for the change (--rehash, Spec.Rehash)", ErrHashSeedChange)
	case ok && cfg.HashSeed != running:
		slog.Warn("hash seed changed: flows the flow tables do not hold are placed anew")
	}
	return cfg, nil
}

// runningHashSeed reads the seed of the balancer program attached in a namespace; ok is false when
// none is attached (or every attachment is gone with its interface).
func runningHashSeed(l *loader.Loader, netnsName string) (seed uint32, ok bool, err error) {
	return runningU32(l, netnsName, lb.ProgramHashSeed)
}

// newFlowRateFor is s.Config with the new-flow rate guard's limit to load: the one given, else the
// running program's (an attach that adds an interface or a VIP changes no setting it was not
// given), else the datapath's default.
func newFlowRateFor(l *loader.Loader, s Spec) (lb.Config, error) {
	cfg := s.Config
	if cfg.NewFlowRate != 0 {
		return cfg, nil
	}
	running, ok, err := runningU32(l, s.Netns, lb.ProgramNewFlowRate)
	if err != nil {
		return cfg, fmt.Errorf("read the running balancer's new-flow rate (to keep it): %w", err)
	}
	switch {
	case !ok:
	case running == 0:
		cfg.NewFlowRate = lb.NewFlowRateUnlimited
	default:
		cfg.NewFlowRate = running
	}
	return cfg, nil
}

// runningU32 reads a setting (read) of the balancer program attached in a namespace; ok is false
// when none is attached (or every attachment is gone with its interface).
func runningU32(l *loader.Loader, netnsName string, read func(*ebpf.Program) (uint32, error)) (v uint32, ok bool, err error) {
	links, err := l.LBLinks(netnsName, false)
	if errors.Is(err, loader.ErrLBNotAttached) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	for _, ln := range links {
		if ln.ProgID == 0 {
			continue
		}
		prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(ln.ProgID))
		if err != nil {
			continue // gone since the listing
		}
		v, err := read(prog)
		prog.Close()
		if err != nil {
			return 0, false, fmt.Errorf("program %d on %s: %w", ln.ProgID, ln.Interface, err)
		}
		return v, true, nil
	}
	return 0, false, nil
}
