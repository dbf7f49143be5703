package control_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// newBalancer creates the balancer's maps (unpinned; the program is not needed) and a control plane
// over them whose resolver lives in the server namespace of a two-path lab: backends are the lab's
// client addresses (on-link, as l2 wants).
func newBalancer(t *testing.T) (*control.Balancer, *lb.Maps, *lab.Lab) {
	t.Helper()
	return newBalancerPaths(t, 2)
}

// newBalancerPaths is newBalancer over a lab of n paths.
func newBalancerPaths(t *testing.T, n int) (*control.Balancer, *lb.Maps, *lab.Lab) {
	t.Helper()
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Paths: n})
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
	bal := &lb.Maps{VIPs: coll.Maps[lb.MapVIPs], Backends: coll.Maps[lb.MapBackends], Ring: coll.Maps[lb.MapRing],
		Flows: coll.Maps[lb.MapFlows], Tokens: coll.Maps[lb.MapTokens], Stats: coll.Maps[lb.MapStats], Events: coll.Maps[lb.MapEvents]}
	w, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: lb.MaxBackends})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	res, err := control.NewResolver(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	b, err := control.OpenBalancer(bal, w, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b, bal, l
}

func ringCounts(t *testing.T, m *lb.Maps, vip uint32) map[uint32]int {
	t.Helper()
	ring, err := m.ReadRing(vip)
	if err != nil {
		t.Fatal(err)
	}
	c := map[uint32]int{}
	for _, id := range ring {
		c[id]++
	}
	return c
}

// The control plane writes what the datapath reads: VIPs with their policy, backends resolved to
// the kernel's next hop, weighted tables; drain and remove take a backend out of the tables; a
// second control plane over the same maps reads the same set back (ids, weights, states).
func TestBalancerWritesTheMaps(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	v, err := b.PutVIP(vip, control.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	p0, p1 := l.Paths[0], l.Paths[1]
	bes, err := b.AddBackends(ctx, control.BackendSpec{Addr: p0.ClientIP4, Weight: 1}, control.BackendSpec{Addr: p1.ClientIP4, Weight: 3})
	if err != nil {
		t.Fatal(err)
	}
	e, ok, err := bal.Backend(bes[0].ID)
	if err != nil || !ok {
		t.Fatalf("backend entry: %+v %v %v", e, ok, err)
	}
	h, _ := l.Handle(l.Client)
	cli0, _ := h.LinkByName(p0.ClientIf)
	h.Close()
	if e.MAC.String() != cli0.Attrs().HardwareAddr.String() || e.SrcAddr != p0.ServerIP4 || e.Draining {
		t.Errorf("backend entry %+v: want MAC %s, source %s", e, cli0.Attrs().HardwareAddr, p0.ServerIP4)
	}
	c := ringCounts(t, bal, v.ID)
	if c[bes[0].ID]+c[bes[1].ID] != lb.RingSize || c[bes[1].ID] < 3*c[bes[0].ID]-3 || c[bes[1].ID] > 3*c[bes[0].ID]+3 {
		t.Errorf("weights 1:3 gave slots %v", c)
	}

	// Another process opening the same maps sees the same set.
	again, err := control.OpenBalancer(bal, b.Weights, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.List(), b.List()) {
		t.Errorf("reloaded set %+v, want %+v", again.List(), b.List())
	}

	if _, err := b.Drain(p1.ClientIP4); err != nil {
		t.Fatal(err)
	}
	if c := ringCounts(t, bal, v.ID); c[bes[0].ID] != lb.RingSize {
		t.Errorf("after draining backend %d: slots %v", bes[1].ID, c)
	}
	if e, ok, _ := bal.Backend(bes[1].ID); !ok || !e.Draining {
		t.Errorf("drained backend entry %+v active %v", e, ok)
	}
	if _, err := b.Remove(p0.ClientIP4); err != nil {
		t.Fatal(err)
	}
	if c := ringCounts(t, bal, v.ID); c[control.NoBackend] != lb.RingSize {
		t.Errorf("no active backend left, slots %v", c)
	}
	if _, ok, _ := bal.Backend(bes[0].ID); ok {
		t.Error("removed backend still active in the table")
	}
	// Off-link backends are refused while a VIP forwards at l2.
	if _, err := b.AddBackends(ctx, control.BackendSpec{Addr: netip.MustParseAddr("192.0.2.1")}); err == nil {
		t.Error("an unroutable backend was added")
	}
}

// GC removes flows and tokens idle beyond their limits, and those of backends not in the set, and
// keeps the rest.
func TestGC(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.PutVIP(netip.MustParseAddrPort("10.0.0.10:80"), control.DefaultPolicy); err != nil {
		t.Fatal(err)
	}
	bes, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4})
	if err != nil {
		t.Fatal(err)
	}
	live, gone := bes[0].ID, bes[0].ID+7
	now := lb.Monotonic()
	flow := func(port uint16, be uint32, age time.Duration) lb.Flow {
		return lb.Flow{FlowKey: lb.FlowKey{Src: netip.AddrPortFrom(l.Paths[0].ClientIP4, port), Dst: netip.MustParseAddrPort("10.0.0.10:80")},
			Backend: be, LastSeen: now - age}
	}
	if err := bal.PutFlows([]lb.Flow{flow(1, live, time.Second), flow(2, live, time.Hour), flow(3, gone, time.Second)}); err != nil {
		t.Fatal(err)
	}
	for _, tk := range []lb.Token{{Token: 1, Backend: live, LastSeen: now - time.Second}, {Token: 2, Backend: live, LastSeen: now - 2*time.Hour}, {Token: 3, Backend: gone, LastSeen: now}} {
		if err := bal.PutToken(tk); err != nil {
			t.Fatal(err)
		}
	}
	r, err := b.GC(control.GCConfig{FlowIdle: time.Minute, TokenIdle: time.Hour}, lb.Monotonic())
	if err != nil {
		t.Fatal(err)
	}
	want := control.GCResult{Flows: 3, Tokens: 3, IdleFlows: 1, IdleTokens: 1, OrphanFlows: 1, OrphanTokens: 1, FlowsAfter: 1, TokensAfter: 1}
	if r != want {
		t.Errorf("gc: %+v, want %+v", r, want)
	}
	flows, _ := bal.ListFlows()
	tokens, _ := bal.ListTokens()
	if len(flows) != 1 || flows[0].FlowKey.Src.Port() != 1 || len(tokens) != 1 || tokens[0].Token != 1 {
		t.Errorf("left: flows %+v tokens %+v", flows, tokens)
	}
}

// A backend added after another was removed may get its id; it must not inherit the removed
// backend's flows and tokens (their connections live on the removed backend), even when no GC
// has run in between.
func TestReusedIDStartsClean(t *testing.T) {
	b, bal, l := newBalancerPaths(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	v, err := b.PutVIP(vip, control.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	bes, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4}, control.BackendSpec{Addr: l.Paths[1].ClientIP4})
	if err != nil {
		t.Fatal(err)
	}
	old := bes[1].ID
	now := lb.Monotonic()
	flow := lb.Flow{FlowKey: lb.FlowKey{Src: netip.MustParseAddrPort("10.0.1.2:4000"), Dst: vip}, Backend: old, Token: 7, LastSeen: now}
	if err := bal.PutFlows([]lb.Flow{flow}); err != nil {
		t.Fatal(err)
	}
	if err := bal.PutToken(lb.Token{VIPID: v.ID, Token: 7, Backend: old, LastSeen: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Remove(l.Paths[1].ClientIP4); err != nil {
		t.Fatal(err)
	}
	got, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[2].ClientIP4})
	if err != nil {
		t.Fatal(err)
	}
	if got[0].ID != old {
		t.Fatalf("new backend got id %d, want the freed id %d (lowest free)", got[0].ID, old)
	}
	if f, ok, err := bal.LookupFlow(flow.FlowKey); err != nil || ok {
		t.Errorf("the new backend %d inherited flow %+v (%v)", old, f, err)
	}
	if tk, ok, err := bal.LookupToken(v.ID, 7); err != nil || ok {
		t.Errorf("the new backend %d inherited token %+v (%v)", old, tk, err)
	}
}

// GC keeps idle flows that can resume: those whose connection's token is live (an idle backup
// subflow) and those of a draining backend (Maglev would not find it again); it removes the idle
// flows of connections without a live token.
func TestGCKeepsResumableFlows(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	v, err := b.PutVIP(vip, control.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	bes, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4}, control.BackendSpec{Addr: l.Paths[1].ClientIP4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Drain(l.Paths[1].ClientIP4); err != nil {
		t.Fatal(err)
	}
	act, drn := bes[0].ID, bes[1].ID
	now := lb.Monotonic()
	flow := func(port uint16, be, token uint32) lb.Flow {
		return lb.Flow{FlowKey: lb.FlowKey{Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.1.2"), port), Dst: vip},
			Backend: be, Token: token, LastSeen: now - time.Hour}
	}
	backup, drained, plain, stale := flow(1, act, 11), flow(2, drn, 0), flow(3, act, 0), flow(4, act, 12)
	if err := bal.PutFlows([]lb.Flow{backup, drained, plain, stale}); err != nil {
		t.Fatal(err)
	}
	for _, tk := range []lb.Token{{VIPID: v.ID, Token: 11, Backend: act, LastSeen: now}, {VIPID: v.ID, Token: 12, Backend: act, LastSeen: now - 2*time.Hour}} {
		if err := bal.PutToken(tk); err != nil {
			t.Fatal(err)
		}
	}
	r, err := b.GC(control.GCConfig{FlowIdle: time.Minute, TokenIdle: time.Hour}, lb.Monotonic())
	if err != nil {
		t.Fatal(err)
	}
	if r.IdleFlows != 2 || r.IdleTokens != 1 || r.OrphanFlows != 0 {
		t.Errorf("gc: %+v, want the plain and the stale-token flow and the stale token removed", r)
	}
	for _, c := range []struct {
		f    lb.Flow
		keep bool
	}{{backup, true}, {drained, true}, {plain, false}, {stale, false}} {
		if _, ok, err := bal.LookupFlow(c.f.FlowKey); err != nil || ok != c.keep {
			t.Errorf("flow from port %d (backend %d, token %d): present %v, want %v (%v)", c.f.Src.Port(), c.f.Backend, c.f.Token, ok, c.keep, err)
		}
	}
}

// What cannot be a service address is refused with a reason, before anything is written: no port,
// unspecified, multicast, broadcast, loopback, a backend's address, the balancer's own address;
// and a backend cannot take a VIP's address.
func TestVIPValidation(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4}); err != nil {
		t.Fatal(err)
	}
	// The resolver lives in the lab's server namespace: its addresses are the balancer's own.
	own := l.Paths[1].ServerIP4
	for _, c := range []struct{ vip, want string }{
		{"10.0.0.10:0", "with a port"},
		{"0.0.0.0:80", "unspecified"},
		{"[::]:80", "unspecified"},
		{"224.0.0.1:80", "multicast"},
		{"[ff02::1]:80", "multicast"},
		{"255.255.255.255:80", "broadcast"},
		{"127.0.0.1:80", "loopback"},
		{netip.AddrPortFrom(l.Paths[0].ClientIP4, 80).String(), "a backend's address"},
		{netip.AddrPortFrom(own, 80).String(), "the balancer itself"},
	} {
		_, err := b.PutVIP(netip.MustParseAddrPort(c.vip), control.DefaultPolicy)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("vip %s: %v, want an error saying %q", c.vip, err, c.want)
		}
	}
	if vips, err := bal.ListVIPs(); err != nil || len(vips) != 0 {
		t.Errorf("refused VIPs were written: %+v %v", vips, err)
	}
	vip := netip.AddrPortFrom(l.Paths[1].ClientIP4, 80)
	if _, err := b.PutVIP(vip, control.DefaultPolicy); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddBackends(ctx, control.BackendSpec{Addr: vip.Addr()}); err == nil || !strings.Contains(err.Error(), "the address of VIP") {
		t.Errorf("a backend on the VIP's address: %v", err)
	}
}
