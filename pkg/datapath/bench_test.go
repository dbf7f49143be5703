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
// their ratio x-trivial. ns/op is Go's wall clock and includes the chunks' setup. The program never
// rewrites the frame, so repeating it on the same buffer measures the same work every time.
func BenchmarkXDP(b *testing.B) {
	xdp := loadXDP(b)
	trivial := trivialXDP(b)
	frames := map[string][]byte{}
	for _, tc := range packetCases(b) {
		frames[tc.name] = tc.frame
	}
	for _, bc := range []struct{ name, frame string }{
		{"plain_tcp", "v4/untagged/plain_tcp"},     // ACK with NOP, NOP, timestamps
		{"dss", "v4/untagged/dss_ack64_map64"},     // timestamps + DSS (64-bit ack, 64-bit mapping)
		{"mp_join_syn", "v4/untagged/mp_join_syn"}, // MSS, SACK-permitted, timestamps, wscale, MP_JOIN
	} {
		frame := frames[bc.frame]
		if frame == nil {
			b.Fatalf("no frame %s in the table", bc.frame)
		}
		b.Run(bc.name, func(b *testing.B) {
			const chunks = 16
			chunk := max(b.N/chunks, 1)
			prog, base := time.Duration(math.MaxInt64), time.Duration(math.MaxInt64)
			b.ResetTimer()
			for done := 0; done < b.N; done += chunk {
				n := min(chunk, b.N-done)
				prog = min(prog, perRun(b, xdp.prog, frame, n))
				b.StopTimer()
				base = min(base, perRun(b, trivial, frame, n))
				b.StartTimer()
			}
			b.ReportMetric(float64(prog.Nanoseconds()), "prog-ns/pkt")
			b.ReportMetric(float64(base.Nanoseconds()), "trivial-ns/pkt")
			b.ReportMetric(float64(prog)/float64(base), "x-trivial")
		})
	}
}

// perRun runs prog n times on frame in one BPF_PROG_TEST_RUN and returns the kernel's time per run.
func perRun(b *testing.B, prog *ebpf.Program, frame []byte, n int) time.Duration {
	ret, d, err := prog.Benchmark(frame, n, nil)
	if err != nil {
		b.Fatal(err)
	}
	if ret != xdpPass {
		b.Fatalf("verdict %d, want XDP_PASS", ret)
	}
	return d
}
