package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// occupancyBatch is the batch of the table walks (walk.go), which TestOccupancy fills more than
// once.
const occupancyBatch = walkBatch

// tableMaps creates the balancer's flow and token tables alone (as the object declares them,
// LRUs, with room for entries), without the program.
func tableMaps(t *testing.T, entries uint32) *Maps {
	t.Helper()
	spec, err := Spec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	m := &Maps{}
	for name, mp := range map[string]**ebpf.Map{MapFlows: &m.Flows, MapTokens: &m.Tokens} {
		ms := spec.Maps[name].Copy()
		ms.MaxEntries = entries
		if *mp, err = ebpf.NewMap(ms); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	t.Cleanup(func() { m.Close() })
	withVIP(t, m)
	if m.Flows.Type() != ebpf.LRUHash || m.Tokens.Type() != ebpf.LRUHash {
		t.Fatalf("flow table %v, token table %v: want LRU hash maps", m.Flows.Type(), m.Tokens.Type())
	}
	return m
}

// withVIP gives m a VIP table holding vip4 (id 0), the VIP of churnFlowKey's flows: PutFlows keys a
// flow by its VIP's id.
func withVIP(t *testing.T, m *Maps) {
	t.Helper()
	spec, err := Spec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if m.VIPs, err = ebpf.NewMap(spec.Maps[MapVIPs].Copy()); err != nil {
		t.Fatal(err)
	}
	vips := m.VIPs
	t.Cleanup(func() { vips.Close() })
	if err := m.PutVIP(VIP{Addr: vip4, ID: 0}); err != nil {
		t.Fatal(err)
	}
}

// withoutBatch makes every batch lookup fail as on a kernel without them, counting the attempts.
func withoutBatch(t *testing.T) *atomic.Int64 {
	var tries atomic.Int64
	saved := batchLookup
	batchLookup = func(*ebpf.Map, *ebpf.MapBatchCursor, any, any, *ebpf.BatchOptions) (int, error) {
		tries.Add(1)
		return 0, fmt.Errorf("map batch lookup: %w", ebpf.ErrNotSupported)
	}
	t.Cleanup(func() { batchLookup = saved })
	return &tries
}

func churnFlowKey(i int) FlowKey {
	return FlowKey{Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), uint16(1024+i%50000)), Dst: vip4}
}

// TestWalkUnderChurn lists the flow and token LRUs while another goroutine inserts and deletes
// other entries as fast as it can: every walk returns each entry that stays once, and no entry
// twice (Iterate returns entries again whenever the churner deletes the key it stands on). Run
// with batch lookups and with the fallback a kernel without them gets.
func TestWalkUnderChurn(t *testing.T) {
	const stable, churn, walks = 5000, 5000, 10
	for _, mode := range []string{"batch", "fallback"} {
		t.Run(mode, func(t *testing.T) {
			var tries *atomic.Int64
			if mode == "fallback" {
				tries = withoutBatch(t)
			}
			m := tableMaps(t, 4*(stable+churn)) // room enough that the LRUs evict nothing
			var flows []Flow
			for i := range stable {
				flows = append(flows, Flow{FlowKey: churnFlowKey(i), Backend: 1})
			}
			if err := m.PutFlows(flows); err != nil {
				t.Fatal(err)
			}
			for i := range stable {
				if err := m.PutToken(Token{VIPID: 1, Token: uint32(i), Backend: 1}); err != nil {
					t.Fatal(err)
				}
			}

			stop := make(chan struct{})
			var wg sync.WaitGroup
			var churned atomic.Int64
			wg.Add(1)
			go func() {
				defer wg.Done()
				for round := 0; ; round++ {
					for i := stable; i < stable+churn; i++ {
						select {
						case <-stop:
							return
						default:
						}
						f := flowID(churnFlowKey(i), 0)
						tk := datapath.LbLbTokenKey{VipId: 1, Token: uint32(i)}
						if round%2 == 0 {
							_ = m.Flows.Put(f, datapath.LbLbFlow{Backend: 2})
							_ = m.Tokens.Put(tk, datapath.LbLbToken{Backend: 2})
						} else {
							_ = m.Flows.Delete(f)
							_ = m.Tokens.Delete(tk)
						}
						churned.Add(1)
					}
				}
			}()

			var errs []error
			for w := range walks {
				fs, err := m.ListFlows()
				if err != nil {
					errs = append(errs, fmt.Errorf("walk %d: %w", w, err))
					continue
				}
				ts, err := m.ListTokens()
				if err != nil {
					errs = append(errs, fmt.Errorf("walk %d: %w", w, err))
					continue
				}
				seenF := map[FlowKey]int{}
				for _, f := range fs {
					seenF[f.FlowKey]++
				}
				seenT := map[uint32]int{}
				for _, tk := range ts {
					seenT[tk.Token]++
				}
				dupF, dupT, missF, missT := 0, 0, 0, 0
				for _, n := range seenF {
					if n > 1 {
						dupF++
					}
				}
				for _, n := range seenT {
					if n > 1 {
						dupT++
					}
				}
				for i := range stable {
					if seenF[churnFlowKey(i)] != 1 {
						missF++
					}
					if seenT[uint32(i)] != 1 {
						missT++
					}
				}
				if dupF+dupT+missF+missT > 0 {
					errs = append(errs, fmt.Errorf("walk %d (%d flows, %d tokens listed): %d flows and %d tokens listed twice or more, %d of %d stable flows and %d stable tokens not listed exactly once",
						w, len(fs), len(ts), dupF, dupT, missF, stable, missT))
				}
			}
			close(stop)
			wg.Wait()
			t.Logf("%d walks of %d stable flows and tokens while %d inserts and deletes churned %d others", walks, stable, churned.Load(), churn)
			if churned.Load() < churn {
				t.Errorf("only %d churn operations during the walks: the test did not churn", churned.Load())
			}
			if err := errors.Join(errs...); err != nil {
				t.Error(err)
			}
			// Nothing stable went missing from the tables themselves (the premise: no eviction).
			if n, err := m.ListFlowsCount(); err != nil || n < stable {
				t.Errorf("flow table holds %d entries (%v), want at least the %d stable ones", n, err, stable)
			}
			if tries != nil && tries.Load() == 0 {
				t.Error("the fallback was not taken: no batch lookup was tried")
			}
		})
	}
}

// A batch smaller than a bucket (the kernel's ENOSPC) grows until the bucket fits; every entry is
// returned once.
func TestWalkGrowsBatch(t *testing.T) {
	// A plain hash map of the flow table's types (an LRU this full would evict), of 64 buckets.
	spec, err := Spec(Config{})
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps[MapFlows].Copy()
	ms.Type, ms.MaxEntries = ebpf.Hash, 64
	mp, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Close()
	m := &Maps{Flows: mp}
	withVIP(t, m)
	const n = 64 // as many as the buckets: some hold two or more
	want := map[FlowKey]bool{}
	var flows []Flow
	for i := range n {
		flows = append(flows, Flow{FlowKey: churnFlowKey(i), Backend: 1})
		want[churnFlowKey(i)] = true
	}
	if err := m.PutFlows(flows); err != nil {
		t.Fatal(err)
	}
	got := map[FlowKey]int{}
	idx := newVIPIndex([]VIP{{Addr: vip4, ID: 0}})
	err = walkN(m.Flows, 1, func(k *datapath.LbLbFlowId, v *datapath.LbLbFlow) error {
		got[fromFlow(*k, *v, false, idx).FlowKey]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := range want {
		if got[k] != 1 {
			t.Errorf("flow %s listed %d times", k.Src, got[k])
		}
	}
	if len(got) != n {
		t.Errorf("%d flows listed, want %d", len(got), n)
	}
}

// An error of the callback stops the walk, batched or not.
func TestWalkStopsOnError(t *testing.T) {
	for _, mode := range []string{"batch", "fallback"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "fallback" {
				withoutBatch(t)
			}
			m := tableMaps(t, 1024)
			var flows []Flow
			for i := range 100 {
				flows = append(flows, Flow{FlowKey: churnFlowKey(i), Backend: 1})
			}
			if err := m.PutFlows(flows); err != nil {
				t.Fatal(err)
			}
			stop := errors.New("stop")
			calls := 0
			err := walk(m.Flows, func(*datapath.LbLbFlowId, *datapath.LbLbFlow) error {
				calls++
				if calls == 10 {
					return stop
				}
				return nil
			})
			if !errors.Is(err, stop) || calls != 10 {
				t.Errorf("walk returned %v after %d calls, want the callback's error after 10", err, calls)
			}
		})
	}
}
