package exporter

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// BenchmarkScrape is one full scrape of /metrics (gather and text encoding) with 10,000 synthetic
// live subflows (2,500 connections of 4) from the subflow source, under the default cap and with
// every subflow exported. The iterator read itself is pkg/stats's benchmark; this is what the
// exporter adds on top. Reported: exposition bytes and series per scrape.
func BenchmarkScrape(b *testing.B) {
	sfs := synth(2500, 4)
	for _, max := range []int{DefaultMaxSubflowSeries, len(sfs)} {
		b.Run(fmt.Sprintf("subflows=%d,max_series=%d", len(sfs), max), func(b *testing.B) {
			e := newTestExporter(b, fakeReader{"a": sfs}, max, "a")
			reg := prometheus.NewRegistry()
			reg.MustRegister(e)
			h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
			req := httptest.NewRequest(http.MethodGet, MetricsPath, nil)
			req.Header.Set("Accept", "text/plain")
			var size int
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			for b.Loop() {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("scrape: %d", rec.Code)
				}
				n, _ := io.Copy(io.Discard, rec.Body)
				size = int(n)
			}
			// CPU time (all threads, GC included) tells the cost on a busy machine, where wall time
			// also counts waiting for a core.
			b.ReportMetric(float64((cpuTime(b)-cpu0).Milliseconds())/float64(b.N), "cpu-ms/scrape")
			mfs, err := reg.Gather()
			if err != nil {
				b.Fatal(err)
			}
			series := 0
			for _, mf := range mfs {
				series += len(mf.GetMetric())
			}
			b.ReportMetric(float64(size), "bytes/scrape")
			b.ReportMetric(float64(series), "series")
		})
	}
}

// cpuTime is the CPU time this process used so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSelect is the choice of the largest subflows alone, among 10,000.
func BenchmarkSelect(b *testing.B) {
	live := make([]sfRef, 10000)
	for i := range live {
		live[i] = sfRef{conn: i / 4, sf: i % 4, bytes: uint64(i*7919) % 100003}
	}
	b.ReportAllocs()
	for b.Loop() {
		Largest(live, DefaultMaxSubflowSeries)
	}
}
