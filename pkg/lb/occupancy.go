package lb

import (
	"fmt"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Occupancy is what the flow and token tables hold: their entries, and how many point at each
// backend id.
type Occupancy struct {
	Flows, Tokens                   int
	FlowsByBackend, TokensByBackend map[uint32]int
}

// Occupancy walks the flow and token tables (walk: in batches, one system call per few thousand
// entries where Iterate makes two per entry) and counts their entries per backend. Tables that
// change meanwhile give counts of one moment or another per entry, as any walk does, but no entry
// counted twice.
func (m *Maps) Occupancy() (Occupancy, error) {
	o := Occupancy{FlowsByBackend: map[uint32]int{}, TokensByBackend: map[uint32]int{}}
	for _, mp := range m.flowMaps() {
		err := walk(mp, func(_ *datapath.LbLbFlowId, v *datapath.LbLbFlow) error {
			o.Flows++
			o.FlowsByBackend[v.Backend]++
			return nil
		})
		if err != nil {
			return Occupancy{}, fmt.Errorf("count flows: %w", err)
		}
	}
	err := walk(m.Tokens, func(_ *datapath.LbLbTokenKey, v *datapath.LbLbToken) error {
		o.Tokens++
		o.TokensByBackend[v.Backend]++
		return nil
	})
	if err != nil {
		return Occupancy{}, fmt.Errorf("count tokens: %w", err)
	}
	return o, nil
}
