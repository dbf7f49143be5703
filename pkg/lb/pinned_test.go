package lb

import (
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestOpenPinnedMapsReadOnly opens a pinned balancer both ways: the read-only open covers every map
// of Maps, the same maps as OpenPinnedMaps, and the kernel refuses every update and delete through
// it with EPERM, while the read-write open can write.
func TestOpenPinnedMapsReadOnly(t *testing.T) {
	dir, err := os.MkdirTemp("/sys/fs/bpf", "mxh2-lbro-")
	if err != nil {
		t.Fatalf("private bpffs directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testConfig
	cfg.PinPath = dir
	spec, err := Spec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		t.Fatalf("load balancer: %v", err)
	}
	t.Cleanup(coll.Close)

	rw, err := OpenPinnedMaps(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	ro, err := OpenPinnedMapsReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()

	// A zero key and value of the map's sizes, one value per possible CPU for per-CPU maps.
	kv := func(m *ebpf.Map) (any, any) {
		k, v := make([]byte, m.KeySize()), make([]byte, m.ValueSize())
		switch m.Type() {
		case ebpf.PerCPUArray, ebpf.PerCPUHash, ebpf.LRUCPUHash:
			n, err := ebpf.PossibleCPU()
			if err != nil {
				t.Fatal(err)
			}
			vs := make([][]byte, n)
			for i := range vs {
				vs[i] = make([]byte, m.ValueSize())
			}
			return k, vs
		}
		return k, v
	}

	rov, rwv := reflect.ValueOf(ro).Elem(), reflect.ValueOf(rw).Elem()
	n := 0
	for i := range rov.NumField() {
		name := rov.Type().Field(i).Name
		rom, ok := rov.Field(i).Interface().(*ebpf.Map)
		if !ok {
			continue
		}
		n++
		rwm := rwv.Field(i).Interface().(*ebpf.Map)
		if rom == nil || rwm == nil {
			t.Errorf("%s: opened read-only %v, read-write %v", name, rom != nil, rwm != nil)
			continue
		}
		roInfo, err1 := rom.Info()
		rwInfo, err2 := rwm.Info()
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: info: %v, %v", name, err1, err2)
		}
		roID, _ := roInfo.ID()
		rwID, _ := rwInfo.ID()
		if roID != rwID {
			t.Errorf("%s: read-only open is map %d, read-write open map %d", name, roID, rwID)
		}
		if rom.Type() == ebpf.RingBuf || rom.Type() == ebpf.PerfEventArray {
			continue // no update from user space whatever the fd: nothing to prove
		}
		k, v := kv(rom)
		if err := rom.Update(k, v, ebpf.UpdateAny); !errors.Is(err, unix.EPERM) {
			t.Errorf("%s (%v): update through the read-only fd: %v, want EPERM", name, rom.Type(), err)
		}
		if err := rom.Delete(k); !errors.Is(err, unix.EPERM) {
			t.Errorf("%s (%v): delete through the read-only fd: %v, want EPERM", name, rom.Type(), err)
		}
		if err := rwm.Update(k, v, ebpf.UpdateAny); errors.Is(err, unix.EPERM) {
			t.Errorf("%s (%v): update through the read-write fd: %v", name, rwm.Type(), err)
		}
	}
	if n < 10 {
		t.Errorf("only %d maps in Maps", n)
	}
}
