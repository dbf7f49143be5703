package refbench

import (
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// xdpMD is struct xdp_md as BPF_PROG_TEST_RUN takes it: only the ingress device is set.
type xdpMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// hotRun runs prog repeat times on frame, received on device ifindex, in one BPF_PROG_TEST_RUN, and
// returns the mean run time the kernel's statistics (BPF_STATS_RUN_TIME, enabled by the caller)
// give: prog.Benchmark takes no context, and without one the frame has no ingress device.
func hotRun(tb testing.TB, prog *ebpf.Program, frame []byte, ifindex, repeat int) time.Duration {
	tb.Helper()
	s0, err := prog.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Repeat: uint32(repeat), Context: xdpMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex)}})
	if err != nil {
		tb.Fatal(err)
	}
	if ret != 3 { // XDP_TX
		tb.Fatalf("verdict %d, want XDP_TX", ret)
	}
	s1, err := prog.Stats()
	if err != nil {
		tb.Fatal(err)
	}
	runs := s1.RunCount - s0.RunCount
	if runs < uint64(repeat) {
		tb.Fatalf("%d runs counted, want %d", runs, repeat)
	}
	return (s1.Runtime - s0.Runtime) / time.Duration(runs)
}

// BenchmarkHotVsReference runs mptcp-xdp's balancer and the reference on the same frame with
// BPF_PROG_TEST_RUN (l2 mode: the rewrite is the same on every repeat), in interleaved chunks: the
// cache-hot cost per packet, the instructions and helper calls alone, without the cache misses of
// BenchmarkVsReference's real frames, and with far less noise, which makes it the quick check of a
// change to either program. Backends on lo, frames received on lo, so both XDP_TX. The kernel's
// run-time statistics give the time (prog.Benchmark takes no context), their own clock reads
// included, as in BenchmarkVsReference. Each sub-benchmark reports ref-ns/pkt, mx-ns/pkt and x-ref
// (total mptcp-xdp time over the reference's).
func BenchmarkHotVsReference(b *testing.B) {
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	defer stats.Close()
	seed := uint32(0x5eed1234)
	spec, err := LoadRef()
	if err != nil {
		b.Fatal(err)
	}
	if err := spec.Variables["rb_hash_seed"].Set(seed); err != nil {
		b.Fatal(err)
	}
	spec.Maps["rb_flows"].MaxEntries = 1 << 16
	var ref RefObjects
	if err := spec.LoadAndAssign(&ref, nil); err != nil {
		b.Fatalf("load reference balancer: %v", err)
	}
	defer ref.Close()
	mx, err := lb.Load(lb.Config{HashSeed: seed, MaxVIPs: 4, MaxFlows: 1 << 16})
	if err != nil {
		b.Fatal(err)
	}
	defer mx.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		b.Fatal(err)
	}
	for i := uint32(1); i <= 8; i++ {
		be := backend(i, lo.Index)
		if err := mx.PutBackend(be); err != nil {
			b.Fatal(err)
		}
		rb := RefRbBackend{Addr: addr16(be.Addr), SrcAddr: addr16(be.SrcAddr)}
		copy(rb.Mac[:], be.MAC)
		copy(rb.SrcMac[:], be.SrcMAC)
		if err := ref.RbBackends.Put(i, rb); err != nil {
			b.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	for _, m := range modes[:2] { // the l2 modes
		if err := mx.PutVIP(lb.VIP{Addr: m.vip, ID: m.id, JoinSteering: true, Forward: m.fwd, UnknownJoin: lb.JoinDrop}); err != nil {
			b.Fatal(err)
		}
		vk := RefRbVipKey{Addr: addr16(m.vip.Addr()), Port: htons(m.vip.Port()), Proto: 6}
		if err := ref.RbVips.Put(vk, RefRbVip{Id: m.id, Forward: uint32(m.fwd)}); err != nil {
			b.Fatal(err)
		}
		ring := make([]uint32, lb.RingSize)
		for s := range ring {
			ring[s] = m.backends[rng.IntN(len(m.backends))]
		}
		if err := mx.WriteRing(m.id, ring); err != nil {
			b.Fatal(err)
		}
		keys := make([]uint32, len(ring))
		for s := range keys {
			keys[s] = m.id*refRingSize + uint32(s)
		}
		if _, err := ref.RbRing.BatchUpdate(keys, ring, nil); err != nil {
			b.Fatal(err)
		}
	}
	for _, m := range modes[:2] {
		src := clientAddr(7, m.v6)
		key := rng.Uint64()
		tok, kh := lb.ServerToken(key)
		be := m.backends[0]
		now := lb.Monotonic()
		if err := mx.PutToken(lb.Token{VIPID: m.id, Token: tok, Backend: be, KeyHash: kh, LastSeen: now}); err != nil {
			b.Fatal(err)
		}
		if err := mx.PutFlows([]lb.Flow{{FlowKey: lb.FlowKey{Src: src, Dst: m.vip}, Backend: be, LastSeen: now, Opened: true, Token: tok, Learned: true}}); err != nil {
			b.Fatal(err)
		}
		if err := ref.RbFlows.Put(refFlowKey(src, m.vip), be); err != nil {
			b.Fatal(err)
		}
		for _, c := range []struct {
			name string
			s    seg
		}{
			{"flow_hit", seg{src: src, dst: m.vip, ack: true, opts: optsACK}},
			{"mptcp_dss", seg{src: src, dst: m.vip, ack: true, opts: optsDSS}},
			// One SYN again and again: after the first run its flow is in the table, so for
			// mptcp-xdp this is a retransmitted SYN (the shortcut for new SYNs fails, the
			// general path decides), for the reference the same work as a new SYN.
			{"syn_repeated", seg{src: clientAddr(8, m.v6), dst: m.vip, syn: true, opts: optsSYN}},
		} {
			frame := c.s.frame(b)
			b.Run(m.name+"/"+c.name, func(b *testing.B) {
				hotRun(b, ref.RbRefLb, frame, lo.Index, 1)
				hotRun(b, mx.Program, frame, lo.Index, 1)
				const rounds = 10
				chunk := max(b.N/rounds, 1)
				var sum [2]time.Duration
				progs := [2]*ebpf.Program{ref.RbRefLb, mx.Program}
				for r, done := 0, 0; done < b.N; r, done = r+1, done+chunk {
					n := min(chunk, b.N-done)
					for j := 0; j < 2; j++ {
						p := (r + j) % 2
						sum[p] += hotRun(b, progs[p], frame, lo.Index, n) * time.Duration(n)
					}
				}
				b.ReportMetric(float64(sum[progRef].Nanoseconds())/float64(b.N), "ref-ns/pkt")
				b.ReportMetric(float64(sum[progMx].Nanoseconds())/float64(b.N), "mx-ns/pkt")
				b.ReportMetric(float64(sum[progMx])/float64(sum[progRef]), "x-ref")
			})
		}
	}
}
