package lb

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// BenchmarkContention measures what the balancer's shared maps cost when both CPUs of this machine
// run it at once: each case's frame is run (BPF_PROG_TEST_RUN) on CPU 0 alone, then on CPUs 0 and 1
// at the same time, in alternating rounds; x-alone is the concurrent per-packet time over the
// lone one (1 when the CPUs do not get in each other's way), the median of the rounds.
//
// The flow table (mptcpx_flows) is one LRU hash shared by every CPU, as are the token table and the
// per-flow entries: a lookup takes no lock (RCU), an insert or update takes its bucket's lock and the
// LRU list's. Every repeat of a frame is the same packet, so the SYN cases update one key from both
// CPUs: the worst case, every insert in the same bucket, an upper bound on what a real mix of new
// flows (RSS spreads them over CPUs and buckets) meets. flow_hit reads the flow and writes its
// last-seen time: two CPUs on one flow share its cache line, which RSS avoids for real traffic.
func BenchmarkContention(b *testing.B) {
	if runtime.NumCPU() < 2 {
		b.Skip("needs two CPUs")
	}
	bal, err := Load(Config{MaxVIPs: 4})
	if err != nil {
		b.Fatal(err)
	}
	defer bal.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	if err := bal.PutVIP(VIP{Addr: vip4, ID: 0, JoinSteering: true, Forward: ForwardL2}); err != nil {
		b.Fatal(err)
	}
	ids := []uint32{1, 2, 3}
	for _, id := range ids {
		if err := bal.PutBackend(testBackend(id, false, lo.Index)); err != nil {
			b.Fatal(err)
		}
	}
	fillRing(b, bal.Maps, 0, ids...)

	r := rand.New(rand.NewPCG(31, 32))
	conn := segment{src: netip.MustParseAddrPort("192.0.2.1:40000"), dst: vip4}
	rkey := r.Uint64()
	token, _ := ServerToken(rkey)
	connSYN := conn
	connSYN.syn = true
	connSYN.opts = []layers.TCPOption{optMPCapableSYN()}
	mpcACK := conn
	mpcACK.ack = true
	mpcACK.opts = []layers.TCPOption{nop, nop, optMPCapableACK(r.Uint64(), rkey)}
	for _, s := range []segment{connSYN, mpcACK} {
		if ret, _ := run(b, bal.Program, s.frame(b)); ret != xdpTX {
			b.Fatalf("setting up the learned connection: verdict %d", ret)
		}
	}
	dss := segment{src: conn.src, dst: vip4, ack: true, opts: []layers.TCPOption{nop, nop, {OptionType: 8, OptionLength: 10, OptionData: make([]byte, 8)}, optDSS()}}
	syn := segment{src: netip.MustParseAddrPort("192.0.2.2:40001"), dst: vip4, syn: true,
		opts: []layers.TCPOption{{OptionType: 2, OptionLength: 4, OptionData: []byte{5, 0xb4}}, {OptionType: 4, OptionLength: 2}, optMPCapableSYN()}}
	join := segment{src: netip.MustParseAddrPort("192.0.2.3:40002"), dst: vip4, syn: true,
		opts: []layers.TCPOption{{OptionType: 2, OptionLength: 4, OptionData: []byte{5, 0xb4}}, {OptionType: 4, OptionLength: 2}, optJoinSYN(token, 1)}}

	// new_syn_apart: each CPU its own SYN (another client port), so the CPUs update different
	// keys and, most of the time, different buckets; the LRU lists are still shared.
	synApart := syn
	synApart.src = netip.MustParseAddrPort("192.0.2.2:40099")
	// join_syn_apart: likewise two joins of the same token from two client ports: different
	// keys of the protected table; the event ring (one lock) is still shared.
	joinApart := join
	joinApart.src = netip.MustParseAddrPort("192.0.2.3:40098")
	for _, c := range []struct {
		name    string
		s, cpu1 segment
	}{{"flow_hit", dss, dss}, {"new_syn", syn, syn}, {"new_syn_apart", syn, synApart}, {"join_syn", join, join}, {"join_syn_apart", join, joinApart}} {
		frames := [][]byte{c.s.frame(b), c.cpu1.frame(b)}
		b.Run(c.name, func(b *testing.B) {
			const rounds = 9
			n := max(b.N/rounds, 1000)
			var alone, both, ratios []float64
			for range rounds {
				a := onCPUs(b, bal.Program, frames[:1], n)
				c := onCPUs(b, bal.Program, frames, n)
				alone, both = append(alone, a), append(both, c)
				ratios = append(ratios, c/a)
			}
			b.ReportMetric(median(alone), "alone-ns/pkt")
			b.ReportMetric(median(both), "both-ns/pkt")
			b.ReportMetric(median(ratios), "x-alone")
		})
	}
}

// onCPUs runs prog n times on frames[i] on CPU i, on every CPU at once, and returns the mean of
// their kernel per-run times, in nanoseconds.
func onCPUs(b *testing.B, prog *ebpf.Program, frames [][]byte, n int) float64 {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total time.Duration
		errs  []error
		start = make(chan struct{})
	)
	for cpu, frame := range frames {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var set unix.CPUSet
			set.Set(cpu)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("pin to CPU %d: %w", cpu, err))
				mu.Unlock()
				return
			}
			<-start
			ret, d, err := prog.Benchmark(frame, n, nil)
			if err == nil && ret != xdpTX {
				err = fmt.Errorf("verdict %d on CPU %d", ret, cpu)
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			total += d
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		b.Fatal(errs)
	}
	return float64(total.Nanoseconds()) / float64(len(frames))
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
