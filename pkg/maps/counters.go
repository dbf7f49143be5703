// Package maps gives typed Go views of the mptcp-xdp BPF maps: per-CPU counters summed across CPUs,
// converted from the generated wire types to domain types at this edge. Reading needs CAP_BPF.
package maps

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// CountersPin is the name of the counters map in an interface's pin directory.
const CountersPin = datapath.XdpMapMptcpxCounters

// Direction indexes the counters map.
type Direction uint32

// Directions (enum mx_dir).
const (
	Ingress = Direction(datapath.DirIngress)
	Egress  = Direction(datapath.DirEgress)
)

// Counters are one direction's counters summed over every CPU.
type Counters struct {
	Packets [mptcp.NumPacketCounters]uint64
	Options [mptcp.NumClasses]uint64
}

// Option returns the count of one class.
func (c Counters) Option(cl mptcp.Class) uint64 { return c.Options[cl] }

// Sub returns c - o, element-wise.
func (c Counters) Sub(o Counters) Counters {
	for i := range c.Packets {
		c.Packets[i] -= o.Packets[i]
	}
	for i := range c.Options {
		c.Options[i] -= o.Options[i]
	}
	return c
}

// MarshalJSON writes {"packets":{"total":..,"tcp":..,"mptcp":..},"options":{<class>:..}} with keys in
// counter order; the names are a contract (docs/cli.md).
func (c Counters) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"packets":{`)
	for i, v := range c.Packets {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%d", mptcp.PacketCounter(i).String(), v)
	}
	b.WriteString(`},"options":{`)
	for i, v := range c.Options {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:%d", mptcp.Class(i).String(), v)
	}
	b.WriteString(`}}`)
	return b.Bytes(), nil
}

// UnmarshalJSON reads what MarshalJSON writes.
func (c *Counters) UnmarshalJSON(data []byte) error {
	var raw struct {
		Packets map[string]uint64 `json:"packets"`
		Options map[string]uint64 `json:"options"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	for i := range c.Packets {
		c.Packets[i] = raw.Packets[mptcp.PacketCounter(i).String()]
	}
	for i := range c.Options {
		c.Options[i] = raw.Options[mptcp.Class(i).String()]
	}
	return nil
}

// countersSize is the part of a counters map value that holds counters: packets then options. What
// follows (the parse scratch) is not counted, and an older or newer layout that only appended after
// the counters still reads.
const countersSize = 8 * (mptcp.NumPacketCounters + mptcp.NumClasses) // bytes

// ReadCounters sums one direction of a counters map over every possible CPU.
func ReadCounters(m *ebpf.Map, d Direction) (Counters, error) {
	per, err := PerCPUCounters(m, d)
	if err != nil {
		return Counters{}, err
	}
	var c Counters
	for _, p := range per {
		for i := range c.Packets {
			c.Packets[i] += p.Packets[i]
		}
		for i := range c.Options {
			c.Options[i] += p.Options[i]
		}
	}
	return c, nil
}

// PerCPUCounters returns one direction of a counters map CPU by CPU.
func PerCPUCounters(m *ebpf.Map, d Direction) ([]Counters, error) {
	vs := int(m.ValueSize())
	if vs < countersSize {
		return nil, fmt.Errorf("read counters: map value is %d bytes, want at least %d: pinned by another mptcp-xdp version, detach and attach again", vs, countersSize)
	}
	raw, err := m.LookupBytes(uint32(d))
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	// Per-CPU values come back one after the other, each padded to 8 bytes.
	stride := (vs + 7) &^ 7
	if raw == nil || len(raw)%stride != 0 {
		return nil, fmt.Errorf("read counters: %d bytes for values of %d", len(raw), vs)
	}
	out := make([]Counters, len(raw)/stride)
	for cpu := range out {
		v := raw[cpu*stride:]
		for i := range out[cpu].Packets {
			out[cpu].Packets[i] = binary.NativeEndian.Uint64(v[8*i:])
		}
		for i := range out[cpu].Options {
			out[cpu].Options[i] = binary.NativeEndian.Uint64(v[8*(mptcp.NumPacketCounters+i):])
		}
	}
	return out, nil
}

// InterfaceCounters are both directions of one interface.
type InterfaceCounters struct {
	Ingress Counters `json:"ingress"`
	Egress  Counters `json:"egress"`
}

// ReadPinnedCounters reads both directions from the counters map pinned in an interface directory.
func ReadPinnedCounters(dir string) (InterfaceCounters, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, CountersPin), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return InterfaceCounters{}, fmt.Errorf("open counters pinned in %s: %w", dir, err)
	}
	defer m.Close()
	var ic InterfaceCounters
	if ic.Ingress, err = ReadCounters(m, Ingress); err != nil {
		return ic, err
	}
	if ic.Egress, err = ReadCounters(m, Egress); err != nil {
		return ic, err
	}
	return ic, nil
}
