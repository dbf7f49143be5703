package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// LBOptions configure `demo --lb`.
type LBOptions struct {
	Conns   int    // connections per phase; 0 means 60
	Forward string // l2 or ipip; "" means l2
	Mode    loader.XDPMode
	Root    string // bpffs root of the loader
	Quiet   bool
}

// LBPhase is one phase of the balancer demo: the same connections, with join steering off (today's
// balancers) or on.
type LBPhase struct {
	JoinSteering bool              `json:"join_steering"`
	Conns        int               `json:"conns"`
	Landed       []int             `json:"landed"` // connections per backend
	Joins        lablb.JoinCounts  `json:"joins"`  // the backends' MPTcpExt join counters
	View         lablb.View        `json:"ss"`     // what ss -M shows
	Intact       int               `json:"transfers_intact"`
	Stats        map[string]uint64 `json:"balancer"` // the datapath's counters during the phase
}

// LBResult is the `demo --lb -o json` document.
type LBResult struct {
	Namespaces []string          `json:"netns"`
	VIP        string            `json:"vip"`
	Forward    string            `json:"forward"`
	Backends   []control.Backend `json:"backends"`
	Phases     []LBPhase         `json:"phases"`
	Events     map[string]uint64 `json:"events"`
}

// RunLB builds the balancer lab (a client with two paths, the balancer, three backends), attaches
// the balancer, and runs the same connections twice: with join steering off, as any 5-tuple
// balancer does, then on. It prints, live, where each connection's second subflow lands and what the
// backends' kernels make of it. Everything is removed when it returns.
func RunLB(ctx context.Context, o LBOptions, live io.Writer) (res *LBResult, err error) {
	if o.Conns <= 0 {
		o.Conns = 60
	}
	if o.Forward == "" {
		o.Forward = "l2"
	}
	fwd, err := lb.ParseForward(o.Forward)
	if err != nil {
		return nil, err
	}
	if o.Quiet {
		live = io.Discard
	}
	say := func(format string, a ...any) { fmt.Fprintf(live, format, a...) }

	l, err := lablb.New(lablb.Config{Prefix: "mxlbdemo"})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		return nil, err
	}
	defer srv.Close()
	vip := netip.AddrPortFrom(l.VIP4, uint16(srv.Port))
	res = &LBResult{Namespaces: l.Namespaces(), VIP: vip.String(), Forward: fwd.String()}

	ld, err := loader.New(o.Root)
	if err != nil {
		return nil, err
	}
	var ifaces []string
	for _, p := range l.Paths {
		ifaces = append(ifaces, p.LBIf)
	}
	if fwd == lb.ForwardIPIP {
		for _, b := range l.Backends {
			if err := ld.AttachDecap(loader.LBAttachOptions{Netns: b.Netns, Ifaces: []string{b.If}, Mode: o.Mode,
				DecapBalancers: []netip.Addr{b.LBIP4}, DecapVIPs: []netip.AddrPort{vip}}); err != nil {
				return nil, err
			}
			defer func() { err = errors.Join(err, ld.DetachDecap(b.Netns, nil)) }()
		}
	}
	pol := control.DefaultPolicy
	pol.Forward = fwd
	pol.JoinSteering = false
	var specs []control.BackendSpec
	for _, b := range l.Backends {
		specs = append(specs, control.BackendSpec{Addr: b.IP4, Weight: 1})
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	bal, err := control.Attach(rctx, ld, control.Spec{Netns: l.LB, Ifaces: ifaces, VIPs: []netip.AddrPort{vip},
		Policy: pol.Set(), Backends: specs, Mode: o.Mode})
	rcancel()
	defer func() {
		// Also after a failed Attach, which may have attached the program before it failed.
		if derr := ld.DetachLB(l.LB); derr != nil && !errors.Is(derr, loader.ErrLBNotAttached) {
			err = errors.Join(err, derr)
		}
	}()
	if err != nil {
		return nil, err
	}
	defer bal.Close()
	res.Backends = bal.List()

	var counts control.EventCounts
	evCtx, evCancel := context.WithCancel(ctx)
	var evWG sync.WaitGroup
	evWG.Add(1)
	go func() { defer evWG.Done(); _ = control.ConsumeEvents(evCtx, bal.Maps, &counts, nil) }()
	defer func() { evCancel(); evWG.Wait() }()

	say("balancer lab: client %s (2 paths) → balancer %s (XDP on %s, %s forwarding) → 3 backends, VIP %s\n",
		l.Client, l.LB, strings.Join(ifaces, ","), fwd, vip)
	say("each client connection opens a second subflow (MP_JOIN SYN, new 5-tuple) over its second path\n\n")

	for _, steering := range []bool{false, true} {
		pol.JoinSteering = steering
		if _, err := bal.PutVIP(vip, pol); err != nil {
			return res, err
		}
		ph, err := lbPhase(ctx, l, bal.Maps, vip, o.Conns, steering, say)
		if err != nil {
			return res, err
		}
		res.Phases = append(res.Phases, ph)
	}
	res.Events = counts.Snapshot()

	tw := tabwriter.NewWriter(live, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nPHASE\tCONNS\tLANDED\tJOINS REFUSED (MPJoinNoTokenFound)\tCLIENT CONNS ON 2 SUBFLOWS\tDATA INTACT")
	for _, ph := range res.Phases {
		name := "5-tuple hashing (--join-steering=false)"
		if ph.JoinSteering {
			name = "token steering"
		}
		fmt.Fprintf(tw, "%s\t%d\t%v\t%d %v\t%d of %d\t%d of %d\n", name, ph.Conns, ph.Landed, lablb.Sum(ph.Joins.NoToken),
			ph.Joins.NoToken, ph.View.ClientTwo, ph.Conns, ph.Intact, ph.Conns)
	}
	tw.Flush()
	say("datapath events consumed: %v\n", res.Events)
	return res, nil
}

func lbPhase(ctx context.Context, l *lablb.Lab, m *lb.Maps, vip netip.AddrPort, n int, steering bool, say func(string, ...any)) (LBPhase, error) {
	ph := LBPhase{JoinSteering: steering, Conns: n, Landed: make([]int, len(l.Backends))}
	if steering {
		say("— join steering on: joins follow their connection's token —\n")
	} else {
		say("— join steering off (plain 5-tuple Maglev, as balancers do today) —\n")
	}
	base, err := l.BackendMIBs()
	if err != nil {
		return ph, err
	}
	st0, err := m.ReadStats()
	if err != nil {
		return ph, err
	}
	pctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conns := make([]*lablb.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := l.Dial(pctx, vip)
		if err != nil {
			return ph, err
		}
		conns = append(conns, c)
		ph.Landed[c.Backend]++
	}
	say("  %d connections placed by Maglev: %v per backend\n", n, ph.Landed)
	for {
		j, err := l.Joins(base)
		if err != nil {
			return ph, err
		}
		ph.Joins = j
		say("  joins answered %3d/%d: accepted %v, refused for an unknown token %v\n", j.Answered(), n, j.AckRx, j.NoToken)
		if j.Answered() >= int64(n) {
			break
		}
		select {
		case <-pctx.Done():
			return ph, fmt.Errorf("joins: %d of %d answered: %w", j.Answered(), n, pctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	if ph.View, err = l.Observe(vip); err != nil {
		return ph, err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.Transfer(pctx, 256<<10) == nil {
				mu.Lock()
				ph.Intact++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	st1, err := m.ReadStats()
	if err != nil {
		return ph, err
	}
	ph.Stats = st1.Sub(st0).Map()
	say("  ss -M: %d client connections on 2 subflows, %d left on 1; data intact on %d of %d\n\n",
		ph.View.ClientTwo, ph.View.ClientOne, ph.Intact, n)
	return ph, nil
}
