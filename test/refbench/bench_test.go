package refbench

import (
	"flag"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
)

var (
	benchFrames = flag.Int("refbench.frames", 8192, "frames per program per round")
	benchFlows  = flag.Uint("refbench.flows", 1<<20, "flow-table size of both balancers")
	benchFill   = flag.Bool("refbench.fill", true, "fill both flow tables to capacity first (new flows evict); false: keep them near empty (SYNs' flows removed after each round)")
	// Diagnostics (docs/benchmarks.md): where mptcp_dss's cost goes.
	benchTokens     = flag.Uint("refbench.tokens", 0, "mptcp-xdp's token-table size (0: its default, 1<<20)")
	benchNoSteering = flag.Bool("refbench.no-steering", false, "turn join steering off on mptcp-xdp's VIPs (the join cases then fail: use with -bench '/(flow_hit|mptcp_dss)$')")
)

// tQuantile975 is Student's t distribution's 97.5% quantile for df degrees of freedom.
func tQuantile975(df int) float64 {
	table := []float64{0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	switch {
	case df < 1:
		return math.NaN()
	case df < len(table):
		return table[df]
	case df < 60:
		return 2.00
	case df < 120:
		return 1.98
	}
	return 1.96
}

// summary of a case's rounds: the mean ns/pkt of each program, the geometric mean of the
// rounds' ratios mptcp-xdp/reference and its 95% confidence interval (Student's t over the
// rounds' log-ratios).
type summary struct {
	ref, mx          float64
	ratio, low, high float64
	rounds           int
}

func summarize(res []pairResult) summary {
	s := summary{rounds: len(res)}
	var logs []float64
	for _, r := range res {
		s.ref += r[progRef] / float64(len(res))
		s.mx += r[progMx] / float64(len(res))
		logs = append(logs, math.Log(r[progMx]/r[progRef]))
	}
	var mean, v float64
	for _, l := range logs {
		mean += l / float64(len(logs))
	}
	for _, l := range logs {
		v += (l - mean) * (l - mean)
	}
	s.ratio, s.low, s.high = math.Exp(mean), math.NaN(), math.NaN()
	if n := len(logs); n > 1 {
		half := tQuantile975(n-1) * math.Sqrt(v/float64(n-1)/float64(n))
		s.low, s.high = math.Exp(mean-half), math.Exp(mean+half)
	}
	return s
}

var (
	resultsMu sync.Mutex
	results   = map[string]summary{} // mode/case -> the last run's summary
	floor     float64                // rb_floor's ns/pkt
)

// BenchmarkVsReference runs each case of each mode for b.N rounds (at least 2: -benchtime 10x
// gives 10), each round sending the same -refbench.frames frames through the reference balancer
// and through mptcp-xdp's, in alternating order. ns/pkt are the kernel's (bpf_stats run time over
// run count); x-ref is the geometric mean of the rounds' ratios, x-ref-lo95/-hi95 its interval.
func BenchmarkVsReference(b *testing.B) {
	e := newEnv(b, envConfig{maxFlows: uint32(*benchFlows), maxTokens: uint32(*benchTokens), noSteering: *benchNoSteering, fill: *benchFill})
	b.Run("floor", func(b *testing.B) {
		var sum float64
		res := runFloor(b, e, max(b.N, 2), *benchFrames)
		for _, r := range res {
			sum += r
		}
		b.ReportMetric(sum/float64(len(res)), "floor-ns/pkt")
		resultsMu.Lock()
		floor = sum / float64(len(res))
		resultsMu.Unlock()
	})
	for _, m := range modes {
		for _, c := range cases {
			b.Run(m.name+"/"+c.name, func(b *testing.B) {
				res := runRounds(b, e, m, c, max(b.N, 2), *benchFrames)
				s := summarize(res)
				b.ReportMetric(s.ref, "ref-ns/pkt")
				b.ReportMetric(s.mx, "mx-ns/pkt")
				b.ReportMetric(s.ratio, "x-ref")
				b.ReportMetric(s.low, "x-ref-lo95")
				b.ReportMetric(s.high, "x-ref-hi95")
				resultsMu.Lock()
				results[m.name+"/"+c.name] = s
				resultsMu.Unlock()
			})
		}
	}
	// Printed, not logged: a benchmark's log shows only with -v or on failure.
	fmt.Print("\n" + table())
}

// Client-to-balancer packets of one MPTCP connection that downloads size bytes: SYN, the
// MP_CAPABLE third ACK, the request, one ACK per two segments of MSS 1448 (delayed ACKs), the
// FIN and the last ACK.
func connPackets(size int) int {
	segs := (size + 1447) / 1448
	return 2 + 1 + (segs+1)/2 + 2
}

// table renders the results as docs/benchmarks.md's table, and the third ACK's share of a
// connection's cost in the balancer.
func table() string {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var sb strings.Builder
	fmt.Fprintf(&sb, "| mode | case | reference ns/pkt | mptcp-xdp ns/pkt | ratio | 95%% interval | target | met |\n")
	fmt.Fprintf(&sb, "|---|---|---:|---:|---:|---|---:|---|\n")
	for _, m := range modes {
		for _, c := range cases {
			s, ok := results[m.name+"/"+c.name]
			if !ok {
				continue
			}
			target, met := "—", "—"
			if c.target != 0 {
				target = fmt.Sprintf("≤ %.2f×", c.target)
				met = "no"
				if s.high <= c.target {
					met = "yes"
				} else if s.ratio <= c.target {
					met = "estimate yes, interval crosses"
				}
			}
			fmt.Fprintf(&sb, "| %s | %s | %.1f | %.1f | %.3f× | %.3f–%.3f (%d rounds) | %s | %s |\n",
				m.name, c.name, s.ref, s.mx, s.ratio, s.low, s.high, s.rounds, target, met)
		}
	}
	fmt.Fprintf(&sb, "\nrb_floor (MAC rewrite to one backend, XDP_TX: any XDP_TX program's cost here): %.1f ns/pkt\n", floor)
	fmt.Fprintf(&sb, "\nMP_CAPABLE third ACK's share of one connection's mptcp-xdp balancer time (SYN + third ACK + DSS ACKs):\n")
	fmt.Fprintf(&sb, "| mode | third ACK ns | share, 100 KB (%d pkts) | share, 10 MB (%d pkts) | connection mptcp-xdp/reference, 100 KB | 10 MB |\n|---|---:|---:|---:|---:|---:|\n", connPackets(100*1024), connPackets(10*1024*1024))
	for _, m := range modes {
		syn, ok1 := results[m.name+"/new_syn"]
		dss, ok2 := results[m.name+"/mptcp_dss"]
		mpc, ok3 := results[m.name+"/mpc_ack"]
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		share := func(size int) float64 {
			n := connPackets(size)
			return mpc.mx / (syn.mx + mpc.mx + float64(n-2)*dss.mx)
		}
		// The whole connection in each: the reference's SYN, then plain flow hits (its third ACK
		// and DSS ACKs are flow hits to it; mpc_ack's and mptcp_dss's reference figures).
		conn := func(size int) float64 {
			n := float64(connPackets(size))
			return (syn.mx + mpc.mx + (n-2)*dss.mx) / (syn.ref + mpc.ref + (n-2)*dss.ref)
		}
		fmt.Fprintf(&sb, "| %s | %.0f | %.1f%% | %.2f%% | %.2f× | %.2f× |\n", m.name, mpc.mx, 100*share(100*1024), 100*share(10*1024*1024), conn(100*1024), conn(10*1024*1024))
	}
	return sb.String()
}
