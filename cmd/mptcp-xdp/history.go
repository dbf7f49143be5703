package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

func newHistoryCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Subflow history (host-wide sock_ops): closed subflows keep counting in their connection",
		Long: `history enables a sock_ops program on the root of the cgroup v2 hierarchy that follows every
MPTCP subflow of the host, in every network namespace: when it was established and closed, and its
final tcp_info figures when it closes. With it enabled, 'conn list', 'conn show', 'subflow list' and
'serve' add recently closed subflows (closed: true) to the live ones, so a connection's byte and
retransmit counters never go backwards when one of its subflows goes away. The history is an LRU
map of --max-entries entries; closed subflows are listed for --max-age and then dropped. Pins live
under /sys/fs/bpf/mptcp-xdp-history/ and keep working without any mptcp-xdp process; 'history
disable' removes them all. Subflows established before 'enable' are not followed. See docs/conn.md.`,
	}
	cmd.AddCommand(newHistoryEnableCmd(g), newHistoryDisableCmd(g), newHistoryStatusCmd(g))
	return cmd
}

func newHistoryEnableCmd(g *globalFlags) *cobra.Command {
	var o loader.HistoryOptions
	cmd := &cobra.Command{
		Use:   "enable",
		Short: "attach the sock_ops program to the cgroup v2 root (again: replace it in place, keep the history)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if g.netns != "" {
				return fmt.Errorf("the subflow history is host-wide (every network namespace): --netns does not apply")
			}
			if err := loader.CheckPrivileges(false); err != nil {
				return err
			}
			l, err := newLoader()
			if err != nil {
				return err
			}
			st, err := l.EnableHistory(o)
			if err != nil {
				return err
			}
			return renderHistory(cmd, g, st)
		},
	}
	cmd.Flags().Uint32Var(&o.MaxEntries, "max-entries", loader.DefaultHistoryEntries, "size of the history map (LRU: the least recently used entry goes when full); kept when already enabled")
	cmd.Flags().DurationVar(&o.MaxAge, "max-age", loader.DefaultHistoryMaxAge, "how long a closed subflow is listed after it closed")
	cmd.Flags().StringVar(&o.Cgroup, "cgroup", "", "cgroup v2 directory to attach to (default: the root of the mounted cgroup v2 hierarchy; one is mounted at "+loader.FallbackCgroup2+" when none is)")
	return cmd
}

func newHistoryDisableCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "disable",
		Short: "detach the sock_ops program and remove its pins (the history is forgotten)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := newLoader()
			if err != nil {
				return err
			}
			if err := l.DisableHistory(); err != nil {
				return err
			}
			st, err := l.HistoryStatus()
			if err != nil {
				return err
			}
			return renderHistory(cmd, g, st)
		},
	}
}

func newHistoryStatusCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show whether the subflow history is enabled, its program, map fill and age limit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := newLoader()
			if err != nil {
				return err
			}
			st, err := l.HistoryStatus()
			if err != nil {
				return readError(err)
			}
			return renderHistory(cmd, g, st)
		},
	}
}

func renderHistory(cmd *cobra.Command, g *globalFlags, st *loader.HistoryStatus) error {
	return render(cmd, g, st, func(w io.Writer) error {
		if !st.Enabled {
			_, err := fmt.Fprintf(w, "subflow history: disabled\t(pins: %s)\n", st.PinDir)
			return err
		}
		fmt.Fprintf(w, "subflow history:\tenabled\n")
		if st.Cgroup != "" {
			mounted := ""
			if st.MountedNow {
				mounted = " (cgroup2 mounted there by this command)"
			}
			fmt.Fprintf(w, "cgroup:\t%s%s\n", st.Cgroup, mounted)
		}
		fmt.Fprintf(w, "cgroup id:\t%d\n", st.CgroupID)
		fmt.Fprintf(w, "program:\t%s (id %d, link %d)\n", st.Program.Name, st.Program.ID, st.LinkID)
		fmt.Fprintf(w, "map:\t%s %s, %d/%d entries\n", st.Map.Name, st.Map.Type, st.Map.Entries, st.Map.MaxEntries)
		fmt.Fprintf(w, "max age:\t%s\n", time.Duration(st.MaxAgeNs))
		_, err := fmt.Fprintf(w, "pins:\t%s\n", st.PinDir)
		return err
	})
}
