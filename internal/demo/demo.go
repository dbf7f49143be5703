// Package demo is `mptcp-xdp demo`: a self-contained lab of two network namespaces joined by two
// shaped veth paths, the datapath attached to the server's interfaces, a real MPTCP transfer between
// Go programs with live per-path figures, then the datapath's counters beside the kernel's own.
// Everything it makes is removed when it returns, on failure and on Ctrl-C too.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// Options configure a demo run.
type Options struct {
	Duration  time.Duration // sending time
	RatesMbit []int         // one tbf rate per path
	Conns     int           // parallel MPTCP connections
	Mode      loader.XDPMode
	Ingress   loader.IngressHook
	Root      string // bpffs root of the loader
	// Quiet suppresses the live lines (Result is still returned).
	Quiet bool
	// Keep leaves the lab, the datapath and traffic running after the summary, calling Serve with
	// the lab's namespaces, until ctx is done; then everything is removed.
	Keep bool
	// Serve is called with Keep (e.g. to run the Prometheus exporter on the lab); it should return
	// when ctx is done.
	Serve func(ctx context.Context, netns []string) error
}

// PathResult is what one path carried.
type PathResult struct {
	Index     int     `json:"index"`
	ServerIf  string  `json:"server_if"`
	RateMbit  int     `json:"rate_mbit"`
	RxBytes   uint64  `json:"rx_bytes"`
	MeanMbps  float64 `json:"mean_mbps"`
	SharePerc float64 `json:"share_percent"`
}

// KernelCheck pairs one datapath count with the kernel's own counter for the same event.
type KernelCheck struct {
	Class  string `json:"class"`
	MIB    string `json:"mib"`
	XDP    uint64 `json:"datapath"`
	Kernel int64  `json:"kernel"`
}

// Result is the outcome of a demo run (the `demo -o json` document).
type Result struct {
	Client      string                            `json:"client_netns"`
	Server      string                            `json:"server_netns"`
	DurationSec float64                           `json:"duration_seconds"`
	SentBytes   uint64                            `json:"sent_bytes"`
	RecvBytes   uint64                            `json:"received_bytes"`
	ChecksumOK  bool                              `json:"checksum_ok"`
	MPTCP       bool                              `json:"mptcp"`
	Paths       []PathResult                      `json:"paths"`
	Counters    map[string]maps.InterfaceCounters `json:"counters"`
	Kernel      []KernelCheck                     `json:"kernel_check"`
	// Subflows are the client's (the sender's) subflows as the socket iterator last saw them
	// during the transfer, with their tcp_info figures.
	Subflows []stats.SubflowJSON `json:"subflows"`
}

// kernelPairs are the server-side receive events the kernel counts itself.
var kernelPairs = []struct {
	class mptcp.Class
	mib   string
}{
	{mptcp.MPCapableSYN, "MPCapableSYNRX"},
	{mptcp.MPCapableACK, "MPCapableACKRX"},
	{mptcp.MPJoinSYN, "MPJoinSynRx"},
	{mptcp.MPJoinACK, "MPJoinAckRx"},
}

// Run builds the lab, runs the transfer and tears everything down. Live lines go to w.
func Run(ctx context.Context, o Options, w io.Writer) (res Result, err error) {
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if len(o.RatesMbit) == 0 {
		o.RatesMbit = []int{200, 50}
	}
	if len(o.RatesMbit) < 2 {
		return res, errors.New("demo needs at least two paths (--rates A,B)")
	}
	say := func(format string, a ...any) {
		if !o.Quiet {
			fmt.Fprintf(w, format, a...)
		}
	}

	say("building the lab: two namespaces, %d veth paths shaped to %s Mbit/s\n", len(o.RatesMbit), joinInts(o.RatesMbit))
	lb, err := lab.New(lab.Config{Prefix: "mxdemo", Paths: len(o.RatesMbit), RatesMbit: o.RatesMbit, Subflows: true})
	if err != nil && strings.Contains(err.Error(), "exists") {
		lb, err = lab.New(lab.Config{Paths: len(o.RatesMbit), RatesMbit: o.RatesMbit, Subflows: true})
	}
	if err != nil {
		return res, fmt.Errorf("build lab: %w", err)
	}
	defer func() {
		if cerr := lb.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("remove lab: %w", cerr)
		}
		say("removed namespaces %s and %s\n", lb.Client, lb.Server)
	}()
	res.Client, res.Server = lb.Client, lb.Server

	ld, err := loader.New(o.Root)
	if err != nil {
		return res, err
	}
	nsDir, err := loader.NetnsDir(lb.Server)
	if err != nil {
		return res, err
	}
	for _, p := range lb.Paths {
		a, err := ld.Attach(loader.AttachOptions{Iface: p.ServerIf, Netns: lb.Server, Mode: o.Mode, Ingress: o.Ingress, Egress: true})
		if err != nil {
			return res, err
		}
		defer func(iface string) {
			if derr := ld.Detach(lb.Server, iface); derr != nil && err == nil {
				err = derr
			}
		}(p.ServerIf)
		say("datapath attached to %s/%s: ingress %s %s, egress tc (pinned in %s)\n", lb.Server, p.ServerIf, a.Ingress, a.XDPMode, a.PinDir)
	}

	mibBefore, err := lb.MIB(lb.Server)
	if err != nil {
		return res, err
	}
	// The socket iterator reads the sender's subflows once a tick, so a view of them is at hand
	// once the transfer has closed its connections: the one with the most subflows (the newest of
	// those), as a last tick may come while the connections close.
	reader, rerr := stats.NewReader()
	if rerr != nil {
		say("per-subflow figures unavailable: %v\n", rerr)
	} else {
		defer reader.Close()
	}
	var lastSubflows []stats.Subflow
	say("\nMPTCP transfer client -> server for %s (%d connection(s)); per-path throughput at the server:\n", o.Duration, max(o.Conns, 1))
	tr, err := lb.Transfer(ctx, lab.TransferConfig{
		Duration: o.Duration,
		Conns:    o.Conns,
		OnTick: func(t lab.TransferTick) {
			var parts []string
			for _, p := range t.Paths {
				parts = append(parts, fmt.Sprintf("path%d %7.1f Mbit/s", p.Index, p.Mbps))
			}
			say("  t=%4.1fs  %s  total %7.1f Mbit/s\n", t.Elapsed.Seconds(), strings.Join(parts, "  "), t.TotalMbps)
			if reader != nil {
				if sfs, err := reader.Subflows(lb.Client); err == nil && len(sfs) > 0 && len(sfs) >= len(lastSubflows) {
					lastSubflows = sfs
				}
			}
		},
	})
	if err != nil {
		return res, fmt.Errorf("transfer: %w", err)
	}
	res.DurationSec, res.SentBytes, res.RecvBytes, res.ChecksumOK, res.MPTCP = tr.Duration.Seconds(), tr.Sent, tr.Received, tr.ChecksumOK, tr.MPTCP
	var total uint64
	for _, b := range tr.PathBytes {
		total += b
	}
	for i, p := range lb.Paths {
		pr := PathResult{Index: p.Index, ServerIf: p.ServerIf, RateMbit: p.RateMbit}
		if i < len(tr.PathBytes) {
			pr.RxBytes = tr.PathBytes[i]
			if tr.Duration > 0 {
				pr.MeanMbps = float64(pr.RxBytes) * 8 / tr.Duration.Seconds() / 1e6
			}
			if total > 0 {
				pr.SharePerc = 100 * float64(pr.RxBytes) / float64(total)
			}
		}
		res.Paths = append(res.Paths, pr)
	}

	mibAfter, err := lb.MIB(lb.Server)
	if err != nil {
		return res, err
	}
	delta := mibAfter.Sub(mibBefore)
	res.Counters = map[string]maps.InterfaceCounters{}
	var sum maps.Counters
	for _, p := range lb.Paths {
		c, err := maps.ReadPinnedCounters(ld.IfaceDir(nsDir, p.ServerIf))
		if err != nil {
			return res, err
		}
		res.Counters[p.ServerIf] = c
		for i := range sum.Options {
			sum.Options[i] += c.Ingress.Options[i]
		}
	}
	for _, kp := range kernelPairs {
		res.Kernel = append(res.Kernel, KernelCheck{Class: kp.class.String(), MIB: kp.mib, XDP: sum.Options[kp.class], Kernel: delta.MPTCP(kp.mib)})
	}

	for i := range lastSubflows {
		res.Subflows = append(res.Subflows, lastSubflows[i].JSON())
	}

	say("\n%d bytes sent, %d received, checksum %s, MPTCP %v, %.1fs\n", res.SentBytes, res.RecvBytes, okWord(res.ChecksumOK), res.MPTCP, res.DurationSec)
	if KernelStreamFault(res) {
		say("(the same byte count with different bytes: a Linux 6.18 fault on veth with BPF programs on the\n" +
			" receiving path, which mptcp-xdp only reads; see docs/veth-lab.md)\n")
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	if !o.Quiet {
		fmt.Fprintln(tw, "path\tserver if\trate Mbit/s\treceived bytes\tmean Mbit/s\tshare\t")
		for _, p := range res.Paths {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%.1f\t%.1f%%\t\n", p.Index, p.ServerIf, p.RateMbit, p.RxBytes, p.MeanMbps, p.SharePerc)
		}
		tw.Flush()
		say("\ndatapath counters on the server (rx = XDP/TC ingress, tx = TC egress):\n")
		fmt.Fprint(tw, "counter\t")
		for _, p := range lb.Paths {
			fmt.Fprintf(tw, "%s rx\t%s tx\t", p.ServerIf, p.ServerIf)
		}
		fmt.Fprintln(tw)
		for i := 0; i < mptcp.NumPacketCounters; i++ {
			fmt.Fprintf(tw, "packets.%s\t", mptcp.PacketCounter(i))
			for _, p := range lb.Paths {
				c := res.Counters[p.ServerIf]
				fmt.Fprintf(tw, "%d\t%d\t", c.Ingress.Packets[i], c.Egress.Packets[i])
			}
			fmt.Fprintln(tw)
		}
		for _, cl := range mptcp.Classes() {
			fmt.Fprintf(tw, "%s\t", cl)
			for _, p := range lb.Paths {
				c := res.Counters[p.ServerIf]
				fmt.Fprintf(tw, "%d\t%d\t", c.Ingress.Options[cl], c.Egress.Options[cl])
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		say("\nthe datapath against the server kernel's own counters (/proc/net/netstat):\n")
		fmt.Fprintln(tw, "datapath class\tcount\tkernel MIB\tcount\t")
		for _, k := range res.Kernel {
			fmt.Fprintf(tw, "%s\t%d\tMPTcpExt%s\t%d\t\n", k.Class, k.XDP, k.MIB, k.Kernel)
		}
		tw.Flush()
		if len(lastSubflows) > 0 {
			say("\nthe sender's subflows at the last tick (socket iterator, tcp_info figures):\n")
			fmt.Fprintln(tw, "token\tid\trole\tlocal\tremote\tstate\tsent bytes\tretrans bytes\tsrtt\tcwnd\tdelivery Mbit/s\t")
			for i := range lastSubflows {
				sf := &lastSubflows[i]
				role := "join"
				if sf.Initial() {
					role = "initial"
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d\t%.1f\t\n", sf.Token, sf.ID, role, sf.Local, sf.Remote,
					sf.State, sf.BytesSent, sf.BytesRetrans, sf.SRTT, sf.Cwnd, float64(sf.DeliveryRate)*8/1e6)
			}
			tw.Flush()
		}
		fmt.Fprintln(w)
	}
	if o.Keep {
		if err := keep(ctx, lb, o, say); err != nil {
			return res, err
		}
	}
	return res, nil
}

// keep runs traffic in the lab and o.Serve until ctx is done.
func keep(ctx context.Context, lb *lab.Lab, o Options, say func(string, ...any)) error {
	say("lab kept: namespaces %s (client) and %s (server); traffic keeps flowing. Ctrl-C removes everything.\n", lb.Client, lb.Server)
	errc := make(chan error, 1)
	go func() {
		if o.Serve == nil {
			<-ctx.Done()
			errc <- nil
			return
		}
		errc <- o.Serve(ctx, []string{lb.Client, lb.Server})
	}()
	for ctx.Err() == nil {
		// Long transfers, each a new connection, so joins and handshakes keep showing up too.
		if _, err := lb.Transfer(ctx, lab.TransferConfig{Duration: 30 * time.Second, Conns: max(o.Conns, 1)}); err != nil && ctx.Err() == nil {
			return fmt.Errorf("transfer: %w", err)
		}
	}
	return <-errc
}

// KernelStreamFault reports whether a transfer has the signature of the kernel's veth fault
// (docs/veth-lab.md): MPTCP throughout and as many bytes received as sent, but other bytes.
func KernelStreamFault(res Result) bool {
	return !res.ChecksumOK && res.MPTCP && res.SentBytes > 0 && res.SentBytes == res.RecvBytes
}

func okWord(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISMATCH"
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, "/")
}
