package fleet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labfleet"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// resetCounters are the counters that any reset or abort of a connection or subflow moves.
var resetCounters = []string{
	"Tcp.EstabResets", "Tcp.OutRsts", "TcpExt.TCPAbortOnData", "TcpExt.TCPAbortOnTimeout", "TcpExt.TCPAbortOnClose",
	"MPTcpExt.MPRstRx", "MPTcpExt.MPRstTx", "MPTcpExt.MPFastcloseRx", "MPTcpExt.MPFastcloseTx", "MPTcpExt.RmSubflow",
}

// TestBalancerDies: stateless joins behind ECMP, and the instance holding most flows loses its link
// in the middle of many paced transfers. R sees no carrier on its end and leaves it out of the ECMP
// set (ignore_routes_with_linkdown); its flows, first subflows and joins alike, reach the other
// instances, which hold no state for them and place them by the same Maglev table (non-SYN
// misses) or the joins' single-owner join entries, on the same backends. Every connection must
// complete intact with both its subflows, and no reset or abort may be counted anywhere.
func TestBalancerDies(t *testing.T) {
	t.Run("ipv4-port", func(t *testing.T) { balancerDies(t, dieCase{form: portForm}) })
	t.Run("ipv6-addr", func(t *testing.T) { balancerDies(t, dieCase{form: addrForm, v6: true}) })
	t.Run("l2-ipv4-port", func(t *testing.T) { balancerDies(t, dieCase{form: portForm, forward: "l2"}) })
	// BIRD in R learns the VIPs from every instance's lb run; one lb run is SIGKILLed while its
	// datapath stays: its BGP speaker (a child of lb run) sees its pipe close and withdraws, so R
	// drops it without waiting for the hold time.
	t.Run("bgp-kill-ipv4-port", func(t *testing.T) {
		balancerDies(t, dieCase{form: portForm, kill: true, routes: &labfleet.BGP{}, bgp: true})
	})
	// A graceful stop: SIGTERM to one lb run, which withdraws its announcements first and leaves
	// its datapath; R drops it and no connection breaks.
	t.Run("bgp-term-ipv4-port", func(t *testing.T) {
		balancerDies(t, dieCase{form: portForm, term: true, routes: &labfleet.BGP{}, bgp: true})
	})
	// The same with IPv6 and join addresses, which every lb run announces beside the VIPs.
	t.Run("bgp-kill-ipv6-addr", func(t *testing.T) {
		balancerDies(t, dieCase{form: addrForm, v6: true, kill: true, routes: &labfleet.BGP{JoinAddrs: true}, bgp: true})
	})
}

// dieCase is one failover: the joins' form, the family, the forwarding ("": ipip), and how the
// instance dies (its links go down, or, with kill, its lb run is SIGKILLed and its datapath
// stays), with R's routes from routes (nil: static) and the instances announcing over BGP.
type dieCase struct {
	form    joinForm
	v6      bool
	forward string
	kill    bool
	term    bool // SIGTERM instead of SIGKILL
	routes  labfleet.RouteSource
	bgp     bool
}

func balancerDies(t *testing.T, c dieCase) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	form, v6 := c.form, c.v6
	svc := labfleet.Service{JoinSteering: false, Forward: c.forward, BGP: c.bgp}
	if form == portForm {
		svc.JoinPortBase = 20000
	} else {
		svc.JoinAddrs = true
	}
	f := newFleet(t, svc, c.routes)
	f.setupJoins(t, form, v6)
	if c.bgp {
		// R's FIB: the VIPs learned by BGP (BIRD's kernel protocol), one next hop per instance.
		for _, p := range f.Config.Routes.Routed(f.Lab) {
			hops, proto, err := f.Route(p)
			if err != nil || proto != "bird" || len(hops) != len(f.Balancers) {
				t.Fatalf("R's route to %s: %+v from %q (%v), want %d next hops from bird", p, hops, proto, err, len(f.Balancers))
			}
		}
	}
	const n = 120
	base, err := f.BackendMIBs()
	if err != nil {
		t.Fatal(err)
	}
	conns, err := f.DialN(ctx, f.vip(v6), n, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer labfleet.CloseAll(conns)
	if !waitFor(60*time.Second, func() bool {
		d, err := f.Deltas(base)
		return err == nil && labfleet.Sum(d.MPTCP("MPJoinAckRx")) >= n
	}) {
		t.Fatalf("not every connection joined")
	}
	cbase, err := f.MIB(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	if base, err = f.BackendMIBs(); err != nil {
		t.Fatal(err)
	}
	st0, err := f.BalancerStats()
	if err != nil {
		t.Fatal(err)
	}
	// 8 MiB each, 32 KiB every 40 ms: at least 10 s of transfer, so that it outlasts the failover
	// (1.5 s, the router's convergence, 1.5 s) also when other tests load the machine and the
	// router takes seconds to converge (CI once saw 5 s run out).
	done := make(chan []error, 1)
	go func() { done <- labfleet.TransferAll(ctx, conns, 8<<20, 32<<10, 40*time.Millisecond) }()
	time.Sleep(1500 * time.Millisecond)

	// The instance with most flows dies; which subflows (client source addresses) it carried.
	dead, most := 0, -1
	on := map[netip.AddrPort]int{}
	for k := range f.Balancers {
		fl, err := f.Flows(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range fl {
			on[x.Src] = k
		}
		if len(fl) > most {
			dead, most = k, len(fl)
		}
	}
	down := time.Now()
	how := "lost its link"
	if c.kill {
		how = "had its lb run SIGKILLed"
		f.procs[dead].Kill()
	} else if c.term {
		how = "had its lb run stopped with SIGTERM"
		if err := f.procs[dead].Term(); err != nil {
			t.Fatal(err)
		}
		if logs := f.procs[dead].Logs(); !strings.Contains(logs, "withdrawn") {
			t.Errorf("lb run's log after SIGTERM says nothing withdrawn:\n%s", logs)
		}
	} else if err := f.SetBalancerLink(dead, false); err != nil {
		t.Fatal(err)
	}
	var left time.Duration
	if !waitFor(15*time.Second, func() bool {
		for _, p := range f.Config.Routes.Routed(f.Lab) {
			u, err := f.UsableBalancers(p)
			if err != nil || slices.Contains(u, dead) || len(u) != len(f.Balancers)-1 {
				return false
			}
		}
		left = time.Since(down)
		return true
	}) {
		hops, _, err := f.Route(netip.PrefixFrom(f.vip(v6).Addr(), f.vip(v6).Addr().BitLen()))
		t.Fatalf("R still routes over balancer %d: %+v %v", dead, hops, err)
	}
	// While the transfers run on (1.5 s after R left the instance out): the connections that had
	// a subflow on the dead instance, from the client's subflows (ss -ti), and the backends' view.
	time.Sleep(1500 * time.Millisecond)
	select {
	case errs := <-done:
		t.Fatalf("the transfers ended %v after the instance went down, before the failover could be observed (R converged after %v); errors: %v",
			time.Since(down).Round(time.Millisecond), left.Round(time.Millisecond), errs)
	default:
	}
	subs, err := (&lablb.Lab{}).Subflows(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	moved := map[uint32]bool{}
	movedSubs := 0
	for _, s := range subs {
		src, err := netip.ParseAddrPort(s.Local)
		if err != nil {
			continue
		}
		if k, ok := on[netip.AddrPortFrom(src.Addr().Unmap(), src.Port())]; ok && k == dead {
			moved[s.Token] = true
			movedSubs++
		}
	}
	bs, err := f.BackendSubflows(f.svc.Port)
	if err != nil {
		t.Fatal(err)
	}
	two := 0
	for _, b := range bs {
		two += b.Two
	}
	if two != n {
		t.Errorf("backends' ss -M after the failover: %+v, want all %d connections on two subflows", bs, n)
	}
	var errs []error
	select {
	case errs = <-done:
	case <-ctx.Done():
		t.Fatal("transfers not done")
	}
	bad := 0
	for _, e := range errs {
		if e != nil {
			if bad++; bad <= 3 {
				t.Error(e)
			}
		}
	}
	d, err := f.Deltas(base)
	if err != nil {
		t.Fatal(err)
	}
	cm, err := f.MIB(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	cd := cm.Sub(cbase)
	var resets []string
	for _, c := range resetCounters {
		if v := cd[c]; v != 0 {
			resets = append(resets, fmt.Sprintf("client %s %d", c, v))
		}
		if v := d.Get(c); labfleet.Sum(v) != 0 {
			resets = append(resets, fmt.Sprintf("backends %s %v", c, v))
		}
	}
	if len(resets) != 0 {
		t.Errorf("resets and aborts: %v", resets)
	}
	st1, err := f.BalancerStats()
	if err != nil {
		t.Fatal(err)
	}
	miss := labfleet.Stat(st1, st0, lb.StatNonSYNMiss)
	if len(moved) == 0 || miss[(dead+1)%3]+miss[(dead+2)%3] == 0 {
		t.Errorf("no flow moved: %d connections had a subflow on balancer %d, survivors' non-SYN misses %v", len(moved), dead, miss)
	}
	if c.bgp {
		st, err := c.routes.(*labfleet.BGP).Router().ProtocolState(dead)
		if err != nil || st == "Established" {
			t.Errorf("BIRD's session with balancer %d after the kill: %q (%v), want it closed", dead, st, err)
		}
		t.Logf("BIRD's session with balancer %d after the kill: %s", dead, st)
	}
	if c.kill || c.term {
		// The datapath outlived its control plane: still pinned and attached.
		m, err := f.OpenBalancer(dead)
		if err != nil {
			t.Errorf("balancer %d's datapath after lb run was killed: %v", dead, err)
		} else {
			m.Close()
		}
	}
	t.Logf("%s, %s: balancer %d (%d of %d flows) %s during %d paced 4 MiB transfers; R left it out of the ECMP set %v later; "+
		"%d subflows of %d connections (%.1f%%) had run through it and moved, the survivors placed %v non-SYN frames of unknown flows; "+
		"%d of %d transfers intact, %d connections on two subflows after the failover, resets %v; retransmitted segments: client %d, backends %v",
		f.Config.Forward, f.vip(v6), dead, most, len(on), how, n, left.Round(time.Millisecond), movedSubs, len(moved), 100*float64(len(moved))/n, miss,
		n-bad, n, two, resets, cd["Tcp.RetransSegs"], d.Get("Tcp.RetransSegs"))
}
