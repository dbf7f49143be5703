package lb

// Packet tests of what the balancer does with a frame that does not fit the next hop: ipip's ICMP
// "fragmentation needed" / ICMPv6 "packet too big" built in place (RFC 1191, RFC 4443 §3.2), IPv4
// without DF passed, and the aggregates of generic XDP (frames longer than the ingress MTU) passed
// and counted, never answered or forwarded.
//
// BPF_PROG_TEST_RUN runs a frame as received on the loopback of the calling thread's network
// namespace, and bpf_check_mtu looks the ingress (ifindex 0) and egress devices up in that
// namespace: each test runs in a namespace of its own (mxh5-*), whose lo and veth MTUs it sets.

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Quote lengths of the datapath's ICMP errors (bpf/lb_xdp.c LB_ICMP4_QUOTE, LB_ICMP6_QUOTE): the
// invoking packet's first bytes, as many as fit in 576 bytes of IPv4 and 1280 of IPv6.
const (
	icmp4Quote = 576 - 20 - 8
	icmp6Quote = 1280 - 40 - 8
)

// mtuLab is a network namespace whose loopback (the ingress device of BPF_PROG_TEST_RUN) has MTU
// lo, with veth pairs of the given MTUs (one end each, in the namespace) as egress devices.
type mtuLab struct {
	ns   string
	veth map[int]int // MTU -> ifindex
}

var mtuLabs int // labs made by this process, for unique names

func newMTULab(t *testing.T, lo int, veths ...int) *mtuLab {
	t.Helper()
	mtuLabs++
	l := &mtuLab{ns: fmt.Sprintf("mxh5-pkt%d-%d", os.Getpid(), mtuLabs), veth: map[int]int{}}
	if netns.Exists(l.ns) {
		if err := netns.Delete(l.ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := netns.Create(l.ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(l.ns); err != nil {
			t.Errorf("delete %s: %v", l.ns, err)
		}
	})
	l.do(t, func() error {
		lnk, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(lnk, lo); err != nil {
			return fmt.Errorf("lo mtu %d: %w", lo, err)
		}
		for i, mtu := range veths {
			name := fmt.Sprintf("mxh5v%d", i)
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: name + "p"}
			if err := netlink.LinkAdd(v); err != nil {
				return fmt.Errorf("add veth %s: %w", name, err)
			}
			got, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			l.veth[mtu] = got.Attrs().Index
		}
		return nil
	})
	return l
}

// do runs fn on this goroutine with its thread in the lab's namespace.
func (l *mtuLab) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := netns.Do(l.ns, fn); err != nil {
		t.Fatal(err)
	}
}

// sized is s with a payload that makes its IP packet ipLen bytes long, patterned so that a quote
// taken from the wrong offset shows.
func sized(t *testing.T, s segment, ipLen int) segment {
	t.Helper()
	s.payload = nil
	empty := len(serialize(t, s.ipLayers()...))
	if ipLen < empty {
		t.Fatalf("IP length %d below the %d bytes of the headers", ipLen, empty)
	}
	s.payload = make([]byte, ipLen-empty)
	for i := range s.payload {
		s.payload[i] = byte(i*7 + 3)
	}
	return s
}

// withoutDF clears an IPv4 frame's DF bit and fixes its header checksum.
func withoutDF(frame []byte) []byte {
	f := append([]byte(nil), frame...)
	f[14+6] &^= 0x40
	f[14+10], f[14+11] = 0, 0
	binary.BigEndian.PutUint16(f[14+10:], ^onesSum(f[14:14+20], 0))
	return f
}

// onesSum is the folded ones'-complement sum of b (RFC 1071), added to sum.
func onesSum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// tooBigOut is the ICMP error the balancer must send for frame (from the client, as it arrived):
// built with gopacket, which computes every length and checksum itself.
func tooBigOut(t *testing.T, frame []byte, mtu int) []byte {
	t.Helper()
	orig := frame[14:]
	eth := &layers.Ethernet{SrcMAC: lbMAC, DstMAC: clientMAC, EthernetType: layers.EthernetTypeIPv4}
	if orig[0]>>4 == 4 {
		ip := &layers.IPv4{Version: 4, IHL: 5, TOS: 0xc0, TTL: 64, Protocol: layers.IPProtocolICMPv4,
			SrcIP: orig[16:20], DstIP: orig[12:16]}
		icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeDestinationUnreachable, layers.ICMPv4CodeFragmentationNeeded),
			Seq: uint16(mtu)} // RFC 1191: unused (Id) 0, next-hop MTU in the low 16 bits
		return serialize(t, eth, ip, icmp, gopacket.Payload(orig[:icmp4Quote]))
	}
	eth.EthernetType = layers.EthernetTypeIPv6
	ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6, SrcIP: orig[24:40], DstIP: orig[8:24]}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypePacketTooBig, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip6); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth, ip6, icmp, gopacket.Payload(append(be32(uint32(mtu)), orig[:icmp6Quote]...)))
}

// checkTooBig decodes out with gopacket and checks, field by field, that it is the ICMP error for
// frame with next-hop MTU mtu: addresses swapped, checksums that verify, the MTU, and the quote
// (the invoking packet's own first bytes, decoding to its IP and TCP headers); then byte for byte
// against tooBigOut.
func checkTooBig(t *testing.T, what string, frame, out []byte, mtu int) {
	t.Helper()
	in := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	p := gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if eth == nil || eth.SrcMAC.String() != lbMAC.String() || eth.DstMAC.String() != clientMAC.String() {
		t.Errorf("%s: Ethernet header %+v, want %s -> %s", what, eth, lbMAC, clientMAC)
	}
	var quote []byte
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		orig := in.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp, _ := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		switch {
		case !ip.SrcIP.Equal(orig.DstIP) || !ip.DstIP.Equal(orig.SrcIP) || ip.Protocol != layers.IPProtocolICMPv4 || ip.TTL != 64:
			t.Errorf("%s: IPv4 header %s -> %s proto %d ttl %d, want %s -> %s ICMP", what, ip.SrcIP, ip.DstIP, ip.Protocol, ip.TTL, orig.DstIP, orig.SrcIP)
		case onesSum(out[14:14+20], 0) != 0xffff:
			t.Errorf("%s: IPv4 header checksum %04x does not verify", what, ip.Checksum)
		case ip.Length != 576 || len(out) != 14+576:
			t.Errorf("%s: IPv4 length %d, frame %d bytes; want 576 (RFC 1812 4.3.2.3)", what, ip.Length, len(out))
		case icmp == nil || icmp.TypeCode.Type() != layers.ICMPv4TypeDestinationUnreachable || icmp.TypeCode.Code() != layers.ICMPv4CodeFragmentationNeeded:
			t.Errorf("%s: ICMP %v, want destination unreachable / fragmentation needed", what, icmp)
		case onesSum(out[14+20:], 0) != 0xffff:
			t.Errorf("%s: ICMP checksum %04x does not verify", what, icmp.Checksum)
		case icmp.Id != 0 || int(icmp.Seq) != mtu:
			t.Errorf("%s: ICMP unused %d, next-hop MTU %d; want 0 and %d", what, icmp.Id, icmp.Seq, mtu)
		}
		if icmp != nil {
			quote = icmp.Payload
		}
	} else if ip6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		orig := in.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		// The pseudo-header: addresses, upper-layer length, next header 58.
		var ph uint32
		for i := 0; i < 32; i += 2 {
			ph += uint32(out[14+8+i])<<8 | uint32(out[14+8+i+1])
		}
		ph += uint32(len(out)-14-40) + 58
		switch {
		case !ip6.SrcIP.Equal(orig.DstIP) || !ip6.DstIP.Equal(orig.SrcIP) || ip6.NextHeader != layers.IPProtocolICMPv6 || ip6.HopLimit != 64:
			t.Errorf("%s: IPv6 header %s -> %s next %d hop limit %d, want %s -> %s ICMPv6", what, ip6.SrcIP, ip6.DstIP, ip6.NextHeader, ip6.HopLimit, orig.DstIP, orig.SrcIP)
		case len(out) != 14+1280:
			t.Errorf("%s: frame %d bytes, want 14 + 1280 (RFC 4443 2.4(c): as much as fits in the minimum MTU)", what, len(out))
		case icmp == nil || icmp.TypeCode.Type() != layers.ICMPv6TypePacketTooBig || icmp.TypeCode.Code() != 0:
			t.Errorf("%s: ICMPv6 %v, want packet too big", what, icmp)
		case onesSum(out[14+40:], ph) != 0xffff:
			t.Errorf("%s: ICMPv6 checksum %04x does not verify", what, icmp.Checksum)
		case len(icmp.Payload) < 4 || int(binary.BigEndian.Uint32(icmp.Payload)) != mtu:
			t.Errorf("%s: ICMPv6 MTU field % x, want %d", what, icmp.Payload[:min(4, len(icmp.Payload))], mtu)
		}
		if icmp != nil && len(icmp.Payload) >= 4 {
			quote = icmp.Payload[4:]
		}
	} else {
		t.Errorf("%s: no IP header in the output:\n%s", what, hexDiff(nil, out))
		return
	}
	// The quote is the invoking packet's start: its IP and TCP headers decode as sent.
	if len(quote) == 0 {
		t.Errorf("%s: nothing quoted", what)
		return
	}
	q := gopacket.NewPacket(quote, map[bool]gopacket.LayerType{true: layers.LayerTypeIPv4, false: layers.LayerTypeIPv6}[quote[0]>>4 == 4], gopacket.Default)
	tq, _ := q.Layer(layers.LayerTypeTCP).(*layers.TCP)
	to, _ := in.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tq == nil || to == nil || tq.SrcPort != to.SrcPort || tq.DstPort != to.DstPort || tq.Seq != to.Seq {
		t.Errorf("%s: quoted TCP header %v, want the invoking packet's %v", what, tq, to)
	}
	checkBytes(t, what, tooBigOut(t, frame, mtu), out)
}

// TestIPIPTooBig: in ipip mode a frame that fits the egress MTU once encapsulated is encapsulated
// (exactly fitting included); one byte more, or a full 1500-byte packet, is answered with an ICMP
// "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big" whose MTU is the egress MTU less
// the outer header, sent back with XDP_TX and counted in icmp_too_big; an IPv4 packet without DF is
// passed untouched and counted in mtu (global, VIP and backend counters). Every family pair.
func TestIPIPTooBig(t *testing.T) {
	const mtu = 1500
	b := balancer(t)
	l := newMTULab(t, mtu)
	r := rand.New(rand.NewPCG(71, 72))
	for _, tc := range []struct {
		name   string
		vip    netip.AddrPort
		outer6 bool
		hdr    int
	}{{"4in4", vip4, false, 20}, {"6in6", vip6, true, 40}, {"4in6", vip4, true, 40}, {"6in4", vip6, false, 20}} {
		// The MTU the backend entry holds: not known (every frame asks bpf_check_mtu), the device's
		// (frames within it skip the helper), or lower than the device's (as after the device's MTU
		// was raised: frames above it ask the helper, which lets them through). All decide alike.
		for _, cached := range []int{0, mtu, mtu - 200} {
			// A subtest runs on a goroutine of its own: it enters the namespace itself.
			t.Run(fmt.Sprintf("%s/cached-mtu-%d", tc.name, cached), func(t *testing.T) {
				l.do(t, func() error {
					lo, err := netlink.LinkByName("lo")
					if err != nil {
						return err
					}
					if err := b.PutVIP(VIP{Addr: tc.vip, ID: 0, JoinSteering: true, Forward: ForwardIPIP}); err != nil {
						t.Fatal(err)
					}
					defer b.DeleteVIP(tc.vip)
					be := testBackend(5, tc.outer6, lo.Attrs().Index)
					be.MTU = cached
					if err := b.PutBackend(be); err != nil {
						t.Fatal(err)
					}
					if got, _, err := b.Maps.Backend(5); err != nil || got.MTU != cached {
						t.Fatalf("backend entry holds MTU %d (%v), want %d", got.MTU, err, cached)
					}
					fillRing(t, b.Maps, 0, 5)
					s := segment{src: clientAddr(r, tc.vip), dst: tc.vip, ack: true, opts: []layers.TCPOption{optDSS()}}
					if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 5}}); err != nil {
						t.Fatal(err)
					}
					for _, c := range []struct {
						ipLen int
						noDF  bool
						want  uint32
					}{
						{mtu - tc.hdr, false, xdpTX},     // fits exactly: encapsulated
						{mtu - tc.hdr + 1, false, xdpTX}, // one byte over: ICMP
						{mtu, false, xdpTX},              // a full-size segment: ICMP
						{mtu, true, xdpPass},             // IPv4 without DF: passed
					} {
						if c.noDF && tc.vip.Addr().Is6() {
							continue
						}
						sz := sized(t, s, c.ipLen)
						frame := sz.frame(t)
						if c.noDF {
							frame = withoutDF(frame)
						}
						what := fmt.Sprintf("%s, IP packet of %d bytes (DF %v), egress MTU %d - %d", tc.name, c.ipLen, !c.noDF, mtu, tc.hdr)
						before, vBefore, bBefore := stats(t, b.Maps), vipStats(t, b.Maps, 0), beStats(t, b.Maps, 5)
						ret, out := run(t, b.Program, frame)
						d := stats(t, b.Maps).Sub(before)
						vd, bd := vipStats(t, b.Maps, 0), beStats(t, b.Maps, 5)
						t.Logf("%s: verdict %d, %d bytes out; fwd_ipip %d icmp_too_big %d mtu %d", what, ret, len(out), d[StatFwdIPIP], d[StatICMPTooBig], d[StatMTU])
						if ret != c.want {
							t.Errorf("%s: verdict %d, want %d", what, ret, c.want)
							continue
						}
						switch {
						case c.ipLen <= mtu-tc.hdr:
							checkBytes(t, what+": encapsulated", ipipOut(t, sz, be), out)
							if d[StatFwdIPIP] != 1 || d[StatICMPTooBig] != 0 || d[StatMTU] != 0 {
								t.Errorf("%s: stats moved by %v", what, d.Map())
							}
						case c.noDF:
							checkBytes(t, what+": passed untouched", frame, out[:len(frame)])
							if d[StatMTU] != 1 || d[StatICMPTooBig] != 0 || d[StatFwdIPIP] != 0 ||
								vd[VIPStatMTU]-vBefore[VIPStatMTU] != 1 || bd[BackendStatMTU]-bBefore[BackendStatMTU] != 1 {
								t.Errorf("%s: stats moved by %v (VIP mtu %d, backend mtu %d)", what, d.Map(),
									vd[VIPStatMTU]-vBefore[VIPStatMTU], bd[BackendStatMTU]-bBefore[BackendStatMTU])
							}
						default:
							checkTooBig(t, what, frame, out, mtu-tc.hdr)
							if d[StatICMPTooBig] != 1 || d[StatMTU] != 0 || d[StatFwdIPIP] != 0 || d[StatFwdError] != 0 || d[StatAggregate] != 0 {
								t.Errorf("%s: stats moved by %v", what, d.Map())
							}
						}
					}
					return nil
				})
			})
		}
	}
}

// TestIPIPStaleMTU: a backend entry holding an MTU higher than its device's (the device's lowered
// with no control plane running to follow it) has a frame that fits the entry's but not the
// device's encapsulated and sent, not answered: the datapath asks the kernel only for frames over
// the entry's MTU. The device then drops it (what TestIPIPMTUFollowsLink in test/lb keeps from
// happening).
func TestIPIPStaleMTU(t *testing.T) {
	const mtu = 1500
	b := balancer(t)
	l := newMTULab(t, mtu)
	r := rand.New(rand.NewPCG(75, 76))
	l.do(t, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := b.PutVIP(VIP{Addr: vip4, ID: 0, JoinSteering: true, Forward: ForwardIPIP}); err != nil {
			t.Fatal(err)
		}
		defer b.DeleteVIP(vip4)
		fillRing(t, b.Maps, 0, 5)
		s := segment{src: clientAddr(r, vip4), dst: vip4, ack: true, opts: []layers.TCPOption{optDSS()}}
		if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 5}}); err != nil {
			t.Fatal(err)
		}
		frame := sized(t, s, mtu).frame(t) // 1500 bytes of IP: 1520 with the outer header
		for _, c := range []struct {
			cached int
			want   uint32
			fwd    uint64
		}{{0, xdpTX, 0}, {mtu, xdpTX, 0}, {mtu + 20, xdpTX, 1}} {
			be := testBackend(5, false, lo.Attrs().Index)
			be.MTU = c.cached
			if err := b.PutBackend(be); err != nil {
				t.Fatal(err)
			}
			before := stats(t, b.Maps)
			ret, out := run(t, b.Program, frame)
			d := stats(t, b.Maps).Sub(before)
			t.Logf("entry MTU %d, device %d: verdict %d, %d bytes out, fwd_ipip %d icmp_too_big %d", c.cached, mtu, ret, len(out), d[StatFwdIPIP], d[StatICMPTooBig])
			if ret != c.want || d[StatFwdIPIP] != c.fwd || d[StatICMPTooBig] != 1-c.fwd {
				t.Errorf("entry MTU %d, device %d: verdict %d, stats moved by %v; want verdict %d, fwd_ipip %d", c.cached, mtu, ret, d.Map(), c.want, c.fwd)
			}
			if c.fwd == 1 && len(out) != len(frame)+20 {
				t.Errorf("entry MTU %d: %d bytes out, want the frame encapsulated (%d)", c.cached, len(out), len(frame)+20)
			}
		}
		return nil
	})
}

// TestTooBigShortQuote: an egress MTU so small that the oversized IPv4 packet is shorter than the
// 548 bytes an ICMP error quotes: passed untouched, counted in mtu (the quote's length is fixed,
// which keeps the datapath's checksum loop constant).
func TestTooBigShortQuote(t *testing.T) {
	b := balancer(t)
	l := newMTULab(t, 1500, 500)
	r := rand.New(rand.NewPCG(73, 74))
	l.do(t, func() error {
		if err := b.PutVIP(VIP{Addr: vip4, ID: 0, JoinSteering: true, Forward: ForwardIPIP}); err != nil {
			return err
		}
		defer b.DeleteVIP(vip4)
		be := testBackend(5, false, l.veth[500])
		if err := b.PutBackend(be); err != nil {
			return err
		}
		fillRing(t, b.Maps, 0, 5)
		s := sized(t, segment{src: clientAddr(r, vip4), dst: vip4, syn: true}, 500)
		frame := s.frame(t)
		before := stats(t, b.Maps)
		ret, out := run(t, b.Program, frame)
		d := stats(t, b.Maps).Sub(before)
		if ret != xdpPass || d[StatMTU] != 1 || d[StatICMPTooBig] != 0 {
			t.Errorf("500-byte packet, egress MTU 500 - 20: verdict %d, stats moved by %v; want XDP_PASS, mtu 1", ret, d.Map())
		}
		checkBytes(t, "passed untouched", frame, out[:len(frame)])
		return nil
	})
}

// TestAggregates: a frame longer than the ingress device's MTU is no wire frame but an aggregate of
// the stack's (GRO; generic XDP shows it whole). Before it is forwarded (l2 and ipip, fitting the
// egress MTU or not) it is passed untouched to the stack and counted in aggregate: never forwarded
// whole (a device refuses it, or sends it unsegmented), never answered with an ICMP error (which
// would tell its sender a wrong MTU). Wire frames are forwarded or answered as before, and a frame
// longer than 1514 bytes on an ingress device of a larger MTU is a wire frame.
func TestAggregates(t *testing.T) {
	b := balancer(t)
	r := rand.New(rand.NewPCG(75, 76))
	for _, lo := range []int{1500, 9000} {
		// Ingress (lo) 1500 or 9000; egress devices of 1500 and 9000.
		l := newMTULab(t, lo, 1500, 9000)
		l.do(t, func() error {
			for _, tc := range []struct {
				name            string
				fwd             Forward
				ingress, egress int // MTUs
				ipLen           int
				want            uint32
				stat            Stat // the counter that moves by one
			}{
				{"ipip, aggregate over the egress MTU", ForwardIPIP, 1500, 1500, 1600, xdpPass, StatAggregate},
				{"ipip, aggregate within the egress MTU", ForwardIPIP, 1500, 9000, 1600, xdpPass, StatAggregate},
				{"l2, aggregate over the egress MTU", ForwardL2, 1500, 1500, 1600, xdpPass, StatAggregate},
				{"l2, aggregate within the egress MTU", ForwardL2, 1500, 9000, 1600, xdpPass, StatAggregate},
				{"ipip, aggregate of 3,400 bytes", ForwardIPIP, 1500, 9000, 3400, xdpPass, StatAggregate},
				{"ipip, wire frame over the egress MTU", ForwardIPIP, 1500, 1500, 1500, xdpTX, StatICMPTooBig},
				{"ipip, wire frame that fits", ForwardIPIP, 1500, 1500, 1480, xdpRedirect, StatFwdIPIP},
				{"l2, wire frame", ForwardL2, 1500, 1500, 1500, xdpRedirect, StatFwdL2},
				{"ipip, jumbo wire frame that fits", ForwardIPIP, 9000, 9000, 1600, xdpRedirect, StatFwdIPIP},
				{"l2, jumbo wire frame", ForwardL2, 9000, 9000, 1600, xdpRedirect, StatFwdL2},
				{"ipip, jumbo wire frame over the egress MTU", ForwardIPIP, 9000, 1500, 1600, xdpTX, StatICMPTooBig},
			} {
				if tc.ingress != lo {
					continue
				}
				if err := b.PutVIP(VIP{Addr: vip4, ID: 0, JoinSteering: true, Forward: tc.fwd}); err != nil {
					return err
				}
				be := testBackend(5, false, l.veth[tc.egress])
				if err := b.PutBackend(be); err != nil {
					return err
				}
				fillRing(t, b.Maps, 0, 5)
				s := sized(t, segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}, tc.ipLen)
				frame := s.frame(t)
				before := stats(t, b.Maps)
				ret, out := run(t, b.Program, frame)
				d := stats(t, b.Maps).Sub(before)
				t.Logf("%s (IP %d bytes, ingress MTU %d, egress %d): verdict %d, stats moved by %v", tc.name, tc.ipLen, tc.ingress, tc.egress, ret, nonzero(d))
				if ret != tc.want || d[tc.stat] != 1 {
					t.Errorf("%s, ingress MTU %d: verdict %d, %s moved by %d; want verdict %d and 1", tc.name, tc.ingress, ret, tc.stat, d[tc.stat], tc.want)
				}
				for _, other := range []Stat{StatAggregate, StatICMPTooBig, StatFwdL2, StatFwdIPIP, StatMTU, StatMalformed} {
					if other != tc.stat && d[other] != 0 {
						t.Errorf("%s, ingress MTU %d: %s moved by %d", tc.name, tc.ingress, other, d[other])
					}
				}
				if tc.want == xdpPass {
					checkBytes(t, tc.name+": passed untouched", frame, out[:len(frame)])
				}
				if err := b.DeleteVIP(vip4); err != nil {
					return err
				}
			}
			return nil
		})
	}
}

// TestZeroLengthIPv4: an IPv4 total length of 0 means BIG TCP only in a frame longer than 64 KiB
// (which BPF_PROG_TEST_RUN cannot hand a program without multi-buffer support: test/lb's generic
// lab sends real ones); in a wire-size frame it is still malformed.
func TestZeroLengthIPv4(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 1)
	r := rand.New(rand.NewPCG(77, 78))
	f := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}.frame(t)
	f[14+2], f[14+3] = 0, 0
	before := stats(t, b.Maps)
	ret, _ := run(t, b.Program, f)
	if d := stats(t, b.Maps).Sub(before); ret != xdpPass || d[StatMalformed] != 1 || d[StatVIP] != 0 {
		t.Errorf("total length 0 in a %d-byte frame: verdict %d, stats moved by %v; want XDP_PASS, malformed", len(f), ret, nonzero(d))
	}
}

// nonzero is the counters of d that moved.
func nonzero(d Stats) map[string]uint64 {
	m := map[string]uint64{}
	for k, v := range d.Map() {
		if v != 0 {
			m[k] = v
		}
	}
	return m
}
