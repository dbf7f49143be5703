package lb

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Occupancy is what the flow and token tables hold: their entries, and how many point at each
// backend id.
type Occupancy struct {
	Flows, Tokens                   int
	FlowsByBackend, TokensByBackend map[uint32]int
}

// occupancyBatch is the batch size of the table walks: large enough that a hash bucket always
// fits (the kernel refuses a batch smaller than a bucket), small enough to stay a few hundred KiB.
const occupancyBatch = 4096

// Occupancy walks the flow and token tables in batches (BPF_MAP_LOOKUP_BATCH: one system call per
// occupancyBatch entries, where Iterate makes two per entry) and counts their entries per backend.
// Tables that change meanwhile give counts of one moment or another per entry, as any walk does.
func (m *Maps) Occupancy() (Occupancy, error) {
	o := Occupancy{FlowsByBackend: map[uint32]int{}, TokensByBackend: map[uint32]int{}}
	var err error
	o.Flows, err = batchWalk(m.Flows, make([]datapath.LbLbFlowKey, occupancyBatch), make([]datapath.LbLbFlow, occupancyBatch),
		func(v *datapath.LbLbFlow) { o.FlowsByBackend[v.Backend]++ })
	if err != nil {
		return Occupancy{}, fmt.Errorf("walk flows: %w", err)
	}
	if m.PFlows != nil {
		n, err := batchWalk(m.PFlows, make([]datapath.LbLbFlowKey, occupancyBatch), make([]datapath.LbLbFlow, occupancyBatch),
			func(v *datapath.LbLbFlow) { o.FlowsByBackend[v.Backend]++ })
		if err != nil {
			return Occupancy{}, fmt.Errorf("walk protected flows: %w", err)
		}
		o.Flows += n
	}
	o.Tokens, err = batchWalk(m.Tokens, make([]datapath.LbLbTokenKey, occupancyBatch), make([]datapath.LbLbToken, occupancyBatch),
		func(v *datapath.LbLbToken) { o.TokensByBackend[v.Backend]++ })
	if err != nil {
		return Occupancy{}, fmt.Errorf("walk tokens: %w", err)
	}
	return o, nil
}

// batchWalk calls fn on every value of a hash map and returns how many there were.
func batchWalk[K, V any](mp *ebpf.Map, keys []K, vals []V, fn func(*V)) (int, error) {
	var cursor ebpf.MapBatchCursor
	total := 0
	for {
		n, err := mp.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(&vals[i])
		}
		total += n
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
