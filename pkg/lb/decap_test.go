package lb

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

func loadDecap(t *testing.T, cfg DecapConfig) *Decap {
	t.Helper()
	d, err := LoadDecap(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func decapStats(t *testing.T, d *Decap) DecapStats {
	t.Helper()
	s, err := d.ReadStats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func setAllow(t *testing.T, d *Decap, a DecapAllow) {
	t.Helper()
	if err := d.SetAllow(a); err != nil {
		t.Fatal(err)
	}
}

// decapsulated is what the decapsulator passes up for a frame ipipOut built from s toward be: the
// client's IP packet under the outer frame's Ethernet header (s must fill a minimum frame:
// serialize pads shorter ones).
func decapsulated(t *testing.T, s segment, be Backend) []byte {
	return serialize(t, append([]gopacket.SerializableLayer{s.eth(be.SrcMAC, be.MAC)}, s.ipLayers()...)...)
}

// TestDecapAllowlist: the decapsulator strips the outer header only of a packet from a balancer's
// address, to one of this host's, carrying a TCP segment to a VIP; any other outer packet passes
// untouched and is counted by why, for every outer and inner family.
func TestDecapAllowlist(t *testing.T) {
	d := loadDecap(t, DecapConfig{})
	r := rand.New(rand.NewPCG(41, 42))
	other4, other6 := netip.MustParseAddr("10.0.1.99"), netip.MustParseAddr("fd00:1::99")
	for _, fam := range []struct {
		name   string
		vip    netip.AddrPort
		outer6 bool
	}{{"4in4", vip4, false}, {"6in6", vip6, true}, {"4in6", vip4, true}, {"6in4", vip6, false}} {
		be := testBackend(3, fam.outer6, 1)
		other := other4
		if fam.outer6 {
			other = other6
		}
		notVIP := netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), fam.vip.Port())
		if fam.vip.Addr().Is6() {
			notVIP = netip.AddrPortFrom(netip.MustParseAddr("fd00::2"), fam.vip.Port())
		}
		allow := DecapAllow{Local: []netip.Addr{be.Addr}, Balancers: []netip.Addr{be.SrcAddr}, VIPs: []netip.AddrPort{fam.vip}}
		seg := func(dst netip.AddrPort) segment {
			return segment{src: clientAddr(r, fam.vip), dst: dst, ack: true, opts: []layers.TCPOption{optDSS()}, payload: []byte("xyz")}
		}
		from := func(src netip.Addr) Backend { b := be; b.SrcAddr = src; return b }
		to := func(dst netip.Addr) Backend { b := be; b.Addr = dst; return b }
		s := seg(fam.vip)
		otherPort := seg(netip.AddrPortFrom(fam.vip.Addr(), fam.vip.Port()+1))
		in := 14 + map[bool]int{false: 20, true: 40}[fam.outer6] // the inner header
		udp := ipipOut(t, s, be)
		udp[in+map[bool]int{false: 9, true: 6}[fam.vip.Addr().Is6()]] = 17
		frag := ipipOut(t, s, be)
		if fam.vip.Addr().Is6() {
			frag[in+6] = 44 // a fragment header
		} else {
			frag[in+6] |= 0x20 // more fragments
		}
		for _, tc := range []struct {
			name  string
			allow DecapAllow
			frame []byte
			want  []byte // nil: passed untouched
			count func(DecapStats) uint64
		}{
			{"from a balancer to a VIP", allow, ipipOut(t, s, be), decapsulated(t, s, be), func(s DecapStats) uint64 { return s.Decap }},
			{"from another source", allow, ipipOut(t, s, from(other)), nil, func(s DecapStats) uint64 { return s.RefusedSource }},
			{"from this host's own address", allow, ipipOut(t, s, from(be.Addr)), nil, func(s DecapStats) uint64 { return s.RefusedSource }},
			{"to another address of the VIP's family", allow, ipipOut(t, seg(notVIP), be), nil, func(s DecapStats) uint64 { return s.RefusedInner }},
			{"to another port of the VIP", allow, ipipOut(t, otherPort, be), nil, func(s DecapStats) uint64 { return s.RefusedInner }},
			{"to another port, the VIP allowed on every port", DecapAllow{Local: allow.Local, Balancers: allow.Balancers,
				VIPs: []netip.AddrPort{netip.AddrPortFrom(fam.vip.Addr(), 0)}},
				ipipOut(t, otherPort, be), decapsulated(t, otherPort, be), func(s DecapStats) uint64 { return s.Decap }},
			{"udp to the VIP", allow, udp, nil, func(s DecapStats) uint64 { return s.RefusedInner }},
			{"a fragment to the VIP", allow, frag, nil, func(s DecapStats) uint64 { return s.RefusedInner }},
			{"to an address not this host's", allow, ipipOut(t, s, to(other)), nil, func(s DecapStats) uint64 { return s.RefusedDst }},
			{"inner header cut short", allow, ipipOut(t, s, be)[:in+10], nil,
				func(s DecapStats) uint64 { return s.Malformed }},
			{"empty allowlist", DecapAllow{}, ipipOut(t, s, be), nil, func(s DecapStats) uint64 { return s.RefusedDst }},
			{"no balancer", DecapAllow{Local: allow.Local, VIPs: allow.VIPs}, ipipOut(t, s, be), nil, func(s DecapStats) uint64 { return s.RefusedSource }},
			{"no VIP", DecapAllow{Local: allow.Local, Balancers: allow.Balancers}, ipipOut(t, s, be), nil, func(s DecapStats) uint64 { return s.RefusedInner }},
		} {
			t.Run(fam.name+"/"+tc.name, func(t *testing.T) {
				setAllow(t, d, tc.allow)
				before := decapStats(t, d)
				ret, got := run(t, d.Program, tc.frame)
				if ret != xdpPass {
					t.Fatalf("verdict %d, want XDP_PASS", ret)
				}
				if tc.want == nil {
					checkBytes(t, "passed untouched", tc.frame, got)
				} else {
					checkBytes(t, "decapsulated", tc.want, got)
				}
				delta := decapStats(t, d).Sub(before)
				if delta.Packets != 1 || tc.count(delta) != 1 || delta.Packets+delta.Decap+delta.Malformed+delta.RefusedDst+
					delta.RefusedSource+delta.RefusedInner != 2 {
					t.Errorf("counters moved by %+v", delta)
				}
			})
		}
	}
}

// TestDecapAnyDstStillChecks: the packet tests' any-destination build skips the destination
// check only: the source and the inner destination are still checked.
func TestDecapAnyDstStillChecks(t *testing.T) {
	d := loadDecap(t, DecapConfig{AnyDst: true})
	r := rand.New(rand.NewPCG(43, 44))
	be := testBackend(4, false, 1)
	s := segment{src: clientAddr(r, vip4), dst: vip4, ack: true, payload: make([]byte, 64)}
	setAllow(t, d, DecapAllow{Balancers: []netip.Addr{be.SrcAddr}, VIPs: []netip.AddrPort{vip4}})
	other := be
	other.SrcAddr = netip.MustParseAddr("192.0.2.1")
	before := decapStats(t, d)
	if _, got := run(t, d.Program, ipipOut(t, s, be)); string(got) != string(decapsulated(t, s, be)) {
		t.Errorf("from the balancer: not decapsulated\n%s", hexDiff(decapsulated(t, s, be), got))
	}
	f := ipipOut(t, s, other)
	if _, got := run(t, d.Program, f); string(got) != string(f) {
		t.Errorf("from another source: not passed untouched\n%s", hexDiff(f, got))
	}
	if delta := decapStats(t, d).Sub(before); delta != (DecapStats{Packets: 2, Decap: 1, RefusedSource: 1}) {
		t.Errorf("counters moved by %+v", delta)
	}
}

// TestDecapSetAllowReplaces: SetAllow leaves in the maps exactly the set it is given (what the
// last `lb decap` configured), whatever was there, and refuses what cannot be written.
func TestDecapSetAllowReplaces(t *testing.T) {
	d := loadDecap(t, DecapConfig{})
	a := netip.MustParseAddr
	first := DecapAllow{
		Local:     []netip.Addr{a("10.0.1.3"), a("fd00:1::3")},
		Balancers: []netip.Addr{a("10.0.1.254"), a("10.0.2.254"), a("fd00:1::fe")},
		VIPs:      []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80"), netip.AddrPortFrom(a("10.0.0.9"), 0), netip.MustParseAddrPort("[fd00::1]:80")},
	}
	setAllow(t, d, first)
	if got, err := d.Allow(); err != nil || !reflect.DeepEqual(got, first) {
		t.Fatalf("allowlist %+v (%v), want %+v", got, err, first)
	}
	// One balancer gone, one new; an address both local and a balancer's; a VIP's port changed.
	second := DecapAllow{
		Local:     []netip.Addr{a("10.0.1.3"), a("10.0.3.3")},
		Balancers: []netip.Addr{a("10.0.1.254"), a("10.0.3.3"), a("10.0.4.254")},
		VIPs:      []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:443")},
	}
	setAllow(t, d, second)
	if got, err := d.Allow(); err != nil || !reflect.DeepEqual(got, second) {
		t.Fatalf("allowlist after the second set %+v (%v), want %+v", got, err, second)
	}
	if n := countKeys(t, d.Addrs); n != 4 {
		t.Errorf("address map holds %d entries, want 4 (10.0.3.3 once, with both flags)", n)
	}

	// The traffic follows: the removed balancer and the old port are refused now.
	r := rand.New(rand.NewPCG(45, 46))
	be := testBackend(3, false, 1)
	gone := be
	gone.SrcAddr = a("10.0.2.254")
	oldPort := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	newPort := segment{src: clientAddr(r, vip4), dst: netip.MustParseAddrPort("10.0.0.1:443"), ack: true}
	before := decapStats(t, d)
	for _, f := range [][]byte{ipipOut(t, newPort, gone), ipipOut(t, oldPort, be), ipipOut(t, newPort, be)} {
		run(t, d.Program, f)
	}
	if delta := decapStats(t, d).Sub(before); delta != (DecapStats{Packets: 3, Decap: 1, RefusedSource: 1, RefusedInner: 1}) {
		t.Errorf("after the replace, counters moved by %+v", delta)
	}

	setAllow(t, d, DecapAllow{})
	if n, m := countKeys(t, d.Addrs), countKeys(t, d.VIPs); n != 0 || m != 0 {
		t.Errorf("an empty allowlist left %d addresses and %d VIPs", n, m)
	}

	for _, bad := range []DecapAllow{
		{Balancers: []netip.Addr{a("0.0.0.0")}},
		{Balancers: []netip.Addr{a("ff02::1")}},
		{Balancers: []netip.Addr{{}}},
		{VIPs: []netip.AddrPort{netip.MustParseAddrPort("[::]:80")}},
		{VIPs: []netip.AddrPort{netip.MustParseAddrPort("224.0.0.1:80")}},
		{Local: []netip.Addr{{}}},
	} {
		setAllow(t, d, second)
		if err := d.SetAllow(bad); err == nil {
			t.Errorf("SetAllow(%+v) accepted", bad)
		}
		if got, _ := d.Allow(); !reflect.DeepEqual(got, second) {
			t.Errorf("a refused SetAllow(%+v) changed the allowlist to %+v", bad, got)
		}
	}
	var many DecapAllow
	for i := range int(d.Addrs.MaxEntries()) + 1 {
		many.Balancers = append(many.Balancers, netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}))
	}
	if err := d.SetAllow(many); err == nil || !strings.Contains(err.Error(), "holds") {
		t.Errorf("more addresses than the map holds: %v", err)
	}
}

func countKeys(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	it := m.Iterate()
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDecapStatsFields holds DecapStats to struct lb_decap_stats: one field per counter, in the
// same order, with the C member's name as its JSON name.
func TestDecapStatsFields(t *testing.T) {
	gen := reflect.TypeFor[datapath.LbDecapLbDecapStats]()
	var names []string
	for i := range gen.NumField() {
		if f := gen.Field(i); f.Name != "_" {
			names = append(names, snake(f.Name))
		}
	}
	dom := reflect.TypeFor[DecapStats]()
	var got []string
	for i := range dom.NumField() {
		got = append(got, dom.Field(i).Tag.Get("json"))
	}
	if !slices.Equal(names, got) {
		t.Fatalf("struct lb_decap_stats has %v, DecapStats %v", names, got)
	}
	// fromDecapStats moves every counter to its own field.
	var c datapath.LbDecapLbDecapStats
	v := reflect.ValueOf(&c).Elem()
	n := 0
	for i := range v.NumField() {
		if gen.Field(i).Name != "_" {
			n++
			v.Field(i).SetUint(uint64(n))
		}
	}
	s := reflect.ValueOf(fromDecapStats(c))
	for i := range s.NumField() {
		if s.Field(i).Uint() != uint64(i+1) {
			t.Errorf("DecapStats.%s = %d, want %d", dom.Field(i).Name, s.Field(i).Uint(), i+1)
		}
	}
}

// snake turns a bpf2go field name (RefusedSource) back into its C name (refused_source).
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}
