package loader_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// prevObject is the balancer of commit 3b6022b, the last before the flow record grew a flags word
// (16 → 24 bytes), the stats two counters (nonsyn_miss, insert_failed) and the protected flow
// table appeared: a pinned balancer of that layout is what an upgrade meets.
const prevObject = "testdata/lb_3b6022b.o"

// field writes v into the member name of struct type t within b.
func field(t *testing.T, b []byte, typ btf.Type, name string, v uint64) {
	t.Helper()
	st, ok := btf.UnderlyingType(typ).(*btf.Struct)
	if !ok {
		t.Fatalf("%v is not a struct", typ)
	}
	for _, m := range st.Members {
		if m.Name == name {
			size, _ := btf.Sizeof(m.Type)
			off := int(m.Offset.Bytes())
			for i := 0; i < size; i++ {
				b[off+i] = byte(v >> (8 * i))
			}
			return
		}
	}
	t.Fatalf("%v has no member %s", typ, name)
}

func readField(t *testing.T, b []byte, typ btf.Type, name string) uint64 {
	t.Helper()
	for _, m := range btf.UnderlyingType(typ).(*btf.Struct).Members {
		if m.Name == name {
			size, _ := btf.Sizeof(m.Type)
			var v uint64
			for i := size - 1; i >= 0; i-- {
				v = v<<8 | uint64(b[int(m.Offset.Bytes())+i])
			}
			return v
		}
	}
	t.Fatalf("%v has no member %s", typ, name)
	return 0
}

func statsSum(t *testing.T, m *ebpf.Map, idx int) uint64 {
	t.Helper()
	var per [][]byte
	if err := m.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	var sum uint64
	for _, v := range per {
		sum += binary.LittleEndian.Uint64(v[idx*8:])
	}
	return sum
}

// A balancer pinned by the previous layout is upgraded in place by the next attach while packets
// flow through it: its flows (converted to the new record), tokens and counters are all kept, the
// interface's link is updated (never detached), the pins hold the new maps, and no packet the
// interface received goes uncounted across the two programs.
//
// A verifier older than 6.18's (Linux 6.1's and 6.12's do) may refuse the previous release's balancer: no such balancer
// can be pinned there, so there is nothing to upgrade, and the test asserts that refusal instead.
func TestUpgradeInPlace(t *testing.T) {
	if err := loadsHere(prevObject); err != nil {
		var ve *ebpf.VerifierError
		newer, kerr := testutil.KernelAtLeast(6, 18)
		if kerr != nil || newer || !errors.As(err, &ve) {
			t.Fatalf("the previous release's balancer does not load: %v", err)
		}
		t.Logf("this kernel's verifier refuses the previous release's balancer, so no pinned balancer of it can exist here: %v", err)
		return
	}
	ld := tempLoader(t)
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	ns, p := l.Server, l.Paths[0]
	nsDir, err := loader.NetnsDir(ns)
	if err != nil {
		t.Fatal(err)
	}
	dir := ld.LBDir(nsDir)

	// The previous mptcp-xdp's balancer, pinned and linked as its lb attach did.
	old, err := ebpf.LoadCollectionSpec(prevObject)
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range old.Maps {
		if strings.HasPrefix(name, "mptcpx_") && name != "mptcpx_lb_scr" { // as its lb.Spec pinned them
			m.Pinning = ebpf.PinByName
		}
	}
	if old.Maps[lb.MapFlows].ValueSize != 16 {
		t.Fatalf("%s: flow value of %d bytes, want the previous layout's 16", prevObject, old.Maps[lb.MapFlows].ValueSize)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var linkID link.ID
	var oldFlows, oldStats *ebpf.Map
	if err := netns.Do(ns, func() error {
		coll, err := ebpf.NewCollectionWithOptions(old, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
		if err != nil {
			return err
		}
		defer coll.Close()
		if linkID, err = pinXDPLink(coll.Programs[lb.ProgName], p.ServerIf, dir); err != nil {
			return err
		}
		if oldFlows, err = coll.Maps[lb.MapFlows].Clone(); err != nil {
			return err
		}
		oldStats, err = coll.Maps[lb.MapStats].Clone()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer oldFlows.Close()
	defer oldStats.Close()

	// A VIP, and flows and tokens of the previous layout. The previous flow key is the 5-tuple; the
	// new one names the VIP by its id (3 here), which the upgrade reads from the pinned VIP table.
	// Flows to an address that is no VIP (a tenth of them) are dropped by the upgrade.
	const nflows, vipID = 1000, 3
	oldVIPs, err := ebpf.LoadPinnedMap(filepath.Join(dir, lb.MapVIPs), nil)
	if err != nil {
		t.Fatal(err)
	}
	vk, vv := make([]byte, oldVIPs.KeySize()), make([]byte, oldVIPs.ValueSize())
	vipAddr := netip.MustParseAddr("10.0.0.10").As16()
	copy(vk, vipAddr[:]) // addr, port 80 (network order), TCP
	vk[16], vk[17], vk[18] = 0, 80, 6
	field(t, vv, old.Maps[lb.MapVIPs].Value, "id", vipID)
	if err := oldVIPs.Put(vk, vv); err != nil {
		t.Fatal(err)
	}
	oldVIPs.Close()
	toVIP := func(i int) bool { return i%10 != 0 }
	fvType := old.Maps[lb.MapFlows].Value
	for i := range nflows {
		k := make([]byte, old.Maps[lb.MapFlows].KeySize)
		binary.BigEndian.PutUint32(k[12:], 0x0a000000|uint32(i))
		binary.BigEndian.PutUint16(k[32:], uint16(40000+i)) // sport
		binary.BigEndian.PutUint16(k[34:], 80)              // dport
		k[36] = 6
		copy(k[16:32], vipAddr[:])
		if !toVIP(i) {
			k[31]++ // 10.0.0.11: no VIP
		}
		v := make([]byte, 16)
		field(t, v, fvType, "backend", uint64(i%3))
		field(t, v, fvType, "token", uint64(0x1000+i))
		field(t, v, fvType, "last_ns", uint64(1e9+i))
		if err := oldFlows.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	tokens, err := ebpf.LoadPinnedMap(filepath.Join(dir, lb.MapTokens), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range nflows {
		k := make([]byte, 8)
		binary.LittleEndian.PutUint32(k[4:], uint32(0x1000+i))
		v := make([]byte, 24)
		binary.LittleEndian.PutUint32(v, uint32(i%3))
		binary.LittleEndian.PutUint64(v[8:], uint64(i)*7919)
		if err := tokens.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	tokens.Close()

	// Traffic through the interface, across the upgrade: every frame is counted by one program.
	rx := func() uint64 {
		h, err := l.Handle(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		lk, err := h.LinkByName(p.ServerIf)
		if err != nil {
			t.Fatal(err)
		}
		return lk.Attrs().Statistics.RxPackets
	}
	rx0, seen0 := rx(), statsSum(t, oldStats, 0)
	stop := make(chan struct{})
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		_ = netns.Do(l.Client, func() error {
			c, err := net.Dial("udp", net.JoinHostPort(p.ServerIP4.String(), "9"))
			if err != nil {
				return err
			}
			defer c.Close()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if _, err := c.Write([]byte("across the upgrade")); err == nil {
					n++
				}
			}
		})
	}()
	time.Sleep(300 * time.Millisecond)

	rxBefore := rx()
	m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{p.ServerIf}})
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	during := rx() - rxBefore
	defer m.Close()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	if n := <-sent; n == 0 {
		t.Fatal("no datagram sent across the upgrade")
	} else {
		t.Logf("%d datagrams sent across the upgrade", n)
	}
	time.Sleep(200 * time.Millisecond)

	// The link was updated in place and runs the new program on the new maps.
	links, err := ld.LBLinks(ns, false)
	if err != nil || len(links) != 1 || links[0].LinkID != uint32(linkID) {
		t.Fatalf("links after the upgrade %+v (%v), want link %d updated in place", links, err, linkID)
	}
	if m.Flows.ValueSize() != 24 || m.Flows.KeySize() != 24 {
		t.Errorf("pinned flows after the upgrade: %d-byte keys and %d-byte values, want 24 and 24", m.Flows.KeySize(), m.Flows.ValueSize())
	}
	newSpec, err := lb.Spec(lb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	nfv := newSpec.Maps[lb.MapFlows].Value
	nfk := newSpec.Maps[lb.MapFlows].Key
	var k, v []byte
	n, wantFlows := 0, 0
	for i := range nflows {
		if toVIP(i) {
			wantFlows++
		}
	}
	for it := m.Flows.Iterate(); it.Next(&k, &v); n++ {
		i := binary.BigEndian.Uint32(k[12:]) &^ 0x0a000000
		if !toVIP(int(i)) {
			t.Errorf("flow %d to an address that is no VIP kept by the upgrade", i)
		}
		if got := [3]uint64{readField(t, v, nfv, "backend"), readField(t, v, nfv, "token"), readField(t, v, nfv, "last_ns")}; got != [3]uint64{uint64(i % 3), uint64(0x1000 + i), uint64(1e9 + i)} {
			t.Errorf("flow %d after the upgrade: backend, token, last_ns %v", i, got)
		}
		if got := [3]uint64{readField(t, k, nfk, "vip_id"), uint64(binary.BigEndian.Uint16(k[16:])), uint64(binary.BigEndian.Uint16(k[18:]))}; got != [3]uint64{vipID, uint64(40000 + i), 80} {
			t.Errorf("flow %d after the upgrade: vip_id, sport, dport %v, want %d, %d, 80", i, got, vipID, 40000+i)
		}
	}
	if n != wantFlows {
		t.Errorf("%d flows after the upgrade, want %d (of %d, the rest to no VIP)", n, wantFlows, nflows)
	}
	var tk [8]byte
	var tv [24]byte
	n = 0
	for it := m.Tokens.Iterate(); it.Next(&tk, &tv); n++ {
		i := binary.LittleEndian.Uint32(tk[4:]) - 0x1000
		if binary.LittleEndian.Uint32(tv[:]) != i%3 || binary.LittleEndian.Uint64(tv[8:]) != uint64(i)*7919 {
			t.Errorf("token %d after the upgrade: %x", i, tv)
		}
	}
	if n != nflows {
		t.Errorf("%d tokens after the upgrade, want %d", n, nflows)
	}
	// Every frame is counted by one of the programs, except that a counter increment of the new
	// program racing the upgrade's last merge of the old counters into the new may be lost: at
	// most the frames that arrived while the upgrade ran.
	seen := statsSum(t, m.Stats, 0)
	got, want := seen-seen0, rx()-rx0
	if got > want || want-got > during {
		t.Errorf("frames counted across the upgrade %d, received by %s %d (%d during the upgrade)", got, p.ServerIf, want, during)
	}
	t.Logf("%d frames received across the upgrade, %d counted; %d arrived during the upgrade", want, got, during)

	// Joins continue: an MP_JOIN SYN carrying a token learned before the upgrade is steered, by
	// the program the link runs now, to the backend the token maps to.
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	if err := m.PutVIP(lb.VIP{Addr: vip, ID: 0, JoinSteering: true}); err != nil {
		t.Fatal(err)
	}
	for id := range uint32(3) {
		if err := m.PutBackend(lb.Backend{ID: id, Addr: netip.AddrFrom4([4]byte{10, 2, 0, byte(2 + id)}),
			MAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(id)}, SrcMAC: net.HardwareAddr{2, 0, 0, 0, 1, 0}, Ifindex: 1}); err != nil {
			t.Fatal(err)
		}
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(links[0].ProgID))
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	for _, i := range []uint32{5, 7, 9} {
		token := make([]byte, 4)
		binary.BigEndian.PutUint32(token, 0x1000+i)
		opt := append(append([]byte{0x10, 1}, token...), 0xde, 0xad, 0xbe, 0xef)
		frame := gopacket.NewSerializeBuffer()
		tcp := &layers.TCP{SrcPort: layers.TCPPort(40000 + i), DstPort: 80, Seq: 1, SYN: true, Window: 64240,
			Options: []layers.TCPOption{{OptionType: 30, OptionLength: 12, OptionData: opt}}}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{10, 9, 0, 1}, DstIP: vip.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip)
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 9, 9, 9, 9, 9}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 1, 0}, EthernetType: layers.EthernetTypeIPv4}
		if err := gopacket.SerializeLayers(frame, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
			t.Fatal(err)
		}
		out := make([]byte, len(frame.Bytes())+64)
		opts := ebpf.RunOptions{Data: frame.Bytes(), DataOut: out}
		verdict, err := prog.Run(&opts)
		if err != nil {
			t.Fatal(err)
		}
		if want := (net.HardwareAddr{2, 0, 0, 0, 0, byte(i % 3)}); verdict != 3 || !bytes.Equal(opts.DataOut[:6], want) {
			t.Errorf("join with token %#x after the upgrade: verdict %d to %s, want XDP_TX to backend %d (%s)", 0x1000+i, verdict, net.HardwareAddr(opts.DataOut[:6]), i%3, want)
		}
	}

}

// pinXDPLink attaches prog to iface (native XDP, in the calling thread's namespace) through a
// bpf_link pinned as dir/link_xdp@iface, as an earlier mptcp-xdp left it, and returns the link's id.
func pinXDPLink(prog *ebpf.Program, iface, dir string) (link.ID, error) {
	lnk, err := netlink.LinkByName(iface)
	if err != nil {
		return 0, err
	}
	xl, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: lnk.Attrs().Index, Flags: link.XDPDriverMode})
	if err != nil {
		return 0, err
	}
	defer xl.Close()
	info, err := xl.Info()
	if err != nil {
		return 0, err
	}
	return info.ID, xl.Pin(filepath.Join(dir, "link_xdp@"+iface))
}

// loadsHere loads the object at path, maps unpinned, and unloads it again.
func loadsHere(path string) error {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		return err
	}
	coll.Close()
	return nil
}
