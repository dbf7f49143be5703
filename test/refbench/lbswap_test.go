package refbench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

var (
	lbswapBlocks = flag.Int("lbswap.blocks", 20, "BenchmarkLBThroughputSwap: ABBA blocks (four phases each) per run")
	lbswapConns  = flag.Int("lbswap.conns", 4, "BenchmarkLBThroughputSwap: parallel MPTCP connections, alternating over the client's two paths")
	lbswapPhase  = flag.Duration("lbswap.phase", 150*time.Millisecond, "BenchmarkLBThroughputSwap: how long one side runs before the other takes over")
	lbswapGuard  = flag.Duration("lbswap.guard", 50*time.Millisecond, "BenchmarkLBThroughputSwap: the start of each phase that is not counted")
	lbswapTick   = flag.Duration("lbswap.tick", 10*time.Millisecond, "BenchmarkLBThroughputSwap: how often the backends' received bytes are read")
	lbswapV      = flag.Bool("lbswap.v", false, "BenchmarkLBThroughputSwap: log every run's figures")
)

// swapParams are one run's phases.
type swapParams struct {
	blocks, conns      int
	phase, guard, tick time.Duration
}

func flagParams() swapParams {
	return swapParams{blocks: *lbswapBlocks, conns: *lbswapConns, phase: *lbswapPhase, guard: *lbswapGuard, tick: *lbswapTick}
}

// swapSides: A and B of one run, and which of them is attached while the connections open (their
// SYNs and MP_CAPABLE handshakes go through it; the references get the flows written, see dial).
type swapSides struct {
	a, b, open *ebpf.Program
}

// lbSwapResult is one run: each side's throughput over its measured ticks, and what mptcp-xdp's
// balancer counted meanwhile.
type lbSwapResult struct {
	aMbps, bMbps float64
	mxForwarded  []uint64 // frames mptcp-xdp's balancer forwarded to each backend index
	conns        []*lbConn
}

// runLBSwap opens the connections with sides.open attached, then lets A and B take turns on them:
// one warm-up phase of A, then p.blocks blocks of A B B A. The backends' received bytes are read
// every p.tick; the first tick that ends in a new phase swaps the program on the balancer's
// interfaces (link.Update), and a phase counts the ticks that start p.guard or more after both its
// start and its swap. Every connection must still be MPTCP, and each backend must have received
// exactly what was sent on the connections it accepted (a flow sent to another backend mid-run
// would be reset there and fail its writes).
func runLBSwap(ll *lbLab, sides swapSides, p swapParams) (res lbSwapResult, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ll.use(sides.open); err != nil {
		return res, err
	}
	mx0, err := ll.mxForwarded()
	if err != nil {
		return res, err
	}
	conns, err := ll.dial(ctx, p.conns)
	if err != nil {
		return res, err
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	for _, s := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); s.run(&stop) }()
	}
	defer func() {
		stop.Store(true)
		wg.Wait()
		for _, s := range conns {
			err = errors.Join(err, s.err)
		}
		if err != nil {
			return
		}
		mx1, ferr := ll.mxForwarded()
		if ferr != nil {
			err = ferr
			return
		}
		for j := range mx1 {
			res.mxForwarded = append(res.mxForwarded, mx1[j]-mx0[j])
		}
		res.conns = conns
	}()

	phases := []*ebpf.Program{sides.a}
	for range p.blocks {
		phases = append(phases, sides.a, sides.b, sides.b, sides.a)
	}
	if err := ll.use(phases[0]); err != nil {
		return res, err
	}
	var (
		bytes   = make([]float64, len(phases))
		seconds = make([]float64, len(phases))
		swapped = make([]time.Duration, len(phases))
		cur     int
	)
	tick := time.NewTicker(p.tick)
	defer tick.Stop()
	start, prevAt, prev := time.Now(), time.Duration(0), ll.srv.received()
	for cur < len(phases) {
		<-tick.C
		rx, end := ll.srv.received(), time.Since(start)
		d, begin := rx-prev, prevAt
		prev, prevAt = rx, end
		ph := int(end / p.phase)
		if ph >= len(phases) {
			break
		}
		if ph == cur && begin >= time.Duration(ph)*p.phase+p.guard && begin >= swapped[ph] {
			bytes[ph] += float64(d)
			seconds[ph] += (end - begin).Seconds()
		}
		if ph > cur {
			cur, swapped[ph] = ph, end
			if err := ll.use(phases[ph]); err != nil {
				return res, err
			}
		}
	}
	var aB, aS, bB, bS float64
	for ph := 1; ph < len(phases); ph++ {
		if phases[ph] == sides.b {
			bB, bS = bB+bytes[ph], bS+seconds[ph]
		} else {
			aB, aS = aB+bytes[ph], aS+seconds[ph]
		}
	}
	if aS == 0 || bS == 0 || aB == 0 || bB == 0 {
		return res, errors.New("nothing measured")
	}
	res.aMbps, res.bMbps = aB*8/aS/1e6, bB*8/bS/1e6
	return res, nil
}

// mxForwarded reads mptcp-xdp's per-backend forwarded counters, by backend index.
func (ll *lbLab) mxForwarded() ([]uint64, error) {
	var out []uint64
	for _, id := range ll.ids {
		s, err := ll.mx.ReadBackendStats(id)
		if err != nil {
			return nil, err
		}
		out = append(out, s[lb.BackendStatForwarded])
	}
	return out, nil
}

// checkPlacement: mptcp-xdp's balancer forwarded frames to every backend that accepted a
// connection of the run (when it ran: mx), and none to the others.
func (ll *lbLab) checkPlacement(res lbSwapResult, mx bool) error {
	used := make([]bool, len(ll.ids))
	for _, s := range res.conns {
		used[s.backend-1] = true
	}
	var errs []error
	for j, n := range res.mxForwarded {
		switch {
		case !used[j] && n != 0:
			errs = append(errs, fmt.Errorf("mptcp-xdp forwarded %d frames to backend %d, which accepted no connection", n, j))
		case used[j] && mx && n == 0:
			errs = append(errs, fmt.Errorf("mptcp-xdp forwarded nothing to backend %d, which accepted a connection", j))
		case !mx && n != 0:
			errs = append(errs, fmt.Errorf("mptcp-xdp forwarded %d frames to backend %d while not attached", n, j))
		}
	}
	return errors.Join(errs...)
}

// geoCI is the geometric mean of ratios and its 95% confidence interval (Student's t on the
// logarithms; each ratio is its own run, so they are independent); NaN bounds with one ratio.
func geoCI(ratios []float64) (gm, lo, hi float64) {
	var mean, v float64
	for _, r := range ratios {
		mean += math.Log(r) / float64(len(ratios))
	}
	for _, r := range ratios {
		v += (math.Log(r) - mean) * (math.Log(r) - mean)
	}
	n := len(ratios)
	if n < 2 {
		return math.Exp(mean), math.NaN(), math.NaN()
	}
	h := tQuantile975(n-1) * math.Sqrt(v/float64(n-1)/float64(n))
	return math.Exp(mean), math.Exp(mean - h), math.Exp(mean + h)
}

// lbModes are the lab's forwarding modes and address families.
var lbModes = []struct {
	name string
	fwd  lb.Forward
	v6   bool
}{
	{"l2-ipv4", lb.ForwardL2, false},
	{"l2-ipv6", lb.ForwardL2, true},
	{"ipip-ipv4", lb.ForwardIPIP, false},
	{"ipip-ipv6", lb.ForwardIPIP, true},
}

// BenchmarkLBThroughputSwap compares the forwarding throughput of mptcp-xdp's balancer with the
// reference balancer's (rb_ref_lb_redir) in the balancer lab (internal/lablb: client, two paths,
// balancer, three backends with the VIP on loopback, direct server return), by the swap method of
// test/bench's BenchmarkThroughputSwap: the programs take turns on the same live connections, the
// XDP links on the balancer's two client-facing interfaces updated in place (link.Update).
//
// Both balancers have the same VIP, backends, Maglev ring and hash seed (newLBLab). Each run opens
// -lbswap.conns MPTCP connections (default 4, alternating over the two paths, one subflow each: the
// reference does not steer joins) with side B attached, so that mptcp-xdp's balancer places them
// and learns their tokens as in service, and writes the same flows into the reference's flow
// table; the connections then write as fast as they can while the sides take turns: one warm-up
// phase of A and -lbswap.blocks blocks of A B B A (default 20), each phase -lbswap.phase long
// (150 ms), the first -lbswap.guard (50 ms) of each not counted. One run's ratio is B's throughput
// over A's (the bytes the backends' servers read, over each side's measured time). Metrics over
// the b.N runs (-benchtime 10x): Mbit/s (B) and ref-Mbit/s (A), means; x-ref, the geometric mean
// of the ratios; ci95-lo and ci95-hi, its 95% interval (two runs or more).
//
// Cases: l2 and ipip, each with IPv4 and with IPv6 (VIP, client, backends, outer header), side A
// the reference, side B mptcp-xdp's balancer; the control-* cases swap the reference against a second copy of itself (own maps,
// configured alike): their interval is the method's own noise. Every run checks that each backend
// received exactly what was sent on the connections it accepted (a flow misplaced by either side
// would be reset by the wrong backend and fail) and that mptcp-xdp's per-backend counters saw
// frames only for the backends that accepted connections. The target is x-ref >= 0.95.
func BenchmarkLBThroughputSwap(b *testing.B) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	for _, m := range lbModes {
		ll := newLBLab(b, m.fwd, m.v6)
		ref, ref2, mx := ll.refs[0].RbRefLbRedir, ll.refs[1].RbRefLbRedir, ll.mx.Program
		for _, c := range []struct {
			name    string
			sides   swapSides
			control bool
		}{
			{m.name, swapSides{a: ref, b: mx, open: mx}, false},
			{"control-" + m.name, swapSides{a: ref, b: ref2, open: ref2}, true},
		} {
			b.Run(c.name, func(b *testing.B) {
				var a, bb, ratios []float64
				for range b.N {
					r, err := runLBSwap(ll, c.sides, flagParams())
					if err == nil {
						err = ll.checkPlacement(r, !c.control)
					}
					if err != nil {
						b.Fatalf("%s: %v", c.name, err)
					}
					if *lbswapV {
						b.Logf("%s: A %.0f Mbit/s, B %.0f Mbit/s, B/A %.3f", c.name, r.aMbps, r.bMbps, r.bMbps/r.aMbps)
					}
					a, bb, ratios = append(a, r.aMbps), append(bb, r.bMbps), append(ratios, r.bMbps/r.aMbps)
				}
				gm, lo, hi := geoCI(ratios)
				b.ReportMetric(mean(bb), "Mbit/s")
				b.ReportMetric(mean(a), "ref-Mbit/s")
				b.ReportMetric(gm, "x-ref")
				if len(ratios) > 1 {
					b.ReportMetric(lo, "ci95-lo")
					b.ReportMetric(hi, "ci95-hi")
				}
			})
		}
	}
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x / float64(len(xs))
	}
	return s
}

// TestLBSwapForwards: in both forwarding modes (l2 over IPv4, ipip over IPv6), the reference and mptcp-xdp's balancer each carry
// live MPTCP connections of the balancer lab while swapped in place (a short run of
// BenchmarkLBThroughputSwap's method); every backend receives exactly what its connections sent,
// both programs ran, and mptcp-xdp forwarded only to the backends that accepted connections. No
// timing is asserted.
func TestLBSwapForwards(t *testing.T) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		t.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	// Both modes and both families in two labs (each lab takes seconds to build): BenchmarkLBThroughputSwap
	// runs all four.
	for _, m := range []int{0, 3} {
		m := lbModes[m]
		t.Run(m.name, func(t *testing.T) {
			ll := newLBLab(t, m.fwd, m.v6)
			ref, mx := ll.refs[0].RbRefLbRedir, ll.mx.Program
			runs := func(p *ebpf.Program) uint64 {
				s, err := p.Stats()
				if err != nil {
					t.Fatal(err)
				}
				return s.RunCount
			}
			r0, m0 := runs(ref), runs(mx)
			res, err := runLBSwap(ll, swapSides{a: ref, b: mx, open: mx},
				swapParams{blocks: 1, conns: 4, phase: 200 * time.Millisecond, guard: 50 * time.Millisecond, tick: 10 * time.Millisecond})
			if err == nil {
				err = ll.checkPlacement(res, true)
			}
			if err != nil {
				t.Fatal(err)
			}
			if r, m := runs(ref)-r0, runs(mx)-m0; r == 0 || m == 0 {
				t.Errorf("program runs: reference %d, mptcp-xdp %d", r, m)
			}
			var sent uint64
			for _, s := range res.conns {
				sent += s.sent
			}
			t.Logf("%d connections, %d bytes, mptcp-xdp forwarded %v frames per backend; %.0f / %.0f Mbit/s (not asserted)",
				len(res.conns), sent, res.mxForwarded, res.aMbps, res.bMbps)
		})
	}
}
