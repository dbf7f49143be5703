package control_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// healthBalancer is a balancer over maps without pins (and a health map), its backends the client
// addresses of a two-path lab (namespaces "mxhc…"), its resolver the server's: opened twice, as
// lb run and a CLI invocation would.
func healthBalancer(t *testing.T) (run, cli *control.Balancer, m *lb.Maps, health *ebpf.Map, l *lab.Lab) {
	t.Helper()
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	var rb [3]byte
	if _, err := rand.Read(rb[:]); err != nil {
		t.Fatal(err)
	}
	l = testutil.NewLab(t, lab.Config{Prefix: "mxhc" + hex.EncodeToString(rb[:]), Paths: 2})
	spec, err := lb.Spec(lb.Config{MaxVIPs: 2, MaxFlows: 1024, MaxTokens: 1024})
	if err != nil {
		t.Fatal(err)
	}
	spec.Programs = nil
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(coll.Close)
	m = &lb.Maps{VIPs: coll.Maps[lb.MapVIPs], Backends: coll.Maps[lb.MapBackends], Ring: coll.Maps[lb.MapRing],
		Flows: coll.Maps[lb.MapFlows], Tokens: coll.Maps[lb.MapTokens], Stats: coll.Maps[lb.MapStats], Events: coll.Maps[lb.MapEvents]}
	w, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: lb.MaxBackends})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	hs := loader.LBHealthSpec(lb.MaxBackends)
	hs.Pinning = ebpf.PinNone
	if health, err = ebpf.NewMap(hs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { health.Close() })
	open := func() *control.Balancer {
		res, err := control.NewResolver(l.Server)
		if err != nil {
			t.Fatal(err)
		}
		b, err := control.OpenBalancer(m, w, res)
		if err != nil {
			t.Fatal(err)
		}
		b.Health = health
		t.Cleanup(b.Close)
		return b
	}
	return open(), open(), m, health, l
}

// The checker's counts reach OnServing (what BGP will announce on), the tables leave a down
// backend out in every process's rebuild, and a Run without checks forgets the states: in a lab,
// with real listeners in the backends' namespace and connects from the balancer's.
//   - both listening: 2 backends serve the VIP;
//   - one listener closed: 1 within fall (1) intervals of 100ms, all slots to the other; a second
//     balancer over the same maps (a CLI invocation) adding a backend keeps it out;
//   - the other drained (by that second balancer): 0; re-added: 1;
//   - the listener back: 2, and the table is the one of both;
//   - closed again, lb run stopped (the state stays down in the map), a Run without checks: the
//     entries are deleted and both serve again.
func TestHealthServing(t *testing.T) {
	b, cli, m, health, l := healthBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	v, err := b.PutVIP(vip, control.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	be := []netip.Addr{l.Paths[0].ClientIP4, l.Paths[1].ClientIP4}
	added, err := b.AddBackends(ctx, control.BackendSpec{Addr: be[0]}, control.BackendSpec{Addr: be[1]})
	if err != nil {
		t.Fatal(err)
	}
	id := map[netip.Addr]uint32{}
	for _, a := range added {
		id[a.Addr] = a.ID
	}
	both := ringCounts(t, m, v.ID)

	var port uint16
	listen := func(a netip.Addr) net.Listener {
		t.Helper()
		ln, err := lab.ListenIn(ctx, l.Client, netip.AddrPortFrom(a, port).String())
		if err != nil {
			t.Fatal(err)
		}
		port = uint16(ln.Addr().(*net.TCPAddr).Port)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return ln
	}
	ln0 := listen(be[0])
	defer func() { ln0.Close() }()
	ln1 := listen(be[1])
	defer ln1.Close()

	var mu sync.Mutex // the lock lb run and the CLI share (the loader's, for pinned balancers)
	lock := func() (func(), error) { mu.Lock(); return mu.Unlock, nil }
	serving := make(chan map[netip.AddrPort]int, 64)
	run := func(checks map[netip.AddrPort]control.HealthCheck) (stop func()) {
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- b.Run(rctx, control.RunConfig{Lock: lock, Health: checks,
				OnServing: func(n map[netip.AddrPort]int) { serving <- n }})
		}()
		return func() {
			rcancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		}
	}
	want := func(what string, n int) time.Duration {
		t.Helper()
		t0 := time.Now()
		for {
			select {
			case got := <-serving:
				if got[vip] == n && len(got) == 1 {
					return time.Since(t0)
				}
			case <-time.After(3 * time.Second):
				t.Fatalf("%s: no OnServing with %d backends for %s within 3 s", what, n, vip)
			}
		}
	}
	cliDo := func(fn func() error) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if err := fn(); err != nil {
			t.Fatal(err)
		}
	}

	check := control.HealthCheck{Port: port, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1}
	stop := run(map[netip.AddrPort]control.HealthCheck{vip: check})
	want("start", 2)
	ln0.Close()
	took := want("backend 0's listener closed", 1)
	mu.Lock()
	c := ringCounts(t, m, v.ID)
	mu.Unlock()
	if c[id[be[1]]] != lb.RingSize {
		t.Errorf("backend 0 down: slots %v, want all %d to backend 1", c, lb.RingSize)
	}
	// Another process's rebuild computes the same table: the down backend stays out.
	cliDo(func() error { _, err := cli.AddBackends(ctx, control.BackendSpec{Addr: be[1]}); return err })
	if c := ringCounts(t, m, v.ID); c[id[be[1]]] != lb.RingSize {
		t.Errorf("after another process's rebuild: slots %v, want all to backend 1", c)
	}
	if n, err := cli.Serving(); err != nil || n[vip] != 1 {
		t.Errorf("Serving of the other process: %v %v", n, err)
	}
	cliDo(func() error { _, err := cli.Drain(be[1]); return err })
	want("backend 1 drained", 0)
	cliDo(func() error { _, err := cli.AddBackends(ctx, control.BackendSpec{Addr: be[1]}); return err })
	want("backend 1 active again", 1)
	ln0 = listen(be[0])
	want("backend 0's listener back", 2)
	mu.Lock()
	if c := ringCounts(t, m, v.ID); !maps.Equal(c, both) {
		t.Errorf("backend 0 back: slots %v, want %v", c, both)
	}
	mu.Unlock()

	ln0.Close()
	want("backend 0's listener closed again", 1)
	stop()
	var k loader.HealthKey
	var e loader.HealthEntry
	if err := health.Lookup(loader.HealthKey{VIP: v.ID, Backend: id[be[0]]}, &e); err != nil || e.State != loader.HealthDown {
		t.Fatalf("health of backend 0 after lb run stopped: %+v %v, want down", e, err)
	}
	stop = run(nil)
	want("a run without checks", 2)
	stop()
	if it := health.Iterate(); it.Next(&k, &e) {
		t.Errorf("health map after a run without checks: %+v %+v left", k, e)
	}
	if c := ringCounts(t, m, v.ID); !maps.Equal(c, both) {
		t.Errorf("after a run without checks: slots %v, want %v", c, both)
	}
	t.Logf("a refused connect took backend 0 out in %v (interval %v, fall 1)", took, check.Interval)
}
