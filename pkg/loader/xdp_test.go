package loader_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// foreignXDP loads an XDP_PASS program, as another tool would, and returns it with its id.
func foreignXDP(t *testing.T) (*ebpf.Program, uint32) {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "foreign_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return p, uint32(id)
}

// xdpModeOf is the mode the XDP program of an interface of ns runs in (native, generic or "").
func xdpModeOf(t *testing.T, l *lab.Lab, ns, iface string) string {
	t.Helper()
	_, mode := xdpAttached(t, l, ns, iface)
	return mode
}

// The balancer and the decapsulator go up the same XDP ladder as the counting datapath
// (test/loader_test.go TestForeignXDP): another tool's program is named and left alone without
// Force; with it, a netlink attachment is replaced and put back by detach, a bpf_link never is;
// the balancer's auto mode is native only, the decapsulator's falls back to generic.
func TestLBXDPLadder(t *testing.T) {
	ld := tempLoader(t)
	l := testutil.NewLab(t, lab.Config{Paths: 2})
	ns := l.Server
	foreign, foreignID := foreignXDP(t)
	const drvMode = 1 << 2

	t.Run("netlink", func(t *testing.T) {
		srv := l.Paths[0].ServerIf
		if err := netns.Do(ns, func() error {
			lk, err := netlink.LinkByName(srv)
			if err != nil {
				return err
			}
			return netlink.LinkSetXdpFdWithFlags(lk, foreign.FD(), drvMode)
		}); err != nil {
			t.Fatal(err)
		}
		for _, decap := range []bool{false, true} {
			what := map[bool]string{false: "balancer", true: "decapsulator"}[decap]
			attach := func(force bool) error {
				o := loader.LBAttachOptions{Netns: ns, Ifaces: []string{srv}, Force: force}
				if decap {
					o.DecapBalancers, o.DecapVIPs = testDecapBalancers, testDecapVIPs
					return ld.AttachDecap(o)
				}
				m, err := ld.AttachLB(o)
				if m != nil {
					m.Close()
				}
				return err
			}
			err := attach(false)
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("XDP program %d (foreign_pass) in native mode", foreignID)) ||
				!strings.Contains(err.Error(), "--force") {
				t.Fatalf("%s without force over a foreign program: %v", what, err)
			}
			if got := xdpProg(t, l, ns, srv); got != foreignID {
				t.Fatalf("%s: refused attach left program %d, want the foreign %d", what, got, foreignID)
			}
			if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("%s: refused first attach left %s", what, ld.LBRoot())
			}

			if err := attach(true); err != nil {
				t.Fatalf("%s with force: %v", what, err)
			}
			links, err := ld.LBLinks(ns, decap)
			if err != nil || len(links) != 1 {
				t.Fatalf("%s links %+v, %v", what, links, err)
			}
			first := links[0]
			if first.Mechanism != "netlink" || first.XDPMode != "native" || first.LinkID != 0 || first.Problem != "" ||
				first.ProgID == foreignID || first.ProgID != xdpProg(t, l, ns, srv) {
				t.Errorf("%s after force: %+v, kernel runs %d", what, first, xdpProg(t, l, ns, srv))
			}
			// Attaching again replaces our own netlink program, without force.
			if err := attach(false); err != nil {
				t.Fatalf("%s again: %v", what, err)
			}
			links, _ = ld.LBLinks(ns, decap)
			if len(links) != 1 || links[0].Mechanism != "netlink" || links[0].ProgID == first.ProgID ||
				links[0].ProgID != xdpProg(t, l, ns, srv) {
				t.Errorf("%s attached again: %+v (before: prog %d), kernel runs %d", what, links, first.ProgID, xdpProg(t, l, ns, srv))
			}
			pins, err := ld.Pins("")
			if err != nil {
				t.Fatal(err)
			}
			var replaced []loader.Pin
			for _, p := range pins {
				if p.Mechanism == "replaced" {
					replaced = append(replaced, p)
				}
			}
			if len(replaced) != 1 || replaced[0].ProgID != foreignID || replaced[0].Interface != srv {
				t.Errorf("%s: replaced-program pins %+v, want one of program %d on %s", what, replaced, foreignID, srv)
			}

			if decap {
				err = ld.DetachDecap(ns, nil)
			} else {
				err = ld.DetachLB(ns)
			}
			if err != nil {
				t.Fatalf("%s detach: %v", what, err)
			}
			if got := xdpProg(t, l, ns, srv); got != foreignID {
				t.Errorf("%s detach: interface runs program %d, want the foreign %d put back", what, got, foreignID)
			}
			if _, err := os.Stat(ld.LBRoot()); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s detach left %s", what, ld.LBRoot())
			}
		}
	})

	t.Run("bpf_link", func(t *testing.T) {
		srv := l.Paths[1].ServerIf
		if err := netns.Do(ns, func() error {
			lk, err := netlink.LinkByName(srv)
			if err != nil {
				return err
			}
			fl, err := link.AttachXDP(link.XDPOptions{Program: foreign, Interface: lk.Attrs().Index, Flags: link.XDPDriverMode})
			if err != nil {
				return err
			}
			t.Cleanup(func() { fl.Close() })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{srv}, Force: true})
		if m != nil {
			m.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "held by a bpf_link") {
			t.Fatalf("force over a bpf_link: %v", err)
		}
		if got := xdpProg(t, l, ns, srv); got != foreignID {
			t.Errorf("interface runs %d, want the foreign %d", got, foreignID)
		}
	})

	// Loopback has no native XDP.
	t.Run("modes", func(t *testing.T) {
		m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"lo"}})
		if m != nil {
			m.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "native mode") || !strings.Contains(err.Error(), "--mode generic") {
			t.Fatalf("balancer, auto mode, on lo: %v", err)
		}
		if got := xdpProg(t, l, ns, "lo"); got != 0 {
			t.Fatalf("balancer in auto mode attached program %d to lo (%s mode)", got, xdpModeOf(t, l, ns, "lo"))
		}
		m, err = ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"lo"}, Mode: loader.ModeGeneric})
		if err != nil {
			t.Fatalf("balancer, generic mode, on lo: %v", err)
		}
		m.Close()
		if got := xdpModeOf(t, l, ns, "lo"); got != "generic" {
			t.Errorf("balancer with --mode generic runs in %q mode", got)
		}
		if err := ld.DetachLB(ns); err != nil {
			t.Fatal(err)
		}
		if err := ld.AttachDecap(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"lo"}, DecapBalancers: testDecapBalancers, DecapVIPs: testDecapVIPs}); err != nil {
			t.Fatalf("decapsulator, auto mode, on lo: %v", err)
		}
		if got := xdpModeOf(t, l, ns, "lo"); got != "generic" {
			t.Errorf("decapsulator in auto mode on lo runs in %q mode, want generic", got)
		}
		if err := ld.DetachDecap(ns, nil); err != nil {
			t.Fatal(err)
		}
		if got := xdpProg(t, l, ns, "lo"); got != 0 {
			t.Errorf("after detach lo runs %d", got)
		}
	})
}
