package control

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// slowStep is how long one step of the balancer loop may take before Run logs it.
const slowStep = 250 * time.Millisecond

// RunConfig configures the balancer's long-running loop.
type RunConfig struct {
	GC              GCConfig
	GCInterval      time.Duration // 0 means 30 s
	RefreshInterval time.Duration // next-hop re-check besides neighbour events; 0 means 30 s
	SummaryInterval time.Duration // a log line with counters; 0 means 60 s
	// Lock, if set, is held around every change the loop writes, so that it never races a CLI
	// invocation that changes the backend set; nil means the balancer's own (the loader's lock for
	// a balancer from Open or Attach).
	Lock func() (func(), error)
	// Counts receives the event counts; nil makes a private one.
	Counts *EventCounts
	// OnEvent, if set, sees every datapath event.
	OnEvent func(lb.Event)
	// Health is the health check of each VIP that has one (Desired.HealthChecks; health.go); the
	// VIPs without one are not checked, and their entries in the health map are deleted.
	Health map[netip.AddrPort]HealthCheck
	// OnServing, if set, is called from the loop with Serving's counts (per VIP, the backends its
	// table holds) once at the start and again whenever they change: a health change, a drain, a
	// backend added or removed by this process or seen from another one at its next step.
	OnServing func(map[netip.AddrPort]int)
}

// Run consumes the datapath's events, collects idle flows and tokens, and keeps every backend's
// next hop in step with the kernel's neighbour table (on every change the kernel reports, and every
// RefreshInterval), until ctx ends. Every cycle it checks that its maps are still the pinned ones
// and stops with ErrDetached when they are not (the balancer was detached under it), and rewrites
// any VIP table that differs from the one the backend set computes. With cfg.Health it checks the
// backends of those VIPs and takes the ones that fail out of their tables (health.go). The datapath
// does not need it to steer: everything it needs is pinned, so the loop may stop and start again at
// any time.
func (b *Balancer) Run(ctx context.Context, cfg RunConfig) error {
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = 30 * time.Second
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 30 * time.Second
	}
	if cfg.SummaryInterval <= 0 {
		cfg.SummaryInterval = time.Minute
	}
	if cfg.Counts == nil {
		cfg.Counts = &EventCounts{}
	}
	if cfg.Lock == nil {
		cfg.Lock = b.lock
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Both goroutines end with ctx; Run waits for them, so nothing of theirs outlives it.
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	evDone := make(chan error, 1)
	neigh := make(chan NeighEvent, 64)
	nDone := make(chan error, 1)
	wg.Add(2)
	go func() { defer wg.Done(); evDone <- ConsumeEvents(ctx, b.Maps, cfg.Counts, cfg.OnEvent) }()
	go func() {
		defer wg.Done()
		nDone <- b.Resolver.Watch(ctx, func(e NeighEvent) {
			select {
			case neigh <- e:
			default: // a refresh is pending anyway
			}
		})
	}()

	serving := &servingNotifier{fn: cfg.OnServing}
	// The health checker's connects end with ctx; Run waits for them too.
	var health *healthChecker
	var healthC <-chan time.Time
	if len(cfg.Health) != 0 && b.Health == nil {
		slog.Warn("health checks off: the balancer has no health map (attach it again with this version)")
	} else {
		health = newHealthChecker(b, cfg.Health)
		defer func() { cancel(); health.wg.Wait() }()
		if t := health.tick(); t > 0 {
			hT := time.NewTicker(t)
			defer hT.Stop()
			healthC = hT.C
		}
	}
	locked := func(what string, fn func() error) {
		t0 := time.Now()
		unlock, err := cfg.Lock()
		if err != nil {
			slog.Warn("balancer loop: lock", "step", what, "err", err)
			return
		}
		waited := time.Since(t0)
		defer func() {
			unlock()
			// Every step of the loop waits for the ones before it: a slow one delays health
			// changes and next-hop refreshes, so say so.
			if took := time.Since(t0); took > slowStep {
				slog.Warn("balancer loop: slow step", "step", what, "took", took.Round(time.Millisecond), "lock_wait", waited.Round(time.Millisecond))
			}
		}()
		// Another process may have changed the set since the last step, or stopped half way.
		if err := b.resync(); err != nil {
			slog.Warn("balancer loop: reload backends", "step", what, "err", err)
			return
		}
		if err := fn(); err != nil {
			slog.Warn("balancer loop", "step", what, "err", err)
		}
		serving.update(b)
	}
	refresh := func() {
		locked("refresh next hops", func() error {
			_, err := b.RefreshNextHops(ctx)
			return err
		})
	}
	gc := func() {
		locked("reconcile", b.reconcile)
		locked("gc", func() error {
			r, err := b.GC(cfg.GC, lb.Monotonic())
			if r.IdleFlows+r.IdleTokens+r.OrphanFlows+r.OrphanTokens > 0 {
				slog.Info("gc", "flows", r.FlowsAfter, "tokens", r.TokensAfter, "idle_flows", r.IdleFlows,
					"idle_tokens", r.IdleTokens, "orphan_flows", r.OrphanFlows, "orphan_tokens", r.OrphanTokens)
			}
			return err
		})
	}
	if err := b.checkPins(); err != nil {
		return err
	}
	refresh()
	checkHealth := func() {
		if health != nil {
			locked("health checks", func() error { return health.sync(ctx, time.Now()) })
		}
	}
	checkHealth() // also deletes the entries of VIPs no longer checked
	// New SYNs skip the protected table's lookup from here on (the hint is kept by each GC).
	locked("protected table hint", b.Maps.RefreshProtectHint)
	gcT := time.NewTicker(cfg.GCInterval)
	defer gcT.Stop()
	refT := time.NewTicker(cfg.RefreshInterval)
	defer refT.Stop()
	sumT := time.NewTicker(cfg.SummaryInterval)
	defer sumT.Stop()
	slog.Info("balancer loop running", "backends", len(b.List()))
	for {
		select {
		case <-ctx.Done():
			slog.Info("balancer loop stopped", "events", cfg.Counts.Snapshot())
			return nil
		case err := <-evDone:
			if ctx.Err() == nil {
				return err
			}
		case err := <-nDone:
			if ctx.Err() == nil {
				return err
			}
		case <-healthC:
			checkHealth()
		case r := <-health.resultsOrNil():
			if state, reason, changed := health.result(r); changed {
				locked("health", func() error { return health.apply(r, state, reason, time.Now()) })
			}
		case e := <-neigh:
			if b.Watches(e) {
				refresh()
			}
		case <-refT.C:
			if err := b.checkPins(); err != nil {
				return err
			}
			refresh()
		case <-gcT.C:
			if err := b.checkPins(); err != nil {
				return err
			}
			gc()
		case <-sumT.C:
			st, err := b.Maps.ReadStats()
			if err != nil {
				slog.Warn("balancer loop: stats", "err", err)
				continue
			}
			slog.Info("balancer", "events", cfg.Counts.Snapshot(), "stats", st.Map())
		}
	}
}

// reconcile rewrites every VIP table that differs from the one the backend set computes (a change
// stopped between writing the backend table and the VIP tables leaves one behind).
func (b *Balancer) reconcile() error { return b.writeRings(true) }
