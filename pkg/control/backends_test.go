package control

import (
	"net/netip"
	"testing"
)

func TestParseBackendSpec(t *testing.T) {
	for _, tc := range []struct {
		in     string
		addr   string
		weight uint32
		bad    bool
	}{
		{in: "10.2.0.2", addr: "10.2.0.2", weight: 1},
		{in: "10.2.0.2,weight=5", addr: "10.2.0.2", weight: 5},
		{in: "fd02::2,weight=1000", addr: "fd02::2", weight: 1000},
		{in: "::ffff:10.2.0.2", addr: "10.2.0.2", weight: 1},
		{in: "10.2.0.2,weight=0", bad: true},
		{in: "10.2.0.2,weight=1001", bad: true},
		{in: "10.2.0.2,w=3", bad: true},
		{in: "host", bad: true},
	} {
		got, err := ParseBackendSpec(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted as %+v", tc.in, got)
			}
			continue
		}
		if err != nil || got.Addr != netip.MustParseAddr(tc.addr) || got.Weight != tc.weight {
			t.Errorf("%q: got %+v, %v", tc.in, got, err)
		}
	}
}

func TestBackendSet(t *testing.T) {
	s, err := NewBackendSet(3)
	if err != nil {
		t.Fatal(err)
	}
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	for i, ip := range []string{"10.2.0.2", "10.2.1.2", "10.2.2.2"} {
		b, err := s.Add(BackendSpec{Addr: a(ip)})
		if err != nil || b.ID != uint32(i) || b.State != Active || b.Weight != 1 {
			t.Fatalf("add %s: %+v %v", ip, b, err)
		}
	}
	if _, err := s.Add(BackendSpec{Addr: a("10.2.3.2")}); err == nil {
		t.Fatal("fourth backend accepted in a set of 3")
	}
	full, err := s.Table(nil)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := s.Drain(a("10.2.1.2")); err != nil || b.State != Draining {
		t.Fatalf("drain: %+v %v", b, err)
	}
	drained, _ := s.Table(nil)
	if counts(drained)[1] != 0 {
		t.Fatal("a draining backend is in the table")
	}
	if _, others := moved(full, drained, 1); others > RingSize/100 {
		t.Fatalf("draining backend 1 moved %d slots between the other two", others)
	}
	// Removing frees the id; the next add reuses it.
	if _, err := s.Remove(a("10.2.0.2")); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Add(BackendSpec{Addr: a("10.2.9.2"), Weight: 2}); b.ID != 0 || b.Weight != 2 {
		t.Fatalf("re-add: %+v", b)
	}
	// Adding a draining backend again reactivates it and keeps its id.
	if b, _ := s.Add(BackendSpec{Addr: a("10.2.1.2")}); b.ID != 1 || b.State != Active {
		t.Fatalf("reactivate: %+v", b)
	}
	if _, err := s.Remove(a("10.9.9.9")); err == nil {
		t.Fatal("removed an unknown backend")
	}
	// Only IPv6 backends for an IPv6 ipip VIP.
	tab, _ := s.Table(func(b Backend) bool { return b.Addr.Is6() })
	if counts(tab)[NoBackend] != RingSize {
		t.Fatal("filter ignored")
	}
	// Reloaded from the datapath, ids are kept.
	again, err := NewBackendSet(3, s.List()...)
	if err != nil {
		t.Fatal(err)
	}
	if got := again.List(); len(got) != 3 || got[0].Addr != a("10.2.9.2") || got[1].Addr != a("10.2.1.2") {
		t.Fatalf("reloaded: %+v", got)
	}
	if _, err := NewBackendSet(3, Backend{ID: 0, Addr: a("10.0.0.1")}, Backend{ID: 0, Addr: a("10.0.0.2")}); err == nil {
		t.Fatal("duplicate id accepted")
	}
}
