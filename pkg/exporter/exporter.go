// Package exporter is the Prometheus side of mptcp-xdp (`mptcp-xdp serve`): one collector that, at
// scrape time and never in the background, reads the datapath counters of every attachment pinned
// under the loader's bpffs root and of every load balancer pinned beside it, the kernel's MPTcpExt counters of each selected network
// namespace, and every MPTCP connection and subflow of those namespaces (through a
// [SubflowReader], pkg/stats), and turns them into the metrics that docs/metrics.md lists.
//
// Each source fails alone: its error is logged, counted in mptcp_xdp_scrape_errors_total and shown
// by mptcp_xdp_scrape_up, and every other source is still exported. Label cardinality is bounded:
// per-subflow and per-connection series are limited to the largest subflows by bytes
// ([Config.MaxSubflowSeries]); the histograms and totals always cover every subflow.
//
// Needs: CAP_BPF to open the pinned maps; CAP_SYS_ADMIN to enter a named network namespace
// (setns); what pkg/stats needs for subflows (iter/tcp, Linux 5.19 with BTF, CAP_PERFMON).
package exporter

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// Namespace prefixes every metric name.
const Namespace = "mptcp_xdp"

// lockTimeout bounds the wait for an attach or detach to finish before the datapath is read: well
// under Prometheus's default scrape timeout (10 s), so that the other sources still arrive.
const lockTimeout = 3 * time.Second

// DefaultMaxSubflowSeries is the default of Config.MaxSubflowSeries.
const DefaultMaxSubflowSeries = 2000

// SubflowReader reads every MPTCP subflow of a network namespace, named as `ip netns` names it (""
// is the caller's own). *stats.Reader is one.
type SubflowReader interface {
	Subflows(netns string) ([]stats.Subflow, error)
}

// Config configures an Exporter.
type Config struct {
	// Root is the loader's bpffs root (loader.DefaultRoot when empty). Every attachment under it is
	// exported, whichever namespace it is in. Nothing is mounted there; reading takes the loader's
	// shared lock.
	Root string
	// Netns are the named network namespaces whose MPTcpExt counters and subflows are exported;
	// empty means the exporter's own namespace only.
	Netns []string
	// Subflows reads the subflows; nil exports no connection or subflow metrics.
	Subflows SubflowReader
	// MaxSubflowSeries bounds the per-subflow series (and so the per-connection ones): the
	// largest subflows by bytes sent + received get them, the rest are counted in
	// mptcp_xdp_subflow_series_omitted. 0 exports none; negative is an error.
	MaxSubflowSeries int
	// TokenLabel adds the token label (the connection's MPTCP token) to the per-connection and
	// per-subflow series. Off, they are identified by the connection label alone, an opaque id.
	TokenLabel bool
	// Version is the build's version, for mptcp_xdp_build_info.
	Version string
	// Logger receives one line per failed source read; nil discards.
	Logger *slog.Logger
}

// Sources, the values of the source label of the scrape health metrics.
const (
	SourceDatapath = "datapath"
	SourceMPTCPExt = "mptcpext"
	SourceSubflows = "subflows"
)

// Exporter is a prometheus.Collector of everything mptcp-xdp knows. It is safe for concurrent
// scrapes.
type Exporter struct {
	cfg    Config
	loader *loader.Loader
	nss    []nsRef
	log    *slog.Logger
	kernel string
	conn   *connDescs // per-connection and per-subflow descriptors, with or without token
	idKey  []byte     // the key of connID

	mu     sync.Mutex
	errors map[sourceKey]*atomic.Uint64
}

// nsRef is one selected namespace: the name to enter ("" for our own) and its label value.
type nsRef struct{ name, label string }

type sourceKey struct{ source, netns string }

// New checks cfg and returns an Exporter. The namespaces named in cfg need not exist yet: one that
// does not is a failed source at scrape time.
func New(cfg Config) (*Exporter, error) {
	if cfg.MaxSubflowSeries < 0 {
		return nil, fmt.Errorf("max subflow series %d: want 0 or more", cfg.MaxSubflowSeries)
	}
	if cfg.Root == "" {
		cfg.Root = loader.DefaultRoot
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{cfg: cfg, loader: &loader.Loader{Root: cfg.Root, LockTimeout: lockTimeout}, log: cfg.Logger, errors: map[sourceKey]*atomic.Uint64{}}
	seen := map[string]bool{}
	for _, n := range cfg.Netns {
		if err := netns.Validate(n); err != nil {
			return nil, err
		}
		if !seen[n] {
			seen[n] = true
			e.nss = append(e.nss, nsRef{name: n, label: n})
		}
	}
	if len(e.nss) == 0 {
		label, err := loader.NetnsDir("")
		if err != nil {
			return nil, fmt.Errorf("name own network namespace: %w", err)
		}
		e.nss = []nsRef{{name: "", label: label}}
	}
	e.conn = plainDescs
	if cfg.TokenLabel {
		e.conn = tokenDescs
	}
	e.idKey = make([]byte, 32)
	if _, err := rand.Read(e.idKey); err != nil {
		return nil, fmt.Errorf("connection id key: %w", err)
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		e.kernel = unix.ByteSliceToString(uts.Release[:])
	}
	return e, nil
}

// Namespaces returns the label values of the selected namespaces, in order.
func (e *Exporter) Namespaces() []string {
	out := make([]string, len(e.nss))
	for i, n := range e.nss {
		out[i] = n.label
	}
	return out
}

// Describe sends every descriptor the exporter can produce.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descList(e.conn) {
		ch <- d
	}
}

// Collect reads every source, concurrently, and sends what each gave.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(descBuildInfo, prometheus.GaugeValue, 1, e.cfg.Version, runtime.Version(), e.kernel)
	var wg sync.WaitGroup
	wg.Go(func() {
		e.run(ch, SourceDatapath, "", func() error { return errors.Join(e.collectDatapath(ch), e.collectBalancers(ch)) })
	})
	for _, ns := range e.nss {
		wg.Go(func() { e.run(ch, SourceMPTCPExt, ns.label, func() error { return e.collectMPTCPExt(ch, ns) }) })
	}
	if e.cfg.Subflows != nil {
		wg.Go(func() { e.collectSubflows(ch) })
	}
	wg.Wait()
}

// run times one source read and reports its health.
func (e *Exporter) run(ch chan<- prometheus.Metric, source, ns string, read func() error) {
	start := time.Now()
	err := read()
	e.report(ch, source, ns, err, time.Since(start))
}

// report sends the health series of one source read and logs its error.
func (e *Exporter) report(ch chan<- prometheus.Metric, source, ns string, err error, took time.Duration) {
	k := sourceKey{source, ns}
	e.mu.Lock()
	n, ok := e.errors[k]
	if !ok {
		n = new(atomic.Uint64)
		e.errors[k] = n
	}
	e.mu.Unlock()
	up := 1.0
	if err != nil {
		up = 0
		n.Add(1)
		e.log.Warn("scrape source failed", "source", source, "netns", ns, "err", err)
	}
	ch <- prometheus.MustNewConstMetric(descScrapeUp, prometheus.GaugeValue, up, source, ns)
	ch <- prometheus.MustNewConstMetric(descScrapeErrors, prometheus.CounterValue, float64(n.Load()), source, ns)
	ch <- prometheus.MustNewConstMetric(descScrapeDuration, prometheus.GaugeValue, took.Seconds(), source, ns)
}

// joinErrs joins errors, keeping at most a few so that a log line stays readable.
func joinErrs(errs []error) error {
	const keep = 5
	if len(errs) > keep {
		errs = append(errs[:keep:keep], fmt.Errorf("and %d more errors", len(errs)-keep))
	}
	return errors.Join(errs...)
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
