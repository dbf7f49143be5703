package loader_test

import (
	"encoding/binary"
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

// A pinned map whose layout is not the program's (two fields swapped, sizes equal) is not reused as
// it is: the counting datapath refuses it with an error naming the map, and attaches nothing; the
// balancer upgrades it in place.
func TestPinnedLayoutChecked(t *testing.T) {
	testutil.RequireRoot(t)
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	ns, srv := l.Server, l.Paths[0].ServerIf
	nsDir, err := loader.NetnsDir(ns)
	if err != nil {
		t.Fatal(err)
	}

	// The balancer upgrades such a map in place (migrate.go), moving each field by its name.
	t.Run("balancer", func(t *testing.T) {
		ld := tempLoader(t)
		dir := ld.LBDir(nsDir)
		spec, err := lb.Spec(lb.Config{PinPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		pinSwapped(t, spec, dir, lb.MapTokens, "key_hash", "last_ns")
		pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, lb.MapTokens), nil)
		if err != nil {
			t.Fatal(err)
		}
		// In the swapped layout last_ns sits at 8 and key_hash at 16.
		var v [24]byte
		binary.LittleEndian.PutUint32(v[0:], 2)
		binary.LittleEndian.PutUint64(v[8:], 111)  // last_ns
		binary.LittleEndian.PutUint64(v[16:], 222) // key_hash
		if err := pinned.Put([8]byte{0, 0, 0, 0, 7, 0, 0, 0}, v); err != nil {
			t.Fatal(err)
		}
		pinned.Close()
		m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{srv}})
		if err != nil {
			t.Fatalf("attach over a swapped %s: %v", lb.MapTokens, err)
		}
		defer m.Close()
		var got [24]byte
		if err := m.Tokens.Lookup([8]byte{0, 0, 0, 0, 7, 0, 0, 0}, &got); err != nil {
			t.Fatal(err)
		}
		if binary.LittleEndian.Uint32(got[0:]) != 2 || binary.LittleEndian.Uint64(got[8:]) != 222 || binary.LittleEndian.Uint64(got[16:]) != 111 {
			t.Errorf("token after the upgrade %x, want backend 2, key_hash 222 at 8, last_ns 111 at 16", got)
		}
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
