package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labfleet"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// FleetOptions configure `demo --lb --balancers N`.
type FleetOptions struct {
	Balancers int    // balancer instances behind R's ECMP; 0 means 3
	Conns     int    // connections per phase; 0 means 60
	Forward   string // ipip (default) or l2
	Binary    string // the mptcp-xdp binary the balancers run (lb run --config, lb backend-setup)
	// Static routes R's VIP over the balancers with a static multipath route instead of BGP (the
	// default when BIRD is installed: R runs it, every lb run announces the VIP).
	Static bool
}

// FleetPhase is one phase of the fleet demo.
type FleetPhase struct {
	Name  string `json:"name"` // token_steering or join_ports
	Conns int    `json:"conns"`
	// Landed is the connections per backend.
	Landed []int `json:"landed"`
	// The backends' MPTcpExt counters during the phase: joins accepted and refused for want of
	// the token (MPJoinNoTokenFound).
	JoinsAccepted int64 `json:"joins_accepted"`
	JoinsRefused  int64 `json:"joins_refused"`
	// The balancers' counters, summed over the instances: joins steered by a token the instance
	// knew, joins whose token it did not know (placed by hash), packets to a join port.
	JoinSteered uint64 `json:"join_steered"`
	JoinUnknown uint64 `json:"join_unknown"`
	Intact      int    `json:"transfers_intact"`
}

// FleetResult is the `demo --lb --balancers N -o json` document.
type FleetResult struct {
	Namespaces []string     `json:"netns"`
	VIP        string       `json:"vip"`
	Forward    string       `json:"forward"`
	Routes     string       `json:"routes"`    // bgp or static
	NextHops   []int        `json:"next_hops"` // the balancers R's route to the VIP uses
	Phases     []FleetPhase `json:"phases"`
}

// RunFleet builds the fleet lab (internal/labfleet: a router R with ECMP over N balancers, each
// running `lb run --config` with the same file, three backends answering directly), and runs the
// same kind of connections twice: first with token steering only, where a join reaches an
// instance that never saw its connection about (N-1)/N of the time; then after `lb backend-setup
// --join-port` on every backend, where every join goes to its backend's join port, which every
// instance maps alike. Everything is removed when it returns.
func RunFleet(ctx context.Context, o FleetOptions, live io.Writer) (res *FleetResult, err error) {
	if o.Balancers <= 0 {
		o.Balancers = 3
	}
	if o.Conns <= 0 {
		o.Conns = 60
	}
	if o.Forward == "" {
		o.Forward = "ipip"
	}
	if o.Forward != "ipip" && o.Forward != "l2" {
		return nil, fmt.Errorf("unknown forwarding %q: use ipip or l2", o.Forward)
	}
	say := func(format string, a ...any) {
		if live != nil {
			fmt.Fprintf(live, format+"\n", a...)
		}
	}
	res = &FleetResult{Forward: o.Forward, Routes: "static"}
	cfg := labfleet.Config{Binary: o.Binary, Balancers: o.Balancers, Forward: o.Forward}
	svc := labfleet.Service{Port: 8080, JoinSteering: true, UnknownJoin: "hash", JoinPortBase: 20000}
	if _, lookErr := exec.LookPath("bird"); lookErr == nil && !o.Static {
		cfg.Routes, svc.BGP, res.Routes = &labfleet.BGP{}, true, "bgp"
	}
	l, err := labfleet.New(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	res.Namespaces = l.Namespaces()
	dir, err := os.MkdirTemp("", "mptcp-xdp-demo-fleet-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if svc.SeedFile, err = labfleet.SeedFile(dir); err != nil {
		return nil, err
	}
	srv, err := l.Serve(ctx, svc.Port)
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	for k := range l.Balancers {
		if _, err := l.StartBalancer(k, svc, dir); err != nil {
			return nil, err
		}
	}
	vip := netip.AddrPortFrom(l.VIP4, uint16(svc.Port))
	res.VIP = vip.String()
	say("fleet lab: client (two paths) ─ router R ─ ECMP over %d balancers (lb run --config, one file, forward %s) ─ %d backends (DSR)",
		len(l.Balancers), o.Forward, len(l.Backends))
	prefix := netip.PrefixFrom(l.VIP4, 32)
	for deadline := time.Now().Add(60 * time.Second); ; {
		res.NextHops, err = l.UsableBalancers(prefix)
		if err == nil && len(res.NextHops) == len(l.Balancers) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("R routes %s over balancers %v (%v), want all %d", prefix, res.NextHops, err, len(l.Balancers))
		}
		time.Sleep(100 * time.Millisecond)
	}
	say("R's route to %s: %d next hops (%s)", prefix, len(res.NextHops), map[string]string{"bgp": "learned by BGP from every lb run, BIRD 2 in R", "static": "a static multipath route"}[res.Routes])

	phase := func(name string) (FleetPhase, error) {
		p := FleetPhase{Name: name, Conns: o.Conns, Landed: make([]int, len(l.Backends))}
		base, err := l.BackendMIBs()
		if err != nil {
			return p, err
		}
		st0, err := l.BalancerStats()
		if err != nil {
			return p, err
		}
		pctx, cancel := context.WithTimeout(ctx, 120*time.Second)
		defer cancel()
		conns, err := l.DialN(pctx, vip, o.Conns, 20)
		if err != nil {
			return p, err
		}
		defer labfleet.CloseAll(conns)
		for _, c := range conns {
			p.Landed[c.Backend]++
		}
		// Every join reaches a backend (unknown_join: hash), which accepts or refuses it.
		var d labfleet.Deltas
		for deadline := time.Now().Add(30 * time.Second); ; {
			if d, err = l.Deltas(base); err != nil {
				return p, err
			}
			p.JoinsAccepted, p.JoinsRefused = labfleet.Sum(d.MPTCP("MPJoinAckRx")), labfleet.Sum(d.MPTCP("MPJoinNoTokenFound"))
			if p.JoinsAccepted+p.JoinsRefused >= int64(o.Conns) || time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		st1, err := l.BalancerStats()
		if err != nil {
			return p, err
		}
		p.JoinSteered = labfleet.Sum(labfleet.Stat(st1, st0, lb.StatJoinSteered))
		p.JoinUnknown = labfleet.Sum(labfleet.Stat(st1, st0, lb.StatJoinUnknown))
		var errs []error
		for _, e := range labfleet.TransferAll(pctx, conns, 256<<10, 0, 0) {
			if e == nil {
				p.Intact++
			} else {
				errs = append(errs, e)
			}
		}
		if len(errs) > 0 {
			return p, fmt.Errorf("%s: %d of %d transfers failed: %w", name, len(errs), len(conns), errors.Join(errs...))
		}
		return p, nil
	}

	say("phase 1, token steering only: %d MPTCP connections to %s; each joins from the client's second path (a new 5-tuple, hashed by R anew)", o.Conns, vip)
	p1, err := phase("token_steering")
	if err != nil {
		return nil, err
	}
	res.Phases = append(res.Phases, p1)
	say("  backends %v; joins: %d steered by an instance that knew the token, %d reached one that did not; backends accepted %d, refused %d (MPJoinNoTokenFound): %d connections left on one subflow; %d of %d transfers intact",
		p1.Landed, p1.JoinSteered, p1.JoinUnknown, p1.JoinsAccepted, p1.JoinsRefused, p1.JoinsRefused, p1.Intact, p1.Conns)

	for j, b := range l.Backends {
		if _, err := l.Exec("", o.Binary, "--netns", b.Netns, "lb", "backend-setup", "--vip", vip.String(),
			"--join-port", fmt.Sprint(svc.JoinPort(j))); err != nil {
			return nil, err
		}
	}
	say("phase 2, join ports: lb backend-setup --join-port on every backend (C flag, ADD_ADDR %s:P); every instance maps port P to its backend", l.VIP4)
	p2, err := phase("join_ports")
	if err != nil {
		return nil, err
	}
	res.Phases = append(res.Phases, p2)
	say("  backends %v; joins: %d steered by token (none needed), backends accepted %d, refused %d; %d of %d transfers intact",
		p2.Landed, p2.JoinSteered, p2.JoinsAccepted, p2.JoinsRefused, p2.Intact, p2.Conns)
	return res, nil
}
