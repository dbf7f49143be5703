package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// progRow is one row of `prog list -o json`.
type progRow struct {
	ID          uint32       `json:"id"`
	Name        string       `json:"name"`
	Type        string       `json:"type"`
	Tag         string       `json:"tag"`
	LoadedAt    string       `json:"loaded_at,omitempty"`
	RunCount    uint64       `json:"run_count"`
	RunTimeNs   uint64       `json:"run_time_ns"`
	MapIDs      []uint32     `json:"map_ids"`
	AttachedTo  []string     `json:"attached_to"` // netns/iface/hook of our attachments
	ByMptcpXDP  bool         `json:"mptcp_xdp"`
	VerifiedIns uint32       `json:"verified_insns,omitempty"`
	Kind        string       `json:"kind,omitempty"` // datapath, balancer, decap or history: whose pins hold it
	Pins        []loader.Pin `json:"pins"`           // the link and program pins that hold it
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
	Kind       string   `json:"kind,omitempty"`      // datapath, balancer, decap or history
	Netns      string   `json:"netns,omitempty"`     // the namespace it is pinned for (not the history's)
	Interface  string   `json:"interface,omitempty"` // the interface it is pinned for (the datapath's)
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
			progPins, _, err := pinIndex()
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
				row, ok := describeProg(p, id, progPins[uint32(id)])
				p.Close()
				if ok && (all || row.ByMptcpXDP) {
					rows = append(rows, row)
				}
			}
			return render(cmd, g, map[string]any{"programs": rows}, func(w io.Writer) error {
				fmt.Fprintln(w, "ID\tNAME\tTYPE\tTAG\tRUNS\tAVG NS\tMAPS\tKIND\tATTACHED TO")
				for _, r := range rows {
					avg := "-"
					if r.RunCount > 0 {
						avg = fmt.Sprint(r.RunTimeNs / r.RunCount)
					}
					where := r.AttachedTo
					if len(where) == 0 {
						for _, p := range r.Pins {
							where = append(where, p.Hook) // attached to no interface: the history's cgroup
						}
					}
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.ID, r.Name, r.Type, r.Tag, r.RunCount, avg,
						joinIDs(r.MapIDs), orDash(r.Kind), orDash(strings.Join(where, ",")))
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list every program on the host, not only mptcp-xdp's")
	cmd.AddCommand(list)
	return cmd
}

func describeProg(p *ebpf.Program, id ebpf.ProgramID, pins []loader.Pin) (progRow, bool) {
	info, err := p.Info()
	if err != nil {
		return progRow{}, false
	}
	row := progRow{ID: uint32(id), Name: info.Name, Type: info.Type.String(), Tag: info.Tag, MapIDs: []uint32{}, AttachedTo: []string{}, Pins: []loader.Pin{}}
	for _, pin := range pins {
		if w := pin.Where(); w != "" {
			row.AttachedTo = append(row.AttachedTo, w)
		}
		row.Pins = append(row.Pins, pin)
		row.Kind = string(pin.Kind)
	}
	row.ByMptcpXDP = strings.HasPrefix(info.Name, loader.ProgPrefix) || len(pins) > 0
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

// pinIndex reads the pin registry under the shared lock and indexes it: program ids to the link and
// program pins that hold them, map ids to their pins.
func pinIndex() (progs map[uint32][]loader.Pin, mapPins map[uint32][]loader.Pin, err error) {
	pins, err := readPins("")
	if err != nil {
		return nil, nil, err
	}
	progs, mapPins = map[uint32][]loader.Pin{}, map[uint32][]loader.Pin{}
	for _, p := range pins {
		switch {
		case p.Object == loader.ObjectMap && p.ID != 0:
			mapPins[p.ID] = append(mapPins[p.ID], p)
		case p.Object != loader.ObjectMap && p.ProgID != 0:
			progs[p.ProgID] = append(progs[p.ProgID], p)
		}
	}
	return progs, mapPins, nil
}

// readPins lists the pin registry (of one namespace directory, or all with "") under the shared
// lock.
func readPins(nsDir string) (pins []loader.Pin, err error) {
	err = readLocked(func(l *loader.Loader) error {
		pins, err = l.Pins(nsDir)
		return readError(err)
	})
	return pins, err
}

func newMapCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "map", Short: "Inspect eBPF maps (bpftool-like)"}
	var all bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the maps mptcp-xdp pinned (--all: every map on the host)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, pins, err := pinIndex()
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
					MaxEntries: mi.MaxEntries, Entries: mi.Entries, Pins: []string{}, ByMptcpXDP: len(pins[uint32(id)]) > 0}
				for _, p := range pins[uint32(id)] {
					row.Pins = append(row.Pins, p.Path)
					row.Kind, row.Netns, row.Interface = string(p.Kind), p.Netns, p.Interface
				}
				if all || row.ByMptcpXDP {
					rows = append(rows, row)
				}
			}
			return render(cmd, g, map[string]any{"maps": rows}, func(w io.Writer) error {
				fmt.Fprintln(w, "ID\tNAME\tTYPE\tKEY\tVALUE\tENTRIES\tKIND\tPINNED")
				for _, r := range rows {
					fmt.Fprintf(w, "%d\t%s\t%s\t%dB\t%dB\t%d/%d\t%s\t%s\n", r.ID, r.Name, r.Type, r.KeySize, r.ValueSize, r.Entries,
						r.MaxEntries, orDash(r.Kind), orDash(strings.Join(r.Pins, ",")))
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list every map on the host, not only mptcp-xdp's")
	cmd.AddCommand(list, newMapDumpCmd(g))
	return cmd
}

func newMapDumpCmd(g *globalFlags) *cobra.Command {
	var iface string
	cmd := &cobra.Command{
		Use:   "dump NAME",
		Short: "Dump a pinned mptcp-xdp map by name (of every interface and namespace, or --iface, --netns)",
		Long: `Dump prints every entry of the named map as hex wherever mptcp-xdp pinned it (datapath,
balancer, decapsulator, history), and decodes the maps it knows (mptcpx_counters per CPU and summed,
mptcpx_meta, mptcpx_hist_cfg).`,
		Example: "  mptcp-xdp map dump mptcpx_counters --iface eth0 -o json",
		Args:    cobra.ExactArgs(1),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			pins, err := readPins("")
			if err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			var names []string
			for _, p := range pins {
				if p.Object == loader.ObjectMap && !slices.Contains(names, p.PinName()) {
					names = append(names, p.PinName())
				}
			}
			return names, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := []loader.MapDump{}
			if err := readLocked(func(l *loader.Loader) error {
				pins, err := l.Pins(selectedNetns(g))
				if err != nil {
					return readError(err)
				}
				for _, p := range pins {
					if p.Object != loader.ObjectMap || (p.PinName() != args[0] && p.Name != args[0]) || (iface != "" && p.Interface != iface) {
						continue
					}
					d, err := loader.DumpMap(p)
					if err != nil {
						return err
					}
					out = append(out, d)
				}
				return nil
			}); err != nil {
				return err
			}
			if len(out) == 0 {
				return fmt.Errorf("no pinned map named %q (see `mptcp-xdp map list`)", args[0])
			}
			return render(cmd, g, map[string]any{"maps": out}, func(w io.Writer) error {
				for _, d := range out {
					fmt.Fprintf(w, "%s %s %s (id %d, %s)\n", d.Kind, dumpWhere(d), d.Name, d.ID, d.Type)
					for _, e := range d.Entries {
						if e.Decoded != nil {
							fmt.Fprintf(w, "  key %s: %v\n", e.Key, e.Decoded)
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

// dumpWhere is "netns/iface", "netns" or "host-wide" for a dumped map.
func dumpWhere(d loader.MapDump) string {
	switch {
	case d.Interface != "":
		return d.Netns + "/" + d.Interface
	case d.Netns != "":
		return d.Netns
	}
	return "host-wide"
}
