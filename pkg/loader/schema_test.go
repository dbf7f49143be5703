package loader_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// pinSwapped pins, at dir/name, the map of spec with two members of its value struct renamed into
// each other: the same sizes, another layout, as a later mptcp-xdp that reorders two fields of the
// same type would pin it.
func pinSwapped(t *testing.T, spec *ebpf.CollectionSpec, dir, name, a, b string) {
	t.Helper()
	ms := spec.Maps[name].Copy()
	st, ok := btf.Copy(ms.Value).(*btf.Struct)
	if !ok {
		t.Fatalf("%s: value is %T, not a struct", name, ms.Value)
	}
	swapped := 0
	for i := range st.Members {
		switch st.Members[i].Name {
		case a:
			st.Members[i].Name = b
			swapped++
		case b:
			st.Members[i].Name = a
			swapped++
		}
	}
	if swapped != 2 {
		t.Fatalf("%s: no members %s and %s to swap in %v", name, a, b, st)
	}
	ms.Value = st
	ms.Pinning = ebpf.PinByName
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	// cilium/ebpf alone takes it: the sizes match.
	m, err = ebpf.NewMapWithOptions(spec.Maps[name], ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatalf("cilium/ebpf refuses the swapped pin on its own (%v): the test shows nothing", err)
	}
	m.Close()
}

// A pinned map whose layout is not the program's (two fields swapped, sizes equal) is refused with
// an error naming the map, for the balancer and for the counting datapath, and nothing is
// attached.
func TestPinnedLayoutChecked(t *testing.T) {
	testutil.RequireRoot(t)
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	ns, srv := l.Server, l.Paths[0].ServerIf
	nsDir, err := loader.NetnsDir(ns)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("balancer", func(t *testing.T) {
		ld := tempLoader(t)
		spec, err := lb.Spec(lb.Config{PinPath: ld.LBDir(nsDir)})
		if err != nil {
			t.Fatal(err)
		}
		pinSwapped(t, spec, ld.LBDir(nsDir), lb.MapTokens, "key_hash", "last_ns")
		m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{srv}})
		if m != nil {
			m.Close()
		}
		if !errors.Is(err, loader.ErrLayoutChanged) || !strings.Contains(err.Error(), lb.MapTokens) || !strings.Contains(err.Error(), "lb detach") {
			t.Fatalf("attach over a swapped %s: %v", lb.MapTokens, err)
		}
		t.Logf("refused: %v", err)
		if got := xdpProg(t, l, ns, srv); got != 0 {
			t.Errorf("refused attach left program %d on %s", got, srv)
		}
		if err := os.RemoveAll(ld.LBDir(nsDir)); err != nil {
			t.Fatal(err)
		}
		// The same pins with the program's own layout are taken.
		spec, _ = lb.Spec(lb.Config{PinPath: ld.LBDir(nsDir)})
		if err := os.MkdirAll(ld.LBDir(nsDir), 0o700); err != nil {
			t.Fatal(err)
		}
		tm, err := ebpf.NewMapWithOptions(spec.Maps[lb.MapTokens], ebpf.MapOptions{PinPath: ld.LBDir(nsDir)})
		if err != nil {
			t.Fatal(err)
		}
		tm.Close()
		if m, err = ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{srv}}); err != nil {
			t.Fatalf("attach over a pin of the same layout: %v", err)
		}
		m.Close()
		if err := ld.DetachLB(ns); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("datapath", func(t *testing.T) {
		ld := tempLoader(t)
		spec, err := datapath.LoadXdp()
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(ld.Root, nsDir, srv)
		pinSwapped(t, spec, dir, datapath.XdpMapMptcpxMeta, "netns_ino", "attached_ns")
		_, err = ld.Attach(loader.AttachOptions{Netns: ns, Iface: srv})
		if !errors.Is(err, loader.ErrLayoutChanged) || !strings.Contains(err.Error(), datapath.XdpMapMptcpxMeta) {
			t.Fatalf("attach over a swapped %s: %v", datapath.XdpMapMptcpxMeta, err)
		}
		if got := xdpProg(t, l, ns, srv); got != 0 {
			t.Errorf("refused attach left program %d on %s", got, srv)
		}
	})
}
