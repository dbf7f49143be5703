package control_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// Changes that fail or stop half way leave a state that is the configuration's, or that the next
// change completes (issue "Hostile input and faults", item 10).

// An AddBackends that fails on its second backend leaves the first one in every VIP's table.
func TestFailedAddRebuildsTables(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, err := b.PutVIP(netip.MustParseAddrPort("10.0.0.10:80"), control.DefaultPolicy)
	if err != nil {
		t.Fatal(err)
	}
	got, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4}, control.BackendSpec{Addr: netip.MustParseAddr("192.0.2.1")})
	if err == nil || len(got) != 1 {
		t.Fatalf("add with an unroutable second backend: %v %+v", err, got)
	}
	if c := ringCounts(t, bal, v.ID); c[got[0].ID] != lb.RingSize {
		t.Errorf("after the failed add, the first backend has %d of %d slots", c[got[0].ID], lb.RingSize)
	}
	if len(b.List()) != 1 {
		t.Errorf("set after the failed add: %+v", b.List())
	}
}

// A Remove stopped after any of its steps is finished by the next change of any process: the
// backend never comes back into the tables.
func TestInterruptedRemoveIsFinished(t *testing.T) {
	for _, step := range []string{"remove: weight cleared", "remove: tables rebuilt"} {
		t.Run(step, func(t *testing.T) {
			b, bal, l := newBalancer(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			v, err := b.PutVIP(netip.MustParseAddrPort("10.0.0.10:80"), control.DefaultPolicy)
			if err != nil {
				t.Fatal(err)
			}
			bes, err := b.AddBackends(ctx, control.BackendSpec{Addr: l.Paths[0].ClientIP4}, control.BackendSpec{Addr: l.Paths[1].ClientIP4})
			if err != nil {
				t.Fatal(err)
			}
			killed := errors.New("killed")
			undo := control.SetStepHook(func(s string) error {
				if s == step {
					return killed
				}
				return nil
			})
			_, err = b.Remove(l.Paths[1].ClientIP4)
			undo()
			if !errors.Is(err, killed) {
				t.Fatalf("remove: %v, want it stopped at %q", err, step)
			}
			// Another process: its first change finishes the removal.
			again, err := control.OpenBalancer(bal, b.Weights, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := again.UpdateVIP(netip.MustParseAddrPort("10.0.0.11:80"), control.PolicyUpdate{}); err != nil {
				t.Fatal(err)
			}
			if len(again.List()) != 1 || again.List()[0].ID != bes[0].ID {
				t.Errorf("set after the stopped remove: %+v", again.List())
			}
			if _, ok, _ := bal.Backend(bes[1].ID); ok {
				t.Error("the removed backend's entry is still there")
			}
			if c := ringCounts(t, bal, v.ID); c[bes[0].ID] != lb.RingSize {
				t.Errorf("slots after the stopped remove: %v", c)
			}
		})
	}
}

// Changing a VIP's policy changes only the fields given; switching it to l2 is refused while a
// backend is not on a link of the balancer.
func TestPolicyUpdate(t *testing.T) {
	b, bal, l := newBalancer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	ipip := control.Policy{Forward: lb.ForwardIPIP, UnknownJoin: lb.JoinHash, JoinSteering: false}
	if _, err := b.PutVIP(vip, ipip); err != nil {
		t.Fatal(err)
	}
	if _, err := b.UpdateVIP(vip, control.PolicyUpdate{}); err != nil {
		t.Fatal(err)
	}
	steer := true
	if _, err := b.UpdateVIP(vip, control.PolicyUpdate{JoinSteering: &steer}); err != nil {
		t.Fatal(err)
	}
	vips, err := bal.ListVIPs()
	if err != nil || len(vips) != 1 {
		t.Fatal(vips, err)
	}
	if got := vips[0]; got.Forward != lb.ForwardIPIP || got.UnknownJoin != lb.JoinHash || !got.JoinSteering {
		t.Errorf("after updating join steering only: %+v", got)
	}
	// A backend behind a router: fine for ipip, not for l2.
	gw := l.Paths[0].ClientIP4
	if _, err := l.IP(l.Server, "route", "add", "192.0.2.0/24", "via", gw.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.AddBackends(ctx, control.BackendSpec{Addr: netip.MustParseAddr("192.0.2.1")}); err != nil {
		t.Fatal(err)
	}
	l2 := lb.ForwardL2
	if _, err := b.UpdateVIP(vip, control.PolicyUpdate{Forward: &l2}); !errors.Is(err, control.ErrNotOnLink) {
		t.Errorf("switch to l2 with a routed backend: %v, want %v", err, control.ErrNotOnLink)
	}
	if vips, _ := bal.ListVIPs(); len(vips) != 1 || vips[0].Forward != lb.ForwardIPIP {
		t.Errorf("the refused switch was written: %+v", vips)
	}
}
