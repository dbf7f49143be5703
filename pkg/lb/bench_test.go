package lb

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// countingXDP is the baseline: the datapath's plain counting XDP program (parser + counters, XDP_PASS).
func countingXDP(b *testing.B) *ebpf.Program {
	b.Helper()
	var objs datapath.XdpObjects
	if err := datapath.LoadXdpObjects(&objs, nil); err != nil {
		b.Fatalf("load counting XDP program: %v", err)
	}
	b.Cleanup(func() { objs.Close() })
	return objs.MptcpxXdpIn
}

// benchRun runs prog n times on frame in one BPF_PROG_TEST_RUN and returns the kernel's mean time
// per run.
func benchRun(b *testing.B, prog *ebpf.Program, frame []byte, n int, want uint32) time.Duration {
	ret, d, err := prog.Benchmark(frame, n, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != want {
		b.Fatalf("verdict %d, want %d", ret, want)
	}
	return d
}

// compare measures prog on frame against the counting program on the same frame, in interleaved
// chunks of the same run. ns/op is the balancer's per-packet time as the kernel measures it;
// x-xdp the ratio to the counting program; xdp-ns/op the latter's time.
func compare(b *testing.B, lb, base *ebpf.Program, frame []byte) {
	const rounds = 8
	chunk := max(b.N/rounds, 1)
	var sumLB, sumBase time.Duration
	var chunks int
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		sumLB += benchRun(b, lb, frame, n, xdpTX) * time.Duration(n)
		b.StopTimer()
		sumBase += benchRun(b, base, frame, n, xdpPass) * time.Duration(n)
		b.StartTimer()
		chunks++
	}
	b.ReportMetric(float64(sumLB.Nanoseconds())/float64(b.N), "lb-ns/pkt")
	b.ReportMetric(float64(sumBase.Nanoseconds())/float64(b.N), "xdp-ns/pkt")
	b.ReportMetric(float64(sumLB)/float64(sumBase), "x-xdp")
}

// BenchmarkBalancer measures the balancer's paths (l2 forwarding, whose rewrite is the same on
// every repeat of BPF_PROG_TEST_RUN; ipip would encapsulate the already encapsulated frame) with
// tracked flows in the table: the flow-table hit of a learned MPTCP connection (DSS ACK), one SYN
// again and again (syn_repeated: after the first run its flow is in the table, so this is a
// retransmitted SYN, which the new-SYN shortcut hands to the general path: Maglev, the flow
// rewritten), an MP_JOIN SYN whose token is known, and the MP_CAPABLE third ACK (SHA-256 of the
// key, token table). The rate guard is off: millions of SYNs a second would engage it, and the
// benchmark would measure its refusals. A new SYN's cost, every frame of a new 5-tuple, is
// test/refbench's new_syn.
//
// Each repeat hits the same entries, so these are cache-hot costs: they show the work per packet,
// not the cache misses of a real mix of a million flows.
func BenchmarkBalancer(b *testing.B) {
	base := countingXDP(b)
	for _, tracked := range []int{1000, 1000000} {
		bal, err := Load(Config{MaxVIPs: 4, NewFlowRate: NewFlowRateUnlimited})
		if err != nil {
			b.Fatal(err)
		}
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

		// The tracked flows, written from Go in batches.
		r := rand.New(rand.NewPCG(23, 24))
		flows := make([]Flow, tracked)
		for i := range flows {
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>24), byte(i >> 16), byte(i >> 8)}), uint16(1024+i&0xff))
			flows[i] = Flow{FlowKey: FlowKey{Src: src, Dst: vip4}, Backend: ids[i%3], Token: r.Uint32(), LastSeen: Monotonic()}
		}
		start := time.Now()
		if err := bal.PutFlows(flows); err != nil {
			b.Fatal(err)
		}
		fill := time.Since(start)

		// One learned MPTCP connection, and a join to it.
		conn := segment{src: netip.MustParseAddrPort("192.0.2.1:40000"), dst: vip4}
		rkey := r.Uint64()
		token, _ := ServerToken(rkey)
		// A token is learned only on a flow whose SYN the balancer placed.
		connSYN := conn
		connSYN.syn = true
		connSYN.opts = []layers.TCPOption{optMPCapableSYN()}
		if ret, _ := run(b, bal.Program, connSYN.frame(b)); ret != xdpTX {
			b.Fatalf("SYN: verdict %d", ret)
		}
		mpcACK := conn
		mpcACK.ack = true
		mpcACK.opts = []layers.TCPOption{nop, nop, optMPCapableACK(r.Uint64(), rkey)}
		if ret, _ := run(b, bal.Program, mpcACK.frame(b)); ret != xdpTX {
			b.Fatalf("third ACK: verdict %d", ret)
		}
		dss := segment{src: conn.src, dst: vip4, ack: true, opts: []layers.TCPOption{nop, nop, {OptionType: 8, OptionLength: 10, OptionData: make([]byte, 8)}, optDSS()}}
		syn := segment{src: netip.MustParseAddrPort("192.0.2.2:40001"), dst: vip4, syn: true,
			opts: []layers.TCPOption{{OptionType: 2, OptionLength: 4, OptionData: []byte{5, 0xb4}}, {OptionType: 4, OptionLength: 2}, optMPCapableSYN()}}
		join := segment{src: netip.MustParseAddrPort("192.0.2.3:40002"), dst: vip4, syn: true,
			opts: []layers.TCPOption{{OptionType: 2, OptionLength: 4, OptionData: []byte{5, 0xb4}}, {OptionType: 4, OptionLength: 2}, optJoinSYN(token, 1)}}

		n, _ := bal.ListFlowsCount()
		b.Logf("%d flows tracked (%d written in %v)", n, tracked, fill.Round(time.Millisecond))
		for _, c := range []struct {
			name string
			s    segment
		}{{"flow_hit", dss}, {"syn_repeated", syn}, {"join_syn", join}, {"mpc_ack", mpcACK}} {
			b.Run(fmt.Sprintf("%s/flows=%d", c.name, tracked), func(b *testing.B) {
				compare(b, bal.Program, base, c.s.frame(b))
			})
		}
		bal.Close()
	}
}
