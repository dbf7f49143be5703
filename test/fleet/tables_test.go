package fleet

import (
	"slices"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labfleet"
)

// TestFleetTablesAgree: the three balancers run lb run --config with files that differ only in
// the order of the backends (and share one hash_seed_file); every VIP entry pinned by each
// instance (the VIPs, the join ports, the IPv6 join addresses) has the same id and a byte-identical
// Maglev ring, and every join entry's ring holds its own backend in every slot.
func TestFleetTablesAgree(t *testing.T) {
	f := newFleet(t, labfleet.Service{JoinSteering: true, JoinPortBase: 20000, JoinAddrs: true})
	if f.ConfigFile(0, f.svc) == f.ConfigFile(1, f.svc) || f.ConfigFile(1, f.svc) == f.ConfigFile(2, f.svc) {
		t.Fatal("the instances' config files do not differ in the order of the backends")
	}
	want, err := f.Tables(0)
	if err != nil {
		t.Fatal(err)
	}
	// 2 VIPs, a join port per backend on each VIP's address, a join address per backend.
	if n := 2 + 2*len(f.Backends) + len(f.Backends); len(want) != n {
		t.Fatalf("balancer 0 pins %d VIP entries, want %d", len(want), n)
	}
	for k := 1; k < len(f.Balancers); k++ {
		got, err := f.Tables(k)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("balancer %d pins %d VIP entries, balancer 0 %d", k, len(got), len(want))
		}
		for a, w := range want {
			g, ok := got[a]
			switch {
			case !ok:
				t.Errorf("balancer %d has no entry for %s", k, a)
			case g.VIP != w.VIP:
				t.Errorf("%s: balancer %d's entry %+v, balancer 0's %+v", a, k, g.VIP, w.VIP)
			case !slices.Equal(g.Ring, w.Ring):
				t.Errorf("%s: balancer %d's ring differs from balancer 0's", a, k)
			case !slices.Equal(g.Named, w.Named):
				t.Errorf("%s: balancer %d's ring names other backends", a, k)
			}
		}
	}
	owners := 0
	for a, w := range want {
		if !w.VIP.JoinPort {
			share := map[string]int{}
			for _, b := range w.Named {
				share[b.String()]++
			}
			t.Logf("%s: slots per backend %v", a, share)
			continue
		}
		for j, b := range f.Backends {
			if a.Port() == uint16(f.svc.JoinPort(j)) || a.Addr() == labfleet.JoinAddr6(j) {
				owners++
				if n := countAddr(w.Named, b.IP4.String()); n != len(w.Named) {
					t.Errorf("join entry %s: backend %d in %d of %d slots", a, j, n, len(w.Named))
				}
			}
		}
	}
	if owners != 3*len(f.Backends) {
		t.Errorf("%d join entries matched a backend, want %d", owners, 3*len(f.Backends))
	}
}

func countAddr[T interface{ String() string }](v []T, s string) int {
	n := 0
	for _, x := range v {
		if x.String() == s {
			n++
		}
	}
	return n
}
