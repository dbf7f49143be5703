package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

var (
	transferTime = flag.Duration("transfer", 3*time.Second, "sending time of each throughput transfer")
	settle       = flag.Duration("settle", 2*time.Second, "pause between attaching (and a forced GC) and transferring")
	verbose      = flag.Bool("each", false, "log every transfer's figure")
	// cubic, set on the sockets before they connect: with bbr (this VM's default) MPTCP over veth
	// collapses to about 130 Mbit/s per subflow for seconds at a time (docs/veth-lab.md).
	congestion = flag.String("cc", "cubic", "congestion control of the transfers' sockets (\"\" for the namespace default)")
)

// throughputPairs are measured against each other: the datapath against its trivial baseline in the
// same hook and mode.
var throughputPairs = []struct {
	name              string
	trivial, datapath variant
}{
	{
		"xdp-native",
		variant{name: "trivial xdp native", trivial: true, mode: loader.ModeNative},
		variant{name: "datapath xdp native", datapath: true, mode: loader.ModeNative, ingress: loader.IngressXDP, egress: true},
	},
	{
		"xdp-generic",
		variant{name: "trivial xdp generic", trivial: true, mode: loader.ModeGeneric},
		variant{name: "datapath xdp generic", datapath: true, mode: loader.ModeGeneric, ingress: loader.IngressXDP, egress: true},
	},
	{
		"tc-ingress",
		variant{name: "trivial tcx ingress+egress", trivialTC: true},
		variant{name: "datapath tc ingress", datapath: true, ingress: loader.IngressTC, egress: true},
	},
}

// BenchmarkThroughput measures MPTCP throughput between two network namespaces joined by two
// unshaped veth paths, one subflow per path, with the programs on the server's interfaces:
//
//	no-xdp       nothing attached
//	xdp-native   trivial XDP_PASS (link.AttachXDP) vs the datapath (loader.Attach, native XDP + tc egress)
//	xdp-generic  the same in generic (skb) mode
//	tc-ingress   trivial tcx pass on ingress and egress vs the datapath with --ingress tc
//
// Each iteration of a pair runs one transfer of -transfer (default 3s) with each side, alternating
// which goes first; Mbit/s is the median of the datapath's transfers, trivial-Mbit/s the median of
// its baseline's, and x-trivial their ratio (the target is >= 0.95). Throughput is the
// application bytes the server has read by the end of the sending time, which starts -settle (2s)
// after the attach (see measure). Run with -benchtime Nx for N transfers (pairs) per figure; the
// default 1s gives one.
func BenchmarkThroughput(b *testing.B) {
	testutil.RequireRoot(b)
	l := testutil.NewLab(b, lab.Config{Paths: 2, Subflows: true})
	root := bpffsRoot(b)
	// A first short transfer, so that no figure pays for a cold lab.
	if _, err := measure(b, l, variant{name: "warm-up"}, root, time.Second); err != nil {
		b.Fatal(err)
	}

	b.Run("no-xdp", func(b *testing.B) {
		var ms []float64
		for i := 0; i < b.N; i++ {
			m, err := measure(b, l, variant{name: "no xdp"}, root, *transferTime)
			if err != nil {
				b.Fatal(err)
			}
			ms = append(ms, m)
		}
		b.ReportMetric(median(ms), "Mbit/s")
	})
	for _, p := range throughputPairs {
		b.Run(p.name, func(b *testing.B) {
			var base, dp []float64
			for i := 0; i < b.N; i++ {
				order := []variant{p.trivial, p.datapath}
				if i%2 == 1 {
					order[0], order[1] = order[1], order[0]
				}
				for _, v := range order {
					m, err := measure(b, l, v, root, *transferTime)
					if err != nil {
						b.Fatal(err)
					}
					if *verbose {
						b.Logf("pair %d: %s %.0f Mbit/s", i, v, m)
					}
					if v.datapath {
						dp = append(dp, m)
					} else {
						base = append(base, m)
					}
				}
			}
			b.ReportMetric(median(dp), "Mbit/s")
			b.ReportMetric(median(base), "trivial-Mbit/s")
			b.ReportMetric(median(dp)/median(base), "x-trivial")
		})
	}
}

// median of xs (the mean of the middle two for an even count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// measure attaches v, runs one transfer of d, detaches v and returns the throughput in Mbit/s: the
// application bytes the server has read when the sending time is up, over that time. The tail in
// which the client's queued data drains after the deadline is left out: on veth with native XDP,
// drops in the veth ring often turn it into seconds of retransmission timeouts, which have nothing
// to do with the program attached and would make the figure depend on when the last loss happened.
func measure(tb testing.TB, l *lab.Lab, v variant, root string, d time.Duration) (float64, error) {
	detach, err := attach(l, v, root)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", v, err)
	}
	// Attaching the datapath loads and verifies large programs (and detaching frees them); right
	// after that, transfers measured slower, whichever side it was (docs/benchmarks.md). Collect
	// the loader's garbage (ELF, kernel BTF) and let the machine settle before measuring.
	runtime.GC()
	time.Sleep(*settle)
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	var first *lab.TransferTick
	res, err := l.Transfer(ctx, lab.TransferConfig{Duration: d, Interval: d, CongestionControl: *congestion, OnTick: func(t lab.TransferTick) {
		if first == nil {
			first = &t
		}
	}})
	if derr := detach(); derr != nil && err == nil {
		err = derr
	}
	if err == nil && !res.MPTCP {
		err = errors.New("the connection fell back to TCP")
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", v, err)
	}
	if !res.ChecksumOK {
		// The kernel's, not the programs' (docs/veth-lab.md): the figure stands, the log says so.
		where := "no stamp was wrong"
		if res.FirstBadStamp >= 0 {
			where = fmt.Sprintf("first wrong stamp at offset %d carries %d", res.FirstBadStamp, res.BadStampValue)
		}
		tb.Logf("%s: the server received a different byte stream than was sent (%d bytes each way; %s): see docs/veth-lab.md", v, res.Received, where)
	}
	if first == nil { // everything drained before the first tick
		return float64(res.Received) * 8 / res.Duration.Seconds() / 1e6, nil
	}
	return float64(first.Received) * 8 / first.Elapsed.Seconds() / 1e6, nil
}
