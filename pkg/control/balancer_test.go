package control_test

import (
	"context"
	"net/netip"
	"slices"
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
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Paths: 2})
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
