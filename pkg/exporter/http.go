package exporter

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sys/unix"
)

// MetricsPath is where the metrics are served.
const MetricsPath = "/metrics"

// HealthPath is where HealthHandler answers.
const HealthPath = "/healthz"

// HealthHandler answers HealthPath, for liveness and readiness probes, which cannot present the
// metrics endpoint's client certificate or password: it serves no metric and reads no map. It
// answers 200 "ok" while each of the pin roots (the loader's Root, LBRoot and HistoryRoot) is
// absent or a live directory of a bpffs, and 503 naming the first root that is not (RootHealth).
// Anything but HealthPath is 404.
func HealthHandler(roots ...string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		for _, r := range roots {
			if err := RootHealth(r); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "pin root %s: %v\n", r, err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// RootHealth says why serve cannot see the pins under root, or nil. An absent root is healthy
// (nothing attached). A root that is there must be on a bpffs, and must not have been removed:
// a directory mounted into a container (the Kubernetes manifest mounts each root) stays on its
// bpffs when the host removes it, as the last detach does, but with no link left (st_nlink 0),
// and whatever the host pins at that path afterwards, in the new directory, never shows through
// the old mount. Restarting serve mounts the new one.
func RootHealth(root string) error {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return err
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return err
	}
	if uint32(fs.Type) != unix.BPF_FS_MAGIC {
		return errors.New("not on a bpffs: no pin of mptcp-xdp can be there")
	}
	if st.Nlink == 0 {
		return errors.New("removed from its bpffs (a detach on the host removed the directory mounted here): pins made since cannot show here, restart serve")
	}
	return nil
}

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
