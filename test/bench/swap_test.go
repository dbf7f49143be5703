package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

var (
	swapBlocks = flag.Int("swap-blocks", 40, "ABBA blocks (four phases each) per BenchmarkThroughputSwap figure")
	swapConns  = flag.Int("swap-conns", 4, "BenchmarkThroughputSwap: parallel MPTCP connections")
	swapPhase  = flag.Duration("swap-phase", 150*time.Millisecond, "BenchmarkThroughputSwap: how long one side runs before the other takes over")
	swapGuard  = flag.Duration("swap-guard", 50*time.Millisecond, "BenchmarkThroughputSwap: the start of each phase that is not counted")
	swapTick   = flag.Duration("swap-tick", 10*time.Millisecond, "BenchmarkThroughputSwap: how often the received bytes are read")
)

// swapCase is one comparison of BenchmarkThroughputSwap: side A is a trivial pass-through program
// alone on the ingress hook, side B the datapath (ingress program and TC egress program), or, for
// the A/A controls, a second trivial program of the same kind.
type swapCase struct {
	name    string
	mode    loader.XDPMode
	ingress loader.IngressHook
	control bool // B is another trivial program: the figure shows the method's own noise
	// nothing: side A has no program on either hook (what users compare against: not running the
	// tool); side B attaches the datapath's links (or, for a control, trivial ones) and A removes
	// them again. Only for tcx ingress, which is what the default attach picks on veth.
	nothing bool
}

var swapCases = []swapCase{
	{name: "xdp-native", mode: loader.ModeNative, ingress: loader.IngressXDP},
	{name: "xdp-generic", mode: loader.ModeGeneric, ingress: loader.IngressXDP},
	{name: "tc-ingress", ingress: loader.IngressTC},
	{name: "control-xdp-native", mode: loader.ModeNative, ingress: loader.IngressXDP, control: true},
	{name: "control-xdp-generic", mode: loader.ModeGeneric, ingress: loader.IngressXDP, control: true},
	{name: "control-tc-ingress", ingress: loader.IngressTC, control: true},
	// The default attach (`mptcp-xdp attach` with no hook flags: --ingress auto, which takes tcx
	// ingress on veth) against nothing attached at all; the control swaps trivial tcx programs on
	// both hooks against nothing.
	{name: "default-vs-nothing", ingress: loader.IngressAuto, nothing: true},
	{name: "control-nothing", ingress: loader.IngressAuto, nothing: true, control: true},
}

// BenchmarkThroughputSwap compares MPTCP throughput with the datapath attached against a trivial
// pass-through program in the same hook and mode, within one transfer: the programs take turns on
// the same connections, swapped in place by updating the bpf_links the loader pinned, so that what
// makes separate transfers differ by a factor of two on this VM (how the congestion windows and the
// MPTCP scheduler happen to settle, stalls, the machine's load) weighs on both sides alike.
//
// One lab of two unshaped veth paths, one subflow per path (internal/lab), -swap-conns MPTCP
// connections (default 4) with -cc congestion control (default cubic), programs on the server's
// two interfaces. loader.Attach puts the datapath on both (XDP ingress in the case's mode, or tcx
// ingress for tc-ingress; tcx egress). Then the sides take turns, one warm-up phase of A and
// -swap-blocks blocks of A B B A (default 40), each phase -swap-phase long (default 150 ms):
//
//	A  trivial: the ingress link runs a trivial pass-through program (XDP_PASS or TCX_NEXT); the
//	   egress hook is empty (the loader's egress link is detached at the start)
//	B  datapath: the ingress link runs the datapath's program; a tcx egress link runs the
//	   datapath's egress program
//
// The received bytes are read every -swap-tick (10 ms); the first tick that ends in a new phase
// swaps the programs, and a phase counts the ticks that start -swap-guard (50 ms) or more after
// both its start and its swap. One run's ratio is B's throughput over A's (bytes over measured
// time, each side). Metrics over the b.N runs: Mbit/s (B) and trivial-Mbit/s (A), means of the
// runs; x-trivial, the geometric mean of the runs' ratios; ci95-lo and ci95-hi, its 95%
// confidence interval (Student's t on the logarithms; runs are independent transfers and
// attachments), with two runs or more (-benchtime Nx).
//
// The control-* cases swap between two separately loaded trivial programs (B is trivial too, with
// the egress hook empty as in A): their interval shows what the method reports when nothing
// differs. The target is x-trivial >= 0.95.
func BenchmarkThroughputSwap(b *testing.B) {
	testutil.RequireRoot(b)
	l := testutil.NewLab(b, lab.Config{Paths: 2, Subflows: true})
	root := bpffsRoot(b)
	if _, err := measure(b, l, variant{name: "warm-up"}, root, time.Second); err != nil {
		b.Fatal(err)
	}
	for _, c := range swapCases {
		b.Run(c.name, func(b *testing.B) {
			var a, bb, ratios []float64
			for i := 0; i < b.N; i++ {
				r, err := runSwap(b, l, root, c)
				if err != nil {
					b.Fatal(err)
				}
				a, bb, ratios = append(a, r.aMbps), append(bb, r.bMbps), append(ratios, r.bMbps/r.aMbps)
			}
			gm, lo, hi := ratioCI(ratios)
			// Side A is a trivial program, or nothing at all.
			baseline := "trivial"
			if c.nothing {
				baseline = "nothing"
			}
			b.ReportMetric(sum(bb)/float64(len(bb)), "Mbit/s")
			b.ReportMetric(sum(a)/float64(len(a)), baseline+"-Mbit/s")
			b.ReportMetric(gm, "x-"+baseline)
			if len(ratios) > 1 {
				b.ReportMetric(lo, "ci95-lo")
				b.ReportMetric(hi, "ci95-hi")
			}
		})
	}
}

// ratioCI returns the geometric mean of ratios and its 95% confidence interval, from Student's t on
// their logarithms (each ratio comes from its own transfer and attach, so they are independent).
func ratioCI(ratios []float64) (gm, lo, hi float64) {
	n := len(ratios)
	var s, s2 float64
	for _, r := range ratios {
		s += math.Log(r)
	}
	m := s / float64(n)
	if n < 2 {
		return math.Exp(m), math.NaN(), math.NaN()
	}
	for _, r := range ratios {
		s2 += (math.Log(r) - m) * (math.Log(r) - m)
	}
	se := math.Sqrt(s2/float64(n-1)) / math.Sqrt(float64(n))
	h := t975(n-1) * se
	return math.Exp(m), math.Exp(m - h), math.Exp(m + h)
}

// t975 is the 0.975 quantile of Student's t distribution with df degrees of freedom.
func t975(df int) float64 {
	table := []float64{12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042}
	if df <= len(table) {
		return table[df-1]
	}
	return 1.96 + 2.4/float64(df) // within 0.2% of the exact quantile beyond 30
}

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

type swapResult struct {
	aMbps, bMbps float64 // mean throughput over each side's measured ticks
}

// swapper holds the links and programs of one BenchmarkThroughputSwap run and switches sides.
type swapper struct {
	ns      string
	ifaces  []int           // server-side ifindexes, in the server namespace
	ingress []link.Link     // the loader's pinned ingress links, one per interface
	egress  []link.Link     // tcx egress links while side B runs (datapath only)
	dpIn    []*ebpf.Program // per interface: the datapath's ingress program (a control: a second trivial program)
	dpOut   []*ebpf.Program // per interface: the datapath's egress program; empty for a control
	trivial *ebpf.Program
	second  *ebpf.Program // a control's side B
	err     error         // of a swap during the transfer (OnTick runs on one goroutine, done when Transfer returns)
	nothing bool          // side A has no program at all: s.ingress holds tcx links while B runs
}

// set puts side B (datapath) or side A (trivial) in place on every interface.
func (s *swapper) set(datapath bool) error {
	if s.nothing {
		return s.setLinks(datapath)
	}
	for i, lk := range s.ingress {
		prog := s.trivial
		if datapath {
			prog = s.dpIn[i]
		}
		if err := lk.Update(prog); err != nil {
			return fmt.Errorf("update ingress link %d: %w", i, err)
		}
	}
	if len(s.dpOut) == 0 {
		return nil
	}
	if !datapath {
		for _, lk := range s.egress {
			if err := lk.Close(); err != nil {
				return fmt.Errorf("remove egress link: %w", err)
			}
		}
		s.egress = nil
		return nil
	}
	if len(s.egress) > 0 {
		return nil
	}
	return netns.Do(s.ns, func() error {
		for i, ifc := range s.ifaces {
			lk, err := link.AttachTCX(link.TCXOptions{Program: s.dpOut[i], Interface: ifc, Attach: ebpf.AttachTCXEgress})
			if err != nil {
				return fmt.Errorf("attach datapath tcx egress to ifindex %d: %w", ifc, err)
			}
			s.egress = append(s.egress, lk)
		}
		return nil
	})
}

// setLinks, for a nothing case: side B attaches tcx ingress and egress links running dpIn and dpOut
// on every interface; side A closes them, leaving both hooks empty.
func (s *swapper) setLinks(datapath bool) error {
	if !datapath {
		for _, lk := range slices.Concat(s.ingress, s.egress) {
			if err := lk.Close(); err != nil {
				return fmt.Errorf("remove tcx link: %w", err)
			}
		}
		s.ingress, s.egress = nil, nil
		return nil
	}
	if len(s.ingress) > 0 {
		return nil
	}
	return netns.Do(s.ns, func() error {
		for i, ifc := range s.ifaces {
			for _, h := range []struct {
				prog   *ebpf.Program
				attach ebpf.AttachType
				dst    *[]link.Link
			}{{s.dpIn[i], ebpf.AttachTCXIngress, &s.ingress}, {s.dpOut[i], ebpf.AttachTCXEgress, &s.egress}} {
				lk, err := link.AttachTCX(link.TCXOptions{Program: h.prog, Interface: ifc, Attach: h.attach})
				if err != nil {
					return fmt.Errorf("attach tcx %s to ifindex %d: %w", h.attach, ifc, err)
				}
				*h.dst = append(*h.dst, lk)
			}
		}
		return nil
	})
}

func (s *swapper) close() {
	for _, lk := range s.egress {
		lk.Close()
	}
	for _, lk := range s.ingress {
		lk.Close()
	}
	if s.second == nil {
		for _, p := range slices.Concat(s.dpIn, s.dpOut) {
			p.Close()
		}
	}
	for _, p := range []*ebpf.Program{s.trivial, s.second} {
		if p != nil {
			p.Close()
		}
	}
}

// runSwap attaches the datapath, runs one transfer in which the sides take turns, detaches.
func runSwap(tb testing.TB, l *lab.Lab, root string, c swapCase) (res swapResult, err error) {
	ld, err := loader.New(root)
	if err != nil {
		return res, err
	}
	s := &swapper{ns: l.Server, nothing: c.nothing}
	defer s.close()
	for _, p := range l.Paths {
		att, err := ld.Attach(loader.AttachOptions{Iface: p.ServerIf, Netns: l.Server, Mode: c.mode, Ingress: c.ingress, Egress: true})
		if err != nil {
			return res, err
		}
		iface := p.ServerIf
		defer func() {
			if derr := ld.Detach(l.Server, iface); derr != nil && err == nil {
				err = derr
			}
		}()
		s.ifaces = append(s.ifaces, att.Ifindex)
		if err := s.take(att, c); err != nil {
			return res, err
		}
	}
	if c.control && c.nothing {
		// Side B: trivial tcx programs on both hooks.
		if s.second, err = trivialTC(0); err != nil {
			return res, err
		}
		for _, p := range slices.Concat(s.dpIn, s.dpOut) {
			p.Close()
		}
		s.dpIn, s.dpOut = nil, nil
		for range s.ifaces {
			s.dpIn, s.dpOut = append(s.dpIn, s.second), append(s.dpOut, s.second)
		}
	} else if c.control {
		// Side B: a second trivial program on every interface, and no egress program.
		if s.second, err = s.trivialFor(c); err != nil {
			return res, err
		}
		for _, p := range slices.Concat(s.dpIn, s.dpOut) {
			p.Close()
		}
		s.dpIn, s.dpOut = nil, nil
		for range s.ingress {
			s.dpIn = append(s.dpIn, s.second)
		}
	}
	if s.trivial, err = s.trivialFor(c); err != nil {
		return res, err
	}

	// Phases: one warm-up (A), then blocks of A B B A, each phase -swap-phase long on the transfer's
	// clock. The first tick that ends in a new phase swaps the programs; ticks that end in a phase,
	// start -swap-guard or more after its start and after its swap, are counted for it.
	var sides []bool // true: B
	sides = append(sides, false)
	for range *swapBlocks {
		sides = append(sides, false, true, true, false)
	}
	if err := s.set(sides[0]); err != nil {
		return res, err
	}
	var (
		bytes   = make([]float64, len(sides)) // measured bytes per phase
		seconds = make([]float64, len(sides)) // measured time per phase
		swapped = make([]time.Duration, len(sides))
		prev    uint64
		cur     int
	)
	phase := *swapPhase
	total := time.Duration(len(sides)) * phase
	ctx, cancel := context.WithTimeout(context.Background(), total+2*time.Minute)
	defer cancel()
	tr, err := l.Transfer(ctx, lab.TransferConfig{
		Duration:          total + 2**swapTick,
		Interval:          *swapTick,
		CongestionControl: *congestion,
		Conns:             *swapConns,
		OnTick: func(t lab.TransferTick) {
			d := t.Received - prev
			prev = t.Received
			start, end := t.Elapsed-t.Interval, t.Elapsed
			p := int(end / phase)
			if p >= len(sides) {
				return
			}
			if p == cur && start >= time.Duration(p)*phase+*swapGuard && start >= swapped[p] {
				bytes[p] += float64(d)
				seconds[p] += t.Interval.Seconds()
			}
			if p > cur {
				cur, swapped[p] = p, end
				if err := s.set(sides[p]); err != nil {
					s.err = errors.Join(s.err, err)
				}
			}
		},
	})
	if err == nil {
		err = s.err
	}
	if err == nil && !tr.MPTCP {
		err = errors.New("the connection fell back to TCP")
	}
	if err == nil && cur != len(sides)-1 {
		err = fmt.Errorf("the transfer ended in phase %d of %d", cur+1, len(sides))
	}
	if err != nil {
		return res, fmt.Errorf("%s: %w", c.name, err)
	}
	if !tr.ChecksumOK {
		tb.Logf("%s: the server received a different byte stream than was sent: see docs/veth-lab.md", c.name)
	}
	var aB, aS, bB, bS float64
	for p := 1; p < len(sides); p++ {
		if sides[p] {
			bB, bS = bB+bytes[p], bS+seconds[p]
		} else {
			aB, aS = aB+bytes[p], aS+seconds[p]
		}
	}
	if aS == 0 || bS == 0 || aB == 0 {
		return res, fmt.Errorf("%s: nothing measured", c.name)
	}
	res.aMbps, res.bMbps = aB*8/aS/1e6, bB*8/bS/1e6
	if *verbose {
		tb.Logf("%s: A %.0f Mbit/s, B %.0f Mbit/s, B/A %.3f", c.name, res.aMbps, res.bMbps, res.bMbps/res.aMbps)
	}
	return res, nil
}

// take opens, by the ids the loader reports, the links and programs of one interface: the ingress
// link (to be updated in place), the datapath's two programs, and the egress link, which is
// detached at once so that side A runs with an empty egress hook; side B attaches the egress
// program itself. (loader.Detach later removes the defunct link's pin like any other.)
func (s *swapper) take(att *loader.Attachment, c swapCase) error {
	ingress := "xdp"
	if c.ingress == loader.IngressTC {
		ingress = "tc_ingress"
	}
	ids := map[string]loader.Program{}
	for _, p := range att.Programs {
		ids[p.Hook] = p
	}
	if c.nothing {
		if _, ok := ids["tc_ingress"]; !ok {
			return fmt.Errorf("%s: the default attach did not take tcx ingress (%+v): this case measures that path", att.Interface, att.Programs)
		}
		ingress = "tc_ingress"
	}
	in, eg := ids[ingress], ids["tc_egress"]
	if in.LinkID == 0 || eg.LinkID == 0 {
		return fmt.Errorf("%s: no %s or tc_egress bpf_link among %+v", att.Interface, ingress, att.Programs)
	}
	lk, err := link.NewFromID(link.ID(in.LinkID))
	if err != nil {
		return fmt.Errorf("open ingress link %d: %w", in.LinkID, err)
	}
	if c.nothing {
		// Side A has no ingress program either: the link goes, as the egress one below.
		err = lk.Detach()
		lk.Close()
		if err != nil {
			return fmt.Errorf("detach ingress link %d: %w", in.LinkID, err)
		}
	} else {
		s.ingress = append(s.ingress, lk)
	}
	for _, p := range []struct {
		id   uint32
		dst  *[]*ebpf.Program
		hook string
	}{{in.ID, &s.dpIn, ingress}, {eg.ID, &s.dpOut, "tc_egress"}} {
		prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(p.id))
		if err != nil {
			return fmt.Errorf("open %s program %d: %w", p.hook, p.id, err)
		}
		*p.dst = append(*p.dst, prog)
	}
	egl, err := link.NewFromID(link.ID(eg.LinkID))
	if err != nil {
		return fmt.Errorf("open egress link %d: %w", eg.LinkID, err)
	}
	defer egl.Close()
	return egl.Detach()
}

// trivialFor loads a trivial pass-through program for the case's ingress hook.
func (s *swapper) trivialFor(c swapCase) (*ebpf.Program, error) {
	if c.ingress == loader.IngressTC {
		return trivialTC(0)
	}
	return trivialXDP(0)
}
