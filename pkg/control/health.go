package control

// Backend health checks (docs/lb.md, "Health checks"). The checker runs in the balancer's loop
// (Run): every check interval it connects over TCP, from the balancer's network namespace, to each
// backend's address at each checked VIP's health port, and counts results in a row: Fall failures
// take an up backend down, Rise successes bring a down one up. A state change is written to the
// pinned health map (loader.PinLBHealth) and that VIP's table rewritten, under the balancer's lock
// like every other change of the loop.
//
// A backend that is down for a VIP takes no slot of the VIP's Maglev table: its slots go to the
// others, and the table stays a pure function of the backend set (addresses, weights) and the set
// of backends down, so every process and every instance that sees the same health computes the
// same table. Its flows and tokens are not touched: established connections and the joins of
// their subflows keep reaching it until it is removed from the configuration.
//
// Start state: a pair the map has no entry for starts up, and goes down after Fall failures. A
// restarted `lb run` (the datapath outlives it) or a new instance joining a fleet must not empty a
// VIP's table while it learns, which starting down (or "unknown" and out of the table) until Rise
// successes would do for Rise intervals; the cost is that a dead backend a new instance has never
// seen takes new connections for up to Fall intervals. A pair the map has an entry for starts in
// that state (a down backend stays down across restarts until Rise successes). When `lb run`
// stops, the map keeps the last states; a Run without checks for a VIP deletes that VIP's entries
// (its backends count as up again).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// HealthCheck is one VIP's health check, with every default resolved (config.go).
type HealthCheck struct {
	Port     uint16        // connected to at each backend's address
	Interval time.Duration // between two checks of a backend
	Timeout  time.Duration // of one connect, less than Interval
	Rise     int           // successes in a row that bring a down backend up
	Fall     int           // failures in a row that take an up backend down
}

// Health states as `lb status` and the logs name them.
const (
	HealthStateUp   = "up"
	HealthStateDown = "down"
)

func healthStateName(s uint32) string {
	if s == loader.HealthDown {
		return HealthStateDown
	}
	return HealthStateUp
}

// HealthChecks is what Desired's VIPs check, by VIP address (RunConfig.Health).
func (d *Desired) HealthChecks() map[netip.AddrPort]HealthCheck {
	out := map[netip.AddrPort]HealthCheck{}
	for _, v := range d.VIPs {
		if v.Health != nil {
			out[v.Addr] = *v.Health
		}
	}
	return out
}

// Serving counts, for every service VIP (join ports aside), the backends its table holds: active
// (not draining, weight above 0) and not down for it. It is what an announcement of the VIP (BGP)
// depends on: 0 means the VIP has no backend to send new connections to. It reads the set and the
// health as the balancer last read them (its last change or loop step); like the other methods it
// must not run concurrently with Run on the same Balancer: a caller beside Run uses
// RunConfig.OnServing, which Run calls from its loop.
func (b *Balancer) Serving() (map[netip.AddrPort]int, error) {
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return nil, err
	}
	return b.serving(vips), nil
}

func (b *Balancer) serving(vips []lb.VIP) map[netip.AddrPort]int {
	out := map[netip.AddrPort]int{}
	service := map[netip.Addr]bool{}
	for _, v := range vips {
		if !v.JoinPort {
			service[v.Addr.Addr()] = true
		}
	}
	for _, v := range vips {
		if v.JoinPort {
			// A join address (a backend's join_addr, not a VIP's address at a join port) serves
			// while its entry exists: its owner takes the joins of its own connections whatever
			// its state, so the address stays routed (and announced over BGP) until the backend
			// is removed.
			if !service[v.Addr.Addr()] {
				out[v.Addr] = 1
			}
			continue
		}
		n := 0
		for _, be := range b.set.List() {
			if be.State == Active && be.Weight > 0 && b.health[loader.HealthKey{VIP: v.ID, Backend: be.ID}].State != loader.HealthDown {
				n++
			}
		}
		out[v.Addr] = n
	}
	return out
}

// healthTarget is one checked (VIP, backend) pair.
type healthTarget struct {
	key     loader.HealthKey
	vip     netip.AddrPort
	backend netip.Addr
	addr    netip.AddrPort // connected to
	check   HealthCheck
}

// healthProbe is the checker's memory of one pair: results in a row, and the next check.
type healthProbe struct {
	target     healthTarget
	ok, failed int
	next       time.Time
	busy       bool // a connect is under way
}

// healthResult is one connect's outcome.
type healthResult struct {
	target healthTarget
	err    error
}

// healthChecker checks the backends of the VIPs in checks; it lives in Run's goroutine, which
// alone touches it and the balancer's set.
type healthChecker struct {
	b       *Balancer
	checks  map[netip.AddrPort]HealthCheck
	probes  map[loader.HealthKey]*healthProbe
	results chan healthResult
	wg      sync.WaitGroup
	// dial connects to addr from the balancer's network namespace.
	dial func(ctx context.Context, addr netip.AddrPort, timeout time.Duration) error
}

func newHealthChecker(b *Balancer, checks map[netip.AddrPort]HealthCheck) *healthChecker {
	h := &healthChecker{b: b, checks: checks, probes: map[loader.HealthKey]*healthProbe{}, results: make(chan healthResult, 64)}
	ns := b.netns
	if b.Resolver != nil {
		ns = b.Resolver.ns // the namespace the balancer routes to its backends from
	}
	h.dial = func(ctx context.Context, addr netip.AddrPort, timeout time.Duration) error {
		return dialIn(ctx, ns, addr, timeout)
	}
	return h
}

// tick is the shortest interval of the checks: how often the checker looks for checks due.
func (h *healthChecker) tick() time.Duration {
	var t time.Duration
	for _, c := range h.checks {
		if t == 0 || c.Interval < t {
			t = c.Interval
		}
	}
	return t
}

// targets are the pairs to check now: every backend of the set for every service VIP that has a
// check (draining ones too, so that their state is known when they return).
func (h *healthChecker) targets(vips []lb.VIP) map[loader.HealthKey]healthTarget {
	out := map[loader.HealthKey]healthTarget{}
	for _, v := range vips {
		c, ok := h.checks[v.Addr]
		if v.JoinPort || !ok {
			continue
		}
		for _, be := range h.b.set.List() {
			k := loader.HealthKey{VIP: v.ID, Backend: be.ID}
			out[k] = healthTarget{key: k, vip: v.Addr, backend: be.Addr, addr: netip.AddrPortFrom(be.Addr, c.Port), check: c}
		}
	}
	return out
}

// sync runs under the lock, on the set just read back: it forgets the pairs no longer checked
// (deleting their entries from the map, and rewriting the tables they held a backend out of) and
// starts the connects that are due.
func (h *healthChecker) sync(ctx context.Context, now time.Time) error {
	vips, err := h.b.Maps.ListVIPs()
	if err != nil {
		return err
	}
	want := h.targets(vips)
	var stale []loader.HealthKey
	for k := range h.b.health {
		if _, ok := want[k]; !ok {
			stale = append(stale, k)
		}
	}
	if len(stale) != 0 {
		if err := h.b.clearHealth(func(k loader.HealthKey) bool { return slices.Contains(stale, k) }); err != nil {
			return err
		}
		if err := h.b.rebuild(); err != nil {
			return err
		}
	}
	for k, p := range h.probes {
		if t, ok := want[k]; !ok || t.addr != p.target.addr {
			delete(h.probes, k) // gone, or another backend or port: counted afresh
		}
	}
	for k, t := range want {
		p, ok := h.probes[k]
		if !ok {
			p = &healthProbe{next: now}
			h.probes[k] = p
		}
		p.target = t
		// Due within half a tick counts as due: the ticker and the checks share one period, and
		// a check started a little after one tick must not wait for the tick after the next.
		if p.busy || p.next.Sub(now) > h.tick()/2 {
			continue
		}
		p.busy, p.next = true, now.Add(t.check.Interval)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			err := h.dial(ctx, t.addr, t.check.Timeout)
			select {
			case h.results <- healthResult{target: t, err: err}:
			case <-ctx.Done():
			}
		}()
	}
	return nil
}

// result counts one connect's outcome and returns the state it brings the pair to, if that
// changes it (or the pair has no entry yet), with the reason.
func (h *healthChecker) result(r healthResult) (state uint32, reason string, changed bool) {
	p, ok := h.probes[r.target.key]
	if !ok || p.target.addr != r.target.addr {
		return 0, "", false // forgotten meanwhile
	}
	p.busy = false
	cur, known := h.b.health[r.target.key]
	state = cur.State
	if !known {
		state = loader.HealthUp
	}
	c := r.target.check
	if r.err != nil {
		p.ok, p.failed = 0, p.failed+1
		reason = healthReason(r.err)
		if state == loader.HealthUp && p.failed >= c.Fall {
			return loader.HealthDown, fmt.Sprintf("%s (failed %d times in a row)", reason, p.failed), true
		}
	} else {
		p.ok, p.failed = p.ok+1, 0
		reason = ""
		if state == loader.HealthDown && p.ok >= c.Rise {
			return loader.HealthUp, fmt.Sprintf("connected (%d times in a row)", p.ok), true
		}
	}
	return state, reason, !known
}

// apply writes a pair's new state under the lock (the set and the map just read back) and
// rewrites that VIP's table when the state changed what it holds.
func (h *healthChecker) apply(r healthResult, state uint32, reason string, now time.Time) error {
	k := r.target.key
	vips, err := h.b.Maps.ListVIPs()
	if err != nil {
		return err
	}
	if t, ok := h.targets(vips)[k]; !ok || t.addr != r.target.addr {
		return nil // the VIP or the backend went meanwhile (or its id is another's now)
	}
	old, known := h.b.health[k]
	if known && old.State == state {
		return nil
	}
	e := loader.NewHealthEntry(state, now.UnixNano(), reason)
	if err := h.b.Health.Put(k, e); err != nil {
		return fmt.Errorf("write health of backend %s for vip %s: %w", r.target.backend, r.target.vip, err)
	}
	h.b.health[k] = e
	from := "unchecked"
	if known {
		from = healthStateName(old.State)
	}
	attrs := []any{"vip", r.target.vip, "backend", r.target.backend, "id", k.Backend, "check", r.target.addr,
		"from", from, "to", healthStateName(state), "reason", reason}
	switch {
	case !known && state == loader.HealthUp:
		slog.Info("backend health: first check", attrs...)
		return nil // up without an entry was up already: the table holds it
	case state == loader.HealthDown:
		slog.Warn("backend health: down, it leaves the VIP's table (its connections keep reaching it)", attrs...)
	default:
		slog.Info("backend health: up, it returns to the VIP's table", attrs...)
	}
	return h.b.writeRing(k.VIP)
}

// healthReason is a connect error without the dial's addresses: "connect: connection refused",
// "i/o timeout".
func healthReason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// dialIn connects over TCP to addr from network namespace ns ("" the caller's) and closes the
// connection at once.
func dialIn(ctx context.Context, ns string, addr netip.AddrPort, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	d.SetMultipathTCP(false) // the check is of the service's listener, not of MPTCP
	var c net.Conn
	err := netns.Do(ns, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return err
	}
	return c.Close()
}

// servingNotifier calls fn with Serving's counts whenever they differ from the last ones.
type servingNotifier struct {
	fn   func(map[netip.AddrPort]int)
	last map[netip.AddrPort]int
}

func (n *servingNotifier) update(b *Balancer) {
	if n.fn == nil {
		return
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return
	}
	cur := b.serving(vips)
	if n.last != nil && maps.Equal(cur, n.last) {
		return
	}
	n.last = cur
	n.fn(maps.Clone(cur))
}

// resultsOrNil is the results channel, nil (never ready) without a checker.
func (h *healthChecker) resultsOrNil() <-chan healthResult {
	if h == nil {
		return nil
	}
	return h.results
}
