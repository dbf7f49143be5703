package loader

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// MapDump is every entry of one pinned map: the output of `map dump -o json` (docs/cli.md).
type MapDump struct {
	Kind      Kind       `json:"kind"`
	Netns     string     `json:"netns,omitempty"`
	Interface string     `json:"interface,omitempty"`
	Name      string     `json:"name"` // the pin's name (the kernel's is cut at 15 characters)
	ID        uint32     `json:"id"`
	Type      string     `json:"type"`
	Pin       string     `json:"pin"`
	Entries   []MapEntry `json:"entries"`
}

// MapEntry is one entry: raw bytes in hex, and the decoded value for the maps this package knows.
type MapEntry struct {
	Key     string   `json:"key"`
	Value   string   `json:"value,omitempty"`
	PerCPU  []string `json:"per_cpu,omitempty"`
	Decoded any      `json:"decoded,omitempty"` // a CountersEntry, AttachState or HistoryConfig
}

// CountersEntry is one direction of a datapath's counters map, decoded.
type CountersEntry struct {
	Direction string          `json:"direction"` // ingress or egress
	Sum       maps.Counters   `json:"sum"`
	PerCPU    []maps.Counters `json:"per_cpu"`
}

func (c CountersEntry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s total=%d tcp=%d mptcp=%d", c.Direction, c.Sum.Packets[mptcp.PacketsTotal], c.Sum.Packets[mptcp.PacketsTCP], c.Sum.Packets[mptcp.PacketsMPTCP])
	for _, cl := range mptcp.Classes() {
		if c.Sum.Options[cl] != 0 {
			fmt.Fprintf(&b, " %s=%d", cl, c.Sum.Options[cl])
		}
	}
	return b.String()
}

// AttachState is a datapath's attach state (its meta map), decoded.
type AttachState struct {
	Ifindex    uint32 `json:"ifindex"`
	Flags      uint32 `json:"flags"`    // 1 clsact added by mptcp-xdp, 2 XDP through netlink, 4 TC through clsact
	XDPMode    uint32 `json:"xdp_mode"` // 0 none, 1 native, 2 generic
	Ingress    uint32 `json:"ingress"`  // 0 xdp, 1 tc
	Egress     uint32 `json:"egress"`   // 1 when egress is counted
	NetnsIno   uint64 `json:"netns_ino"`
	AttachedNs uint64 `json:"attached_ns"` // wall clock, ns since the epoch
}

func (a AttachState) String() string {
	return fmt.Sprintf("ifindex=%d flags=%#x xdp_mode=%d ingress=%d egress=%d netns_ino=%d", a.Ifindex, a.Flags, a.XDPMode, a.Ingress, a.Egress, a.NetnsIno)
}

// HistoryConfig is the history's configuration map, decoded.
type HistoryConfig struct {
	MaxAge   string `json:"max_age"`
	MaxAgeNs uint64 `json:"max_age_ns"`
}

func (h HistoryConfig) String() string { return "max_age=" + h.MaxAge }

// directionName names a direction of the counters map.
func directionName(d maps.Direction) string {
	if d == maps.Ingress {
		return "ingress"
	}
	return "egress"
}

// DumpMap reads every entry of a map pin (from Pins) and decodes those of the maps it knows.
func DumpMap(p Pin) (MapDump, error) {
	if p.Object != ObjectMap {
		return MapDump{}, fmt.Errorf("dump %s: not a map pin", p.Path)
	}
	m, err := ebpf.LoadPinnedMap(p.Path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return MapDump{}, fmt.Errorf("open %s: %w", p.Path, err)
	}
	defer m.Close()
	mi := DescribeMap(m, p.Path)
	d := MapDump{Kind: p.Kind, Netns: p.Netns, Interface: p.Interface, Name: p.PinName(), ID: mi.ID, Type: mi.Type, Pin: p.Path, Entries: []MapEntry{}}
	perCPU := m.Type() == ebpf.PerCPUArray || m.Type() == ebpf.PerCPUHash || m.Type() == ebpf.LRUCPUHash
	var key []byte
	it := m.Iterate()
	if perCPU {
		var vals [][]byte
		for it.Next(&key, &vals) {
			e := MapEntry{Key: hex.EncodeToString(key)}
			for _, v := range vals {
				e.PerCPU = append(e.PerCPU, hex.EncodeToString(v))
			}
			d.Entries = append(d.Entries, e)
		}
	} else {
		var val []byte
		for it.Next(&key, &val) {
			d.Entries = append(d.Entries, MapEntry{Key: hex.EncodeToString(key), Value: hex.EncodeToString(val)})
		}
	}
	if err := it.Err(); err != nil {
		return d, fmt.Errorf("iterate %s: %w", p.Path, err)
	}
	if err := decodeEntries(p, m, d.Entries); err != nil {
		return d, fmt.Errorf("decode %s: %w", p.Path, err)
	}
	return d, nil
}

// decodeEntries fills in Decoded for the maps this package knows: the datapath's counters and
// attach state, and the history's configuration. The keys of all three are u32 indexes.
func decodeEntries(p Pin, m *ebpf.Map, entries []MapEntry) error {
	for i := range entries {
		raw, err := hex.DecodeString(entries[i].Key)
		if err != nil || len(raw) != 4 {
			return nil // not an index-keyed map: nothing to decode
		}
		idx := binary.NativeEndian.Uint32(raw)
		switch {
		case p.Kind == KindDatapath && p.PinName() == pinCounters:
			dir := maps.Direction(idx)
			per, err := maps.PerCPUCounters(m, dir)
			if err != nil {
				return err
			}
			sum, err := maps.ReadCounters(m, dir)
			if err != nil {
				return err
			}
			entries[i].Decoded = CountersEntry{Direction: directionName(dir), Sum: sum, PerCPU: per}
		case p.Kind == KindDatapath && p.PinName() == pinMeta:
			var meta Meta
			if err := m.Lookup(idx, &meta); err != nil {
				return fmt.Errorf("read attach state: %w", err)
			}
			entries[i].Decoded = AttachState{Ifindex: meta.Ifindex, Flags: uint32(meta.Flags), XDPMode: meta.XdpMode, Ingress: meta.Ingress,
				Egress: meta.Egress, NetnsIno: meta.NetnsIno, AttachedNs: meta.AttachedNs}
		case p.Kind == KindHistory && p.PinName() == PinHistoryCfg:
			var cfg datapath.SockOpsMxHistCfg
			if err := m.Lookup(idx, &cfg); err != nil {
				return fmt.Errorf("read history configuration: %w", err)
			}
			entries[i].Decoded = HistoryConfig{MaxAge: time.Duration(cfg.MaxAgeNs).String(), MaxAgeNs: cfg.MaxAgeNs}
		}
	}
	return nil
}
