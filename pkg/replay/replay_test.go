package replay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// frames are Ethernet frames of an MPTCP handshake and a few signals, built with gopacket: an
// MP_CAPABLE SYN, SYN-ACK and ACK, a DSS, an ADD_ADDR and an MP_PRIO, over IPv4 and IPv6.
func frames(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	for _, v6 := range []bool{false, true} {
		for _, o := range []struct {
			syn, ack bool
			opt      []byte
		}{
			{true, false, []byte{0x00, 0x81}},
			{true, true, append([]byte{0x00, 0x81}, 1, 2, 3, 4, 5, 6, 7, 8)},
			{false, true, append([]byte{0x00, 0x81}, 9, 9, 9, 9, 9, 9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8)},
			{false, true, []byte{0x20, 0x01, 0, 0, 0, 1}},
			{false, true, append([]byte{0x30, 0x02, 10, 0, 0, 9}, make([]byte, 8)...)},
			{false, true, []byte{0x51}},
		} {
			eth := &layers.Ethernet{SrcMAC: make([]byte, 6), DstMAC: make([]byte, 6), EthernetType: layers.EthernetTypeIPv4}
			tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: o.syn, ACK: o.ack, Window: 1000,
				Options: []layers.TCPOption{{OptionType: 30, OptionLength: uint8(len(o.opt) + 2), OptionData: o.opt}}}
			var net gopacket.SerializableLayer
			if v6 {
				eth.EthernetType = layers.EthernetTypeIPv6
				ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
					SrcIP: bytes.Repeat([]byte{0xfd}, 16), DstIP: bytes.Repeat([]byte{0xfe}, 16)}
				_ = tcp.SetNetworkLayerForChecksum(ip)
				net = ip
			} else {
				ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{10, 0, 0, 1}, DstIP: []byte{10, 0, 0, 2}}
				_ = tcp.SetNetworkLayerForChecksum(ip)
				net = ip
			}
			b := gopacket.NewSerializeBuffer()
			if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, net, tcp); err != nil {
				t.Fatal(err)
			}
			out = append(out, append([]byte(nil), b.Bytes()...))
		}
	}
	return out
}

// writePcap writes frames, each turned by conv, into a pcap file of link type link.
func writePcap(t *testing.T, link layers.LinkType, fs [][]byte, conv func([]byte) []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, link); err != nil {
		t.Fatal(err)
	}
	for i, fr := range fs {
		d := conv(fr)
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, int64(i)*1000), CaptureLength: len(d), Length: len(d)} // pcap keeps microseconds
		if err := w.WritePacket(ci, d); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

func want(fs [][]byte) maps.Counters {
	var c maps.Counters
	for _, f := range fs {
		r := mptcp.Parse(f)
		p := r.Packets()
		for i := range p {
			c.Packets[i] += p[i]
		}
		for i := range r.Options {
			c.Options[i] += r.Options[i]
		}
	}
	return c
}

// Every link type replay reads gives the counts of the same frames over Ethernet, and so does a
// VLAN tag; the expected counts hold every class the frames carry.
func TestLinkTypes(t *testing.T) {
	fs := frames(t)
	w := want(fs)
	if w.Options[mptcp.AddAddr] != 2 || w.Options[mptcp.MPPrio] != 2 || w.Options[mptcp.MPCapableACK] != 2 || w.Options[mptcp.DSS] != 2 {
		t.Fatalf("frames carry %v", w)
	}
	ip := func(f []byte) []byte { return f[14:] }
	sll := func(f []byte) []byte {
		h := make([]byte, 16)
		binary.BigEndian.PutUint16(h[2:], 1) // ARPHRD_ETHER
		copy(h[14:16], f[12:14])
		return append(h, f[14:]...)
	}
	sll2 := func(f []byte) []byte {
		h := make([]byte, 20)
		copy(h[0:2], f[12:14])
		return append(h, f[14:]...)
	}
	null := func(f []byte) []byte {
		h := []byte{2, 0, 0, 0}
		if f[12] == 0x86 {
			h[0] = 10
		}
		return append(h, f[14:]...)
	}
	vlan := func(f []byte) []byte {
		return append(append(append([]byte(nil), f[:12]...), 0x81, 0x00, 0x00, 0x0a), f[12:]...)
	}
	for _, c := range []struct {
		name string
		link layers.LinkType
		conv func([]byte) []byte
	}{
		{"ethernet", layers.LinkTypeEthernet, func(f []byte) []byte { return f }},
		{"vlan", layers.LinkTypeEthernet, vlan},
		{"raw", layers.LinkTypeRaw, ip},
		{"ipv4/ipv6", layers.LinkTypeIPv4, ip},
		{"linux_sll", layers.LinkTypeLinuxSLL, sll},
		{"linux_sll2", layers.LinkType(linkTypeLinuxSLL2 & 0xff), sll2},
		{"null", layers.LinkTypeNull, null},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writePcap(t, c.link, fs, c.conv)
			if c.name == "linux_sll2" { // gopacket's 8-bit link type cannot write 276
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				binary.LittleEndian.PutUint32(b[20:24], linkTypeLinuxSLL2)
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, e := range engines(t) {
				for _, d := range []maps.Direction{maps.Ingress, maps.Egress} {
					r, err := Run(path, Options{Engine: e, Dir: d}, false)
					if err != nil {
						t.Fatal(err)
					}
					if r.Counts != w || r.Frames != uint64(len(fs)) || r.Dir != dirName(d) {
						t.Errorf("engine %s, %s: %d frames, counts %v; want %d, %v", e, r.Dir, r.Frames, r.Counts, len(fs), w)
					}
				}
			}
		})
	}
}

// engines are the engines this process can run: both as root, the Go one otherwise.
func engines(t *testing.T) []Engine {
	if os.Geteuid() == 0 {
		return []Engine{EngineBPF, EngineGo}
	}
	t.Log("not root: the bpf engine is not run")
	return []Engine{EngineGo}
}

// Bad files each give one line naming the file and what is wrong, and no counts.
func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := writePcap(t, layers.LinkTypeEthernet, frames(t), func(f []byte) []byte { return f })
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wifi := writePcap(t, layers.LinkTypeIEEE802_11, frames(t), func(f []byte) []byte { return f })
	for _, c := range []struct {
		path, want string
	}{
		{write("empty.pcap", nil), "empty file"},
		{write("short.pcap", b[:3]), "too short for a pcap or pcapng header"},
		{write("magic.pcap", append([]byte("GIF89a"), b[6:]...)), "not a pcap or pcapng capture"},
		{write("cut.pcap", b[:len(b)-5]), "truncated after frame 11"},
		{write("cuthdr.pcap", b[:24+16+len(frames(t)[0])+7]), "truncated after frame 1"},
		{write("header.pcap", b[:20]), "pcap"},
		{wifi, "link type 105, which replay does not read"},
		{filepath.Join(dir, "missing.pcap"), "no such file"},
	} {
		r, err := Run(c.path, Options{Engine: EngineGo}, true)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, %v; want one line with %q", filepath.Base(c.path), r, err, c.want)
		}
	}
}

// A frame cut by the capture's snaplen is counted as captured, and reported.
func TestCutFrames(t *testing.T) {
	fs := frames(t)
	path := filepath.Join(t.TempDir(), "snap.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(60, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	var cut [][]byte
	for _, fr := range fs {
		n := min(len(fr), 60)
		cut = append(cut, fr[:n])
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: n, Length: len(fr)}, fr[:n]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	r, err := Run(path, Options{Engine: EngineGo}, false)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, fr := range fs {
		if len(fr) > 60 {
			n++
		}
	}
	if r.Cut != n || n == 0 || r.Counts != want(cut) {
		t.Errorf("cut %d (want %d), counts %v, want %v", r.Cut, n, r.Counts, want(cut))
	}
}

// tcpFrame is an Ethernet/IPv4/TCP frame from src to dst with the given flags and, unless opt is
// nil, one MPTCP option whose bytes after kind and length are opt.
func tcpFrame(t *testing.T, src, dst netip.AddrPort, syn, ack bool, opt []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: make([]byte, 6), DstMAC: make([]byte, 6), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()), SYN: syn, ACK: ack, Window: 1000}
	if opt != nil {
		tcp.Options = []layers.TCPOption{{OptionType: 30, OptionLength: uint8(len(opt) + 2), OptionData: opt}}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), b.Bytes()...)
}

// TestPerConnection: a join and its MP_PRIO captured before the connection's MP_CAPABLE ACK are
// matched to it by token once the keys are seen, their event kept and put in capture order; an
// MP_CAPABLE SYN answered without MP_CAPABLE is a fallback subflow of no connection, with its
// event.
func TestPerConnection(t *testing.T) {
	const clientKey, serverKey = 0x0102030405060708, 0x1112131415161718
	ct, _ := lb.ServerToken(clientKey)
	st, _ := lb.ServerToken(serverKey)
	srv := netip.MustParseAddrPort("10.0.0.2:80")
	a := netip.MustParseAddrPort("10.0.0.1:40000")
	b := netip.MustParseAddrPort("10.0.1.1:50000")
	c := netip.MustParseAddrPort("10.0.0.1:40001")
	keys := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{0x01, 0x81}, clientKey), serverKey)
	join := binary.BigEndian.AppendUint32([]byte{0x11, 7}, st) // backup, address id 7, token
	join = append(join, 0, 0, 0, 1)                            // nonce
	fs := [][]byte{
		tcpFrame(t, b, srv, true, false, join),
		tcpFrame(t, b, srv, false, true, []byte{0x50}), // MP_PRIO, backup off
		tcpFrame(t, a, srv, false, true, keys),
		tcpFrame(t, a, srv, false, true, []byte{0x40, 3}), // REMOVE_ADDR id 3
		tcpFrame(t, c, srv, true, false, []byte{0x01, 0x81}),
		tcpFrame(t, srv, c, true, true, nil),
	}
	r, err := Run(writePcap(t, layers.LinkTypeEthernet, fs, func(f []byte) []byte { return f }), Options{Engine: EngineGo}, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Conns) != 1 {
		t.Fatalf("%d connections, want 1", len(r.Conns))
	}
	cn := r.Conns[0]
	if uint32(cn.ClientToken) != ct || uint32(cn.ServerToken) != st || cn.Fallback {
		t.Errorf("tokens %s/%s fallback %v, want %08x/%08x false", cn.ClientToken, cn.ServerToken, cn.Fallback, ct, st)
	}
	var sfs, evs []string
	for _, sf := range cn.Subflows {
		sfs = append(sfs, fmt.Sprintf("%s %s backup=%v", sf.Kind, sf.Src, sf.Backup))
		if len(sf.Events) != 0 {
			t.Errorf("subflow %s kept events %v after joining", sf, sf.Events)
		}
	}
	for _, e := range cn.Events {
		evs = append(evs, fmt.Sprintf("%s %s", e.Type, e.From))
	}
	// The initial subflow's SYN is not in the capture: its keys make it initial. The MP_PRIO
	// cleared the join's backup flag.
	if got, want := strings.Join(sfs, "; "), "join 10.0.1.1:50000 backup=false; initial 10.0.0.1:40000 backup=false"; got != want {
		t.Errorf("subflows %q, want %q", got, want)
	}
	if got, want := strings.Join(evs, "; "), "mp_prio 10.0.1.1:50000; remove_addr 10.0.0.1:40000"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
	if len(r.Orphan) != 1 || r.Orphan[0].Kind != "fallback" || len(r.Orphan[0].Events) != 1 || r.Orphan[0].Events[0].Type != "fallback" {
		t.Errorf("unmatched subflows %+v, want the fallback one with its event", r.Orphan)
	}
}
