package lb

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
)

// The frames of other shapes than untagged Ethernet, IP and TCP: VLAN tags before the IP header,
// IPv6 extension headers between it and TCP. The balancer finds their headers with the parser every
// program shares (mx_parse_hdrs); these tests check what it sends, byte for byte.

// tag is one VLAN tag: its tag protocol (802.1Q or 802.1ad) and control information.
type tag struct {
	tpid layers.EthernetType
	pcp  uint8
	vid  uint16
}

var (
	oneTag  = []tag{{layers.EthernetTypeDot1Q, 3, 100}}
	twoTags = []tag{{layers.EthernetTypeQinQ, 5, 2000}, {layers.EthernetTypeDot1Q, 1, 42}}
)

// link is an Ethernet header from src to dst followed by tags, the innermost carrying l3.
func link(src, dst []byte, tags []tag, l3 layers.EthernetType) []gopacket.SerializableLayer {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: l3}
	out := []gopacket.SerializableLayer{eth}
	if len(tags) > 0 {
		eth.EthernetType = tags[0].tpid
	}
	for i, tg := range tags {
		next := l3
		if i+1 < len(tags) {
			next = tags[i+1].tpid
		}
		out = append(out, &layers.Dot1Q{Priority: tg.pcp, VLANIdentifier: tg.vid, Type: next})
	}
	return out
}

// Extension headers (RFC 8200 4.3-4.6), each 8 bytes, next header left to chain.
func hopByHop() []byte { return []byte{0, 0, 1, 4, 0, 0, 0, 0} } // PadN
func routing() []byte  { return []byte{0, 0, 4, 0, 0, 0, 0, 0} } // type 4, segments left 0
func dstOpts() []byte  { return []byte{0, 0, 1, 4, 0, 0, 0, 0} } // PadN
func fragHdr(off uint16, more bool) []byte { // identification 0x01020304
	v := off << 3
	if more {
		v |= 1
	}
	return []byte{0, 0, byte(v >> 8), byte(v), 1, 2, 3, 4}
}

// withExt is s's IPv6 packet with the extension headers exts (of protocol numbers protos) between
// the IPv6 header and TCP; the payload length covers them.
func withExt(t *testing.T, s segment, protos []layers.IPProtocol, exts ...[]byte) []byte {
	t.Helper()
	ls := s.ipLayers()
	ip6 := ls[0].(*layers.IPv6)
	tcp := serialize(t, ls[1:]...)
	chain := []byte{}
	for i, e := range exts {
		e = slices.Clone(e)
		e[0] = byte(layers.IPProtocolTCP)
		if i+1 < len(protos) {
			e[0] = byte(protos[i+1])
		}
		chain = append(chain, e...)
	}
	ip6.NextHeader = protos[0]
	return serialize(t, ip6, gopacket.Payload(slices.Concat(chain, tcp)))
}

// outerOf is the outer header ipip mode puts in front of an inner packet of innerLen bytes of s
// toward be.
func outerOf(s segment, be Backend) (gopacket.SerializableLayer, layers.EthernetType) {
	proto := layers.IPProtocolIPv4
	if s.src.Addr().Is6() {
		proto = layers.IPProtocolIPv6
	}
	if be.Addr.Is4() {
		return &layers.IPv4{Version: 4, IHL: 5, TOS: 0x28, TTL: 64, Protocol: proto,
			SrcIP: be.SrcAddr.AsSlice(), DstIP: be.Addr.AsSlice()}, layers.EthernetTypeIPv4
	}
	return &layers.IPv6{Version: 6, TrafficClass: 0x28, FlowLabel: FlowHash(s.key(), DefaultHashSeed) & 0xfffff,
		HopLimit: 64, NextHeader: proto, SrcIP: be.SrcAddr.AsSlice(), DstIP: be.Addr.AsSlice()}, layers.EthernetTypeIPv6
}

// TestForwardShapes: VLAN-tagged frames (one tag, two) and IPv6 with extension headers (hop-by-hop,
// routing, destination options), in l2 mode (the MACs rewritten, the tags and the packet kept) and
// ipip mode (the outer header after the tags, the innermost EtherType the outer header's, the whole
// inner packet with its extension headers inside), checked byte for byte.
func TestForwardShapes(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	ext3 := []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination}
	for _, mode := range []Forward{ForwardL2, ForwardIPIP} {
		for _, tc := range []struct {
			name string
			vip  netip.AddrPort
			tags []tag
			ext  bool // hop-by-hop, routing and destination options headers (IPv6)
		}{
			{"ipv4, one tag", vip4, oneTag, false},
			{"ipv4, two tags", vip4, twoTags, false},
			{"ipv6, one tag", vip6, oneTag, false},
			{"ipv6, two tags", vip6, twoTags, false},
			{"ipv6, extension headers", vip6, nil, true},
			{"ipv6, two tags and extension headers", vip6, twoTags, true},
		} {
			t.Run(mode.String()+"/"+tc.name, func(t *testing.T) {
				b := balancer(t)
				setup(t, b.Maps, tc.vip, 0, true, mode, JoinDrop, 1)
				s := segment{src: clientAddr(r, tc.vip), dst: tc.vip, syn: true,
					opts: []layers.TCPOption{optMPCapableSYN()}, payload: []byte("abc")}
				l3 := layers.EthernetTypeIPv4
				if tc.vip.Addr().Is6() {
					l3 = layers.EthernetTypeIPv6
				}
				inner := serialize(t, s.ipLayers()...)
				if tc.ext {
					inner = withExt(t, s, ext3, hopByHop(), routing(), dstOpts())
				}
				frame := serialize(t, append(link(clientMAC, lbMAC, tc.tags, l3), gopacket.Payload(inner))...)
				be := testBackend(1, tc.vip.Addr().Is6(), loIfindex)

				before := stats(t, b.Maps)
				ret, out := run(t, b.Program, frame)
				if ret != xdpTX {
					t.Fatalf("verdict %d, want XDP_TX", ret)
				}
				var want []byte
				if mode == ForwardL2 {
					want = serialize(t, append(link(be.SrcMAC, be.MAC, tc.tags, l3), gopacket.Payload(inner))...)
				} else {
					outer, et := outerOf(s, be)
					want = serialize(t, append(link(be.SrcMAC, be.MAC, tc.tags, et), outer, gopacket.Payload(inner))...)
				}
				checkBytes(t, "forwarded", want, out)
				d := stats(t, b.Maps).Sub(before)
				fwd := map[Forward]Stat{ForwardL2: StatFwdL2, ForwardIPIP: StatFwdIPIP}[mode]
				if d[fwd] != 1 || d[StatNewFlow] != 1 || d[StatMalformed] != 0 {
					t.Errorf("stats moved by %v", d.Map())
				}
				if f := flowOf(t, b.Maps, s.key()); f.Backend != 1 {
					t.Errorf("flow %+v, want backend 1", f)
				}
				if mode != ForwardIPIP || len(tc.tags) > 0 {
					return
				}
				// The backends' decapsulator reads the inner packet's extension headers as the
				// balancer does, and passes the client's packet up.
				dc, err := LoadDecap(DecapConfig{AnyDst: true})
				if err != nil {
					t.Fatal(err)
				}
				defer dc.Close()
				if err := dc.SetAllow(DecapAllow{Balancers: []netip.Addr{be.SrcAddr}, VIPs: []netip.AddrPort{tc.vip}}); err != nil {
					t.Fatal(err)
				}
				dBefore, _ := dc.ReadStats()
				ret, got := run(t, dc.Program, out)
				if ret != xdpPass {
					t.Fatalf("decap verdict %d", ret)
				}
				checkBytes(t, "decapsulated", serialize(t, append(link(be.SrcMAC, be.MAC, nil, l3), gopacket.Payload(inner))...), got)
				if dAfter, _ := dc.ReadStats(); dAfter.Sub(dBefore).Decap != 1 {
					t.Errorf("decap stats moved by %+v", dAfter.Sub(dBefore))
				}
			})
		}
	}
}

// TestShapesPassed: fragments pass untouched and are not malformed, whatever their tags or
// extension headers; a truncated tag or extension header, or more extension headers than the parser
// walks, pass untouched and count malformed.
func TestShapesPassed(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardIPIP, JoinDrop, 1)
	setup(t, b.Maps, vip6, 1, true, ForwardIPIP, JoinDrop, 1)
	r := rand.New(rand.NewPCG(33, 34))
	s4 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true, payload: []byte("data")}
	s6 := segment{src: clientAddr(r, vip6), dst: vip6, ack: true, payload: []byte("data")}
	in4, in6 := serialize(t, s4.ipLayers()...), serialize(t, s6.ipLayers()...)
	tagged := func(tags []tag, l3 layers.EthernetType, inner []byte) []byte {
		return serialize(t, append(link(clientMAC, lbMAC, tags, l3), gopacket.Payload(inner))...)
	}
	mf := slices.Clone(in4)
	mf[6] |= 0x20 // MF: a first fragment
	later := slices.Clone(in4)
	later[7] = 0x10 // offset 16 bytes
	frag := []layers.IPProtocol{layers.IPProtocolIPv6Fragment}
	hbh := []layers.IPProtocol{layers.IPProtocolIPv6HopByHop}
	nine := slices.Repeat([]layers.IPProtocol{layers.IPProtocolIPv6Destination}, 9)
	nineHdrs := make([][]byte, 9)
	for i := range nineHdrs {
		nineHdrs[i] = dstOpts()
	}
	longHbh := hopByHop()
	longHbh[1] = 200 // 1608 bytes, past the frame
	for _, tc := range []struct {
		name      string
		frame     []byte
		malformed bool
	}{
		{"ipv4 first fragment, one tag", tagged(oneTag, layers.EthernetTypeIPv4, mf), false},
		{"ipv4 later fragment, two tags", tagged(twoTags, layers.EthernetTypeIPv4, later), false},
		{"ipv6 fragment header, offset 0", tagged(nil, layers.EthernetTypeIPv6, withExt(t, s6, frag, fragHdr(0, true))), false},
		{"ipv6 fragment header, offset 0, last", tagged(oneTag, layers.EthernetTypeIPv6, withExt(t, s6, frag, fragHdr(0, false))), false},
		{"ipv6 fragment header, later", tagged(nil, layers.EthernetTypeIPv6, withExt(t, s6, frag, fragHdr(8, false))), false},
		{"ipv6 hop-by-hop then a fragment header", tagged(twoTags, layers.EthernetTypeIPv6,
			withExt(t, s6, []layers.IPProtocol{layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Fragment}, hopByHop(), fragHdr(0, true))), false},
		{"a third tag (802.1Q inside two)", tagged(append(slices.Clone(twoTags), tag{layers.EthernetTypeDot1Q, 0, 7}), layers.EthernetTypeIPv4, in4), false},
		{"one tag, cut", tagged(oneTag, layers.EthernetTypeIPv4, in4)[:16], true},
		{"two tags, the second cut", tagged(twoTags, layers.EthernetTypeIPv4, in4)[:20], true},
		{"ipv4 behind a tag, cut", tagged(oneTag, layers.EthernetTypeIPv4, in4)[:18+12], true},
		{"ipv6 behind two tags, cut", tagged(twoTags, layers.EthernetTypeIPv6, in6)[:22+30], true},
		{"ipv6 hop-by-hop header, cut", tagged(nil, layers.EthernetTypeIPv6, withExt(t, s6, hbh, hopByHop()))[:14+40+4], true},
		{"ipv6 hop-by-hop header past the frame", tagged(oneTag, layers.EthernetTypeIPv6, withExt(t, s6, hbh, longHbh)), true},
		{"ipv6 nine extension headers", tagged(nil, layers.EthernetTypeIPv6, withExt(t, s6, nine, nineHdrs...)), true},
		{"ipv6 tcp header cut behind extension headers", tagged(nil, layers.EthernetTypeIPv6,
			withExt(t, s6, hbh, hopByHop()))[:14+40+8+10], true},
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
}

// TestTaggedFullSize: a VLAN tag does not count against an MTU, so a full-size tagged frame (1518
// bytes for an IP packet of 1500 on a device of MTU 1500) is a wire frame, forwarded in l2 mode and
// encapsulated when the packet fits the egress MTU with the outer header; a tagged packet that does
// not fit is passed untouched and counted in mtu (no ICMP error: the stack, which knows the VLAN's
// device, answers it).
func TestTaggedFullSize(t *testing.T) {
	const mtu = 1500
	b := balancer(t)
	l := newMTULab(t, mtu)
	r := rand.New(rand.NewPCG(35, 36))
	for _, tc := range []struct {
		name  string
		mode  Forward
		ipLen int
		tags  []tag
		fits  bool
	}{
		{"l2, one tag", ForwardL2, mtu, oneTag, true},
		{"l2, two tags", ForwardL2, mtu, twoTags, true},
		{"ipip, one tag, fits exactly", ForwardIPIP, mtu - 20, oneTag, true},
		{"ipip, two tags, fits exactly", ForwardIPIP, mtu - 20, twoTags, true},
		{"ipip, one tag, one byte over", ForwardIPIP, mtu - 19, oneTag, false},
		{"ipip, two tags, full size", ForwardIPIP, mtu, twoTags, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l.do(t, func() error {
				lo, err := netlink.LinkByName("lo")
				if err != nil {
					return err
				}
				if err := b.PutVIP(VIP{Addr: vip4, ID: 0, JoinSteering: true, Forward: tc.mode}); err != nil {
					return err
				}
				defer b.DeleteVIP(vip4)
				be := testBackend(5, false, lo.Attrs().Index)
				if err := b.PutBackend(be); err != nil {
					return err
				}
				fillRing(t, b.Maps, 0, 5)
				s := sized(t, segment{src: clientAddr(r, vip4), dst: vip4, syn: true}, tc.ipLen)
				inner := serialize(t, s.ipLayers()...)
				frame := serialize(t, append(link(clientMAC, lbMAC, tc.tags, layers.EthernetTypeIPv4), gopacket.Payload(inner))...)
				before := stats(t, b.Maps)
				ret, out := run(t, b.Program, frame)
				d := stats(t, b.Maps).Sub(before)
				switch {
				case !tc.fits:
					if ret != xdpPass || d[StatMTU] != 1 || d[StatICMPTooBig] != 0 || d[StatFwdIPIP] != 0 || d[StatAggregate] != 0 {
						t.Errorf("%d-byte frame: verdict %d, stats moved by %v; want XDP_PASS, mtu 1", len(frame), ret, d.Map())
					}
					checkBytes(t, "passed untouched", frame, out[:len(frame)])
				case tc.mode == ForwardL2:
					if ret != xdpTX || d[StatFwdL2] != 1 || d[StatAggregate] != 0 {
						t.Errorf("%d-byte frame: verdict %d, stats moved by %v; want XDP_TX, fwd_l2 1", len(frame), ret, d.Map())
					}
					want := serialize(t, append(link(be.SrcMAC, be.MAC, tc.tags, layers.EthernetTypeIPv4), gopacket.Payload(inner))...)
					checkBytes(t, "forwarded", want, out)
				default:
					if ret != xdpTX || d[StatFwdIPIP] != 1 || d[StatAggregate] != 0 || d[StatMTU] != 0 {
						t.Errorf("%d-byte frame: verdict %d, stats moved by %v; want XDP_TX, fwd_ipip 1", len(frame), ret, d.Map())
					}
					outer, et := outerOf(s, be)
					want := serialize(t, append(link(be.SrcMAC, be.MAC, tc.tags, et), outer, gopacket.Payload(inner))...)
					checkBytes(t, "encapsulated", want, out)
				}
				return nil
			})
		})
	}
}
