package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// progRow is one row of `prog list -o json`.
type progRow struct {
	ID          uint32   `json:"id"`
	Name        string   `json:"name"`
	Type        string   `json:"type"`
	Tag         string   `json:"tag"`
	LoadedAt    string   `json:"loaded_at,omitempty"`
	RunCount    uint64   `json:"run_count"`
	RunTimeNs   uint64   `json:"run_time_ns"`
	MapIDs      []uint32 `json:"map_ids"`
	AttachedTo  []string `json:"attached_to"` // netns/iface/hook of our attachments
	ByMptcpXDP  bool     `json:"mptcp_xdp"`
	VerifiedIns uint32   `json:"verified_insns,omitempty"`
}

// mapRow is one row of `map list -o json`.
type mapRow struct {
	ID         uint32   `json:"id"`
	Name       string   `json:"name"`
	Type       string   `json:"type"`
	KeySize    uint32   `json:"key_size"`
	ValueSize  uint32   `json:"value_size"`
	MaxEntries uint32   `json:"max_entries"`
	Entries    uint32   `json:"entries"`
	Pins       []string `json:"pins"`
	ByMptcpXDP bool     `json:"mptcp_xdp"`
}

func newProgCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "prog", Short: "Inspect eBPF programs (bpftool-like)"}
	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the programs mptcp-xdp loaded (--all: every program on the host)",
		Long: `List shows each program's id, name, type, tag, run statistics (when
kernel.bpf_stats_enabled=1) and where mptcp-xdp attached it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			where, _, err := attachmentIndex()
			if err != nil {
				return err
			}
			rows := []progRow{}
			for id := ebpf.ProgramID(0); ; {
				next, err := ebpf.ProgramGetNextID(id)
				if errors.Is(err, os.ErrNotExist) {
					break
				}
				if err != nil {
					return fmt.Errorf("list programs: %w", err)
				}
				id = next
				p, err := ebpf.NewProgramFromID(id)
				if err != nil {
					continue // unloaded meanwhile
				}
				row, ok := describeProg(p, id, where[uint32(id)])
				p.Close()
				if ok && (all || row.ByMptcpXDP) {
					rows = append(rows, row)
				}
			}
			return render(cmd, g, map[string]any{"programs": rows}, func(w io.Writer) error {
				fmt.Fprintln(w, "ID\tNAME\tTYPE\tTAG\tRUNS\tAVG NS\tMAPS\tATTACHED TO")
				for _, r := range rows {
					avg := "-"
					if r.RunCount > 0 {
						avg = fmt.Sprint(r.RunTimeNs / r.RunCount)
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.ID, r.Name, r.Type, r.Tag, r.RunCount, avg,
						joinIDs(r.MapIDs), orDash(strings.Join(r.AttachedTo, ",")))
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list every program on the host, not only mptcp-xdp's")
	cmd.AddCommand(list)
	return cmd
}

func describeProg(p *ebpf.Program, id ebpf.ProgramID, where []string) (progRow, bool) {
	info, err := p.Info()
	if err != nil {
		return progRow{}, false
	}
	row := progRow{ID: uint32(id), Name: info.Name, Type: info.Type.String(), Tag: info.Tag, MapIDs: []uint32{}, AttachedTo: where}
	if row.AttachedTo == nil {
		row.AttachedTo = []string{}
	}
	row.ByMptcpXDP = strings.HasPrefix(info.Name, loader.ProgPrefix)
	if lt, ok := info.LoadTime(); ok {
		row.LoadedAt = bootTime().Add(lt).UTC().Format(time.RFC3339)
	}
	if ids, ok := info.MapIDs(); ok {
		for _, m := range ids {
			row.MapIDs = append(row.MapIDs, uint32(m))
		}
	}
	if n, ok := info.VerifiedInstructions(); ok {
		row.VerifiedIns = n
	}
	if st, err := p.Stats(); err == nil {
		row.RunCount = st.RunCount
		row.RunTimeNs = uint64(st.Runtime.Nanoseconds())
	}
	return row, true
}

func joinIDs(ids []uint32) string {
	if len(ids) == 0 {
		return "-"
	}
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}

// attachmentIndex maps program ids to "netns/iface/hook" and map ids to their pins.
func attachmentIndex() (progs map[uint32][]string, mapPins map[uint32][]string, err error) {
	l, err := newLoader()
	if err != nil {
		return nil, nil, err
	}
	atts, err := l.List("")
	if err != nil {
		return nil, nil, err
	}
	progs, mapPins = map[uint32][]string{}, map[uint32][]string{}
	for _, a := range atts {
		for _, p := range a.Programs {
			progs[p.ID] = append(progs[p.ID], a.Netns+"/"+a.Interface+"/"+p.Hook)
		}
		for _, m := range a.Maps {
			mapPins[m.ID] = append(mapPins[m.ID], m.Pin)
		}
	}
	return progs, mapPins, nil
}

func newMapCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "map", Short: "Inspect eBPF maps (bpftool-like)"}
	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the maps mptcp-xdp pinned (--all: every map on the host)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, pins, err := attachmentIndex()
			if err != nil {
				return err
			}
			rows := []mapRow{}
			for id := ebpf.MapID(0); ; {
				next, err := ebpf.MapGetNextID(id)
				if errors.Is(err, os.ErrNotExist) {
					break
				}
				if err != nil {
					return fmt.Errorf("list maps: %w", err)
				}
				id = next
				m, err := ebpf.NewMapFromID(id)
				if err != nil {
					continue
				}
				mi := loader.DescribeMap(m, "")
				m.Close()
				row := mapRow{ID: uint32(id), Name: mi.Name, Type: mi.Type, KeySize: mi.KeySize, ValueSize: mi.ValueSize,
					MaxEntries: mi.MaxEntries, Entries: mi.Entries, Pins: pins[uint32(id)], ByMptcpXDP: len(pins[uint32(id)]) > 0}
				if row.Pins == nil {
					row.Pins = []string{}
				}
				if all || row.ByMptcpXDP {
					rows = append(rows, row)
				}
			}
			return render(cmd, g, map[string]any{"maps": rows}, func(w io.Writer) error {
				fmt.Fprintln(w, "ID\tNAME\tTYPE\tKEY\tVALUE\tENTRIES\tPINNED")
				for _, r := range rows {
					fmt.Fprintf(w, "%d\t%s\t%s\t%dB\t%dB\t%d/%d\t%s\n", r.ID, r.Name, r.Type, r.KeySize, r.ValueSize, r.Entries,
						r.MaxEntries, orDash(strings.Join(r.Pins, ",")))
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list every map on the host, not only mptcp-xdp's")
	cmd.AddCommand(list, newMapDumpCmd(g))
	return cmd
}

// dumpEntry is one entry of `map dump -o json`: raw bytes in hex, and the decoded value for the maps
// mptcp-xdp knows.
type dumpEntry struct {
	Key     string   `json:"key"`
	Value   string   `json:"value,omitempty"`
	PerCPU  []string `json:"per_cpu,omitempty"`
	Decoded any      `json:"decoded,omitempty"`
}

type dumpMap struct {
	Netns     string      `json:"netns"`
	Interface string      `json:"interface"`
	Name      string      `json:"name"`
	ID        uint32      `json:"id"`
	Type      string      `json:"type"`
	Pin       string      `json:"pin"`
	Entries   []dumpEntry `json:"entries"`
}

func newMapDumpCmd(g *globalFlags) *cobra.Command {
	var iface string
	cmd := &cobra.Command{
		Use:   "dump NAME",
		Short: "Dump a pinned mptcp-xdp map by name (of every interface, or --iface)",
		Long: `Dump prints every entry of the named map as hex, and decodes the maps mptcp-xdp knows
(mptcpx_counters per CPU and summed, mptcpx_meta).`,
		Example: "  mptcp-xdp map dump mptcpx_counters --iface eth0 -o json",
		Args:    cobra.ExactArgs(1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"mptcpx_counters", "mptcpx_meta"}, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := newLoader()
			if err != nil {
				return err
			}
			atts, err := l.List(selectedNetns(g))
			if err != nil {
				return err
			}
			out := []dumpMap{}
			for _, a := range atts {
				if iface != "" && a.Interface != iface {
					continue
				}
				for _, mi := range a.Maps {
					if mi.Name != args[0] {
						continue
					}
					d, err := dumpPinned(a, mi)
					if err != nil {
						return err
					}
					out = append(out, d)
				}
			}
			if len(out) == 0 {
				return fmt.Errorf("no pinned map named %q (see `mptcp-xdp map list`)", args[0])
			}
			return render(cmd, g, map[string]any{"maps": out}, func(w io.Writer) error {
				for _, d := range out {
					fmt.Fprintf(w, "%s/%s %s (id %d, %s)\n", d.Netns, d.Interface, d.Name, d.ID, d.Type)
					for _, e := range d.Entries {
						if e.Decoded != nil {
							fmt.Fprintf(w, "  key %s: %s\n", e.Key, decodedString(e.Decoded))
							continue
						}
						if e.PerCPU != nil {
							fmt.Fprintf(w, "  key %s:\n", e.Key)
							for cpu, v := range e.PerCPU {
								fmt.Fprintf(w, "    cpu%d %s\n", cpu, v)
							}
							continue
						}
						fmt.Fprintf(w, "  key %s value %s\n", e.Key, e.Value)
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&iface, "iface", "", "only the map of this interface")
	return cmd
}

func dumpPinned(a loader.Attachment, mi loader.MapInfo) (dumpMap, error) {
	m, err := ebpf.LoadPinnedMap(mi.Pin, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return dumpMap{}, fmt.Errorf("open %s: %w", mi.Pin, err)
	}
	defer m.Close()
	d := dumpMap{Netns: a.Netns, Interface: a.Interface, Name: mi.Name, ID: mi.ID, Type: mi.Type, Pin: mi.Pin, Entries: []dumpEntry{}}
	perCPU := m.Type() == ebpf.PerCPUArray || m.Type() == ebpf.PerCPUHash || m.Type() == ebpf.LRUCPUHash
	var key []byte
	it := m.Iterate()
	if perCPU {
		var vals [][]byte
		for it.Next(&key, &vals) {
			e := dumpEntry{Key: hex.EncodeToString(key)}
			for _, v := range vals {
				e.PerCPU = append(e.PerCPU, hex.EncodeToString(v))
			}
			d.Entries = append(d.Entries, e)
		}
	} else {
		var val []byte
		for it.Next(&key, &val) {
			d.Entries = append(d.Entries, dumpEntry{Key: hex.EncodeToString(key), Value: hex.EncodeToString(val)})
		}
	}
	if err := it.Err(); err != nil {
		return d, fmt.Errorf("iterate %s: %w", mi.Pin, err)
	}
	// Decode what we know.
	switch mi.Name {
	case datapath.XdpMapMptcpxCounters:
		for i := range d.Entries {
			dir := maps.Direction(i)
			sum, err := maps.ReadCounters(m, dir)
			if err != nil {
				return d, err
			}
			per, err := maps.PerCPUCounters(m, dir)
			if err != nil {
				return d, err
			}
			d.Entries[i].Decoded = map[string]any{"direction": directionName(dir), "sum": sum, "per_cpu": per}
		}
	case datapath.XdpMapMptcpxMeta:
		var meta datapath.XdpMxMeta
		if err := m.Lookup(uint32(0), &meta); err == nil && len(d.Entries) > 0 {
			d.Entries[0].Decoded = meta
		}
	}
	return d, nil
}

func directionName(d maps.Direction) string {
	if d == maps.Ingress {
		return "ingress"
	}
	return "egress"
}

func decodedString(v any) string {
	switch x := v.(type) {
	case map[string]any:
		if c, ok := x["sum"].(maps.Counters); ok {
			var b strings.Builder
			fmt.Fprintf(&b, "%s total=%d tcp=%d mptcp=%d", x["direction"], c.Packets[mptcp.PacketsTotal], c.Packets[mptcp.PacketsTCP], c.Packets[mptcp.PacketsMPTCP])
			for _, cl := range mptcp.Classes() {
				if c.Options[cl] != 0 {
					fmt.Fprintf(&b, " %s=%d", cl, c.Options[cl])
				}
			}
			return b.String()
		}
	case datapath.XdpMxMeta:
		return fmt.Sprintf("ifindex=%d flags=%#x xdp_mode=%d ingress=%d egress=%d netns_ino=%d", x.Ifindex, x.Flags, x.XdpMode, x.Ingress, x.Egress, x.NetnsIno)
	}
	return fmt.Sprint(v)
}
