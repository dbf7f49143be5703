package sockopt_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// Benchmarks of one getsockopt round on a live connection with 1 and 8 subflows (8 paths: the
// in-kernel path manager's limit of 8 extra subflows is not reached). A Reader is reused, as a
// poller would, so the figures are the kernel exchange and the decoding, not buffer allocation.
//
//	go test -run '^$' -bench . -benchmem ./pkg/sockopt/
func BenchmarkTCPInfo(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("%dsubflows", n), func(b *testing.B) {
			p := newPair(b, n, false)
			var r sockopt.Reader
			for b.Loop() {
				ti, err := r.TCPInfo(p.client)
				if err != nil || len(ti) != n {
					b.Fatalf("%d subflows, %v", len(ti), err)
				}
			}
		})
	}
}

// BenchmarkFullInfo compares MPTCP_FULL_INFO with the three separate calls it replaces
// (MPTCP_INFO, MPTCP_TCPINFO, MPTCP_SUBFLOW_ADDRS), on the same connection.
func BenchmarkFullInfo(b *testing.B) {
	for _, n := range []int{1, 8} {
		p := newPair(b, n, false)
		for _, tc := range []struct {
			name string
			r    *sockopt.Reader
		}{
			{"full", &sockopt.Reader{}},
			{"separate", sockopt.WithoutFullInfo(&sockopt.Reader{})},
		} {
			b.Run(fmt.Sprintf("%dsubflows/%s", n, tc.name), func(b *testing.B) {
				for b.Loop() {
					f, err := tc.r.FullInfo(p.client)
					if err != nil || len(f.Subflows) != n {
						b.Fatalf("%v", err)
					}
				}
			})
		}
		// Both in turn within each iteration, so that the load of a shared machine weighs on both
		// alike: the ratio is the figure to compare.
		b.Run(fmt.Sprintf("%dsubflows/interleaved", n), func(b *testing.B) {
			full, sep := &sockopt.Reader{}, sockopt.WithoutFullInfo(&sockopt.Reader{})
			var tFull, tSep time.Duration
			for b.Loop() {
				t0 := time.Now()
				if _, err := full.FullInfo(p.client); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := sep.FullInfo(p.client); err != nil {
					b.Fatal(err)
				}
				tFull, tSep = tFull+t1.Sub(t0), tSep+time.Since(t1)
			}
			b.ReportMetric(float64(tFull.Nanoseconds())/float64(b.N), "ns/full")
			b.ReportMetric(float64(tSep.Nanoseconds())/float64(b.N), "ns/separate")
			b.ReportMetric(float64(tSep)/float64(tFull), "separate/full")
		})
	}
}
