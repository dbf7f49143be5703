package datapath

import (
	"math"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// trivialXDP is the baseline: `r0 = XDP_PASS; exit`.
func trivialXDP(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "mptcpx_trivial",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, xdpPass),
			asm.Return(),
		},
	})
	if err != nil {
		tb.Fatalf("load trivial XDP program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

// BenchmarkXDP measures the per-packet cost of the XDP program with BPF_PROG_TEST_RUN against the
// trivial pass-through program on the same frame, in interleaved chunks of the same run so that both
// see the same machine. The figures are the kernel's own per-run times (what prog.Benchmark returns:
// whole nanoseconds, excluding the syscall and the time the test run spends rescheduled), the best
// chunk of each, which is the steadiest figure on a shared machine: prog-ns/pkt, trivial-ns/pkt and
// their ratio x-trivial. Whole nanoseconds make that ratio coarse (the trivial program reads 4 or
// 5), so the same calls are also timed with the wall clock, which resolves fractions of a
// nanosecond once a chunk holds 100,000 runs or more: wall-prog-ns/pkt, wall-trivial-ns/pkt and
// x-trivial-wall, best chunk of each. ns/op is Go's wall clock and includes the chunks' setup. The program never
// rewrites the frame, so repeating it on the same buffer measures the same work every time.
func BenchmarkXDP(b *testing.B) {
	xdp := loadXDP(b)
	trivial := trivialXDP(b)
	frames := map[string][]byte{}
	for _, tc := range packetCases(b) {
		frames[tc.name] = tc.frame
	}
	for _, bc := range []struct{ name, frame string }{
		{"plain_tcp", "v4/untagged/plain_tcp"},               // ACK with NOP, NOP, timestamps
		{"dss", "v4/untagged/dss_ack64_map64"},               // timestamps + DSS (64-bit ack, 64-bit mapping)
		{"dss_linux", "v4/untagged/linux_dss_map64_nop_nop"}, // as dss, padded with two NOPs as Linux pads it
		{"dss_ack_linux", "v4/untagged/linux_dss_ack64"},     // timestamps + DSS with a 64-bit data ACK only (Linux's pure ACK)
		{"mp_join_syn", "v4/untagged/mp_join_syn"},           // MSS, SACK-permitted, timestamps, wscale, MP_JOIN
		{"plain_tcp_v6", "v6/untagged/plain_tcp"},
		{"dss_v6", "v6/untagged/dss_ack64_map64"},
	} {
		frame := frames[bc.frame]
		if frame == nil {
			b.Fatalf("no frame %s in the table", bc.frame)
		}
		b.Run(bc.name, func(b *testing.B) {
			const chunks = 16
			chunk := max(b.N/chunks, 1)
			prog, base := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
			progWall, baseWall := math.Inf(1), math.Inf(1)
			b.ResetTimer()
			for done := 0; done < b.N; done += chunk {
				n := min(chunk, b.N-done)
				k, w := perRun(b, xdp.prog, frame, n)
				prog, progWall = min(prog, k), min(progWall, w)
				b.StopTimer()
				k, w = perRun(b, trivial, frame, n)
				base, baseWall = min(base, k), min(baseWall, w)
				b.StartTimer()
			}
			b.ReportMetric(float64(prog.Nanoseconds()), "prog-ns/pkt")
			b.ReportMetric(float64(base.Nanoseconds()), "trivial-ns/pkt")
			b.ReportMetric(float64(prog)/float64(base), "x-trivial")
			if chunk >= 100000 {
				b.ReportMetric(progWall, "wall-prog-ns/pkt")
				b.ReportMetric(baseWall, "wall-trivial-ns/pkt")
				b.ReportMetric(progWall/baseWall, "x-trivial-wall")
			}
		})
	}
}

// perRun runs prog n times on frame in one BPF_PROG_TEST_RUN (prog.Benchmark) and returns the
// kernel's time per run, in whole nanoseconds, and the wall-clock time of the call per run, in
// fractions of one. The wall clock includes the syscall and the frame's setup, spread over n runs
// (negligible from 100,000 on), and any time the run spent rescheduled (which the best chunk of
// many leaves out on a quiet machine).
func perRun(b *testing.B, prog *ebpf.Program, frame []byte, n int) (time.Duration, float64) {
	start := time.Now()
	ret, d, err := prog.Benchmark(frame, n, nil)
	wall := time.Since(start)
	if err != nil {
		b.Fatal(err)
	}
	if ret != xdpPass {
		b.Fatalf("verdict %d, want XDP_PASS", ret)
	}
	return d, float64(wall.Nanoseconds()) / float64(n)
}
