package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

func newLBCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lb",
		Short: "MPTCP-aware XDP load balancer: steers MP_JOIN subflows to their connection's backend",
		Long: `lb runs an L4 load balancer at the XDP hook with direct server return. New connections to a VIP
are placed by Maglev consistent hashing; the server's MPTCP token is learned in the datapath from
the client's MP_CAPABLE third ACK, and every MP_JOIN SYN (a new subflow, a new 5-tuple) is steered
by its token to the backend that holds the connection. Everything is pinned under
/sys/fs/bpf/mptcp-xdp-lb/<netns>/, so steering continues without any mptcp-xdp process; 'lb run'
adds event accounting, garbage collection and next-hop refresh. See docs/lb.md.`,
	}
	cmd.AddCommand(newLBAttachCmd(g), newLBDetachCmd(g), newLBBackendCmd(g), newLBStatusCmd(g),
		newLBDecapCmd(g), newLBRunCmd(g), newLBReloadCmd(g), newLBBackendSetupCmd(g), newLBBGPSpeakerCmd())
	return cmd
}

// withBalancer opens the pinned balancer of --netns (checking privileges first when privileged),
// runs fn on it and closes it.
func withBalancer(g *globalFlags, privileged bool, fn func(b *control.Balancer) error) error {
	open := newLoader
	if privileged {
		open = func() (*loader.Loader, error) { return privilegedLoader(g) }
	}
	l, err := open()
	if err != nil {
		return err
	}
	b, err := control.Open(l, g.netns)
	if err != nil {
		return err
	}
	defer b.Close()
	return fn(b)
}

func parseBackends(specs []string) ([]control.BackendSpec, error) {
	var out []control.BackendSpec
	for _, s := range specs {
		b, err := control.ParseBackendSpec(s)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// lbSpecFlags are the flags that say what a balancer is (its VIPs, policy, backends and hash seed):
// lb attach's, and replay --lb's, which runs a capture through the balancer they describe.
type lbSpecFlags struct {
	vips, backends   []string
	forward, unknown string
	steering         bool
	seedFile         string
}

// lbSpecFlagNames are the flags lbSpecFlags adds.
var lbSpecFlagNames = []string{"vip", "backend", "forward", "unknown-join", "join-steering", "hash-seed-file"}

func (f *lbSpecFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.vips, "vip", nil, "service address ADDR:PORT ([V6]:PORT), repeatable")
	cmd.Flags().StringArrayVar(&f.backends, "backend", nil, "backend ADDR[,weight=N], repeatable")
	cmd.Flags().StringVar(&f.forward, "forward", "l2", "forwarding: l2 (backend on a link of the balancer, MAC rewrite) or ipip (outer header to the backend)")
	cmd.Flags().StringVar(&f.unknown, "unknown-join", "drop", "MP_JOIN SYN with an unknown token: drop, hash (place like a new flow) or pass (to this host's stack)")
	cmd.Flags().BoolVar(&f.steering, "join-steering", true, "steer MP_JOIN SYNs by token (false: plain 5-tuple balancing, the baseline)")
	cmd.Flags().StringVar(&f.seedFile, "hash-seed-file", "", "file of 32 hex digits, the secret seed of the 5-tuple hash (the same file on every balancer of a fleet; not readable by other users); without it the running seed is kept, or on a first attach the published default")
}

// spec reads the flags. Only the policy flags given are set in the spec's PolicyUpdate: on an
// existing VIP the others keep their values, a new VIP takes the defaults.
func (f *lbSpecFlags) spec(cmd *cobra.Command) (control.Spec, error) {
	var s control.Spec
	if cmd.Flags().Changed("hash-seed-file") {
		seed, err := lb.ReadHashSeedFile(f.seedFile)
		if err != nil {
			return s, fmt.Errorf("--hash-seed-file: %w", err)
		}
		s.Config.HashSeed = seed.Datapath()
	}
	if cmd.Flags().Changed("forward") {
		fw, err := lb.ParseForward(f.forward)
		if err != nil {
			return s, err
		}
		s.Policy.Forward = &fw
	}
	if cmd.Flags().Changed("unknown-join") {
		u, err := lb.ParseUnknownJoin(f.unknown)
		if err != nil {
			return s, err
		}
		s.Policy.UnknownJoin = &u
	}
	if cmd.Flags().Changed("join-steering") {
		st := f.steering
		s.Policy.JoinSteering = &st
	}
	for _, v := range f.vips {
		a, err := netip.ParseAddrPort(v)
		if err != nil {
			return s, fmt.Errorf("--vip %q: %w (want ADDR:PORT or [V6]:PORT)", v, err)
		}
		s.VIPs = append(s.VIPs, a)
	}
	var err error
	s.Backends, err = parseBackends(f.backends)
	return s, err
}

func newLBAttachCmd(g *globalFlags) *cobra.Command {
	var (
		sf             lbSpecFlags
		mode           string
		force          bool
		resolveTimeout time.Duration
		rehash         bool
		newFlowRate    int64
	)
	cmd := &cobra.Command{
		Use:   "attach IFACE...",
		Short: "Attach the balancer to interfaces and configure VIPs and backends",
		Long: `Attach loads the balancer program with the namespace's pinned maps (created on the first
attach) and attaches it to every IFACE, keeping interfaces attached before. Each --vip is a service
(ADDR:PORT, [V6]:PORT); each --backend (ADDR[,weight=N]) is resolved to its next hop from the
kernel's routing and neighbour tables. Attaching again adds interfaces, VIPs and backends, or
changes a VIP's policy, without interrupting steering. Only the policy flags given change an
existing VIP; the others keep its current values (a new VIP takes the defaults shown).

--hash-seed-file names a file of 32 hexadecimal digits (openssl rand -hex 16 > FILE; chmod 600 FILE),
the secret of the 5-tuple hash: give every balancer of a fleet the same file. Without it an attach
keeps the seed the balancer runs, and a first attach uses the published default (a client can then
choose its backend). A seed other than the running one re-places every flow the flow tables do not
hold: it is refused unless --rehash is given. See docs/lb.md, "Hash seed".`,
		Example: `  mptcp-xdp --netns lb lb attach l0 l1 --vip 10.0.0.10:80 --backend 10.2.0.2 --backend 10.2.1.2,weight=2 --hash-seed-file /etc/mptcp-xdp/lb-seed
  mptcp-xdp lb attach eth0 --vip [2001:db8::10]:443 --backend 2001:db8:1::2 --forward ipip`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := sf.spec(cmd)
			if err != nil {
				return err
			}
			if err := loader.CheckPrivileges(g.netns != ""); err != nil {
				return err
			}
			l, err := newLoader()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), resolveTimeout)
			defer cancel()
			spec.Netns, spec.Ifaces, spec.Mode, spec.Force, spec.Rehash = g.netns, args, loader.XDPMode(mode), force, rehash
			if cmd.Flags().Changed("new-flow-rate") {
				if newFlowRate < 0 || newFlowRate >= int64(lb.NewFlowRateUnlimited) {
					return fmt.Errorf("--new-flow-rate %d: want 0 (no guard) to %d new flows per second per CPU", newFlowRate, int64(lb.NewFlowRateUnlimited)-1)
				}
				spec.Config.NewFlowRate = uint32(newFlowRate)
				if newFlowRate == 0 {
					spec.Config.NewFlowRate = lb.NewFlowRateUnlimited
				}
			}
			b, err := control.Attach(ctx, l, spec)
			if err != nil {
				return err
			}
			defer b.Close()
			warnPrivateBPFFS(cmd.ErrOrStderr(), l.LBRoot())
			return renderLBStatus(cmd, g, b)
		},
	}
	sf.add(cmd)
	cmd.Flags().StringVar(&mode, "mode", "auto", "XDP mode: auto (native only: the balancer runs in generic mode only when asked, docs/lb.md), native or generic")
	cmd.Flags().BoolVar(&force, "force", false, "replace another tool's XDP program attached through netlink (never one held by a bpf_link); lb detach puts it back")
	cmd.Flags().DurationVar(&resolveTimeout, "resolve-timeout", 5*time.Second, "how long to wait for a backend's neighbour to resolve")
	cmd.Flags().BoolVar(&rehash, "rehash", false, "allow --hash-seed-file to change the seed the balancer runs (re-places every flow the flow tables do not hold)")
	cmd.Flags().Int64Var(&newFlowRate, "new-flow-rate", lb.DefaultNewFlowRate, "new-flow rate guard: at most this many new flows stored per second per CPU, the rest forwarded by Maglev unstored; 0: no guard. Not given: the running balancer's limit is kept (docs/lb.md, \"New-flow rate guard\")")
	_ = cmd.MarkFlagFilename("hash-seed-file")
	for f, vals := range map[string][]string{"forward": {"l2", "ipip"}, "unknown-join": {"drop", "hash", "pass"}, "mode": {"auto", "native", "generic"}} {
		_ = cmd.RegisterFlagCompletionFunc(f, fixedCompletion(vals))
	}
	return cmd
}

func newLBDetachCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "detach",
		Short: "Detach the balancer from every interface and remove its maps and pins",
		Long: `Detach removes the balancer's links and pins; with --netns naming a namespace that no longer
exists, the stale pins that namespace left. Only pins mptcp-xdp makes are removed.`,
		Args:              cobra.NoArgs,
		PersistentPreRunE: netnsMayBeGone(g, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := privilegedLoader(g)
			if err != nil {
				return err
			}
			withdrawBeforeDetach(g)
			if err := l.DetachLB(g.netns); err != nil {
				return err
			}
			return render(cmd, g, map[string]string{"detached": "balancer"}, func(w io.Writer) error {
				fmt.Fprintln(w, "balancer detached")
				return nil
			})
		},
	}
}

func newLBBackendCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backend",
		Short: "Add, drain or remove backends of the balancer",
	}
	var timeout time.Duration
	// Every argument is parsed before anything changes; the change itself is one locked step.
	change := func(use, short string, fn func(ctx context.Context, b *control.Balancer, args []string) error) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return withBalancer(g, true, func(b *control.Balancer) error {
					ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
					defer cancel()
					if err := fn(ctx, b, args); err != nil {
						return err
					}
					return renderLBStatus(cmd, g, b)
				})
			},
		}
	}
	addrs := func(args []string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, s := range args {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("backend %q: %w", s, err)
			}
			out = append(out, a)
		}
		return out, nil
	}
	add := change("add ADDR[,weight=N]...", "Add backends (or change their weight, or reactivate draining ones)",
		func(ctx context.Context, b *control.Balancer, args []string) error {
			specs, err := parseBackends(args)
			if err == nil {
				_, err = b.AddBackends(ctx, specs...)
			}
			return err
		})
	add.Flags().DurationVar(&timeout, "resolve-timeout", 5*time.Second, "how long to wait for a backend's neighbour to resolve")
	drain := change("drain ADDR...", "Give backends no new connections; their connections and joins still reach them",
		func(ctx context.Context, b *control.Balancer, args []string) error {
			as, err := addrs(args)
			if err == nil {
				_, err = b.Drain(as...)
			}
			return err
		})
	remove := change("remove ADDR...", "Remove backends: their flows are placed anew, their joins follow the unknown-join policy",
		func(ctx context.Context, b *control.Balancer, args []string) error {
			as, err := addrs(args)
			if err == nil {
				_, err = b.Remove(as...)
			}
			return err
		})
	for _, c := range []*cobra.Command{drain, remove} {
		c.Flags().DurationVar(&timeout, "resolve-timeout", 5*time.Second, "unused")
		_ = c.Flags().MarkHidden("resolve-timeout")
	}
	cmd.AddCommand(add, drain, remove)
	return cmd
}

// renderLBStatus prints the balancer's status (`lb status -o json`: control.Status, docs/lb.md).
func renderLBStatus(cmd *cobra.Command, g *globalFlags, b *control.Balancer) error {
	st, err := b.Status()
	if err != nil {
		return err
	}
	st.BGP = lbBGPStatus(g)
	return render(cmd, g, st, func(w io.Writer) error { return lbStatusTable(w, st) })
}

func lbStatusTable(w io.Writer, st *control.Status) error {
	var ifs []string
	for _, i := range st.Interfaces {
		s := i.Interface + " (" + orDash(i.XDPMode) + ")"
		if i.Problem != "" {
			s += " [" + i.Problem + "]"
		}
		ifs = append(ifs, s)
	}
	guard := ""
	switch {
	case st.NewFlowRate == nil:
	case *st.NewFlowRate == 0:
		guard = "; no new-flow rate guard"
	default:
		guard = fmt.Sprintf("; new flows stored at most %d/s per CPU", *st.NewFlowRate)
	}
	fmt.Fprintf(w, "balancer in %s on %s; %d flows, %d tokens%s\n\n", st.Netns, orDash(strings.Join(ifs, ", ")), st.Flows, st.Tokens, guard)
	fmt.Fprintln(w, "VIP\tID\tFORWARD\tUNKNOWN JOIN\tJOIN STEERING\tTOKENS\tIN TABLE")
	var joinPorts []control.VIPStatus
	for _, v := range st.VIPs {
		if v.JoinPortOf != "" {
			joinPorts = append(joinPorts, v)
			continue
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%v\t%d\t%d\n", v.Addr, v.ID, v.Forward, v.UnknownJoin, v.JoinSteering, v.Tokens, v.BackendsInTable)
	}
	if len(joinPorts) != 0 {
		fmt.Fprintln(w, "\nJOIN PORT\tID\tFORWARD\tBACKEND")
		for _, v := range joinPorts {
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", v.Addr, v.ID, v.Forward, v.JoinPortOf)
		}
	}
	fmt.Fprintln(w, "\nBACKEND\tID\tWEIGHT\tSTATE\tIFACE\tMAC\tRING SLOTS\tFLOWS\tTOKENS")
	for _, b := range st.Backends {
		fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\n", b.Addr, b.ID, b.Weight, b.State, orDash(b.Iface), b.MAC, b.RingSlots, b.Flows, b.Tokens)
	}
	header := false
	for _, b := range st.Backends {
		for _, h := range b.Health {
			if !header {
				fmt.Fprintln(w, "\nHEALTH OF\tVIP\tSTATE\tSINCE\tRING SLOTS\tREASON")
				header = true
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", b.Addr, h.VIP, h.State, h.Since.Format(time.RFC3339), h.RingSlots, orDash(h.Reason))
		}
	}
	fmt.Fprintln(w, "\nCOUNTER\tVALUE")
	names := make([]string, 0, len(st.Stats))
	for k := range st.Stats {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool { return statOrder(names[i]) < statOrder(names[j]) })
	for _, k := range names {
		fmt.Fprintf(w, "%s\t%d\n", k, st.Stats[k])
	}
	if st.BGP != nil {
		lbBGPTable(w, st.BGP)
	}
	return nil
}

func statOrder(name string) int {
	for i := lb.Stat(0); i < lb.NumStats; i++ {
		if i.String() == name {
			return int(i)
		}
	}
	return int(lb.NumStats)
}

func newLBStatusCmd(g *globalFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the balancer: interfaces, VIPs, backends, flows, tokens and counters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return withBalancer(g, false, func(b *control.Balancer) error { return renderLBStatus(cmd, g, b) })
		},
	}
}

func newLBDecapCmd(g *globalFlags) *cobra.Command {
	var detach, force bool
	var mode string
	var balancers, vips []string
	cmd := &cobra.Command{
		Use:   "decap [IFACE...]",
		Short: "Attach (or --detach, or show) the backends' decapsulator of ipip mode",
		Long: `Decap attaches, on a backend, an XDP program that strips the outer IPv4/IPv6 header the balancer
adds in ipip mode and passes the inner packet up the stack: for kernels built without ipip/ip6tnl
tunnel drivers. It decapsulates only packets to the addresses the namespace has when it is
attached, from a --balancer address (the balancer's source address toward this backend, lb status's
src_addr), carrying a TCP segment to a --vip (ADDR:PORT, or ADDR for every port); it passes
anything else untouched, counted by why. Both flags are required; each decap replaces the lists
of the one before. Without IFACE it shows the decapsulator: interfaces, lists and counters.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := privilegedLoader(g)
			if err != nil {
				return err
			}
			switch {
			case detach && len(args) == 0:
				return errors.New("lb decap --detach: name the interfaces to detach from")
			case detach && (len(balancers) > 0 || len(vips) > 0):
				return errors.New("lb decap --detach takes no --balancer or --vip")
			case detach:
				err = l.DetachDecap(g.netns, args)
			case len(args) > 0:
				o := loader.LBAttachOptions{Netns: g.netns, Ifaces: args, Mode: loader.XDPMode(mode), Force: force}
				if o.DecapBalancers, o.DecapVIPs, err = parseDecapAllow(balancers, vips); err != nil {
					return err
				}
				if err = l.AttachDecap(o); errors.Is(err, loader.ErrDecapAllowEmpty) {
					return errDecapAllowEmpty
				}
			case len(balancers) > 0 || len(vips) > 0:
				return errors.New("lb decap: --balancer and --vip need the interfaces to attach to")
			}
			if err != nil {
				return err
			}
			st, err := l.DecapStatus(g.netns)
			if errors.Is(err, loader.ErrDecapNotAttached) && len(args) > 0 {
				// Detached from the last interface: nothing left to show.
				return render(cmd, g, map[string]any{"decap": []loader.LBLink{}}, func(io.Writer) error { return nil })
			}
			if err != nil {
				return err
			}
			return render(cmd, g, st, func(w io.Writer) error { return renderDecap(w, st) })
		},
	}
	cmd.PersistentPreRunE = netnsMayBeGone(g, func() bool { return detach }) // --detach removes a gone namespace's pins
	cmd.Flags().BoolVar(&detach, "detach", false, "detach from the interfaces instead")
	cmd.Flags().StringVar(&mode, "mode", "auto", "XDP mode: auto (native, else generic), native or generic")
	cmd.Flags().BoolVar(&force, "force", false, "replace another tool's XDP program attached through netlink (never one held by a bpf_link); --detach puts it back")
	cmd.Flags().StringArrayVar(&balancers, "balancer", nil, "source address of a balancer allowed to send IPIP here (its address toward this backend), repeatable; required")
	cmd.Flags().StringArrayVar(&vips, "vip", nil, "inner destination allowed, ADDR:PORT ([V6]:PORT) or ADDR for every port, repeatable; required")
	return cmd
}

// errDecapAllowEmpty is lb decap's loader.ErrDecapAllowEmpty, in the flags' words.
var errDecapAllowEmpty = errors.New("lb decap: give the balancers' source addresses (--balancer ADDR) and the VIPs (--vip ADDR[:PORT]): IPIP is decapsulated only from those, to those")

// parseDecapAllow reads lb decap's --balancer and --vip flags.
func parseDecapAllow(balancers, vips []string) ([]netip.Addr, []netip.AddrPort, error) {
	var bs []netip.Addr
	for _, s := range balancers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, nil, fmt.Errorf("--balancer %q: not an IP address", s)
		}
		bs = append(bs, a.Unmap())
	}
	var vs []netip.AddrPort
	for _, s := range vips {
		v, err := lb.ParseDecapVIP(s)
		if err != nil {
			return nil, nil, fmt.Errorf("--vip: %w", err)
		}
		vs = append(vs, v)
	}
	return bs, vs, nil
}

// renderDecap is lb decap's table: the interfaces, then the allowlist and the counters.
func renderDecap(w io.Writer, st *loader.DecapStatus) error {
	fmt.Fprintln(w, "INTERFACE\tIFINDEX\tXDP MODE\tVIA\tPROG\tPROBLEM")
	for _, ll := range st.Interfaces {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%s\n", ll.Interface, ll.Ifindex, orDash(ll.XDPMode), ll.Mechanism, ll.ProgID, orDash(ll.Problem))
	}
	list := func(s []string) string {
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, " ")
	}
	fmt.Fprintf(w, "\nbalancers:\t%s\n", list(st.Balancers))
	fmt.Fprintf(w, "vips:\t%s\n", list(st.VIPs))
	fmt.Fprintf(w, "local:\t%s\n", list(st.Local))
	c := st.Stats
	fmt.Fprintf(w, "counters:\tpackets %d, decap %d, malformed %d, refused_dst %d, refused_source %d, refused_inner %d\n",
		c.Packets, c.Decap, c.Malformed, c.RefusedDst, c.RefusedSource, c.RefusedInner)
	return nil
}

// runPidFile is where `lb run --config` writes its process id for `lb reload`: one per network
// namespace, beside nothing else of the tool (bpffs holds only pins).
func runPidFile(netnsName string) (string, error) {
	ns, err := loader.NetnsDir(netnsName)
	if err != nil {
		return "", err
	}
	return filepath.Join(runDir, "lb-run-"+ns+".pid"), nil
}

// runDir holds the pid files of `lb run --config`.
var runDir = "/run/mptcp-xdp"

// runningLBRun reads a pid file of lb run --config and reports whether that process is still an
// `lb run` (a pid file left by a killed process may name a process reused since: it must never get
// the SIGHUP, whose default action ends it).
func runningLBRun(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0, false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "lb" && args[i+1] == "run" {
			return pid, true
		}
	}
	return 0, false
}

// runWithConfig is lb run --config: reconcile, loop, and on SIGHUP reconcile again.
func runWithConfig(cmd *cobra.Command, g *globalFlags, cfg control.RunConfig, file string) error {
	l, err := privilegedLoader(g)
	if err != nil {
		return err
	}
	pidFile, err := runPidFile(g.netns)
	if err != nil {
		return err
	}
	if pid, ok := runningLBRun(pidFile); ok {
		return fmt.Errorf("lb run --config is running already for this network namespace (pid %d, %s)", pid, pidFile)
	}
	d, err := control.LoadConfig(file)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	defer os.Remove(pidFile)
	reconcile := func(d *control.Desired) (*control.Balancer, error) {
		ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
		defer cancel()
		b, changes, err := control.Reconcile(ctx, l, g.netns, d)
		for _, c := range changes {
			slog.Info("config applied", "op", c.Op, "what", c.What, "name", c.Name)
		}
		if err == nil && len(changes) == 0 {
			slog.Info("config applied: nothing to change", "file", file)
		}
		return b, err
	}
	b, err := reconcile(d)
	if err != nil {
		return err
	}
	// The BGP announcer (a bgp section): started once the balancer is attached, stopped (every VIP
	// withdrawn) before anything else on the way out.
	stateFile, err := bgpStateFile(g.netns)
	if err != nil {
		b.Close()
		return err
	}
	var ann *control.VIPAnnouncer
	setBGP := func(c *bgp.Config) error {
		if ann != nil {
			return ann.Reconfigure(c)
		}
		if c == nil {
			return nil
		}
		a, err := control.NewVIPAnnouncer(c, startSpeaker(g, cmd.ErrOrStderr()), stateFile)
		if err == nil {
			ann = a
		}
		return err
	}
	defer func() {
		if ann != nil {
			if err := ann.Stop(); err != nil {
				slog.Warn("bgp: stop", "err", err)
			}
		}
	}()
	if err := setBGP(d.BGP); err != nil {
		b.Close()
		return err
	}
	attT := time.NewTicker(time.Second)
	defer attT.Stop()
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// SIGUSR1: lb detach is about to remove the datapath (lbbgp.go, withdrawBeforeDetach).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	// Each VIP's backends in its table, logged when it changes (what a VIP announcement depends on).
	var last map[netip.AddrPort]int
	cfg.OnServing = func(n map[netip.AddrPort]int) {
		for v, k := range n {
			if old, ok := last[v]; ok && old == k {
				continue
			}
			if k == 0 {
				slog.Warn("vip has no backend in its table: new connections to it are passed to the stack", "vip", v)
			} else {
				slog.Info("vip backends in table", "vip", v, "backends", k)
			}
		}
		last = n
		if ann != nil {
			ann.Serving(n)
		}
	}
	for {
		// The loop ends after the withdrawals on a signal, not with it.
		loopCtx, endLoop := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan error, 1)
		cfg.Health = d.HealthChecks()
		go func() { done <- b.Run(loopCtx, cfg) }()
	wait:
		select {
		case <-ctx.Done():
			if ann != nil {
				slog.Info("stopping: withdrawing every VIP first")
				if err := ann.Stop(); err != nil {
					slog.Warn("bgp: stop", "err", err)
				}
			}
			endLoop()
			err := <-done
			b.Close()
			return err
		case <-usr1:
			if ann != nil {
				ann.Hold(detachHold)
			}
			goto wait
		case <-attT.C:
			if ann != nil {
				if err := b.CheckAttached(); err != nil {
					ann.Detached()
				}
				ann.Refresh()
			}
			goto wait
		case err := <-done:
			endLoop()
			b.Close()
			return err
		case <-hup:
			endLoop()
			if err := <-done; err != nil {
				b.Close()
				return err
			}
			nd, err := control.LoadConfig(file)
			if err != nil {
				slog.Error("reload refused, the balancer is left as it was", "err", err)
				continue
			}
			nb, err := reconcile(nd)
			if err != nil {
				slog.Error("reload failed part way: the steps logged above were applied", "err", err)
				continue
			}
			b.Close()
			b, d = nb, nd
			if err := setBGP(d.BGP); err != nil {
				slog.Error("reload: bgp", "err", err)
			}
		}
	}
}

func newLBBackendSetupCmd(g *globalFlags) *cobra.Command {
	var (
		vip      string
		joinPort uint16
		undo     bool
	)
	cmd := &cobra.Command{
		Use:   "backend-setup --vip ADDR:PORT --join-port P",
		Short: "On a backend: send RFC 8684's C flag and announce the VIP with a join port of its own",
		Long: `Backend-setup configures this host's kernel (run it on each backend, with --netns for a namespace)
for joins that need no balancer state: net.mptcp.allow_join_initial_addr_port=0, so that its
MP_CAPABLE SYN-ACK carries the C flag (clients must not open subflows to the VIP's own address and
port), and an MPTCP signal endpoint for the VIP's address with port P, which the kernel announces
(ADD_ADDR VIP:P) and on which it accepts joins. Give every backend its own P. The VIP must be an
address of this host (a DSR backend has it on lo). It is idempotent; --undo deletes the endpoint
and sets the sysctl back to 1. A kernel without the sysctl (5.14) or without port endpoints (5.12)
is refused in one line. See docs/lb.md, "Join ports".`,
		Example: `  mptcp-xdp lb backend-setup --vip 10.0.0.10:80 --join-port 20001
  mptcp-xdp --netns be1 lb backend-setup --vip 10.0.0.10:80 --join-port 20001 --undo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := netip.ParseAddrPort(vip)
			if err != nil {
				return fmt.Errorf("--vip %q: %w (want ADDR:PORT or [V6]:PORT)", vip, err)
			}
			if !cmd.Flags().Changed("join-port") {
				return errors.New("--join-port: required (this backend's port for joins on the VIP's address)")
			}
			if err := loader.CheckPrivileges(g.netns != ""); err != nil {
				return err
			}
			do := control.BackendSetup
			if undo {
				do = control.BackendUndo
			}
			r, err := do(g.netns, v, joinPort)
			if err != nil {
				return err
			}
			return render(cmd, g, r, func(w io.Writer) error {
				fmt.Fprintf(w, "VIP\t%s\nJOIN PORT\t%d\nallow_join_initial_addr_port\t%s\n", r.VIP, r.JoinPort, r.Sysctl)
				if r.Endpoint != nil {
					fmt.Fprintf(w, "ENDPOINT\tid %d\t%s port %d\tsignal\n", r.Endpoint.ID, r.Endpoint.Addr, r.Endpoint.Port)
				}
				if len(r.Changed) == 0 {
					fmt.Fprintln(w, "CHANGED\tnothing (already so)")
				}
				for _, c := range r.Changed {
					fmt.Fprintf(w, "CHANGED\t%s\n", c)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&vip, "vip", "", "the service address ADDR:PORT, an address of this host")
	cmd.Flags().Uint16Var(&joinPort, "join-port", 0, "this backend's port for joins on the VIP's address (unique per backend)")
	cmd.Flags().BoolVar(&undo, "undo", false, "delete the endpoint and set allow_join_initial_addr_port back to 1")
	_ = cmd.MarkFlagRequired("vip")
	return cmd
}

func newLBReloadCmd(g *globalFlags) *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Make the running lb run --config re-read its file (SIGHUP), after checking the file",
		Long: `Reload checks the config file (--config, the one lb run was given) and, when it is valid, sends
SIGHUP to the lb run --config of the network namespace (its process id is in /run/mptcp-xdp). An
invalid file is refused here with one line naming the field, and nothing is signalled.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if _, err := control.LoadConfig(configFile); err != nil {
					return err
				}
			}
			pidFile, err := runPidFile(g.netns)
			if err != nil {
				return err
			}
			pid, ok := runningLBRun(pidFile)
			if !ok {
				return fmt.Errorf("no lb run --config is running for this network namespace (%s)", pidFile)
			}
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				return fmt.Errorf("signal lb run (pid %d, %s): %w", pid, pidFile, err)
			}
			out := map[string]any{"pid": pid, "signal": "SIGHUP"}
			return render(cmd, g, out, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "sent SIGHUP to lb run (pid %d)\n", pid)
				return err
			})
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "check this file first (the one lb run --config reads)")
	return cmd
}

func newLBRunCmd(g *globalFlags) *cobra.Command {
	var (
		cfg        control.RunConfig
		logLevel   string
		configFile string
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the balancer's control loop: events, garbage collection, next-hop refresh (and its config file)",
		Long: `Run consumes the datapath's ring buffer of events (connection learned, join steered, unknown-token
join, token collision), counting and logging them; removes idle flows and tokens; and follows the
kernel's neighbour table so that a backend whose MAC changes keeps receiving. The datapath steers
without it: stop and restart it at will. Logs go to stderr; SIGINT/SIGTERM stop it.

--config FILE (YAML: interfaces, mode, hash_seed_file, vips with their policy, backends with their
weights, health_check; docs/lb.md, "Config file" and "Health checks") makes the balancer what the file says before the loop starts,
attaching it on the first run, and again on SIGHUP or ` + "`lb reload`" + `: only what differs is changed,
and steering is never interrupted. A file with an error is refused with one line naming the field,
and the balancer is left as it was.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			for _, d := range []struct {
				flag     string
				v, floor time.Duration
			}{
				{"gc-interval", cfg.GCInterval, time.Second}, {"refresh-interval", cfg.RefreshInterval, time.Second},
				{"summary-interval", cfg.SummaryInterval, time.Second},
				// Below these a connection pausing between two packets would lose its state.
				{"flow-idle", cfg.GC.FlowIdle, 10 * time.Second}, {"token-idle", cfg.GC.TokenIdle, 10 * time.Second},
			} {
				if d.v < d.floor {
					return fmt.Errorf("--%s %s: at least %s", d.flag, d.v, d.floor)
				}
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl})))
			if configFile == "" {
				return withBalancer(g, true, func(b *control.Balancer) error {
					ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
					defer stop()
					return b.Run(ctx, cfg)
				})
			}
			return runWithConfig(cmd, g, cfg, configFile)
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "YAML file the balancer is made to match at start and on SIGHUP / lb reload (docs/lb.md, \"Config file\")")
	cmd.Flags().DurationVar(&cfg.GCInterval, "gc-interval", 30*time.Second, "how often to collect idle flows and tokens")
	cmd.Flags().DurationVar(&cfg.GC.FlowIdle, "flow-idle", 10*time.Minute, "forget a flow without packets for this long")
	cmd.Flags().DurationVar(&cfg.GC.TokenIdle, "token-idle", 30*time.Minute, "forget a token not refreshed for this long")
	cmd.Flags().DurationVar(&cfg.RefreshInterval, "refresh-interval", 30*time.Second, "re-check next hops this often besides neighbour and link events")
	cmd.Flags().DurationVar(&cfg.SummaryInterval, "summary-interval", time.Minute, "log counters this often")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error (debug logs every event)")
	return cmd
}
