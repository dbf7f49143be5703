// Package fleet holds the fleet's integration tests: three mptcp-xdp balancers behind a router's
// ECMP (internal/labfleet), real MPTCP connections from Go through them to three backends, and the
// kernel's own view as ground truth: the backends' `ss -M` and MPTcpExt counters, and R's FIB.
package fleet

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labfleet"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// bin is the mptcp-xdp binary built by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mptcp-xdp-fleettest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "mptcp-xdp")
	if err := testutil.BuildBinary(bin); err != nil {
		fmt.Fprintf(os.Stderr, "build mptcp-xdp: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fleet is a running fleet lab: the balancers started with svc, servers on svc.Port.
type fleet struct {
	*labfleet.Lab
	svc   labfleet.Service
	srv   *labfleet.Servers
	procs []*labfleet.Process
	dir   string
}

// newFleet builds the lab (R's routes from routes[0] if given, else static), starts the backends' servers and every balancer's lb run --config
// with svc (a fresh seed file shared by all), and checks that R routes every service prefix
// over all balancers; everything is undone when the test ends.
func newFleet(t *testing.T, svc labfleet.Service, routes ...labfleet.RouteSource) *fleet {
	t.Helper()
	testutil.RequireRoot(t)
	cfg := labfleet.Config{Binary: bin, Forward: svc.Forward}
	if len(routes) != 0 {
		cfg.Routes = routes[0]
	}
	l, err := labfleet.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	f := &fleet{Lab: l, svc: svc, dir: t.TempDir()}
	if f.svc.Port == 0 {
		f.svc.Port = 8080
	}
	if f.svc.SeedFile, err = labfleet.SeedFile(f.dir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if f.srv, err = l.Serve(ctx, f.svc.Port); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.srv.Close() })
	for k := range l.Balancers {
		p, err := l.StartBalancer(k, f.svc, f.dir)
		if err != nil {
			t.Fatal(err)
		}
		f.procs = append(f.procs, p)
	}
	// R's FIB: every prefix the route source routes, over every balancer (a routing daemon
	// installs its routes once the balancers announce them).
	for _, p := range l.Config.Routes.Routed(l) {
		var got []int
		if !waitFor(30*time.Second, func() bool {
			got, err = l.UsableBalancers(p)
			return err == nil && len(got) == len(l.Balancers)
		}) {
			t.Fatalf("R routes %s over balancers %v (%v), want all %d", p, got, err, len(l.Balancers))
		}
	}
	return f
}

func (f *fleet) vip(v6 bool) netip.AddrPort {
	a := f.VIP4
	if v6 {
		a = f.VIP6
	}
	return netip.AddrPortFrom(a, uint16(f.svc.Port))
}

// waitFor polls cond every 100 ms until it holds or d has passed; it returns cond's last answer.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}
