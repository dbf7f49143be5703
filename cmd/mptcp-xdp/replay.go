package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/replay"
)

func newReplayCmd(g *globalFlags) *cobra.Command {
	var dir, engine string
	var perConn, withLB bool
	var configFile string
	var sf lbSpecFlags
	cmd := &cobra.Command{
		Use:   "replay FILE.pcap|FILE.pcapng",
		Short: "Count a capture's frames with the real datapath, without attaching anything",
		Long: `Replay feeds every frame of a capture (pcap or pcapng, as tcpdump and Wireshark write them) to
the committed counting program through BPF_PROG_TEST_RUN: no interface, no attachment, nothing
pinned. It prints what ` + "`stats`" + ` would show for a live attachment that saw the same frames: the
packet totals and every MPTCP option class.

--iface-dir in runs the XDP program (frames an interface received), out the TC egress program
(frames it sent). Link types: Ethernet, Linux cooked capture (SLL and SLL2, tcpdump -i any), raw
IPv4/IPv6, BSD loopback. Frames longer than 2048 bytes are fed their first 2048 bytes, which hold
every header the parser reads. --engine go counts with the Go reference parser and needs no
privilege; the default engine needs CAP_BPF and CAP_PERFMON (or root).

--per-connection groups the frames by MPTCP connection: the tokens its keys give (as ss -M shows
them), its subflows by 5-tuple (joins matched by the token they name), and its ADD_ADDR,
REMOVE_ADDR, MP_PRIO, MP_FAIL, MP_FASTCLOSE and MP_TCPRST signals and fallbacks in capture order.

--lb runs the balancer program instead, configured by the flags lb attach takes (--vip, --backend,
--forward, --unknown-join, --join-steering, --hash-seed-file), with maps of its own: nothing is
attached and nothing is sent. Replay the frames a balancer receives (a capture on its client-facing
interfaces, or on the clients' side of them: native XDP runs before tcpdump), whole (tcpdump -s 0).
It prints, per connection and subflow, the backend the balancer would send it to and why: its
Maglev slot, the token its MP_JOIN SYN names, the unknown-token policy, or a flow already held.
--lb --config FILE takes the balancer's config file (lb run --config's) instead of the flags.`,
		Example: `  mptcp-xdp replay server.pcap
  mptcp-xdp replay any.pcapng --per-connection -o json
  mptcp-xdp replay --engine go capture.pcap
  mptcp-xdp replay lb-in.pcap --lb --vip 10.0.0.10:80 --backend 10.2.0.2 --backend 10.2.1.2,weight=2 --hash-seed-file /etc/mptcp-xdp/lb-seed`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := replay.ParseDir(dir)
			if err != nil {
				return err
			}
			if engine != string(replay.EngineBPF) && engine != string(replay.EngineGo) {
				return fmt.Errorf("--engine %q: want bpf (the eBPF programs) or go (the reference parser)", engine)
			}
			if withLB {
				for _, f := range []string{"iface-dir", "engine", "per-connection"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s does not apply to --lb (the balancer program, frames received, always per connection)", f)
					}
				}
				var d *control.Desired
				if configFile != "" {
					for _, f := range lbSpecFlagNames {
						if cmd.Flags().Changed(f) {
							return fmt.Errorf("--%s and --config: the config file says it all", f)
						}
					}
					if d, err = control.LoadConfig(configFile); err != nil {
						return err
					}
				} else {
					spec, err := sf.spec(cmd)
					if err != nil {
						return err
					}
					d = spec.Desired()
				}
				r, err := replay.RunLB(args[0], d)
				if err != nil {
					return err
				}
				return render(cmd, g, r, func(w io.Writer) error { return replayLBTable(w, r) })
			}
			for _, f := range append(lbSpecFlagNames, "config") {
				if cmd.Flags().Changed(f) {
					return fmt.Errorf("--%s configures the balancer: it needs --lb", f)
				}
			}
			r, err := replay.Run(args[0], replay.Options{Engine: replay.Engine(engine), Dir: d}, perConn)
			if err != nil {
				return err
			}
			return render(cmd, g, r, func(w io.Writer) error { return replayTable(w, r, perConn) })
		},
	}
	cmd.Flags().StringVar(&dir, "iface-dir", "in", "direction the frames are counted in: in (received, the XDP program) or out (sent, the TC egress program)")
	cmd.Flags().StringVar(&engine, "engine", "bpf", "bpf (the committed eBPF programs) or go (the Go reference parser, no privilege needed)")
	cmd.Flags().BoolVar(&perConn, "per-connection", false, "group the frames by MPTCP connection: tokens, subflows, joins, path-management events")
	cmd.Flags().BoolVar(&withLB, "lb", false, "run the balancer over the capture, configured by --vip, --backend and lb attach's other flags, and show where each subflow would go and why")
	sf.add(cmd)
	cmd.Flags().StringVar(&configFile, "config", "", "with --lb: the balancer's config file (lb run --config's) instead of the flags")
	return cmd
}

func replayLBTable(w io.Writer, r *replay.LBResult) error {
	fmt.Fprintf(w, "FILE\t%s\nFRAMES\t%d\nTO A VIP\t%d\n", r.File, r.Frames, r.VIPFrames)
	if r.Cut != 0 {
		fmt.Fprintf(w, "CUT BY SNAPLEN\t%d\t(the balancer saw less than the wire had: capture with -s 0)\n", r.Cut)
	}
	if r.Aggregate != 0 {
		fmt.Fprintf(w, "LONGER THAN %d BYTES (aggregates, not run)\t%d\n", replay.LBFeedMax, r.Aggregate)
	}
	if r.Short != 0 {
		fmt.Fprintf(w, "SHORTER THAN ETHERNET (not run)\t%d\n", r.Short)
	}
	fmt.Fprintln(w, "\nBACKEND\tID\tWEIGHT\tSUBFLOWS\tFRAMES")
	for _, b := range r.Backends {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", b.Addr, b.ID, b.Weight, b.Subflows, b.Frames)
	}
	sub := func(sf *replay.Subflow) {
		d := sf.LB
		if d == nil {
			fmt.Fprintf(w, "  %s\t%s\t(no frame to a VIP)\n", sf.Kind, sf)
			return
		}
		to := d.Backend
		if to == "" {
			to = "-"
		}
		why := d.Reason
		if d.Slot != nil {
			why += fmt.Sprintf(" slot %d", *d.Slot)
		}
		if d.Token != nil {
			why += " token " + d.Token.String()
		}
		extra := ""
		if d.Elsewhere != 0 {
			extra = fmt.Sprintf("\t%d frames elsewhere", d.Elsewhere)
		}
		fmt.Fprintf(w, "  %s\t%s\t%s %s\t%s\t%d frames%s\n", sf.Kind, sf, d.Action, to, why, d.Frames, extra)
	}
	for i, c := range r.Conns {
		fmt.Fprintf(w, "\nCONNECTION %d\tclient token %s\tserver token %s\tsubflows %d\n", i+1, c.ClientToken, c.ServerToken, len(c.Subflows))
		for _, sf := range c.Subflows {
			sub(sf)
		}
	}
	if len(r.Orphan) != 0 {
		fmt.Fprintf(w, "\nSUBFLOWS OF NO MPTCP CONNECTION SEEN\t%d\n", len(r.Orphan))
		for _, sf := range r.Orphan {
			sub(sf)
		}
	}
	fmt.Fprintln(w, "\nBALANCER COUNTER\tVALUE")
	for i := lb.Stat(0); i < lb.NumStats; i++ {
		if v := r.Stats[i.String()]; v != 0 {
			fmt.Fprintf(w, "%s\t%d\n", i, v)
		}
	}
	return nil
}

func replayTable(w io.Writer, r *replay.Result, perConn bool) error {
	fmt.Fprintf(w, "FILE\t%s\nENGINE\t%s\nIFACE-DIR\t%s\nFRAMES\t%d\n", r.File, r.Engine, r.Dir, r.Frames)
	if r.Cut != 0 {
		fmt.Fprintf(w, "CUT BY SNAPLEN\t%d\n", r.Cut)
	}
	if r.Short != 0 {
		fmt.Fprintf(w, "SHORTER THAN ETHERNET (not counted)\t%d\n", r.Short)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "COUNTER\tVALUE")
	for i := 0; i < mptcp.NumPacketCounters; i++ {
		fmt.Fprintf(w, "packets.%s\t%d\n", mptcp.PacketCounter(i), r.Counts.Packets[i])
	}
	for _, cl := range mptcp.Classes() {
		fmt.Fprintf(w, "%s\t%d\n", cl, r.Counts.Options[cl])
	}
	if !perConn {
		return nil
	}
	for i, c := range r.Conns {
		fmt.Fprintf(w, "\nCONNECTION %d\tclient token %s\tserver token %s\tsubflows %d\tfallback %v\n", i+1, c.ClientToken, c.ServerToken, len(c.Subflows), c.Fallback)
		for _, sf := range c.Subflows {
			extra := ""
			if sf.Token != nil {
				extra = fmt.Sprintf("\ttoken %s\taddr id %d", sf.Token, *sf.AddrID)
			}
			if sf.Backup {
				extra += "\tbackup"
			}
			fmt.Fprintf(w, "  %s\t%s\t%d frames%s\n", sf.Kind, sf, sf.Frames, extra)
		}
		for _, e := range c.Events {
			fmt.Fprintf(w, "  %s\t%s\t%s -> %s\t%s\n", e.Time.Format("15:04:05.000000"), e.Type, e.From, e.To, eventDetail(e))
		}
	}
	if len(r.Orphan) != 0 {
		fmt.Fprintf(w, "\nSUBFLOWS OF NO MPTCP CONNECTION SEEN\t%d\n", len(r.Orphan))
		for _, sf := range r.Orphan {
			fmt.Fprintf(w, "  %s\t%s\t%d frames\n", sf.Kind, sf, sf.Frames)
		}
	}
	return nil
}

func eventDetail(e replay.Event) string {
	var p []string
	if e.AddrID != nil {
		p = append(p, fmt.Sprintf("id %d", *e.AddrID))
	}
	if e.Addr != "" {
		p = append(p, e.Addr)
	}
	if len(e.IDs) != 0 {
		p = append(p, fmt.Sprintf("ids %v", e.IDs))
	}
	if e.Backup != nil {
		p = append(p, fmt.Sprintf("backup %v", *e.Backup))
	}
	if e.Reason != nil {
		p = append(p, fmt.Sprintf("reason %d", *e.Reason))
	}
	if e.Message != "" {
		p = append(p, e.Message)
	}
	return strings.Join(p, " ")
}
