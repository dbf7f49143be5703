package control

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// Balancers configured alike behave as one: three instances given the same backends (one of them
// weighted) in different orders, and a fourth that got them over two calls in yet another order,
// send every slot of the VIP's real Maglev map to the same backend address. The three built in
// one call have byte-identical rings (ids are given in address order); the fourth's ids differ
// with its history, and its slots still name the same addresses.
func TestInstancesAgree(t *testing.T) {
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	a := BackendSpec{Addr: netip.MustParseAddr("10.2.0.2"), Weight: 1}
	b := BackendSpec{Addr: netip.MustParseAddr("10.2.1.2"), Weight: 2}
	c := BackendSpec{Addr: netip.MustParseAddr("10.2.2.2"), Weight: 1}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	hops := []NextHop{}
	for i, s := range []BackendSpec{a, b, c} {
		hops = append(hops, NextHop{Addr: s.Addr, Ifindex: lo.Index, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}, SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}})
	}
	// read returns an instance's ring, and each slot's backend by address.
	read := func(o *Offline) (raw []uint32, named []netip.Addr) {
		t.Helper()
		vs, err := o.Maps.ListVIPs()
		if err != nil || len(vs) != 1 {
			t.Fatalf("vips %v: %v", vs, err)
		}
		raw, err = o.Maps.ReadRing(vs[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		addr := map[uint32]netip.Addr{}
		for _, be := range o.List() {
			addr[be.ID] = be.Addr
		}
		for _, id := range raw {
			named = append(named, addr[id])
		}
		return raw, named
	}
	var raws [][]uint32
	var names [][]netip.Addr
	for _, order := range [][]BackendSpec{{a, b, c}, {c, a, b}, {b, c, a}} {
		o, err := NewOffline(Spec{VIPs: []netip.AddrPort{vip}, Policy: DefaultPolicy.Set(), Backends: order}, hops...)
		if err != nil {
			t.Fatal(err)
		}
		r, n := read(o)
		o.Close()
		raws, names = append(raws, r), append(names, n)
	}
	for i := 1; i < len(raws); i++ {
		if !slices.Equal(raws[i], raws[0]) {
			t.Errorf("instance %d: its ring differs from instance 0's", i)
		}
	}
	// History: c first, then b and a.
	o, err := NewOffline(Spec{VIPs: []netip.AddrPort{vip}, Policy: DefaultPolicy.Set(), Backends: []BackendSpec{c}}, hops...)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if _, err := o.AddBackends(t.Context(), b, a); err != nil {
		t.Fatal(err)
	}
	r, n := read(o)
	if !slices.Equal(n, names[0]) {
		t.Errorf("the instance built over two calls sends slots elsewhere")
	}
	differ := !slices.Equal(r, raws[0])
	counts := map[netip.Addr]int{}
	for _, x := range names[0] {
		counts[x]++
	}
	if counts[b.Addr] < counts[a.Addr]*19/10 || counts[a.Addr] == 0 || counts[c.Addr] == 0 {
		t.Errorf("slots per backend %v: want the weight-2 backend to hold about twice the others'", counts)
	}
	t.Logf("%d slots: every instance sends each to the same backend (slots per backend %v); raw rings of the history-built instance differ: %v", lb.RingSize, counts, differ)
}
