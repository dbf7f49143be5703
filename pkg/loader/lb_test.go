package loader_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// tempLoader is a loader rooted in a fresh directory of the host's bpffs.
func tempLoader(t *testing.T) *loader.Loader {
	t.Helper()
	testutil.RequireRoot(t)
	base := testutil.TempBPFFS(t, "mx-lbtest-")
	l, err := loader.New(filepath.Join(base, "mptcp-xdp"))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// xdpProg returns the id of the XDP program on an interface of ns (0: none).
func xdpProg(t *testing.T, l *lab.Lab, ns, iface string) uint32 {
	t.Helper()
	id, _ := xdpAttached(t, l, ns, iface)
	return id
}

// xdpAttached returns the id of the XDP program on an interface of ns and the mode it runs in
// (0 and "": none).
func xdpAttached(t *testing.T, l *lab.Lab, ns, iface string) (uint32, string) {
	t.Helper()
	h, err := l.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lk, err := h.LinkByName(iface)
	if err != nil {
		t.Fatal(err)
	}
	if x := lk.Attrs().Xdp; x != nil && x.Attached {
		return x.ProgId, map[uint32]string{1: "native", 2: "generic"}[x.AttachMode]
	}
	return 0, ""
}

// progMaps returns the ids of the maps a program uses.
func progMaps(t *testing.T, id uint32) map[ebpf.MapID]bool {
	t.Helper()
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	m := map[ebpf.MapID]bool{}
	for _, i := range ids {
		m[i] = true
	}
	return m
}

// One balancer on two interfaces shares one set of maps; attaching again (more interfaces, or the
// same) updates the links in place; detach leaves no program, link, pin or directory.
func TestLBAttachSharesMapsAndDetachLeavesNothing(t *testing.T) {
	ld := tempLoader(t)
	l := testutil.NewLab(t, lab.Config{Paths: 3})
	ns := l.Server

	m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"srv0", "srv1"}})
	if err != nil {
		t.Fatal(err)
	}
	vipsInfo, _ := m.VIPs.Info()
	vipsID, _ := vipsInfo.ID()
	m.Close()
	p0, p1 := xdpProg(t, l, ns, "srv0"), xdpProg(t, l, ns, "srv1")
	if p0 == 0 || p1 == 0 {
		t.Fatalf("programs: srv0 %d srv1 %d", p0, p1)
	}
	if !progMaps(t, p0)[vipsID] || !progMaps(t, p1)[vipsID] {
		t.Fatalf("the programs of srv0 and srv1 do not both use the pinned VIP map %d", vipsID)
	}
	links, err := ld.LBLinks(ns, false)
	if err != nil || len(links) != 2 {
		t.Fatalf("links: %+v %v", links, err)
	}
	t.Logf("links: %+v", links)

	// An interface with another XDP program (here the counting datapath) is refused and leaves the
	// balancer as it was.
	if _, err := ld.Attach(loader.AttachOptions{Iface: "srv2", Netns: ns, Ingress: loader.IngressXDP}); err != nil {
		t.Fatal(err)
	}
	if _, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"srv2"}}); err == nil {
		t.Fatal("attached over another XDP program")
	} else {
		t.Logf("refused: %v", err)
	}
	if got, _ := ld.LBLinks(ns, false); len(got) != 2 || got[0].LinkID != links[0].LinkID {
		t.Fatalf("a failed attach changed the links: %+v", got)
	}
	if err := ld.Detach(ns, "srv2"); err != nil {
		t.Fatal(err)
	}

	// Adding srv2 keeps srv0 and srv1 attached, through the same links, and the same maps.
	m2, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"srv2"}})
	if err != nil {
		t.Fatal(err)
	}
	i2, _ := m2.VIPs.Info()
	id2, _ := i2.ID()
	m2.Close()
	if id2 != vipsID {
		t.Fatalf("second attach made new maps: VIP map %d, was %d", id2, vipsID)
	}
	again, _ := ld.LBLinks(ns, false)
	if len(again) != 3 || again[0].LinkID != links[0].LinkID || again[1].LinkID != links[1].LinkID {
		t.Fatalf("links after the second attach: %+v (were %+v)", again, links)
	}
	for _, ll := range again {
		if !progMaps(t, xdpProg(t, l, ns, ll.Interface))[vipsID] {
			t.Fatalf("%s does not use the balancer's maps", ll.Interface)
		}
	}
	if _, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"nosuch0"}}); err == nil {
		t.Fatal("attached to a missing interface")
	}
	if got, _ := ld.LBLinks(ns, false); len(got) != 3 {
		t.Fatalf("a failed attach changed the links: %+v", got)
	}

	if err := ld.DetachLB(ns); err != nil {
		t.Fatal(err)
	}
	for _, i := range []string{"srv0", "srv1", "srv2"} {
		if id := xdpProg(t, l, ns, i); id != 0 {
			t.Errorf("%s still has XDP program %d", i, id)
		}
	}
	if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind (%v)", ld.LBRoot(), err)
	}
	if _, err := os.Stat(ld.Root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind (%v)", ld.Root, err)
	}
	if err := ld.DetachLB(ns); !errors.Is(err, loader.ErrLBNotAttached) {
		t.Errorf("second detach: %v", err)
	}
}

// The decapsulator attaches per interface and removes its maps with the last one.
func TestDecapAttachDetach(t *testing.T) {
	ld := tempLoader(t)
	l := testutil.NewLab(t, lab.Config{Paths: 2})
	ns := l.Server
	if err := ld.AttachDecap(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"srv0", "srv1"}, DecapBalancers: testDecapBalancers, DecapVIPs: testDecapVIPs}); err != nil {
		t.Fatal(err)
	}
	if xdpProg(t, l, ns, "srv0") == 0 || xdpProg(t, l, ns, "srv1") == 0 {
		t.Fatal("decapsulator not attached")
	}
	if err := ld.DetachDecap(ns, []string{"srv0"}); err != nil {
		t.Fatal(err)
	}
	if xdpProg(t, l, ns, "srv0") != 0 || xdpProg(t, l, ns, "srv1") == 0 {
		t.Fatal("detaching srv0 touched srv1 or left srv0")
	}
	if err := ld.DetachDecap(ns, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind", ld.LBRoot())
	}
}
