package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The JSON of the listings, decoded with the test's own types: the contract is what is tested.
type (
	pinJSON struct {
		Kind      string `json:"kind"`
		Netns     string `json:"netns"`
		Interface string `json:"interface"`
		Hook      string `json:"hook"`
		Mechanism string `json:"mechanism"`
		Object    string `json:"object"`
		Path      string `json:"path"`
		ID        uint32 `json:"id"`
		ProgID    uint32 `json:"prog_id"`
		Name      string `json:"name"`
		Problem   string `json:"problem"`
	}
	progJSON struct {
		ID         uint32    `json:"id"`
		Name       string    `json:"name"`
		Type       string    `json:"type"`
		MapIDs     []uint32  `json:"map_ids"`
		AttachedTo []string  `json:"attached_to"`
		ByUs       bool      `json:"mptcp_xdp"`
		Kind       string    `json:"kind"`
		Pins       []pinJSON `json:"pins"`
	}
	mapJSON struct {
		ID        uint32   `json:"id"`
		Name      string   `json:"name"`
		Type      string   `json:"type"`
		Pins      []string `json:"pins"`
		ByUs      bool     `json:"mptcp_xdp"`
		Kind      string   `json:"kind"`
		Netns     string   `json:"netns"`
		Interface string   `json:"interface"`
	}
	statusMapJSON struct {
		Name string `json:"name"`
		ID   uint32 `json:"id"`
		Type string `json:"type"`
		Pin  string `json:"pin"`
	}
	pinSetJSON struct {
		Kind     string `json:"kind"`
		Netns    string `json:"netns"`
		PinDir   string `json:"pin_dir"`
		Programs []struct {
			Hook      string `json:"hook"`
			Mechanism string `json:"mechanism"`
			ID        uint32 `json:"id"`
			Name      string `json:"name"`
			LinkID    uint32 `json:"link_id"`
			Interface string `json:"interface"`
			Pin       string `json:"pin"`
		} `json:"programs"`
		Maps     []statusMapJSON `json:"maps"`
		Problems []string        `json:"problems"`
	}
	statusJSON struct {
		Attachments []struct {
			Netns     string `json:"netns"`
			Interface string `json:"interface"`
			PinDir    string `json:"pin_dir"`
			Programs  []struct {
				Hook      string `json:"hook"`
				Mechanism string `json:"mechanism"`
				ID        uint32 `json:"id"`
				LinkID    uint32 `json:"link_id"`
			} `json:"programs"`
			Maps     []statusMapJSON `json:"maps"`
			Problems []string        `json:"problems"`
		} `json:"attachments"`
		Balancers []pinSetJSON `json:"balancers"`
		History   *pinSetJSON  `json:"history"`
	}
)

// bpftoolJSON runs bpftool with -j and decodes its output into v.
func bpftoolJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("bpftool", append(args, "-j")...).Output()
	if err != nil {
		t.Fatalf("bpftool %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("bpftool %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

type bpftoolLink struct {
	ID     uint32 `json:"id"`
	ProgID uint32 `json:"prog_id"`
}

type bpftoolObj struct {
	ID   uint32 `json:"id"`
	Name string `json:"name"`
	Type string `json:"type"`
}

// sameType compares cilium/ebpf's type name (PerCPUArray, SockOps) with bpftool's (percpu_array,
// sock_ops).
func sameType(ours, bpftool string) bool {
	return strings.ToLower(ours) == strings.ReplaceAll(bpftool, "_", "")
}

func cliJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, err := cliRun(append(args, "-o", "json")...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestPins attaches all four kinds of pins under a private root — the counting datapath (srv0 of
// the server through links, cli0 of the client through clsact and program pins), the balancer (srv1,
// srv2 of the server), the decapsulator (cli1 of the client) and the history — and checks that `status`, `prog list`, `map list` and `map dump` list every one of
// them, with the ids, names and types bpftool reads from the same pins.
func TestPins(t *testing.T) {
	testutil.RequireRoot(t)
	base := testutil.TempBPFFS(t, "mxpin-")
	root := filepath.Join(base, "mptcp-xdp")
	saved := bpffsRoot
	bpffsRoot = root
	t.Cleanup(func() { bpffsRoot = saved })
	ld, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Prefix: fmt.Sprintf("mxpin%04x", rand.IntN(1<<16)), Paths: 3})
	srv, cli := l.Server, l.Client

	if _, err := cliRun("--netns", srv, "attach", "srv0", "--ingress", "xdp"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := cliRun("--netns", srv, "detach", "srv0"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	// The datapath through clsact as well (program pins rather than links), in the client.
	if _, err := cliRun("--netns", cli, "attach", "cli0", "--ingress", "tc", "--tc", "clsact"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := cliRun("--netns", cli, "detach", "cli0"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	m, err := ld.AttachLB(loader.LBAttachOptions{Netns: srv, Ifaces: []string{"srv1", "srv2"}})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	t.Cleanup(func() {
		if err := ld.DetachLB(srv); err != nil && !errors.Is(err, loader.ErrLBNotAttached) { // the last subtest detaches it
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := ld.AttachDecap(loader.LBAttachOptions{Netns: cli, Ifaces: []string{"cli1"},
		DecapBalancers: []netip.Addr{netip.MustParseAddr("10.9.0.1")}, DecapVIPs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.10:80")}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ld.DetachDecap(cli, nil); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if _, err := ld.EnableHistory(loader.HistoryOptions{MaxEntries: 1024, MaxAge: 42 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ld.DisableHistory(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	// Every file pinned under the three roots, by kind, with the namespace and interface a map is
	// pinned for: what the listings must cover.
	type owner struct{ kind, netns, iface string }
	pinned := map[string]string{} // path → kind
	mapOwner := map[string]owner{}
	walk := func(o owner, dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("read %s: %v", dir, err)
		}
		for _, e := range ents {
			pinned[filepath.Join(dir, e.Name())] = o.kind
			mapOwner[filepath.Join(dir, e.Name())] = o
		}
	}
	walk(owner{"datapath", srv, "srv0"}, ld.IfaceDir(srv, "srv0"))
	walk(owner{"datapath", cli, "cli0"}, ld.IfaceDir(cli, "cli0"))
	walk(owner{"balancer", srv, ""}, ld.LBDir(srv))
	walk(owner{"decap", cli, ""}, ld.DecapDir(cli))
	walk(owner{"history", "", ""}, ld.HistoryRoot())
	// isProgram tells the link and program pins from the maps'.
	isProgram := func(path string) bool {
		return strings.HasPrefix(filepath.Base(path), "link_") || strings.HasPrefix(filepath.Base(path), "prog_")
	}

	t.Run("status", func(t *testing.T) {
		var st statusJSON
		cliJSON(t, &st, "status")
		if len(st.Attachments) != 2 || st.Attachments[0].Netns != cli || st.Attachments[0].Interface != "cli0" ||
			st.Attachments[1].Netns != srv || st.Attachments[1].Interface != "srv0" {
			t.Fatalf("attachments %+v, want the datapath on %s/cli0 and %s/srv0", st.Attachments, cli, srv)
		}
		for i, want := range [][]string{{"tc_ingress clsact", "tc_egress clsact"}, {"xdp bpf_link", "tc_egress tcx"}} {
			a := st.Attachments[i]
			var got []string
			for _, p := range a.Programs {
				got = append(got, p.Hook+" "+p.Mechanism)
				if p.LinkID == 0 {
					var bp bpftoolObj
					bpftoolJSON(t, &bp, "prog", "show", "pinned", filepath.Join(a.PinDir, "prog_"+p.Hook))
					if bp.ID != p.ID {
						t.Errorf("datapath %s/%s %s: status prog %d, bpftool %d", a.Netns, a.Interface, p.Hook, p.ID, bp.ID)
					}
					continue
				}
				var bl bpftoolLink
				bpftoolJSON(t, &bl, "link", "show", "pinned", filepath.Join(a.PinDir, "link_"+p.Hook))
				if bl.ID != p.LinkID || bl.ProgID != p.ID {
					t.Errorf("datapath %s/%s %s: status link %d prog %d, bpftool link %d prog %d", a.Netns, a.Interface, p.Hook, p.LinkID, p.ID, bl.ID, bl.ProgID)
				}
			}
			if !slices.Equal(got, want) || len(a.Problems) != 0 {
				t.Errorf("datapath %s/%s: programs %v problems %v, want %v and none", a.Netns, a.Interface, got, a.Problems, want)
			}
		}
		sets := map[string]pinSetJSON{}
		for _, s := range st.Balancers {
			sets[s.Kind+" "+s.Netns] = s
		}
		if len(st.Balancers) != 2 || st.History == nil {
			t.Fatalf("balancers %+v history %+v, want a balancer, a decapsulator and the history", st.Balancers, st.History)
		}
		sets["history "] = *st.History
		for key, want := range map[string]struct {
			dir    string
			ifaces []string
			hook   string
		}{
			"balancer " + srv: {ld.LBDir(srv), []string{"srv1", "srv2"}, "xdp"},
			"decap " + cli:    {ld.DecapDir(cli), []string{"cli1"}, "xdp"},
			"history ":        {ld.HistoryRoot(), []string{""}, "sock_ops"},
		} {
			s, ok := sets[key]
			if !ok {
				t.Errorf("status lists no %s", key)
				continue
			}
			if s.PinDir != want.dir || len(s.Problems) != 0 {
				t.Errorf("%s: pin_dir %s problems %v, want %s and none", key, s.PinDir, s.Problems, want.dir)
			}
			var ifaces []string
			for _, p := range s.Programs {
				ifaces = append(ifaces, p.Interface)
				var bl bpftoolLink
				bpftoolJSON(t, &bl, "link", "show", "pinned", p.Pin)
				var bp bpftoolObj
				bpftoolJSON(t, &bp, "prog", "show", "id", fmt.Sprint(bl.ProgID))
				if p.Hook != want.hook || p.Mechanism != "bpf_link" || bl.ID != p.LinkID || bl.ProgID != p.ID || bp.Name != p.Name {
					t.Errorf("%s program %+v; bpftool: link %d prog %d %s", key, p, bl.ID, bl.ProgID, bp.Name)
				}
				if pinned[p.Pin] != s.Kind {
					t.Errorf("%s program pin %s is not one of the %s's pins", key, p.Pin, s.Kind)
				}
			}
			if !slices.Equal(ifaces, want.ifaces) {
				t.Errorf("%s: programs on %q, want %q", key, ifaces, want.ifaces)
			}
			var mapPins []string
			for _, mp := range s.Maps {
				mapPins = append(mapPins, mp.Pin)
				var bm bpftoolObj
				bpftoolJSON(t, &bm, "map", "show", "pinned", mp.Pin)
				if bm.ID != mp.ID || bm.Name != mp.Name || !sameType(mp.Type, bm.Type) {
					t.Errorf("%s map %+v; bpftool: %+v", key, mp, bm)
				}
			}
			var want []string
			for p, k := range pinned {
				if k == s.Kind && !isProgram(p) {
					want = append(want, p)
				}
			}
			sort.Strings(want)
			sort.Strings(mapPins)
			if !slices.Equal(mapPins, want) {
				t.Errorf("%s: maps %v, want every map pinned: %v", key, mapPins, want)
			}
		}

		// One namespace: its own objects only, and not the host-wide history.
		var one statusJSON
		cliJSON(t, &one, "--netns", cli, "status")
		if len(one.Attachments) != 1 || one.Attachments[0].Interface != "cli0" || len(one.Balancers) != 1 || one.Balancers[0].Kind != "decap" || one.History != nil {
			t.Errorf("status --netns %s: %+v, want cli0's datapath and the decapsulator only", cli, one)
		}
	})

	t.Run("prog list", func(t *testing.T) {
		var doc struct {
			Programs []progJSON `json:"programs"`
		}
		cliJSON(t, &doc, "prog", "list")
		seen := map[string]bool{}
		for _, r := range doc.Programs {
			if !r.ByUs {
				t.Errorf("prog list lists %d (%s), not mptcp-xdp's", r.ID, r.Name)
			}
			var bp bpftoolObj
			bpftoolJSON(t, &bp, "prog", "show", "id", fmt.Sprint(r.ID))
			if bp.Name != r.Name || !sameType(r.Type, bp.Type) {
				t.Errorf("program %d: %s %s, bpftool %s %s", r.ID, r.Name, r.Type, bp.Name, bp.Type)
			}
			for _, p := range r.Pins {
				if p.Kind != r.Kind || pinned[p.Path] != p.Kind || p.Problem != "" {
					t.Errorf("program %d (kind %s): pin %+v", r.ID, r.Kind, p)
				}
				switch p.Object {
				case "link":
					var bl bpftoolLink
					bpftoolJSON(t, &bl, "link", "show", "pinned", p.Path)
					if bl.ID != p.ID || bl.ProgID != r.ID || p.ProgID != r.ID {
						t.Errorf("program %d: pin %+v, bpftool link %d runs %d", r.ID, p, bl.ID, bl.ProgID)
					}
				case "prog":
					var bp bpftoolObj
					bpftoolJSON(t, &bp, "prog", "show", "pinned", p.Path)
					if bp.ID != r.ID || p.ID != r.ID || p.ProgID != r.ID || p.Mechanism != "clsact" {
						t.Errorf("program %d: pin %+v, bpftool program %d", r.ID, p, bp.ID)
					}
				default:
					t.Errorf("program %d: pin %+v of a %q", r.ID, p, p.Object)
				}
				if (p.Interface != "") != slices.Contains(r.AttachedTo, p.Netns+"/"+p.Interface+"/"+p.Hook) {
					t.Errorf("program %d: pin %+v, attached_to %v", r.ID, p, r.AttachedTo)
				}
				seen[p.Path] = true
			}
		}
		for p := range pinned {
			if isProgram(p) && !seen[p] {
				t.Errorf("prog list misses the program of %s", p)
			}
		}
	})

	t.Run("map list", func(t *testing.T) {
		var doc struct {
			Maps []mapJSON `json:"maps"`
		}
		cliJSON(t, &doc, "map", "list")
		seen := map[string]bool{}
		for _, r := range doc.Maps {
			if !r.ByUs || len(r.Pins) != 1 {
				t.Errorf("map %d (%s): pins %v", r.ID, r.Name, r.Pins)
				continue
			}
			pin := r.Pins[0]
			seen[pin] = true
			var bm bpftoolObj
			bpftoolJSON(t, &bm, "map", "show", "pinned", pin)
			if bm.ID != r.ID || bm.Name != r.Name || !sameType(r.Type, bm.Type) {
				t.Errorf("map %+v; bpftool: %+v", r, bm)
			}
			if o := mapOwner[pin]; r.Kind != o.kind || r.Netns != o.netns || r.Interface != o.iface {
				t.Errorf("map %+v: want kind %s netns %q interface %q", r, o.kind, o.netns, o.iface)
			}
		}
		for p := range pinned {
			if !isProgram(p) && !seen[p] {
				t.Errorf("map list misses %s", p)
			}
		}
	})

	t.Run("map dump", func(t *testing.T) {
		type dumpJSON struct {
			Maps []struct {
				Kind      string `json:"kind"`
				Netns     string `json:"netns"`
				Interface string `json:"interface"`
				Name      string `json:"name"`
				Pin       string `json:"pin"`
				Entries   []struct {
					Key     string          `json:"key"`
					Decoded json.RawMessage `json:"decoded"`
				} `json:"entries"`
			} `json:"maps"`
		}
		var hist dumpJSON
		cliJSON(t, &hist, "map", "dump", loader.PinHistoryCfg)
		if len(hist.Maps) != 1 || hist.Maps[0].Kind != "history" || len(hist.Maps[0].Entries) != 1 {
			t.Fatalf("map dump %s: %+v", loader.PinHistoryCfg, hist)
		}
		var cfg struct {
			MaxAgeNs uint64 `json:"max_age_ns"`
		}
		if err := json.Unmarshal(hist.Maps[0].Entries[0].Decoded, &cfg); err != nil || cfg.MaxAgeNs != uint64(42*time.Second) {
			t.Errorf("history configuration decoded %s (%v), want max_age_ns %d", hist.Maps[0].Entries[0].Decoded, err, uint64(42*time.Second))
		}
		var weights dumpJSON
		cliJSON(t, &weights, "--netns", srv, "map", "dump", loader.PinLBWeights)
		if len(weights.Maps) != 1 || weights.Maps[0].Kind != "balancer" || weights.Maps[0].Netns != srv || weights.Maps[0].Pin != filepath.Join(ld.LBDir(srv), loader.PinLBWeights) {
			t.Errorf("map dump %s: %+v", loader.PinLBWeights, weights)
		}
		var counters dumpJSON
		cliJSON(t, &counters, "map", "dump", "mptcpx_counters", "--iface", "srv0")
		if len(counters.Maps) != 1 || counters.Maps[0].Kind != "datapath" || len(counters.Maps[0].Entries) != 2 {
			t.Fatalf("map dump mptcpx_counters: %+v", counters)
		}
		for i, e := range counters.Maps[0].Entries {
			var c struct {
				Direction string `json:"direction"`
			}
			if err := json.Unmarshal(e.Decoded, &c); err != nil || c.Direction != []string{"ingress", "egress"}[i] {
				t.Errorf("counters entry %d decoded %s (%v)", i, e.Decoded, err)
			}
		}
	})

	t.Run("tables", func(t *testing.T) {
		for _, args := range [][]string{{"status"}, {"prog", "list"}, {"map", "list"}} {
			out, err := cliRun(args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, kind := range []string{"balancer", "decap", "history"} {
				if !strings.Contains(out, kind) {
					t.Errorf("%s (table) does not show the %s:\n%s", strings.Join(args, " "), kind, out)
				}
			}
		}
	})

	// A balancer link whose interface is gone is a problem of the balancer, and detach removes it.
	t.Run("defunct link", func(t *testing.T) {
		if _, err := l.IP(srv, "link", "add", "mxpinx", "type", "veth", "peer", "name", "mxpiny"); err != nil {
			t.Fatal(err)
		}
		m, err := ld.AttachLB(loader.LBAttachOptions{Netns: srv, Ifaces: []string{"mxpinx"}})
		if err != nil {
			t.Fatal(err)
		}
		m.Close()
		if _, err := l.IP(srv, "link", "del", "mxpinx"); err != nil {
			t.Fatal(err)
		}
		var st statusJSON
		cliJSON(t, &st, "--netns", srv, "status")
		if len(st.Balancers) != 1 || !slices.Equal(st.Balancers[0].Problems, []string{"link_xdp@mxpinx: xdp link is defunct: its interface is gone"}) {
			t.Errorf("balancers %+v, want the defunct link of mxpinx as a problem", st.Balancers)
		}
		if err := ld.DetachLB(srv); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(ld.LBDir(srv)); !os.IsNotExist(err) {
			t.Errorf("after lb detach: %s is left (%v)", ld.LBDir(srv), err)
		}
		var after statusJSON
		cliJSON(t, &after, "--netns", srv, "status")
		if len(after.Balancers) != 0 {
			t.Errorf("after lb detach: balancers %+v", after.Balancers)
		}
	})
}
