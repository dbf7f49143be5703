package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// want describes a complete attachment: the XDP mode ("" for none) and its mechanism, and the
// mechanism at TC ingress and egress ("tcx", "clsact" or "" for none).
type want struct {
	xdp, xdpMech string
	in, out      string
	replaced     bool // another tool's XDP program, replaced by --force, is pinned to be put back
}

// requireAttached checks that status, the pins and the kernel all show exactly w on ns/iface,
// and returns the status entry.
func requireAttached(t *testing.T, ns, iface string, w want) attachment {
	t.Helper()
	a, ok := status(t, ns)[iface]
	if !ok {
		t.Fatalf("status lists no %s", iface)
	}
	k := kernelState(t, ns, iface)
	if len(a.Problems) > 0 {
		t.Errorf("status of %s reports problems: %v", iface, a.Problems)
	}
	if a.Ifindex != k.Ifindex || a.Netns != ns {
		t.Errorf("status: %s ifindex %d, kernel says %s ifindex %d", a.Netns, a.Ifindex, ns, k.Ifindex)
	}
	progs := map[string]uint32{}
	mechs := map[string]string{}
	links := bpftoolIDs(t, "link")
	for _, p := range a.Programs {
		progs[p.Hook], mechs[p.Hook] = p.ID, p.Mechanism
		if !strings.HasPrefix(p.Name, "mptcpx_") {
			t.Errorf("status: %s program %d is named %q, not mptcpx_*", p.Hook, p.ID, p.Name)
		}
		if p.LinkID != 0 && !links[p.LinkID] {
			t.Errorf("status: %s link %d is not in bpftool link show", p.Hook, p.LinkID)
		}
		if (p.Mechanism == "bpf_link" || p.Mechanism == "tcx") != (p.LinkID != 0) {
			t.Errorf("status: %s via %s with link id %d", p.Hook, p.Mechanism, p.LinkID)
		}
	}
	pins := []string{"mptcpx_counters", "mptcpx_meta"}

	// XDP.
	wantIngress := "tc"
	if w.xdp != "" {
		wantIngress = "xdp"
		if k.XDPMode != w.xdp || a.XDPMode != w.xdp || mechs["xdp"] != w.xdpMech {
			t.Errorf("xdp: kernel mode %q, status mode %q via %q; want %s via %s", k.XDPMode, a.XDPMode, mechs["xdp"], w.xdp, w.xdpMech)
		}
		if k.XDPProg == 0 || k.XDPProg != progs["xdp"] {
			t.Errorf("xdp: kernel runs program %d, status says %d", k.XDPProg, progs["xdp"])
		}
		pins = append(pins, map[string]string{"bpf_link": "link_xdp", "netlink": "prog_xdp"}[w.xdpMech])
		if w.replaced {
			pins = append(pins, "replaced_xdp")
		}
	} else if k.XDPProg != 0 || progs["xdp"] != 0 {
		t.Errorf("xdp: kernel runs program %d, status says %d; want none", k.XDPProg, progs["xdp"])
	}
	if a.Ingress != wantIngress {
		t.Errorf("status ingress %q, want %q", a.Ingress, wantIngress)
	}
	if a.Egress != (w.out != "") {
		t.Errorf("status egress %v, want %v", a.Egress, w.out != "")
	}

	// TC, both directions.
	for _, h := range []struct {
		hook, mech string
		tcx        []uint32
	}{{"ingress", w.in, k.TCXIngress}, {"egress", w.out, k.TCXEgress}} {
		id := progs["tc_"+h.hook]
		ours := k.filters(h.hook, "mptcpx_")
		switch h.mech {
		case "tcx":
			if !slices.Equal(h.tcx, []uint32{id}) || len(ours) != 0 {
				t.Errorf("tc %s: kernel tcx programs %v and clsact filters %v, status program %d; want that one on tcx only", h.hook, h.tcx, ours, id)
			}
			pins = append(pins, "link_tc_"+h.hook)
		case "clsact":
			if len(ours) != 1 || ours[0].Prog != id || len(h.tcx) != 0 {
				t.Errorf("tc %s: kernel tcx programs %v and clsact filters %v, status program %d; want that one in one clsact filter only", h.hook, h.tcx, ours, id)
			}
			pins = append(pins, "prog_tc_"+h.hook)
		default:
			if len(h.tcx) != 0 || len(ours) != 0 || id != 0 {
				t.Errorf("tc %s: kernel tcx programs %v and clsact filters %v, status program %d; want none", h.hook, h.tcx, ours, id)
			}
		}
		if h.mech != "" && mechs["tc_"+h.hook] != h.mech {
			t.Errorf("tc %s: status mechanism %q, want %q", h.hook, mechs["tc_"+h.hook], h.mech)
		}
	}

	// The pins are exactly those of the hooks in use: nothing left over from another mechanism.
	ents, err := os.ReadDir(filepath.Join(bpffsRoot, ns, iface))
	if err != nil {
		t.Fatal(err)
	}
	var have []string
	for _, e := range ents {
		have = append(have, e.Name())
	}
	sort.Strings(have)
	sort.Strings(pins)
	if !slices.Equal(have, pins) {
		t.Errorf("pins %v, want %v", have, pins)
	}
	return a
}

// requireDetached checks that nothing of ours is left on ns/iface: no XDP, no tcx program, no
// filter, the clsact qdisc only if it was there before, no pins, and that the links, programs and
// maps the last status listed are gone from the kernel.
func requireDetached(t *testing.T, ns, iface string, last attachment, clsactBefore bool) {
	t.Helper()
	requireDetachedXDP(t, ns, iface, last, clsactBefore, 0)
}

// requireDetachedXDP is requireDetached for an interface whose XDP hook should run program xdpProg
// (0: none) after the detach.
func requireDetachedXDP(t *testing.T, ns, iface string, last attachment, clsactBefore bool, xdpProg uint32) {
	t.Helper()
	k := kernelState(t, ns, iface)
	if k.XDPProg != xdpProg || len(k.TCXIngress) != 0 || len(k.TCXEgress) != 0 {
		t.Errorf("after detach: XDP program %d (want %d), tcx ingress %v, tcx egress %v", k.XDPProg, xdpProg, k.TCXIngress, k.TCXEgress)
	}
	if ours := append(k.filters("ingress", "mptcpx_"), k.filters("egress", "mptcpx_")...); len(ours) != 0 {
		t.Errorf("after detach: our filters are left: %v", ours)
	}
	if k.Clsact != clsactBefore {
		t.Errorf("after detach: clsact qdisc present %v, before attach %v", k.Clsact, clsactBefore)
	}
	if _, ok := status(t, ns)[iface]; ok {
		t.Errorf("after detach: status still lists %s", iface)
	}
	requireNoPins(t, ns, iface)
	var linkIDs, progIDs, mapIDs []uint32
	for _, p := range last.Programs {
		progIDs = append(progIDs, p.ID)
		if p.LinkID != 0 {
			linkIDs = append(linkIDs, p.LinkID)
		}
	}
	for _, m := range last.Maps {
		mapIDs = append(mapIDs, m.ID)
	}
	waitGone(t, "link", linkIDs)
	waitGone(t, "prog", progIDs)
	waitGone(t, "map", mapIDs)
}

// pair makes one MPTCP connection from client to server and closes it.
func pair(t *testing.T, l *lab.Lab) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := l.Pair(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !lab.IsMPTCP(p.Client) {
		t.Error("connection fell back to TCP")
	}
	p.Close()
}

// waitStats polls stats of ns/iface until ok holds.
func waitStats(t *testing.T, ns, iface string, ok func(statsRow) bool) statsRow {
	t.Helper()
	var r statsRow
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r = stats(t, ns)[iface]
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats of %s: condition never met: %+v", iface, r)
		}
	}
}

// notLess fails when any counter of b is below a's: counters only ever grow.
func notLess(t *testing.T, what string, a, b statsRow) {
	t.Helper()
	for dir, cs := range map[string][2]counters{"ingress": {a.Ingress, b.Ingress}, "egress": {a.Egress, b.Egress}} {
		for k, v := range cs[0].Options {
			if cs[1].Options[k] < v {
				t.Errorf("%s: %s %s went from %d to %d", what, dir, k, v, cs[1].Options[k])
			}
		}
		for k, v := range cs[0].Packets {
			if cs[1].Packets[k] < v {
				t.Errorf("%s: %s packets.%s went from %d to %d", what, dir, k, v, cs[1].Packets[k])
			}
		}
	}
}

// TestAttachAgainUpdatesInPlace: a second attach keeps the links (same ids) and swaps the programs
// in them, keeps the counters, and the datapath counts after the CLI has exited.
func TestAttachAgainUpdatesInPlace(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	srv := l.Paths[0].ServerIf
	attach(t, l.Server, srv)
	// --ingress auto picks TC on a veth (its XDP costs GRO; loader.IngressAuto).
	tc := autoTC(t)
	a1 := requireAttached(t, l.Server, srv, want{in: tc, out: tc})
	if a1.IngressReason != "auto: a veth runs even native XDP on skbs already built, at the cost of GRO; tc ingress costs least" {
		t.Errorf("ingress_reason %q, want auto's reason for a veth", a1.IngressReason)
	}

	// The CLI has exited: the pinned links keep the programs counting.
	s0 := stats(t, l.Server)[srv]
	pair(t, l)
	s1 := waitStats(t, l.Server, srv, func(r statsRow) bool {
		return r.Ingress.Options["mp_capable_syn"] > s0.Ingress.Options["mp_capable_syn"] &&
			r.Egress.Options["mp_capable_synack"] > s0.Egress.Options["mp_capable_synack"]
	})

	mxOK(t, "--netns", l.Server, "attach", srv)
	a2 := requireAttached(t, l.Server, srv, want{in: tc, out: tc})
	s2 := stats(t, l.Server)[srv]
	notLess(t, "second attach", s1, s2)

	byHook := func(a attachment) map[string][2]uint32 {
		m := map[string][2]uint32{}
		for _, p := range a.Programs {
			m[p.Hook] = [2]uint32{p.LinkID, p.ID}
		}
		return m
	}
	h1, h2 := byHook(a1), byHook(a2)
	var oldProgs []uint32
	for _, hook := range []string{"tc_ingress", "tc_egress"} {
		// A clsact filter has no link: the second attach replaces the program in our one filter,
		// which requireAttached found alone at its priority.
		linked := tc == "tcx"
		if linked && (h1[hook][0] == 0 || h1[hook][0] != h2[hook][0]) {
			t.Errorf("%s link %d became %d: want the same link updated in place", hook, h1[hook][0], h2[hook][0])
		}
		if h1[hook][1] == h2[hook][1] {
			t.Errorf("%s program %d is still attached: want it replaced by the new one", hook, h1[hook][1])
		}
		oldProgs = append(oldProgs, h1[hook][1])
	}
	waitGone(t, "prog", oldProgs)
	if a1.AttachedAt != a2.AttachedAt {
		t.Errorf("attached_at changed from %s to %s on a second attach", a1.AttachedAt, a2.AttachedAt)
	}

	// The new programs count into the same maps.
	pair(t, l)
	waitStats(t, l.Server, srv, func(r statsRow) bool {
		return r.Ingress.Options["mp_capable_syn"] > s2.Ingress.Options["mp_capable_syn"]
	})
}

// TestHookChanges walks one interface through every mode and mechanism; at each step exactly one
// program counts ingress (never XDP and TC at once), nothing of the previous mechanism is left,
// and the counters carry over.
func TestHookChanges(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	srv := l.Paths[0].ServerIf
	attach(t, l.Server, srv, "--mode", "native")
	tc := autoTC(t)
	requireAttached(t, l.Server, srv, want{xdp: "native", xdpMech: "bpf_link", out: tc})
	pair(t, l)
	prev := waitStats(t, l.Server, srv, func(r statsRow) bool { return r.Ingress.Options["mp_capable_syn"] > 0 })

	var last attachment
	var lastWant want
	for _, step := range []struct {
		flags []string
		w     want
		count bool // check that ingress counts MPTCP SYNs in this configuration
	}{
		{[]string{"--mode", "generic"}, want{"generic", "bpf_link", "", tc, false}, true},
		{[]string{"--ingress", "tc"}, want{"", "", tc, tc, false}, true},
		{[]string{"--ingress", "xdp", "--mode", "native"}, want{"native", "bpf_link", "", tc, false}, false},
		{[]string{"--ingress", "tc", "--tc", "clsact"}, want{"", "", "clsact", "clsact", false}, true},
		{[]string{"--ingress", "xdp", "--tc", "clsact"}, want{"generic", "bpf_link", "", "clsact", false}, false}, // auto on veth
		{[]string{"--mode", "native", "--tc", "clsact"}, want{"native", "bpf_link", "", "clsact", false}, false},
		{[]string{"--ingress", "tc", "--tc", "tcx"}, want{"", "", "tcx", "tcx", false}, false},
		{[]string{"--no-egress"}, want{"", "", tc, "", false}, true}, // --ingress auto on a veth: TC
		// Last, so that detach has a clsact qdisc of its own making to remove.
		{[]string{"--ingress", "tc", "--tc", "clsact"}, want{"", "", "clsact", "clsact", false}, false},
	} {
		name := strings.Join(step.flags, " ")
		args := append([]string{"--netns", l.Server, "attach", srv}, step.flags...)
		if step.w.in == "tcx" && tc != "tcx" {
			// Asked for by name on a kernel without it: refused in one line, the attachment left
			// as the previous step made it. The walk goes on with the fallback in its place, so
			// that the next steps start from the same hooks as on a kernel with tcx.
			requireCleanError(t, mx(t, args...), "tcx", "Linux 6.6")
			requireAttached(t, l.Server, srv, lastWant)
			args = slices.Replace(args, slices.Index(args, "tcx"), slices.Index(args, "tcx")+1, "clsact")
			step.w.in, step.w.out = "clsact", "clsact"
		}
		mxOK(t, args...)
		last, lastWant = requireAttached(t, l.Server, srv, step.w), step.w
		if k := kernelState(t, l.Server, srv); k.Clsact != (step.w.in == "clsact" || step.w.out == "clsact") {
			t.Errorf("%s: clsact qdisc present %v: mptcp-xdp adds it for its filters and removes it after", name, k.Clsact)
		}
		cur := stats(t, l.Server)[srv]
		notLess(t, name, prev, cur)
		prev = cur
		if step.count {
			pair(t, l)
			prev = waitStats(t, l.Server, srv, func(r statsRow) bool {
				return r.Ingress.Options["mp_capable_syn"] > cur.Ingress.Options["mp_capable_syn"]
			})
		}
		if t.Failed() {
			t.Fatalf("after attach %s", name)
		}
	}
	mxOK(t, "--netns", l.Server, "detach", srv)
	requireDetached(t, l.Server, srv, last, false)
}

// TestClsactLeavesOthersAlone: with a clsact qdisc and another tool's filters already there,
// attach adds its filters next to them and detach removes only its own; tcx leaves them be too.
func TestClsactLeavesOthersAlone(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	srv := l.Paths[0].ServerIf
	sh(t, "tc", "-n", l.Server, "qdisc", "add", "dev", srv, "clsact")
	// TC_ACT_UNSPEC (-1): the foreign filters pass packets on to the next filter, ours.
	foreign := passProgram(t, ebpf.SchedCLS, "foreign_tc", -1)
	defer foreign.Close()
	inNetns(t, l.Server, func(h *netlink.Handle) error {
		lk, err := h.LinkByName(srv)
		if err != nil {
			return err
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			err := h.FilterAdd(&netlink.BpfFilter{
				FilterAttrs:  netlink.FilterAttrs{LinkIndex: lk.Attrs().Index, Parent: parent, Handle: 1, Priority: 1, Protocol: 0x0003},
				Fd:           foreign.FD(),
				Name:         "foreign_tc",
				DirectAction: true,
			})
			if err != nil {
				return fmt.Errorf("add foreign filter: %w", err)
			}
		}
		return nil
	})
	foreignID := progID(t, foreign)
	requireForeign := func(when string) {
		t.Helper()
		k := kernelState(t, l.Server, srv)
		if !k.Clsact {
			t.Fatalf("%s: the clsact qdisc that was there before is gone", when)
		}
		for _, hook := range []string{"ingress", "egress"} {
			if f := k.filters(hook, "foreign_tc"); len(f) != 1 || f[0].Prog != foreignID || f[0].Pref != 1 {
				t.Errorf("%s: foreign %s filters %v, want one at pref 1 running program %d", when, hook, f, foreignID)
			}
		}
	}

	for _, mech := range []string{"clsact", "tcx"} {
		if mech != autoTC(t) && mech == "tcx" {
			r := mx(t, "--netns", l.Server, "attach", srv, "--ingress", "tc", "--tc", mech)
			requireCleanError(t, r, "tcx", "Linux 6.6")
			requireNoPins(t, l.Server, srv)
			requireForeign("refused tcx")
			continue
		}
		attach(t, l.Server, srv, "--ingress", "tc", "--tc", mech)
		requireAttached(t, l.Server, srv, want{in: mech, out: mech})
		requireForeign("attached with " + mech)
		s0 := stats(t, l.Server)[srv]
		pair(t, l)
		waitStats(t, l.Server, srv, func(r statsRow) bool {
			return r.Ingress.Options["mp_capable_syn"] > s0.Ingress.Options["mp_capable_syn"] &&
				r.Egress.Options["mp_capable_synack"] > s0.Egress.Options["mp_capable_synack"]
		})
		last := status(t, l.Server)[srv]
		mxOK(t, "--netns", l.Server, "detach", srv)
		requireDetached(t, l.Server, srv, last, true)
		requireForeign("detached from " + mech)
	}
}

// TestForeignXDP: an XDP program another tool attached is named and left alone without --force,
// replaced with it (when attached through netlink) and put back by detach, and never replaced when
// a bpf_link holds it.
func TestForeignXDP(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 2})
	const xdpFlagsDrvMode = 1 << 2
	foreign := passProgram(t, ebpf.XDP, "foreign_pass", 2) // XDP_PASS
	defer foreign.Close()
	foreignID := progID(t, foreign)

	t.Run("netlink", func(t *testing.T) {
		srv := l.Paths[0].ServerIf
		inNetns(t, l.Server, func(h *netlink.Handle) error {
			lk, err := h.LinkByName(srv)
			if err != nil {
				return err
			}
			// The netlink package's functions (not the handle's) act in the thread's namespace.
			return netlink.LinkSetXdpFdWithFlags(lk, foreign.FD(), xdpFlagsDrvMode)
		})
		// --ingress xdp: auto would count at TC on this veth and leave the XDP hook alone.
		r := mx(t, "--netns", l.Server, "attach", srv, "--ingress", "xdp")
		requireCleanError(t, r, fmt.Sprintf("XDP program %d (foreign_pass)", foreignID), "--force")
		k := kernelState(t, l.Server, srv)
		if k.XDPProg != foreignID || len(k.TCXEgress) != 0 {
			t.Errorf("after the refused attach: XDP program %d (want %d, untouched), tcx egress %v (want none)", k.XDPProg, foreignID, k.TCXEgress)
		}
		requireNoPins(t, l.Server, srv)

		attach(t, l.Server, srv, "--ingress", "xdp", "--force")
		a := requireAttached(t, l.Server, srv, want{xdp: "native", xdpMech: "netlink", out: autoTC(t), replaced: true})
		// Attaching again replaces our own netlink program without --force.
		mxOK(t, "--netns", l.Server, "attach", srv, "--ingress", "xdp")
		a2 := requireAttached(t, l.Server, srv, want{xdp: "native", xdpMech: "netlink", out: autoTC(t), replaced: true})
		if a.Programs[0].ID == a2.Programs[0].ID {
			t.Errorf("second attach left program %d in place", a.Programs[0].ID)
		}
		s0 := stats(t, l.Server)[srv]
		pair(t, l)
		waitStats(t, l.Server, srv, func(r statsRow) bool {
			return r.Ingress.Options["mp_capable_syn"] > s0.Ingress.Options["mp_capable_syn"]
		})
		mxOK(t, "--netns", l.Server, "detach", srv)
		requireDetachedXDP(t, l.Server, srv, a2, false, foreignID)
	})

	t.Run("bpf_link", func(t *testing.T) {
		srv := l.Paths[1].ServerIf
		k := kernelState(t, l.Server, srv)
		var lk link.Link
		inNetns(t, l.Server, func(*netlink.Handle) error {
			var err error
			lk, err = link.AttachXDP(link.XDPOptions{Program: foreign, Interface: k.Ifindex, Flags: link.XDPDriverMode})
			return err
		})
		defer lk.Close()
		for _, flags := range [][]string{{"--ingress", "xdp"}, {"--ingress", "xdp", "--force"}} {
			r := mx(t, append([]string{"--netns", l.Server, "attach", srv}, flags...)...)
			if len(flags) == 2 {
				requireCleanError(t, r, "foreign_pass", "--force")
			} else {
				requireCleanError(t, r, "foreign_pass", "bpf_link")
			}
			if k := kernelState(t, l.Server, srv); k.XDPProg != foreignID || len(k.TCXEgress) != 0 {
				t.Errorf("attach %v: XDP program %d (want %d), tcx egress %v (want none)", flags, k.XDPProg, foreignID, k.TCXEgress)
			}
			requireNoPins(t, l.Server, srv)
		}
	})
}

// autoTC is the TC mechanism attach takes by default on this kernel: tcx from Linux 6.6, else the
// documented fallback, a clsact qdisc with a direct-action filter.
func autoTC(t *testing.T) string {
	t.Helper()
	ok, err := testutil.KernelAtLeast(6, 6)
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		return "tcx"
	}
	return "clsact"
}

// requireCleanError checks that r failed with a single line on stderr, prefixed with the
// command's name and containing every one of parts, and nothing on stdout.
func requireCleanError(t *testing.T, r result, parts ...string) {
	t.Helper()
	msg := strings.TrimSuffix(r.stderr, "\n")
	if r.code == 0 || r.stdout != "" || msg == "" || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "mptcp-xdp: ") {
		t.Errorf("want a failure with one line on stderr and nothing on stdout; got %v", r)
		return
	}
	for _, p := range parts {
		if !strings.Contains(msg, p) {
			t.Errorf("message %q does not mention %q", msg, p)
		}
	}
}

// TestJSONContract pins the field names of `stats -o json` and `status -o json`.
func TestJSONContract(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 2})
	srv := l.Paths[0].ServerIf
	attach(t, l.Server, srv)
	pair(t, l)

	keys := func(m map[string]json.RawMessage) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		return ks
	}
	object := func(what string, raw json.RawMessage, want ...string) map[string]json.RawMessage {
		t.Helper()
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s: %v: %s", what, err, raw)
		}
		sort.Strings(want)
		if got := keys(m); !slices.Equal(got, want) {
			t.Errorf("%s keys %v, want %v", what, got, want)
		}
		return m
	}
	classes := []string{"mp_capable_syn", "mp_capable_synack", "mp_capable_ack", "mp_capable_data",
		"mp_join_syn", "mp_join_synack", "mp_join_ack", "dss", "add_addr", "add_addr_echo", "remove_addr",
		"mp_prio", "mp_fail", "mp_fastclose", "mp_tcprst", "malformed"}

	for _, args := range [][]string{{"stats"}, {"stats", srv}} {
		out := mxOK(t, append([]string{"--netns", l.Server, "-o", "json"}, args...)...)
		doc := object("stats", json.RawMessage(out), "interfaces")
		var rows []json.RawMessage
		if err := json.Unmarshal(doc["interfaces"], &rows); err != nil || len(rows) != 1 {
			t.Fatalf("%v: interfaces %s: %v, want one", args, doc["interfaces"], err)
		}
		row := object("interface", rows[0], "netns", "name", "ifindex", "ingress", "egress")
		var ns, name string
		var ifindex int
		json.Unmarshal(row["netns"], &ns)
		json.Unmarshal(row["name"], &name)
		json.Unmarshal(row["ifindex"], &ifindex)
		if k := kernelState(t, l.Server, srv); ns != l.Server || name != srv || ifindex != k.Ifindex {
			t.Errorf("row %s/%s ifindex %d, want %s/%s ifindex %d", ns, name, ifindex, l.Server, srv, k.Ifindex)
		}
		for _, dir := range []string{"ingress", "egress"} {
			c := object(dir, row[dir], "packets", "options")
			pk := object(dir+".packets", c["packets"], "total", "tcp", "mptcp")
			op := object(dir+".options", c["options"], classes...)
			for k, v := range op {
				var n uint64
				if err := json.Unmarshal(v, &n); err != nil {
					t.Errorf("%s.options.%s = %s: not a count", dir, k, v)
				}
			}
			var mptcp uint64
			json.Unmarshal(pk["mptcp"], &mptcp)
			if mptcp == 0 {
				t.Errorf("%s.packets.mptcp = 0 after an MPTCP connection", dir)
			}
		}
	}

	out := mxOK(t, "--netns", l.Server, "-o", "json", "status")
	doc := object("status", json.RawMessage(out), "attachments")
	var atts []json.RawMessage
	if err := json.Unmarshal(doc["attachments"], &atts); err != nil || len(atts) != 1 {
		t.Fatalf("attachments %s: %v, want one", doc["attachments"], err)
	}
	// xdp_mode is there with ingress xdp only; the default attach counts at TC on this veth.
	a := object("attachment", atts[0], "netns", "interface", "ifindex", "pin_dir", "ingress", "ingress_reason",
		"egress", "attached_at", "programs", "maps")
	var progs, ms []json.RawMessage
	json.Unmarshal(a["programs"], &progs)
	json.Unmarshal(a["maps"], &ms)
	if len(progs) != 2 || len(ms) == 0 {
		t.Fatalf("programs %s maps %s: want tc_ingress and tc_egress, and the maps", a["programs"], a["maps"])
	}
	for _, p := range progs {
		// link_id is there for a bpf_link or tcx attachment only (docs/cli.md).
		var mech struct{ Mechanism string }
		json.Unmarshal(p, &mech)
		fields := []string{"hook", "mechanism", "id", "name"}
		if mech.Mechanism == "bpf_link" || mech.Mechanism == "tcx" {
			fields = append(fields, "link_id")
		}
		object("program", p, fields...)
	}
	for _, m := range ms {
		object("map", m, "name", "id", "type", "key_size", "value_size", "max_entries", "entries", "pin")
	}

	// An interface that is not attached, in stats, is an error.
	requireCleanError(t, mx(t, "--netns", l.Server, "-o", "json", "stats", l.Paths[1].ServerIf), l.Paths[1].ServerIf, "not attached")
}

// TestAutoIngress: --ingress auto (the default) counts at TC on a device whose driver refuses
// native XDP (a bridge), saying why in status, and at XDP when an XDP mode is asked for.
func TestAutoIngress(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	tc := autoTC(t)
	const br = "mxbr0"
	sh(t, "ip", "-n", l.Server, "link", "add", br, "type", "bridge")
	sh(t, "ip", "-n", l.Server, "link", "set", br, "up")
	attach(t, l.Server, br)
	a := requireAttached(t, l.Server, br, want{in: tc, out: tc})
	if a.IngressReason != "auto: the driver has no native XDP, and generic XDP costs more than the parser; tc ingress costs least" {
		t.Errorf("bridge: ingress_reason %q, want auto's reason for a driver without native XDP", a.IngressReason)
	}
	mxOK(t, "--netns", l.Server, "detach", br)
	requireDetached(t, l.Server, br, a, false)

	srv := l.Paths[0].ServerIf
	attach(t, l.Server, srv, "--mode", "native")
	if a := requireAttached(t, l.Server, srv, want{xdp: "native", xdpMech: "bpf_link", out: tc}); a.IngressReason != "asked" {
		t.Errorf("--mode native: ingress_reason %q, want asked", a.IngressReason)
	}
}
