package exporter

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// MetricsPath is where the metrics are served.
const MetricsPath = "/metrics"

// Registry returns a registry with e, the Go runtime and process collectors.
func Registry(e *Exporter) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{
		e,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register collector: %w", err)
		}
	}
	return reg, nil
}

// Handler serves MetricsPath from reg (with promhttp's own request metrics) and a landing page on
// "/". A scrape that fails to gather some metrics still gets the others.
func Handler(reg *prometheus.Registry, version string, logger *slog.Logger) (http.Handler, error) {
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slogPrintln{logger},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
		Registry:            reg,
	})
	mux := http.NewServeMux()
	mux.Handle(MetricsPath, promhttp.InstrumentMetricHandler(reg, metrics))
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "mptcp-xdp",
		Description: "Multipath TCP datapath counters, kernel MPTcpExt counters, connections and subflows with their tcp_info.",
		Version:     version,
		Links:       []web.LandingLinks{{Address: MetricsPath, Text: "Metrics"}},
	})
	if err != nil {
		return nil, fmt.Errorf("landing page: %w", err)
	}
	mux.Handle("/", landing)
	return mux, nil
}

// slogPrintln adapts a slog.Logger to promhttp's Logger.
type slogPrintln struct{ l *slog.Logger }

func (s slogPrintln) Println(v ...any) { s.l.Error("serve metrics", "err", fmt.Sprint(v...)) }
