package loader_test

import (
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// An attach creates the health map, keeps one of its layout (and its states), and replaces one of
// another layout (an older mptcp-xdp's), whose soft states are learned again.
func TestCreateLBHealth(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	dir := testutil.TempBPFFS(t, "mxhc-health-")
	old, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: loader.PinLBHealth, Type: ebpf.Hash, KeySize: 8, ValueSize: 64,
		MaxEntries: 16, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	old.Close()
	if err := loader.CreateLBHealth(dir, 4096); err != nil {
		t.Fatalf("over a map of another layout: %v", err)
	}
	m, err := loader.OpenLBHealth(dir, false)
	if err != nil || m == nil {
		t.Fatalf("open: %v %v", m, err)
	}
	defer m.Close()
	if m.ValueSize() != 128 {
		t.Errorf("value size %d, want 128 (the new layout)", m.ValueSize())
	}
	k := loader.HealthKey{VIP: 1, Backend: 2}
	if err := m.Put(k, loader.NewHealthEntry(loader.HealthDown, 42, "connect: connection refused")); err != nil {
		t.Fatal(err)
	}
	if err := loader.CreateLBHealth(dir, 4096); err != nil {
		t.Fatalf("again: %v", err)
	}
	got, err := loader.ReadHealth(m)
	if err != nil {
		t.Fatal(err)
	}
	if e := got[k]; len(got) != 1 || e.State != loader.HealthDown || e.Since != 42 || e.ReasonString() != "connect: connection refused" {
		t.Errorf("after a second create: %+v, want the entry kept", got)
	}
	if _, err := loader.OpenLBHealth(filepath.Join(dir, "none"), true); err != nil {
		t.Errorf("a directory without the map: %v, want none and no error", err)
	}
}
