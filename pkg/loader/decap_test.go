package loader_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
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

// prevDecapObject is the decapsulator of commit 9fc34ec, the last before the allowlist: its address
// map held this host's addresses only (value unused), its counters were the balancer's struct
// lb_stats, and it had no VIP map. A pinned decapsulator of that layout is what an upgrade meets.
const prevDecapObject = "testdata/lbdecap_9fc34ec.o"

// An allowlist for the tests that attach the decapsulator without sending it traffic.
var (
	testDecapBalancers = []netip.Addr{netip.MustParseAddr("10.9.0.1")}
	testDecapVIPs      = []netip.AddrPort{netip.MustParseAddrPort("10.0.0.10:80")}
)

// ipipFrame is an IPv4-in-IPv4 frame from outer source src to outer destination dst, carrying a
// TCP segment to inner.
func ipipFrame(t *testing.T, src, dst netip.Addr, inner netip.AddrPort) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(inner.Port()), Seq: 1, ACK: true, Window: 1000}
	in := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IPv4(192, 0, 2, 7), DstIP: inner.Addr().AsSlice()}
	_ = tcp.SetNetworkLayerForChecksum(in)
	out := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolIPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2},
		EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, out, in, tcp, gopacket.Payload(make([]byte, 32))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pinnedDecapProg is the program the pinned link of iface runs.
func pinnedDecapProg(t *testing.T, dir, iface string) *ebpf.Program {
	t.Helper()
	lk, err := link.LoadPinnedLink(filepath.Join(dir, "link_xdp@"+iface), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	info, err := lk.Info()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// The decapsulator's allowlist as AttachDecap writes it: refused without balancers or VIPs;
// written over a pinned decapsulator of the previous layout (upgraded in place, the link kept);
// the namespace's addresses, the balancers and the VIPs read back by DecapStatus and enforced by
// the program the link runs; replaced, not merged, by the next attach.
func TestDecapAllowlistAttach(t *testing.T) {
	ld := tempLoader(t)
	l := testutil.NewLab(t, lab.Config{Paths: 1, Prefix: fmt.Sprintf("mxh3dc%04x", rand.N(1<<16))})
	ns, iface := l.Server, l.Paths[0].ServerIf
	nsDir, err := loader.NetnsDir(ns)
	if err != nil {
		t.Fatal(err)
	}
	dir := ld.DecapDir(nsDir)
	bal1, bal2, bal3 := netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("fd09::3")
	vip, vip2 := netip.MustParseAddrPort("10.0.0.10:80"), netip.MustParseAddrPort("10.0.0.11:443")

	for _, o := range []loader.LBAttachOptions{
		{Netns: ns, Ifaces: []string{iface}},
		{Netns: ns, Ifaces: []string{iface}, DecapVIPs: []netip.AddrPort{vip}},
		{Netns: ns, Ifaces: []string{iface}, DecapBalancers: []netip.Addr{bal1}},
	} {
		if err := ld.AttachDecap(o); !errors.Is(err, loader.ErrDecapAllowEmpty) {
			t.Fatalf("attach with balancers %v and VIPs %v: %v, want ErrDecapAllowEmpty", o.DecapBalancers, o.DecapVIPs, err)
		}
	}
	if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused attach left %s", ld.LBRoot())
	}

	// The previous mptcp-xdp's decapsulator, pinned and linked as its lb decap did.
	old, err := ebpf.LoadCollectionSpec(prevDecapObject)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := old.Maps[lb.MapDecapVIPs]; ok {
		t.Fatalf("%s already has %s", prevDecapObject, lb.MapDecapVIPs)
	}
	for _, m := range old.Maps {
		if m.Name == lb.MapDecapAddr || m.Name == lb.MapDecapStat {
			m.Pinning = ebpf.PinByName
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	var linkID link.ID
	if err := netns.Do(ns, func() error {
		coll, err := ebpf.NewCollectionWithOptions(old, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
		if err != nil {
			return err
		}
		defer coll.Close()
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			var k [16]byte
			copy(k[:], a.IP.To16())
			if err := coll.Maps[lb.MapDecapAddr].Put(k, uint32(0)); err != nil {
				return err
			}
		}
		linkID, err = pinXDPLink(coll.Programs[lb.DecapProg], iface, dir)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The namespace's addresses as an attach lists them (the link-local one may come after the
	// old decapsulator's listing: each attach lists them again).
	var localStr []string
	listLocal := func() {
		t.Helper()
		localStr = nil
		if err := netns.Do(ns, func() error {
			addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
			for _, a := range addrs {
				ip, _ := netip.AddrFromSlice(a.IP)
				localStr = append(localStr, ip.Unmap().String())
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(localStr, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
	}
	here := l.Paths[0].ServerIP4

	check := func(what string, bals []string, vips []string) *loader.DecapStatus {
		t.Helper()
		st, err := ld.DecapStatus(ns)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !reflect.DeepEqual(st.Local, localStr) || !reflect.DeepEqual(st.Balancers, bals) || !reflect.DeepEqual(st.VIPs, vips) {
			t.Errorf("%s: local %v balancers %v VIPs %v, want %v, %v, %v", what, st.Local, st.Balancers, st.VIPs, localStr, bals, vips)
		}
		if len(st.Interfaces) != 1 || st.Interfaces[0].Interface != iface || st.Interfaces[0].LinkID != uint32(linkID) {
			t.Errorf("%s: interfaces %+v, want %s on link %d (updated in place)", what, st.Interfaces, iface, linkID)
		}
		return st
	}
	// run passes frames through the program the link runs and returns how the counters moved.
	run := func(frames ...[]byte) lb.DecapStats {
		t.Helper()
		before, err := ld.DecapStatus(ns)
		if err != nil {
			t.Fatal(err)
		}
		prog := pinnedDecapProg(t, dir, iface)
		for _, f := range frames {
			if _, err := prog.Run(&ebpf.RunOptions{Data: f, DataOut: make([]byte, len(f)+64)}); err != nil {
				t.Fatal(err)
			}
		}
		after, err := ld.DecapStatus(ns)
		if err != nil {
			t.Fatal(err)
		}
		return after.Stats.Sub(before.Stats)
	}

	listLocal()
	if err := ld.AttachDecap(loader.LBAttachOptions{Netns: ns, Ifaces: []string{iface},
		DecapBalancers: []netip.Addr{bal1, bal2}, DecapVIPs: []netip.AddrPort{vip, netip.AddrPortFrom(vip2.Addr(), 0)}}); err != nil {
		t.Fatalf("attach over the previous layout: %v", err)
	}
	check("first attach", []string{"10.9.0.1", "10.9.0.2"}, []string{"10.0.0.10:80", "10.0.0.11"})
	if d := run(ipipFrame(t, bal1, here, vip), ipipFrame(t, bal2, here, vip2), ipipFrame(t, netip.MustParseAddr("10.9.0.99"), here, vip),
		ipipFrame(t, bal1, here, netip.MustParseAddrPort("10.0.0.12:80"))); d != (lb.DecapStats{Packets: 4, Decap: 2, RefusedSource: 1, RefusedInner: 1}) {
		t.Errorf("first attach: counters moved by %+v", d)
	}

	// Attaching again replaces the lists: bal2 and vip2 are refused from now on.
	listLocal()
	if err := ld.AttachDecap(loader.LBAttachOptions{Netns: ns, Ifaces: []string{iface},
		DecapBalancers: []netip.Addr{bal1, bal3}, DecapVIPs: []netip.AddrPort{vip}}); err != nil {
		t.Fatal(err)
	}
	check("second attach", []string{"10.9.0.1", "fd09::3"}, []string{"10.0.0.10:80"})
	if d := run(ipipFrame(t, bal1, here, vip), ipipFrame(t, bal2, here, vip), ipipFrame(t, bal1, here, vip2)); d != (lb.DecapStats{Packets: 3, Decap: 1, RefusedSource: 1, RefusedInner: 1}) {
		t.Errorf("second attach: counters moved by %+v", d)
	}
	// A refused attach changes nothing.
	if err := ld.AttachDecap(loader.LBAttachOptions{Netns: ns, Ifaces: []string{iface}, DecapVIPs: []netip.AddrPort{vip2}}); !errors.Is(err, loader.ErrDecapAllowEmpty) {
		t.Fatalf("attach without balancers: %v", err)
	}
	check("refused attach", []string{"10.9.0.1", "fd09::3"}, []string{"10.0.0.10:80"})

	if err := ld.DetachDecap(ns, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind", ld.LBRoot())
	}
}
