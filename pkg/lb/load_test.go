package lb

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestLoad(t *testing.T) {
	b := loadBalancer(t, testConfig)
	info, err := b.Program.Info()
	if err != nil {
		t.Fatal(err)
	}
	insns, _ := info.VerifiedInstructions()
	t.Logf("program %s: %d verified instructions", info.Name, insns)
	d, err := LoadDecap(DecapConfig{})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLoadCloseNoFDLeak loads and closes the balancer (and the decapsulator) repeatedly: Close
// must release every fd Load opened, the maps behind the programs' global variables and scratch
// maps included.
func TestLoadCloseNoFDLeak(t *testing.T) {
	const rounds = 8
	cfg := testConfig
	cfg.HashSeed = 0x1234 // sets a global variable, so its map is created and written
	// One round first, so that lazily opened process-wide fds (BTF, feature probes) are open.
	if b, err := Load(cfg); err != nil {
		t.Fatal(err)
	} else {
		b.Close()
	}
	if d, err := LoadDecap(DecapConfig{AnyDst: true}); err != nil {
		t.Fatal(err)
	} else {
		d.Close()
	}
	// cilium/ebpf closes an unreachable object's fd from a GC finalizer, which would hide a leak:
	// no GC during the rounds, so only Close releases fds.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	runtime.GC()
	before := openFDs(t)
	for i := 0; i < rounds; i++ {
		b, err := Load(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("close balancer: %v", err)
		}
		d, err := LoadDecap(DecapConfig{AnyDst: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Close(); err != nil {
			t.Fatalf("close decap: %v", err)
		}
	}
	after := openFDs(t)
	t.Logf("%d load/close rounds: %d open fds before, %d after", rounds, before, after)
	if after > before {
		t.Errorf("%d fds leaked in %d load/close rounds (%d per round)", after-before, rounds, (after-before)/rounds)
	}
}
