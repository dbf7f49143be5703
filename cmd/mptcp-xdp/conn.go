package main

import (
	"bufio"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// The JSON forms of `conn list`, `conn show` and `subflow list` are documented in docs/conn.md.

// connListReport is the output of `conn list`.
type connListReport struct {
	Netns       string          `json:"netns"`
	Connections []stats.Summary `json:"connections"`
}

// connShowReport is the output of `conn show`.
type connShowReport struct {
	Netns      string               `json:"netns"`
	Connection stats.ConnectionJSON `json:"connection"`
}

// subflowListReport is the output of `subflow list`.
type subflowListReport struct {
	Netns    string              `json:"netns"`
	Subflows []stats.SubflowJSON `json:"subflows"`
}

const connLong = `The figures come from the kernel's sockets, read with a BPF socket iterator in the network
namespace --netns names (default: the current one): every MPTCP subflow that is not listening, with
its connection's token and the tcp_info figures tcp_get_info computes. No process needs to own the
sockets, and nothing is attached or pinned. Needs root (CAP_BPF and CAP_PERFMON, CAP_SYS_ADMIN for
--netns) and Linux 5.12 with BTF and MPTCP.`

func newConnCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conn",
		Short: "List MPTCP connections and show one with its subflows",
		Long:  "conn lists the MPTCP connections of a network namespace, grouped from their subflows.\n\n" + connLong,
	}
	var balancer bool
	list := &cobra.Command{
		Use:     "list",
		Short:   "One row per MPTCP connection: token, first subflow's addresses, subflows, bytes, srtt range",
		Long:    "conn list prints one row per MPTCP connection: its token (as ss -M shows it, 8 hex digits),\nthe local and remote address of its first subflow, the number of subflows, the bytes of all its\nsubflows summed, and the lowest and highest smoothed RTT among them.\n\n" + connLong + "\n\n" + connLBLong,
		Example: "  mptcp-xdp conn list\n  mptcp-xdp conn list --netns blue -o json\n  mptcp-xdp conn list --lb --netns lb",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if balancer {
				return connListLB(cmd, g)
			}
			conns, err := connRead(g)
			if err != nil {
				return err
			}
			rep := connListReport{Netns: connNetns(g), Connections: make([]stats.Summary, 0, len(conns))}
			for i := range conns {
				rep.Connections = append(rep.Connections, conns[i].Summary())
			}
			return connRender(cmd, g, rep, func(w io.Writer) error {
				fmt.Fprintln(w, "TOKEN\tSTATE\tLOCAL\tREMOTE\tSUBFLOWS\tSENT\tACKED\tRECEIVED\tRETRANS\tSRTT(ms)")
				for _, s := range rep.Connections {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", s.Token, s.State, s.Local, s.Remote,
						s.Live, s.Totals.BytesSent, s.Totals.BytesAcked, s.Totals.BytesReceived, s.Totals.BytesRetrans,
						connSRTTRange(s.SRTTMin, s.SRTTMax))
				}
				return nil
			})
		},
	}
	list.Flags().BoolVar(&balancer, "lb", false, "list the connections the load balancer of --netns tracks (token, VIP, backend, subflows seen)")
	cmd.AddCommand(list)
	cmd.AddCommand(&cobra.Command{
		Use:     "show TOKEN",
		Short:   "Show one MPTCP connection and every subflow's figures",
		Long:    "conn show prints the MPTCP connection with this token (hex, with or without leading zeros or\n0x, as conn list or ss -M print it) and the addresses, ids, flags and tcp_info figures of each of\nits subflows.\n\n" + connLong,
		Example: "  mptcp-xdp conn show 98dd7c13\n  mptcp-xdp conn show 98dd7c13 --netns blue -o json",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := stats.ParseToken(args[0])
			if err != nil {
				return err
			}
			conns, err := connRead(g)
			if err != nil {
				return err
			}
			c := stats.Find(conns, tok)
			if c == nil {
				return fmt.Errorf("no MPTCP connection with token %s in %s (see `mptcp-xdp conn list`)", tok, connNetns(g))
			}
			rep := connShowReport{Netns: connNetns(g), Connection: c.JSON()}
			return connRender(cmd, g, rep, func(w io.Writer) error {
				s := c.Summary()
				fmt.Fprintf(w, "token\t%s\n", s.Token)
				fmt.Fprintf(w, "state\t%s\n", s.State)
				fmt.Fprintf(w, "local\t%s\n", s.Local)
				fmt.Fprintf(w, "remote\t%s\n", s.Remote)
				fmt.Fprintf(w, "subflows\t%d\n", s.Live)
				if s.Closed > 0 {
					fmt.Fprintf(w, "closed subflows\t%d\n", s.Closed)
				}
				fmt.Fprintf(w, "bytes sent/acked/received/retrans\t%d/%d/%d/%d\n",
					s.Totals.BytesSent, s.Totals.BytesAcked, s.Totals.BytesReceived, s.Totals.BytesRetrans)
				fmt.Fprintf(w, "srtt (ms)\t%s\n\n", connSRTTRange(s.SRTTMin, s.SRTTMax))
				return connSubflowTable(w, c.Subflows, false)
			})
		},
	})
	return cmd
}

func newSubflowCmd(g *globalFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "subflow",
		Short: "List MPTCP subflows with their tcp_info figures",
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "One row per MPTCP subflow: token, addresses, ids, flags, rtt, cwnd, bytes, rates",
		Long:    "subflow list prints every MPTCP subflow, ordered by connection token then subflow id.\nFLAGS are the letters ss -ti prints after tcp-ulp-mptcp (M initial subflow, J joined,\nm/j sent by us, B/b backup asked by the peer/by us, e fully established, c connected).\n\n" + connLong,
		Example: "  mptcp-xdp subflow list --netns blue\n  mptcp-xdp subflow list -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			conns, err := connRead(g)
			if err != nil {
				return err
			}
			n := 0
			for _, c := range conns {
				n += len(c.Subflows)
			}
			sfs := make([]stats.Subflow, 0, n)
			for _, c := range conns {
				sfs = append(sfs, c.Subflows...)
			}
			rep := subflowListReport{Netns: connNetns(g), Subflows: make([]stats.SubflowJSON, len(sfs))}
			for i := range sfs {
				rep.Subflows[i] = sfs[i].JSON()
			}
			return connRender(cmd, g, rep, func(w io.Writer) error { return connSubflowTable(w, sfs, true) })
		},
	})
	return cmd
}

// connRender is render with the output buffered: a table of thousands of subflows is written
// cell by cell by the tabwriter, one write(2) each on an unbuffered stdout.
func connRender(cmd *cobra.Command, g *globalFlags, v any, table func(w io.Writer) error) error {
	out := cmd.OutOrStdout()
	bw := bufio.NewWriterSize(out, 256<<10)
	cmd.SetOut(bw)
	defer cmd.SetOut(out)
	if err := render(cmd, g, v, table); err != nil {
		return err
	}
	return bw.Flush()
}

// connRead reads the connections of the selected namespace with a reader made for this
// command.
func connRead(g *globalFlags) ([]stats.Connection, error) {
	r, err := stats.NewReader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Connections(g.netns)
}

// connNetns names the namespace read: its name, or "current" without --netns.
func connNetns(g *globalFlags) string {
	if g.netns == "" {
		return "current"
	}
	return g.netns
}

func connSubflowTable(w io.Writer, sfs []stats.Subflow, withToken bool) error {
	if withToken {
		fmt.Fprint(w, "TOKEN\t")
	}
	fmt.Fprintln(w, "ID\tLOCAL\tREMOTE\tLID\tRID\tFLAGS\tSTATE\t"+figuresHeader)
	for _, s := range sfs {
		if withToken {
			fmt.Fprintf(w, "%s\t", s.Token)
		}
		state := s.State.String()
		if s.Closed {
			state = "closed"
		}
		f := s.Figures()
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n",
			s.ID, s.Local, s.Remote, s.LocalID, s.RemoteID, renderDash(s.Flags.String()), state, figuresCells(&f))
	}
	return nil
}

func connSRTTRange(loUs, hiUs int64) string {
	lo, hi := renderMs(loUs), renderMs(hiUs)
	if lo == hi {
		return lo
	}
	return lo + "-" + hi
}

const connLBLong = `With --lb it lists instead the MPTCP connections the load balancer of --netns tracks, from its
pinned maps (see docs/lb.md): one row per learned server token, with its VIP, the backend that
holds it and the flows (subflows) the balancer has seen carry that token; -o json adds their
5-tuples. It reads the maps only: no iterator, no BTF needed.`

// connListLB lists the balancer's tokens with their backend and the flows seen with each
// (control.Connections, docs/lb.md).
func connListLB(cmd *cobra.Command, g *globalFlags) error {
	return withBalancer(g, false, func(b *control.Balancer) error {
		rep, err := b.Connections()
		if err != nil {
			return err
		}
		return connRender(cmd, g, rep, func(w io.Writer) error {
			fmt.Fprintln(w, "TOKEN\tVIP\tBACKEND\tSUBFLOWS")
			for _, c := range rep.Connections {
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\n", c.Token, c.VIP, c.Backend, c.Subflows)
			}
			return nil
		})
	})
}
