package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// Two invocations that change one balancer at once (`lb attach` adding a backend, `lb backend add`
// adding another) always leave the state that applying them one after the other leaves: both
// backends present with distinct ids and their weights, and every VIP's Maglev table the one the
// resulting backend set computes. Each attach holds the loader's lock from its first step to its
// last, and every change re-reads the backend set once it holds the lock.
func TestConcurrentChanges(t *testing.T) {
	s := newSetup(t, options{forward: "l2"})
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	b1, b2 := s.Backends[1].IP4, s.Backends[2].IP4
	var ifaces []string
	for _, p := range s.Paths {
		ifaces = append(ifaces, p.LBIf)
	}
	const rounds = 8
	for i := range rounds {
		mx(t, "--netns", s.LB, "lb", "backend", "remove", b1.String(), b2.String())
		w1, w2 := uint32(1+i%3), uint32(2+i%5)
		attach := append([]string{"--netns", s.LB, "lb", "attach"}, ifaces...)
		attach = append(attach, "--vip", s.vip.String(), "--backend", fmt.Sprintf("%s,weight=%d", b1, w1))
		add := []string{"--netns", s.LB, "lb", "backend", "add", fmt.Sprintf("%s,weight=%d", b2, w2)}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for k, args := range [][]string{attach, add} {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[k] = mxErr(args...) }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}

		st := lbStatus(t, s.LB)
		want := map[netip.Addr]uint32{s.Backends[0].IP4: 1, b1: w1, b2: w2}
		ids := map[uint32]bool{}
		var set []control.Backend
		for _, be := range st.Backends {
			a := netip.MustParseAddr(be.Addr)
			w, ok := want[a]
			if !ok || be.Weight != w || be.State != string(control.Active) || ids[be.ID] {
				t.Fatalf("round %d: backend %+v, want weights %v and distinct ids", i, be, want)
			}
			ids[be.ID] = true
			delete(want, a)
			set = append(set, control.Backend{ID: be.ID, Addr: a, Weight: be.Weight, State: control.Active})
		}
		if len(want) != 0 || len(st.VIPs) != 1 {
			t.Fatalf("round %d: backends %+v missing %v; vips %+v", i, st.Backends, want, st.VIPs)
		}
		checkRings(t, ld, s.LB, set, "round "+strconv.Itoa(i))
	}
}

// checkRings compares every VIP's Maglev table in the pinned ring map with the table the backend
// set computes, and the weights map with the set's weights.
func checkRings(t *testing.T, ld *loader.Loader, ns string, set []control.Backend, what string) {
	t.Helper()
	m, err := ld.OpenLB(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	bs, err := control.NewBackendSet(int(m.Backends.MaxEntries()), set...)
	if err != nil {
		t.Fatal(err)
	}
	table, err := bs.Table(nil)
	if err != nil {
		t.Fatal(err)
	}
	vips, err := m.ListVIPs()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vips {
		ring, err := m.ReadRing(v.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ring, table) {
			t.Fatalf("%s: ring of vip %s differs from the backend set's table", what, v.Addr)
		}
	}
	for _, be := range set {
		var w uint32
		if err := m.Weights.Lookup(be.ID, &w); err != nil || w != be.Weight {
			t.Fatalf("%s: weight of backend %d: %d (%v), want %d", what, be.ID, w, err, be.Weight)
		}
	}
}

// Attaching again with only --vip changes nothing of the VIP's policy: only the flags given apply.
func TestAttachKeepsPolicy(t *testing.T) {
	s := newSetup(t, options{forward: "l2", unknown: "hash"})
	var ifaces []string
	for _, p := range s.Paths {
		ifaces = append(ifaces, p.LBIf)
	}
	again := append(append([]string{"--netns", s.LB, "lb", "attach"}, ifaces...), "--vip", s.vip.String())
	mx(t, again...)
	st := lbStatus(t, s.LB)
	if len(st.VIPs) != 1 || st.VIPs[0].UnknownJoin != "hash" || st.VIPs[0].Forward != "l2" || !st.VIPs[0].JoinSteering {
		t.Errorf("after lb attach with --vip only: %+v, want unknown_join hash kept", st.VIPs)
	}
	mx(t, append(again, "--join-steering=false")...)
	if st := lbStatus(t, s.LB); st.VIPs[0].UnknownJoin != "hash" || st.VIPs[0].JoinSteering {
		t.Errorf("after --join-steering=false only: %+v", st.VIPs)
	}
}

// `lb run` stops, with a clear error, when the balancer it works on is detached under it, instead
// of collecting and refreshing maps that steer nothing.
func TestRunStopsWhenDetached(t *testing.T) {
	s := newSetup(t, options{forward: "l2"})
	cp := startControlPlane(t, s.LB)
	mx(t, "--netns", s.LB, "lb", "detach")
	t.Cleanup(func() { mx(t, s.attach...) }) // for the setup's own detach
	if !cp.waitExit(30 * time.Second) {
		t.Fatalf("lb run still running 30 s after lb detach:\n%s", cp.logs)
	}
	if cp.err == nil || !strings.Contains(cp.logs.String(), "pins are gone or replaced") {
		t.Errorf("lb run after detach: exit %v\n%s", cp.err, cp.logs)
	}
}
