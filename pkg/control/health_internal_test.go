package control

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// checkerOver is a health checker over real maps (no program, no namespace) with one VIP and two
// backends, and a dial that answers from refused (per backend address) at once.
func checkerOver(t *testing.T, hc HealthCheck, refused map[netip.Addr]bool) (*healthChecker, *lb.Maps, lb.VIP, []Backend) {
	t.Helper()
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
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
	m := &lb.Maps{VIPs: coll.Maps[lb.MapVIPs], Backends: coll.Maps[lb.MapBackends], Ring: coll.Maps[lb.MapRing],
		Flows: coll.Maps[lb.MapFlows], Tokens: coll.Maps[lb.MapTokens], Stats: coll.Maps[lb.MapStats], Events: coll.Maps[lb.MapEvents]}
	hs := loader.LBHealthSpec(lb.MaxBackends)
	hs.Pinning = ebpf.PinNone
	health, err := ebpf.NewMap(hs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { health.Close() })
	v := lb.VIP{Addr: netip.MustParseAddrPort("10.0.0.10:80"), ID: 1, Forward: lb.ForwardL2}
	if err := m.PutVIP(v); err != nil {
		t.Fatal(err)
	}
	set, err := NewBackendSet(lb.MaxBackends,
		Backend{ID: 0, Addr: netip.MustParseAddr("10.2.0.2"), Weight: 1},
		Backend{ID: 1, Addr: netip.MustParseAddr("10.2.1.2"), Weight: 1})
	if err != nil {
		t.Fatal(err)
	}
	b := &Balancer{Maps: m, Health: health, set: set, health: map[loader.HealthKey]loader.HealthEntry{}}
	h := newHealthChecker(b, map[netip.AddrPort]HealthCheck{v.Addr: hc})
	h.dial = func(_ context.Context, a netip.AddrPort, _ time.Duration) error {
		if refused[a.Addr()] {
			return &netOpError{syscall.ECONNREFUSED}
		}
		return nil
	}
	return h, m, v, set.List()
}

// netOpError is what a refused dial returns, without a socket.
type netOpError struct{ errno syscall.Errno }

func (e *netOpError) Error() string { return "connect: " + e.errno.Error() }
func (e *netOpError) Unwrap() error { return e.errno }

// The checker connects to each backend once per interval (a tick that comes a little before a
// check is due counts, so the period does not double), and its rise/fall counts follow results
// in a row: a backend goes down at the fall-th failure in a row, not before, and comes back at the
// rise-th success in a row; a success between failures starts the count again. Each change is in
// the health map and in that VIP's ring at once.
func TestHealthStateMachine(t *testing.T) {
	hc := HealthCheck{Port: 80, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 3}
	refused := map[netip.Addr]bool{}
	h, m, v, bes := checkerOver(t, hc, refused)
	ctx := context.Background()
	now := time.Unix(1000, 0)
	// One round: every due connect, and its result applied as Run does.
	round := func() (dials int, changes []string) {
		t.Helper()
		if err := h.sync(ctx, now); err != nil {
			t.Fatal(err)
		}
		for _, p := range h.probes {
			if p.busy {
				dials++
			}
		}
		for range dials {
			r := <-h.results
			if state, reason, changed := h.result(r); changed {
				if err := h.apply(r, state, reason, now); err != nil {
					t.Fatal(err)
				}
				changes = append(changes, r.target.backend.String()+" "+healthStateName(state)+" "+reason)
			}
		}
		now = now.Add(hc.Interval - time.Millisecond) // the ticker's next tick, a little early
		return dials, changes
	}
	slots := func() map[uint32]int {
		ring, err := m.ReadRing(v.ID)
		if err != nil {
			t.Fatal(err)
		}
		n := map[uint32]int{}
		for _, id := range ring {
			n[id]++
		}
		return n
	}
	if d, c := round(); d != 2 || len(c) != 2 {
		t.Fatalf("first round: %d connects, changes %q: want 2, and both first checks (up)", d, c)
	}
	if d, _ := round(); d != 2 {
		t.Fatalf("a tick 1ms before the next check is due: %d connects, want 2 (the period must not double)", d)
	}
	// Backend 0 fails twice, passes once, then fails three times: down at the third in a row.
	for i, want := range []struct {
		refuse bool
		change string
	}{{true, ""}, {true, ""}, {false, ""}, {true, ""}, {true, ""}, {true, "10.2.0.2 down connect: connection refused (failed 3 times in a row)"}} {
		refused[bes[0].Addr] = want.refuse
		_, c := round()
		if strings.Join(c, ";") != want.change {
			t.Fatalf("round %d (refused %v): changes %q, want %q", i, want.refuse, c, want.change)
		}
	}
	if n := slots(); n[bes[0].ID] != 0 || n[bes[1].ID] != lb.RingSize {
		t.Errorf("backend 0 down: ring slots %v", n)
	}
	var e loader.HealthEntry
	if err := h.b.Health.Lookup(loader.HealthKey{VIP: v.ID, Backend: bes[0].ID}, &e); err != nil || e.State != loader.HealthDown || e.Since != now.Add(-hc.Interval+time.Millisecond).UnixNano() {
		t.Errorf("health entry of backend 0: %+v %v", e, err)
	}
	// Up again: one success, a failure (the count restarts), then two in a row.
	for i, want := range []struct {
		refuse bool
		change string
	}{{false, ""}, {true, ""}, {false, ""}, {false, "10.2.0.2 up connected (2 times in a row)"}} {
		refused[bes[0].Addr] = want.refuse
		_, c := round()
		if strings.Join(c, ";") != want.change {
			t.Fatalf("recovery round %d (refused %v): changes %q, want %q", i, want.refuse, c, want.change)
		}
	}
	all, err := h.b.set.Table(nil)
	if err != nil {
		t.Fatal(err)
	}
	if ring, err := m.ReadRing(v.ID); err != nil || !slices.Equal(ring, all) {
		t.Errorf("backend 0 up: the ring is not the table of both backends (%v)", err)
	}
}
