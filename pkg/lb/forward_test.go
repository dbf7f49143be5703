package lb

import (
	"math/rand/v2"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// ipipOut is the frame the balancer sends to backend be in ipip mode: the client's IP packet inside
// an outer header of be.Addr's family, built with gopacket.
func ipipOut(t *testing.T, s segment, be Backend) []byte {
	inner := serialize(t, s.ipLayers()...)
	proto := layers.IPProtocolIPv4
	if s.src.Addr().Is6() {
		proto = layers.IPProtocolIPv6
	}
	eth := &layers.Ethernet{SrcMAC: be.SrcMAC, DstMAC: be.MAC, EthernetType: layers.EthernetTypeIPv4}
	var outer gopacket.SerializableLayer
	if be.Addr.Is4() {
		outer = &layers.IPv4{Version: 4, IHL: 5, TOS: 0x28, TTL: 64, Protocol: proto,
			SrcIP: be.SrcAddr.AsSlice(), DstIP: be.Addr.AsSlice()}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		outer = &layers.IPv6{Version: 6, TrafficClass: 0x28, FlowLabel: FlowHash(s.key(), DefaultHashSeed) & 0xfffff,
			HopLimit: 64, NextHeader: proto, SrcIP: be.SrcAddr.AsSlice(), DstIP: be.Addr.AsSlice()}
	}
	return serialize(t, eth, outer, gopacket.Payload(inner))
}

// TestForwardIPIP checks the encapsulated frames byte for byte (4in4, 6in6, and the mixed
// families), XDP_TX vs XDP_REDIRECT, then feeds them to the backends' decapsulator and checks that
// what it passes up is the client's packet under the outer frame's Ethernet header.
func TestForwardIPIP(t *testing.T) {
	b := balancer(t)
	d, err := LoadDecap(DecapConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	anyDst, err := LoadDecap(DecapConfig{AnyDst: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { anyDst.Close() })

	r := rand.New(rand.NewPCG(17, 18))
	for _, tc := range []struct {
		name      string
		vip       netip.AddrPort
		outer6    bool
		ifindex   int
		wantVerd  uint32
		synOrJoin bool
	}{
		{"4in4/tx", vip4, false, 0, xdpTX, false},
		{"6in6/tx", vip6, true, 0, xdpTX, false},
		{"4in6/redirect", vip4, true, 4242, xdpRedirect, false},
		{"6in4/redirect", vip6, false, 4242, xdpRedirect, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := balancer(t)
			if err := b.PutVIP(VIP{Addr: tc.vip, ID: 0, JoinSteering: true, Forward: ForwardIPIP}); err != nil {
				t.Fatal(err)
			}
			ifindex := tc.ifindex
			if ifindex == 0 {
				ifindex = loIfindex
			}
			be := testBackend(5, tc.outer6, ifindex)
			if err := b.PutBackend(be); err != nil {
				t.Fatal(err)
			}
			fillRing(t, b.Maps, 0, 5)
			s := segment{src: clientAddr(r, tc.vip), dst: tc.vip, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}, payload: []byte("abc")}
			frame := s.frame(t)
			before := stats(t, b.Maps)
			ret, out := run(t, b.Program, frame)
			if ret != tc.wantVerd {
				t.Fatalf("verdict %d, want %d", ret, tc.wantVerd)
			}
			want := ipipOut(t, s, be)
			checkBytes(t, "encapsulated", want, out)
			if d := stats(t, b.Maps).Sub(before); d[StatFwdIPIP] != 1 || d[StatFwdError] != 0 {
				t.Errorf("stats moved by %v", d.Map())
			}

			// The backend strips the outer header (only when sent to one of its addresses).
			decapped := append(s.eth(be.SrcMAC, be.MAC).Contents[:0:0], frame...)
			copy(decapped[0:6], be.MAC)
			copy(decapped[6:12], be.SrcMAC)
			dBefore, _ := d.ReadStats()
			ret, got := run(t, d.Program, out)
			if ret != xdpPass {
				t.Fatalf("decap verdict %d", ret)
			}
			checkBytes(t, "not our address: untouched", out, got[:len(out)])
			allow := DecapAllow{Local: []netip.Addr{be.Addr}, Balancers: []netip.Addr{be.SrcAddr}, VIPs: []netip.AddrPort{tc.vip}}
			if err := d.SetAllow(allow); err != nil {
				t.Fatal(err)
			}
			defer d.SetAllow(DecapAllow{})
			ret, got = run(t, d.Program, out)
			if ret != xdpPass {
				t.Fatalf("decap verdict %d", ret)
			}
			checkBytes(t, "decapsulated", decapped, got)
			dAfter, _ := d.ReadStats()
			if dd := dAfter.Sub(dBefore); dd.Packets != 2 || dd.Decap != 1 || dd.RefusedDst != 1 {
				t.Errorf("decap stats moved by %+v", dd)
			}
			allow.Local = nil
			if err := anyDst.SetAllow(allow); err != nil {
				t.Fatal(err)
			}
			_, got = run(t, anyDst.Program, out)
			checkBytes(t, "decapsulated (any destination)", decapped, got)
		})
	}
	_ = b
}

// TestDecapPassesOthers: what is not an outer IPv4/IPv6 header carrying IPv4/IPv6 to us, or whose
// inner header is not what the outer one says, passes untouched.
func TestDecapPassesOthers(t *testing.T) {
	d, err := LoadDecap(DecapConfig{AnyDst: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if err := d.SetAllow(DecapAllow{Balancers: []netip.Addr{testBackend(1, false, 1).SrcAddr}, VIPs: []netip.AddrPort{vip4}}); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(19, 20))
	plain := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}.frame(t)
	bad := ipipOut(t, segment{src: clientAddr(r, vip4), dst: vip4, ack: true}, testBackend(1, false, 1))
	bad[14+20] = 0x65 // inner version 6 under protocol 4
	for name, f := range map[string][]byte{"plain tcp": plain, "inner mismatch": bad, "short": plain[:20]} {
		ret, out := run(t, d.Program, f)
		if ret != xdpPass {
			t.Errorf("%s: verdict %d", name, ret)
		}
		checkBytes(t, name, f, out[:len(f)])
	}
}

// TestMalformedPasses: broken headers pass untouched and are counted; frames not for a VIP pass
// untouched and are not; broken TCP options to a VIP are counted and forwarded, never learned from.
func TestMalformedPasses(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 1)
	setup(t, b.Maps, vip6, 1, true, ForwardL2, JoinDrop, 1)
	r := rand.New(rand.NewPCG(21, 22))
	v4 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}.frame(t)
	v6 := segment{src: clientAddr(r, vip6), dst: vip6, ack: true}.frame(t)
	mod := func(f []byte, fn func([]byte) []byte) []byte { return fn(append([]byte(nil), f...)) }
	for _, tc := range []struct {
		name      string
		frame     []byte
		malformed bool
	}{
		{"ipv4 type, no header", v4[:14], true},
		{"ipv4 truncated", v4[:14+10], true},
		{"ipv4 ihl 4", mod(v4, func(f []byte) []byte { f[14] = 0x44; return f }), true},
		{"ipv4 version 5", mod(v4, func(f []byte) []byte { f[14] = 0x55; return f }), true},
		{"ipv4 total length past the frame", mod(v4, func(f []byte) []byte { f[16], f[17] = 0x05, 0xdc; return f }), true},
		{"ipv4 total length short of tcp", mod(v4, func(f []byte) []byte { f[16], f[17] = 0, 30; return f }), true},
		{"tcp truncated", v4[:14+20+10], true},
		{"tcp doff 4", mod(v4, func(f []byte) []byte { f[14+20+12] = 0x40; return f }), true},
		{"tcp doff past the frame", mod(v4, func(f []byte) []byte { f[14+20+12] = 0xf0; return f }), true},
		{"ipv6 truncated", v6[:14+30], true},
		{"ipv6 payload length past the frame", mod(v6, func(f []byte) []byte { f[18], f[19] = 0x05, 0xdc; return f }), true},
		{"ipv4 fragment", mod(v4, func(f []byte) []byte { f[20], f[21] = 0x20, 0x10; return f }), false},
		{"udp to the vip", mod(v4, func(f []byte) []byte { f[14+9] = 17; return f }), false},
		{"ipv6 hop-by-hop header past the frame", mod(v6, func(f []byte) []byte { f[20], f[14+40+1] = 0, 200; return f }), true},
		{"not a vip port", mod(v4, func(f []byte) []byte { f[14+20+2], f[14+20+3] = 0, 81; return f }), false},
		{"not a vip address", mod(v4, func(f []byte) []byte { f[14+19] = 99; return f }), false},
		{"arp", mod(v4, func(f []byte) []byte { f[12], f[13] = 0x08, 0x06; return f }), false},
	} {
		before := stats(t, b.Maps)
		ret, out := run(t, b.Program, tc.frame)
		if ret != xdpPass {
			t.Errorf("%s: verdict %d, want XDP_PASS", tc.name, ret)
		}
		checkBytes(t, tc.name, tc.frame, out[:len(tc.frame)])
		d := stats(t, b.Maps).Sub(before)
		if want := map[bool]uint64{true: 1}[tc.malformed]; d[StatMalformed] != want || d[StatVIP] != 0 {
			t.Errorf("%s: stats moved by %v", tc.name, d.Map())
		}
	}

	// An option whose length runs past the header: forwarded like any packet of the flow, counted,
	// and nothing learned from the MP_CAPABLE option behind it.
	s := segment{src: clientAddr(r, vip4), dst: vip4, ack: true,
		opts: []layers.TCPOption{optMPCapableACK(1, 2), nop, {OptionType: 8, OptionLength: 12, OptionData: make([]byte, 2)}}}
	if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 1}}); err != nil { // a flow placed on its SYN: tokens are learned on those
		t.Fatal(err)
	}
	f := s.frame(t)
	opts := 14 + 20 + 20
	f[opts+20+1+1] = 40 // the timestamp option's length: past the header
	before := stats(t, b.Maps)
	ret, _ := run(t, b.Program, f)
	d := stats(t, b.Maps).Sub(before)
	if ret != xdpTX || d[StatMalformed] != 0 || d[StatTokenLearned] != 1 {
		// The MP_CAPABLE option comes first, so it is read before the broken one.
		t.Errorf("broken option after MP_CAPABLE: verdict %d, stats %v", ret, d.Map())
	}
	s.opts = []layers.TCPOption{{OptionType: 8, OptionLength: 10, OptionData: make([]byte, 8)}, optMPCapableACK(1, 3)}
	f = s.frame(t)
	f[opts+1] = 60 // the first option's length: past the header
	before = stats(t, b.Maps)
	ret, _ = run(t, b.Program, f)
	d = stats(t, b.Maps).Sub(before)
	if ret != xdpTX || d[StatMalformed] != 1 || d[StatTokenLearned] != 0 {
		t.Errorf("broken option before MP_CAPABLE: verdict %d, stats %v", ret, d.Map())
	}
}

// TestEnumsMatchHeader checks the Go mirrors of the shared header's enums.
func TestEnumsMatchHeader(t *testing.T) {
	src, err := os.ReadFile("../../bpf/include/mx_lb_types.h")
	if err != nil {
		t.Fatal(err)
	}
	enum := func(name string) map[string]int {
		body := regexp.MustCompile(`(?s)enum\s+` + name + `\s*\{(.*?)\};`).FindStringSubmatch(string(src))
		if body == nil {
			t.Fatalf("enum %s not found", name)
		}
		out := map[string]int{}
		for _, m := range regexp.MustCompile(`([A-Z0-9_]+)\s*=\s*(1 << \d+|\d+)`).FindAllStringSubmatch(body[1], -1) {
			v, err := strconv.Atoi(m[2])
			if strings.HasPrefix(m[2], "1 << ") {
				s, _ := strconv.Atoi(strings.TrimPrefix(m[2], "1 << "))
				v, err = 1<<s, nil
			}
			if err != nil {
				t.Fatal(err)
			}
			out[m[1]] = v
		}
		return out
	}
	stats := enum("lb_stat")
	if stats["LB_STAT_MAX"] != int(NumStats) || len(stats) != int(NumStats)+1 {
		t.Errorf("LB_STAT_MAX %d, %d enumerators; Go has %d", stats["LB_STAT_MAX"], len(stats), NumStats)
	}
	for i := range NumStats {
		c := "LB_STAT_" + strings.ToUpper(i.String())
		if v, ok := stats[c]; !ok || v != int(i) {
			t.Errorf("%s: C %d (present %v), Go %d", c, v, ok, i)
		}
	}
	check := func(enumName string, want map[string]int) {
		got := enum(enumName)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: C %d, Go %d", k, got[k], v)
			}
		}
		if len(got) != len(want) {
			t.Errorf("enum %s: C has %d enumerators, Go %d", enumName, len(got), len(want))
		}
	}
	check("lb_event_type", map[string]int{"LB_EV_CONN_LEARNED": int(EventConnLearned), "LB_EV_JOIN_STEERED": int(EventJoinSteered),
		"LB_EV_JOIN_UNKNOWN": int(EventJoinUnknown), "LB_EV_COLLISION": int(EventCollision), "LB_EV_TOKEN_REPLACED": int(EventTokenReplaced)})
	check("lb_forward", map[string]int{"LB_FWD_L2": int(ForwardL2), "LB_FWD_IPIP": int(ForwardIPIP)})
	check("lb_unknown_join", map[string]int{"LB_JOIN_DROP": int(JoinDrop), "LB_JOIN_HASH": int(JoinHash), "LB_JOIN_PASS": int(JoinPass)})
	check("lb_vip_flags", map[string]int{"LB_VIP_JOIN_STEERING": vipJoinSteering, "LB_VIP_JOIN_PORT": vipJoinPort})
	check("lb_backend_flags", map[string]int{"LB_BACKEND_ACTIVE": backendActive, "LB_BACKEND_DRAINING": backendDraining})

	spec, err := Spec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint32{MapBackends: MaxBackends, MapRing: MaxVIPs * RingSize, MapFlows: MaxFlows, MapTokens: MaxTokens, MapVIPs: MaxVIPs, MapPFlows: MaxPFlows} {
		if got := spec.Maps[name].MaxEntries; got != want {
			t.Errorf("map %s: %d entries, Go assumes %d", name, got, want)
		}
	}
}
