package lb

import (
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// XDP verdicts.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

func TestMain(m *testing.M) {
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Fprintln(os.Stderr, "remove memlock rlimit:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// testConfig keeps the maps small so that every test loads its own balancer quickly.
// testConfig's take-over threshold is shorter than the default 120 s, so that a just-booted
// machine (a kernel-matrix guest) can date a mapping back past it (idleSince).
var testConfig = Config{MaxVIPs: 4, MaxFlows: 1 << 16, MaxTokens: 1 << 18, CollisionIdle: 20 * time.Second}

// idleSince is a CLOCK_MONOTONIC time a second older than the take-over threshold d ago; on a
// machine up for less than that, it first waits until the clock has got there.
func idleSince(d time.Duration) time.Duration {
	want := d + time.Second
	if up := Monotonic(); up < want {
		time.Sleep(want - up)
	}
	return Monotonic() - want
}

func loadBalancer(tb testing.TB, cfg Config) *Balancer {
	tb.Helper()
	b, err := Load(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { b.Close() })
	return b
}

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

// backendMAC is backend i's MAC; the balancer's egress MAC is lbEgressMAC(i).
func backendMAC(i uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xbe, 0, 0, byte(i >> 8), byte(i)}
}
func lbEgressMAC(i uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x1b, 0, 0, byte(i >> 8), byte(i)}
}

// testBackend is backend i, on interface lo (ifindex 1, the ingress interface of BPF_PROG_TEST_RUN)
// unless ifindex says otherwise, at 10.0.1.i / fd00:1::i.
func testBackend(i uint32, v6 bool, ifindex int) Backend {
	b := Backend{ID: i, MAC: backendMAC(i), SrcMAC: lbEgressMAC(i), Ifindex: ifindex}
	if v6 {
		b.Addr = netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 14: byte(i >> 8), 15: byte(i)})
		b.SrcAddr = netip.MustParseAddr("fd00:1::fe")
	} else {
		b.Addr = netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})
		b.SrcAddr = netip.MustParseAddr("10.0.1.254")
	}
	return b
}

// fillRing writes a ring cycling over ids.
func fillRing(tb testing.TB, m *Maps, vipID uint32, ids ...uint32) []uint32 {
	tb.Helper()
	ring := make([]uint32, RingSize)
	for i := range ring {
		ring[i] = ids[i%len(ids)]
	}
	if err := m.WriteRing(vipID, ring); err != nil {
		tb.Fatal(err)
	}
	return ring
}

// mptcpOpt builds a TCP option of kind 30.
func mptcpOpt(data ...byte) layers.TCPOption {
	return layers.TCPOption{OptionType: 30, OptionLength: uint8(2 + len(data)), OptionData: data}
}

func be64(v uint64) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(v >> (56 - 8*i))
	}
	return b
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// Options of the packets the tests send.
func optMPCapableSYN() layers.TCPOption { return mptcpOpt(0x01, 0x81) }
func optMPCapableACK(skey, rkey uint64) layers.TCPOption {
	return mptcpOpt(append(append([]byte{0x01, 0x81}, be64(skey)...), be64(rkey)...)...)
}
func optMPCapableData(skey, rkey uint64, dll uint16) layers.TCPOption {
	d := append(append([]byte{0x01, 0x81}, be64(skey)...), be64(rkey)...)
	return mptcpOpt(append(d, byte(dll>>8), byte(dll))...)
}
func optJoinSYN(token, nonce uint32) layers.TCPOption {
	return mptcpOpt(append(append([]byte{0x10, 0x02}, be32(token)...), be32(nonce)...)...)
}
func optDSS() layers.TCPOption { return mptcpOpt(0x20, 0x01, 0, 0, 0, 1) } // DSS, 32-bit data ACK

var nop = layers.TCPOption{OptionType: layers.TCPOptionKindNop}

// segment describes one TCP segment from a client to a VIP.
type segment struct {
	src, dst netip.AddrPort
	syn, ack bool
	opts     []layers.TCPOption
	payload  []byte
}

func (s segment) key() FlowKey { return FlowKey{Src: s.src, Dst: s.dst} }

// ipLayers builds the IP and TCP layers of s (checksums computed on serialization).
func (s segment) ipLayers() []gopacket.SerializableLayer {
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()),
		Seq: 1000, Ack: 2000, SYN: s.syn, ACK: s.ack, Window: 64240, Options: s.opts,
	}
	var ip gopacket.NetworkLayer
	if s.src.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, TOS: 0x28, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		ip = ip4
		tcp.SetNetworkLayerForChecksum(ip4)
	} else {
		ip6 := &layers.IPv6{Version: 6, TrafficClass: 0x28, FlowLabel: 0x12345, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		ip = ip6
		tcp.SetNetworkLayerForChecksum(ip6)
	}
	return []gopacket.SerializableLayer{ip.(gopacket.SerializableLayer), tcp, gopacket.Payload(s.payload)}
}

// frame is s as the balancer receives it.
func (s segment) frame(tb testing.TB) []byte {
	return serialize(tb, append([]gopacket.SerializableLayer{s.eth(clientMAC, lbMAC)}, s.ipLayers()...)...)
}

func (s segment) eth(src, dst net.HardwareAddr) *layers.Ethernet {
	t := layers.EthernetTypeIPv4
	if s.src.Addr().Is6() {
		t = layers.EthernetTypeIPv6
	}
	return &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: t}
}

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// run passes one frame through prog and returns the verdict and the output frame.
func run(tb testing.TB, prog *ebpf.Program, frame []byte) (uint32, []byte) {
	tb.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Repeat: 1}
	ret, err := prog.Run(opts)
	if err != nil {
		tb.Fatalf("run: %v", err)
	}
	return ret, opts.DataOut
}

// hexDiff dumps two byte strings 16 bytes a line, marking the lines that differ.
func hexDiff(want, got []byte) string {
	var b strings.Builder
	for off := 0; off < max(len(want), len(got)); off += 16 {
		w, g := window(want, off), window(got, off)
		mark := " "
		if hex.EncodeToString(w) != hex.EncodeToString(g) {
			mark = "!"
		}
		fmt.Fprintf(&b, "%s %04x want % x\n        got  % x\n", mark, off, w, g)
	}
	return b.String()
}

func window(b []byte, off int) []byte {
	if off >= len(b) {
		return nil
	}
	return b[off:min(off+16, len(b))]
}

func checkBytes(tb testing.TB, what string, want, got []byte) {
	tb.Helper()
	if string(want) != string(got) {
		tb.Errorf("%s: output differs\n%s", what, hexDiff(want, got))
	}
}

func stats(tb testing.TB, m *Maps) Stats {
	tb.Helper()
	s, err := m.ReadStats()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}
