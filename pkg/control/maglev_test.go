package control

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func entries(n int, weight func(i int) uint32) []MaglevEntry {
	es := make([]MaglevEntry, n)
	for i := range es {
		es[i] = MaglevEntry{Name: fmt.Sprintf("10.2.%d.%d", i/250, i%250+2), ID: uint32(i), Weight: weight(i)}
	}
	return es
}

func one(int) uint32 { return 1 }

func counts(table []uint32) map[uint32]int {
	c := map[uint32]int{}
	for _, id := range table {
		c[id]++
	}
	return c
}

func mustMaglev(t *testing.T, es []MaglevEntry) []uint32 {
	t.Helper()
	table, err := Maglev(es, RingSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != RingSize {
		t.Fatalf("table has %d slots, want %d", len(table), RingSize)
	}
	return table
}

// Equal weights: backends take one slot per turn, so shares differ by at most one slot.
func TestMaglevEqualWeightsShareEvenly(t *testing.T) {
	for _, n := range []int{1, 3, 10, 100, 1000} {
		c := counts(mustMaglev(t, entries(n, one)))
		if c[NoBackend] != 0 {
			t.Fatalf("n=%d: %d empty slots", n, c[NoBackend])
		}
		lo, hi := RingSize/n, (RingSize+n-1)/n
		for id := 0; id < n; id++ {
			if got := c[uint32(id)]; got < lo || got > hi {
				t.Errorf("n=%d: backend %d has %d slots, want %d..%d", n, id, got, lo, hi)
			}
		}
	}
}

// Weighted: shares are proportional to weights, within a slot or two of rounding.
func TestMaglevWeights(t *testing.T) {
	for _, ws := range [][]uint32{{1, 2, 3}, {1, 1, 10}, {5, 3}, {100, 1, 1, 1}, {7, 0, 7}} {
		es := entries(len(ws), func(i int) uint32 { return ws[i] })
		c := counts(mustMaglev(t, es))
		var sum uint32
		for _, w := range ws {
			sum += w
		}
		for i, w := range ws {
			want := float64(RingSize) * float64(w) / float64(sum)
			if got := float64(c[uint32(i)]); math.Abs(got-want) > 2 {
				t.Errorf("weights %v: backend %d has %.0f slots, want %.1f ±2", ws, i, got, want)
			}
		}
	}
}

// The table depends on the set of backends, not on the order it is given in.
func TestMaglevOrderIndependent(t *testing.T) {
	es := entries(20, func(i int) uint32 { return uint32(i%4 + 1) })
	want := mustMaglev(t, es)
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		r.Shuffle(len(es), func(i, j int) { es[i], es[j] = es[j], es[i] })
		if !slices.Equal(mustMaglev(t, es), want) {
			t.Fatal("shuffled input gives another table")
		}
	}
}

// moved counts the slots whose owner differs, and among them those that neither table gives to
// backend except (the one added or removed).
func moved(a, b []uint32, except uint32) (all, others int) {
	for i := range a {
		if a[i] != b[i] {
			all++
			if a[i] != except && b[i] != except {
				others++
			}
		}
	}
	return all, others
}

// Minimal disruption (Maglev paper §3.4, §5.3): removing a backend moves its own slots and only a
// small fraction of the others'; adding one takes about 1/(N+1) of the table and moves few others.
// The bound is 1% of the table for up to 101 backends (this builder moves 0.04% of the table between
// surviving backends for 4→3, 0.24% for 11→10, 0.60% for 101→100; the test logs the figures).
func TestMaglevMinimalDisruption(t *testing.T) {
	for _, n := range []int{3, 10, 100} {
		es := entries(n+1, one)
		full := mustMaglev(t, es)
		less := mustMaglev(t, es[:n])
		removed := uint32(n)
		all, others := moved(full, less, removed)
		own := counts(full)[removed]
		if all-others != own {
			t.Errorf("n=%d: %d slots of the removed backend moved, it had %d", n+1, all-others, own)
		}
		if frac := float64(others) / RingSize; frac > 0.01 {
			t.Errorf("n=%d: removing one backend moved %d slots (%.2f%%) of the others, want ≤ 1%%", n+1, others, 100*frac)
		}
		// Adding it back is the same comparison the other way round: it takes about 1/(n+1).
		want := float64(RingSize) / float64(n+1)
		if math.Abs(float64(own)-want) > 1 {
			t.Errorf("n=%d: added backend took %d slots, want %.0f", n, own, want)
		}
		t.Logf("%d→%d backends: %d slots moved, %d (%.2f%%) between surviving backends", n+1, n, all, others, 100*float64(others)/RingSize)
	}
}

// Draining is a weight of 0: the backend leaves the table like a removed one.
func TestMaglevZeroWeightIsRemoval(t *testing.T) {
	es := entries(5, one)
	without := mustMaglev(t, es[:4])
	es[4].Weight = 0
	if !slices.Equal(mustMaglev(t, es), without) {
		t.Fatal("a zero-weight backend changes the table")
	}
}

func TestMaglevEdges(t *testing.T) {
	c := counts(mustMaglev(t, nil))
	if c[NoBackend] != RingSize {
		t.Fatalf("empty set: %v", c)
	}
	if _, err := Maglev(entries(2, one), 65536); err == nil {
		t.Error("non-prime size accepted")
	}
	dup := entries(2, one)
	dup[1].Name = dup[0].Name
	if _, err := Maglev(dup, RingSize); err == nil {
		t.Error("duplicate backend accepted")
	}
	bad := entries(1, one)
	bad[0].ID = NoBackend
	if _, err := Maglev(bad, RingSize); err == nil {
		t.Error("reserved id accepted")
	}
	if _, err := Maglev(entries(20, one), 17); err == nil {
		t.Error("more backends than slots accepted")
	}
	small, err := Maglev(entries(3, one), 7)
	if err != nil {
		t.Fatal(err)
	}
	if c := counts(small); c[NoBackend] != 0 || len(c) != 3 {
		t.Errorf("7-slot table: %v", c)
	}
}

func BenchmarkMaglev(b *testing.B) {
	for _, n := range []int{3, 100, 1000} {
		es := entries(n, one)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := Maglev(es, RingSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
