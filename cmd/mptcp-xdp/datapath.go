package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// bpffsRoot can be changed by tests; operators keep the default.
var bpffsRoot = loader.DefaultRoot

func newLoader() (*loader.Loader, error) { return loader.New(bpffsRoot) }

// privilegedLoader is newLoader for the commands that change the datapath: it first checks the
// capabilities they need (and CAP_SYS_ADMIN for --netns), naming the missing ones.
func privilegedLoader(g *globalFlags) (*loader.Loader, error) {
	if err := loader.CheckPrivileges(g.netns != ""); err != nil {
		return nil, err
	}
	return newLoader()
}

// listAttachments lists the attachments (of one namespace directory, or all with "") under the
// shared lock, which the caller releases once it has read what it needs from the pins: a
// concurrent attach or detach is then never seen half done.
func listAttachments(nsDir string) ([]loader.Attachment, func(), error) {
	l, err := newLoader()
	if err != nil {
		return nil, nil, readError(err)
	}
	unlock, err := l.RLock()
	if err != nil {
		return nil, nil, readError(err)
	}
	atts, err := l.List(nsDir)
	if err != nil {
		unlock()
		return nil, nil, readError(err)
	}
	return atts, unlock, nil
}

// readLocked runs fn with a loader under the shared lock, so that what it reads from the pins is
// never an attach or detach half done. Errors of opening and locking say what a reader lacks.
func readLocked(fn func(l *loader.Loader) error) error {
	l, err := newLoader()
	if err != nil {
		return readError(err)
	}
	unlock, err := l.RLock()
	if err != nil {
		return readError(err)
	}
	defer unlock()
	return fn(l)
}

// readError names what a reader lacks when the pins are not its to read.
func readError(err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return fmt.Errorf("%w: reading the pins needs root or CAP_DAC_OVERRIDE", err)
	}
	return err
}

func newAttachCmd(g *globalFlags) *cobra.Command {
	var (
		mode, ingress, tc string
		noEgress, force   bool
	)
	cmd := &cobra.Command{
		Use:   "attach IFACE",
		Short: "Attach the datapath to an interface (XDP ingress, TC egress) and pin it",
		Long: `Attach loads the MPTCP counting programs, attaches them to IFACE and pins them under
/sys/fs/bpf/mptcp-xdp/<netns>/<iface>/, so that they keep counting after the command exits.
Attaching again updates the programs in place and keeps the counters.

The ingress hook is, by default (--ingress auto), the one that costs least for counting: TC
ingress on a veth (its XDP, even native, runs on skbs already built and costs GRO) and where the
driver refuses native XDP (generic XDP costs more than the parser); native XDP elsewhere. An XDP
mode asked for (--mode native or generic) means XDP. status says which was chosen and why.`,
		Example: "  mptcp-xdp attach eth0\n  mptcp-xdp --netns lab attach veth1 --mode generic --ingress tc",
		Args:    ifaceArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := privilegedLoader(g)
			if err != nil {
				return err
			}
			a, err := l.Attach(loader.AttachOptions{
				Iface: args[0], Netns: g.netns, Mode: loader.XDPMode(mode), Ingress: loader.IngressHook(ingress),
				TC: loader.TCMechanism(tc), Egress: !noEgress, Force: force,
			})
			if err != nil {
				return err
			}
			warnPrivateBPFFS(cmd.ErrOrStderr(), l.Root)
			return render(cmd, g, a, func(w io.Writer) error {
				fmt.Fprintf(w, "attached to %s (netns %s): %s\n", a.Interface, a.Netns, describeHooks(*a))
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&mode, "mode", "auto", "XDP mode: auto (native, else generic), native or generic")
	cmd.Flags().StringVar(&ingress, "ingress", "auto", "ingress hook: auto (the one that costs least here: tc on a veth or where the driver lacks native XDP, else native XDP), xdp or tc")
	cmd.Flags().StringVar(&tc, "tc", "auto", "TC mechanism: auto (tcx, else clsact), tcx or clsact")
	cmd.Flags().BoolVar(&noEgress, "no-egress", false, "do not count egress")
	cmd.Flags().BoolVar(&force, "force", false, "replace another tool's XDP program attached through netlink (never one held by a bpf_link); detach puts it back")
	for f, vals := range map[string][]string{"mode": {"auto", "native", "generic"}, "ingress": {"auto", "xdp", "tc"}, "tc": {"auto", "tcx", "clsact"}} {
		_ = cmd.RegisterFlagCompletionFunc(f, fixedCompletion(vals))
	}
	return cmd
}

func fixedCompletion(vals []string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return vals, cobra.ShellCompDirectiveNoFileComp
	}
}

func describeHooks(a loader.Attachment) string {
	var parts []string
	for _, p := range a.Programs {
		s := fmt.Sprintf("%s via %s (prog %d)", p.Hook, p.Mechanism, p.ID)
		if p.Hook == "xdp" && a.XDPMode != "" {
			s = fmt.Sprintf("xdp %s via %s (prog %d)", a.XDPMode, p.Mechanism, p.ID)
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "nothing attached"
	}
	s := strings.Join(parts, ", ")
	if strings.HasPrefix(a.IngressReason, "auto: ") {
		s += "; ingress " + a.IngressReason
	}
	return s
}

func newDetachCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "detach IFACE",
		Short: "Detach the datapath from an interface and remove everything it made",
		Long: `Detach removes the links, filters, the clsact qdisc if mptcp-xdp added it, and the pins of IFACE.
With --netns naming a namespace that no longer exists, it removes the stale pins that namespace left.
It removes only the pins mptcp-xdp makes: another file in the pin directory is left, and reported.`,
		Args:              ifaceArgs(cobra.ExactArgs(1)),
		PersistentPreRunE: netnsMayBeGone(g, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := privilegedLoader(g)
			if err != nil {
				return err
			}
			if err := l.Detach(g.netns, args[0]); err != nil {
				return err
			}
			return render(cmd, g, map[string]string{"detached": args[0]}, func(w io.Writer) error {
				fmt.Fprintf(w, "detached from %s\n", args[0])
				return nil
			})
		},
	}
}

// ifaceArgs checks the positional arguments with check, then each as an interface name
// (loader.ValidIfaceName), before anything runs.
func ifaceArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return err
		}
		for _, a := range args {
			if err := loader.ValidIfaceName(a); err != nil {
				return err
			}
		}
		return nil
	}
}

// netnsMayBeGone is the PersistentPreRunE of the commands that remove stale pins (detach, lb
// detach, lb decap --detach): the root command's checks, except that while removing() (always,
// when nil) the named network namespace may be gone. Its pins are then what is left to remove.
func netnsMayBeGone(g *globalFlags, removing func() bool) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if g.netns == "" || (removing != nil && !removing()) || netns.Exists(g.netns) {
			return cmd.Root().PersistentPreRunE(cmd, args)
		}
		if err := loader.ValidNetnsName(g.netns); err != nil {
			return err
		}
		return validateOutput(g.output)
	}
}

// selectedNetns is the namespace directory a listing is limited to: --netns, else all ("").
func selectedNetns(g *globalFlags) string { return g.netns }

func newStatusCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show what mptcp-xdp has attached: the datapath's interfaces, balancers, decapsulators, the history",
		Long: `Status lists every attachment of the datapath (all namespaces, or the one --netns names): hooks,
XDP mode, TC mechanism, program ids, map fill and problems; then every balancer and decapsulator
(their interfaces, programs and maps) and, without --netns, the host-wide subflow history.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var st *loader.Status
			if err := readLocked(func(l *loader.Loader) (err error) {
				st, err = l.Status(selectedNetns(g))
				return readError(err)
			}); err != nil {
				return err
			}
			return render(cmd, g, st, func(w io.Writer) error {
				fmt.Fprintln(w, "NETNS\tINTERFACE\tIFINDEX\tINGRESS\tXDP MODE\tEGRESS\tPROGRAMS\tMAPS\tSINCE\tPROBLEMS")
				for _, a := range st.Attachments {
					var progs, ms []string
					for _, p := range a.Programs {
						progs = append(progs, fmt.Sprintf("%s:%s:%d", p.Hook, p.Mechanism, p.ID))
					}
					for _, m := range a.Maps {
						ms = append(ms, fmt.Sprintf("%s %d/%d", m.Name, m.Entries, m.MaxEntries))
					}
					since := "-"
					if !a.AttachedAt.IsZero() {
						since = a.AttachedAt.Local().Format(time.DateTime)
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", a.Netns, a.Interface, a.Ifindex, a.Ingress,
						orDash(a.XDPMode), a.Egress, strings.Join(progs, ","), strings.Join(ms, ","), since, orDash(strings.Join(a.Problems, "; ")))
				}
				sets := st.Balancers
				if st.History != nil {
					sets = append(sets, *st.History)
				}
				if len(sets) == 0 {
					return nil
				}
				fmt.Fprintln(w)
				fmt.Fprintln(w, "KIND\tNETNS\tPROGRAMS\tMAPS\tPIN DIR\tPROBLEMS")
				for _, s := range sets {
					var progs, ms []string
					for _, p := range s.Programs {
						where := p.Hook
						if p.Interface != "" {
							where = p.Interface + ":" + p.Hook
						}
						progs = append(progs, fmt.Sprintf("%s:%s:%d", where, p.Mechanism, p.ID))
					}
					for _, m := range s.Maps {
						ms = append(ms, fmt.Sprintf("%s %d/%d", m.Name, m.Entries, m.MaxEntries))
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Kind, orDash(s.Netns), orDash(strings.Join(progs, ",")),
						orDash(strings.Join(ms, ",")), s.PinDir, orDash(strings.Join(s.Problems, "; ")))
				}
				return nil
			})
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// statsInterface is one row of `stats -o json`.
type statsInterface struct {
	Netns   string        `json:"netns"`
	Name    string        `json:"name"`
	Ifindex int           `json:"ifindex"`
	Ingress maps.Counters `json:"ingress"`
	Egress  maps.Counters `json:"egress"`
}

func newStatsCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats [IFACE]",
		Short: "Show the datapath's packet and MPTCP option counters",
		Long: `Stats prints, per interface and direction, the packet totals (total, tcp, mptcp) and the count
of every MPTCP option class. Counters are per-CPU in the kernel and summed here.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			atts, unlock, err := listAttachments(selectedNetns(g))
			if err != nil {
				return err
			}
			defer unlock()
			rows := []statsInterface{}
			for _, a := range atts {
				if len(args) == 1 && a.Interface != args[0] {
					continue
				}
				c, err := maps.ReadPinnedCounters(a.PinDir)
				if err != nil {
					return readError(err)
				}
				rows = append(rows, statsInterface{Netns: a.Netns, Name: a.Interface, Ifindex: a.Ifindex, Ingress: c.Ingress, Egress: c.Egress})
			}
			if len(args) == 1 && len(rows) == 0 {
				return fmt.Errorf("mptcp-xdp is not attached to %s (see `mptcp-xdp status`)", args[0])
			}
			return render(cmd, g, map[string]any{"interfaces": rows}, func(w io.Writer) error {
				fmt.Fprint(w, "COUNTER")
				for _, r := range rows {
					fmt.Fprintf(w, "\t%s/%s rx\t%s/%s tx", r.Netns, r.Name, r.Netns, r.Name)
				}
				fmt.Fprintln(w)
				for i := 0; i < mptcp.NumPacketCounters; i++ {
					fmt.Fprintf(w, "packets.%s", mptcp.PacketCounter(i))
					for _, r := range rows {
						fmt.Fprintf(w, "\t%d\t%d", r.Ingress.Packets[i], r.Egress.Packets[i])
					}
					fmt.Fprintln(w)
				}
				for _, cl := range mptcp.Classes() {
					fmt.Fprintf(w, "%s", cl)
					for _, r := range rows {
						fmt.Fprintf(w, "\t%d\t%d", r.Ingress.Options[cl], r.Egress.Options[cl])
					}
					fmt.Fprintln(w)
				}
				return nil
			})
		},
	}
	return cmd
}
