package exporter

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// fakeReader returns fixed subflows per namespace, or an error.
type fakeReader map[string][]stats.Subflow

func (f fakeReader) Subflows(ns string) ([]stats.Subflow, error) {
	sfs, ok := f[ns]
	if !ok {
		return nil, fmt.Errorf("no namespace %q", ns)
	}
	return sfs, nil
}

// synth makes conns connections of perConn subflows each; subflow j of connection i carries
// (i*perConn+j+1) KiB sent and half that received, and an srtt of (j+1) ms.
func synth(conns, perConn int) []stats.Subflow {
	out := make([]stats.Subflow, 0, conns*perConn)
	for i := range conns {
		for j := range perConn {
			fl := stats.FlagJoin | stats.FlagFullyEstablished
			if j == 0 {
				fl = stats.FlagMPCapable | stats.FlagFullyEstablished
			}
			n := uint64(i*perConn+j+1) << 10
			out = append(out, stats.Subflow{
				Token: stats.Token(0x10000000 + i), Cookie: uint64(1000 + i*perConn + j),
				ID: uint32(j + 1), LocalID: uint8(j), RemoteID: 0, Flags: fl,
				State: stats.StateEstablished, ConnState: stats.StateEstablished,
				Local:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(100 + j), byte(i >> 8), byte(i)}), uint16(40000+i%20000)),
				Remote: netip.MustParseAddrPort("10.100.0.2:443"),
				SRTT:   time.Duration(j+1) * time.Millisecond, Cwnd: 10, BytesSent: n, BytesAcked: n, BytesReceived: n / 2,
				DeliveryRate: 1 << 20,
			})
		}
	}
	return out
}

func newTestExporter(t testing.TB, r SubflowReader, max int, netns ...string) *Exporter {
	t.Helper()
	e, err := New(Config{Root: t.TempDir(), Netns: netns, Subflows: r, MaxSubflowSeries: max, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// gather collects e into metric families by name.
func gather(t testing.TB, e *Exporter) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

func TestSubflowCapAndHistograms(t *testing.T) {
	// Two namespaces, 3 connections of 4 subflows in the first and 2 of 1 in the second.
	r := fakeReader{"a": synth(3, 4), "b": synth(2, 1)}
	for i := range r["b"] {
		r["b"][i].Token += 0x1000
	}
	e := newExporterWith(t, Config{Netns: []string{"a", "b"}, Subflows: r, MaxSubflowSeries: 5, TokenLabel: true})
	mfs := gather(t, e)

	info := mfs["mptcp_xdp_subflow_info"].GetMetric()
	if len(info) != 5 {
		t.Fatalf("%d subflow_info series, want 5 (the cap)", len(info))
	}
	// The 5 largest by bytes are the last 4 of namespace a (connection 3: 9..12 KiB) and... the
	// second largest set: connection 2's last subflow (8 KiB).
	var got []string
	for _, m := range info {
		got = append(got, label(m, "netns")+"/"+label(m, "token")+"/"+label(m, "subflow"))
	}
	slices.Sort(got)
	want := []string{"a/10000001/4", "a/10000002/1", "a/10000002/2", "a/10000002/3", "a/10000002/4"}
	if !slices.Equal(got, want) {
		t.Errorf("kept subflows %v, want %v", got, want)
	}
	for _, n := range []string{"subflow_srtt_seconds", "subflow_cwnd_segments", "subflow_sent_bytes_total", "subflow_received_bytes_total",
		"subflow_retransmitted_bytes_total", "subflow_retransmitted_segments_total", "subflow_delivery_rate_bytes_per_second"} {
		if k := len(mfs["mptcp_xdp_"+n].GetMetric()); k != 5 {
			t.Errorf("%s: %d series, want 5", n, k)
		}
	}
	if v := mfs["mptcp_xdp_subflow_series_omitted"].GetMetric()[0].GetGauge().GetValue(); v != 14-5 {
		t.Errorf("subflow_series_omitted %v, want 9", v)
	}
	// Connections shown: 10000001 and 10000002 of a; omitted: 10000000 of a and both of b.
	if k := len(mfs["mptcp_xdp_connection_subflows"].GetMetric()); k != 2 {
		t.Errorf("%d connection series, want 2", k)
	}
	if v := mfs["mptcp_xdp_connection_series_omitted"].GetMetric()[0].GetGauge().GetValue(); v != 3 {
		t.Errorf("connection_series_omitted %v, want 3", v)
	}
	for _, m := range mfs["mptcp_xdp_connection_sent_bytes_total"].GetMetric() {
		if label(m, "token") == "10000002" && m.GetCounter().GetValue() != float64((9+10+11+12)<<10) {
			t.Errorf("connection 10000002 sent %v, want %d", m.GetCounter().GetValue(), (9+10+11+12)<<10)
		}
	}

	// Histograms and totals cover everything.
	want2 := map[string]struct {
		conns, subflows uint64
		srttSum         float64
	}{"a": {3, 12, 3 * (0.001 + 0.002 + 0.003 + 0.004)}, "b": {2, 2, 2 * 0.001}}
	for _, m := range mfs["mptcp_xdp_srtt_seconds"].GetMetric() {
		w := want2[label(m, "netns")]
		h := m.GetHistogram()
		if h.GetSampleCount() != w.subflows || fmt.Sprintf("%.6f", h.GetSampleSum()) != fmt.Sprintf("%.6f", w.srttSum) {
			t.Errorf("srtt histogram of %s: count %d sum %v, want %d %v", label(m, "netns"), h.GetSampleCount(), h.GetSampleSum(), w.subflows, w.srttSum)
		}
		for _, b := range h.GetBucket() {
			if b.GetUpperBound() == 0.001 && label(m, "netns") == "a" && b.GetCumulativeCount() != 3 {
				t.Errorf("srtt le=0.001 in a: %d, want 3 (le is inclusive)", b.GetCumulativeCount())
			}
		}
	}
	for _, m := range mfs["mptcp_xdp_subflows_per_connection"].GetMetric() {
		w := want2[label(m, "netns")]
		if h := m.GetHistogram(); h.GetSampleCount() != w.conns || uint64(h.GetSampleSum()) != w.subflows {
			t.Errorf("subflows_per_connection of %s: count %d sum %v, want %d %d", label(m, "netns"), h.GetSampleCount(), h.GetSampleSum(), w.conns, w.subflows)
		}
	}
	for _, m := range mfs["mptcp_xdp_connections"].GetMetric() {
		if uint64(value(m)) != want2[label(m, "netns")].conns {
			t.Errorf("connections{%s} = %v", label(m, "netns"), value(m))
		}
	}
	for _, m := range mfs["mptcp_xdp_subflows"].GetMetric() {
		if uint64(value(m)) != want2[label(m, "netns")].subflows {
			t.Errorf("subflows{%s} = %v", label(m, "netns"), value(m))
		}
	}
}

func TestCapZeroAndUnlimited(t *testing.T) {
	r := fakeReader{"a": synth(2, 2)}
	mfs := gather(t, newTestExporter(t, r, 0, "a"))
	if _, ok := mfs["mptcp_xdp_subflow_info"]; ok {
		t.Error("cap 0 exported per-subflow series")
	}
	if v := mfs["mptcp_xdp_subflow_series_omitted"].GetMetric()[0].GetGauge().GetValue(); v != 4 {
		t.Errorf("omitted %v, want 4", v)
	}
	mfs = gather(t, newTestExporter(t, r, 100, "a"))
	if k := len(mfs["mptcp_xdp_subflow_info"].GetMetric()); k != 4 {
		t.Errorf("%d series under a large cap, want 4", k)
	}
	if _, err := New(Config{MaxSubflowSeries: -1}); err == nil {
		t.Error("negative cap accepted")
	}
}

func TestClosedSubflowsCountInTotalsOnly(t *testing.T) {
	sfs := synth(1, 2)
	closed := sfs[1]
	closed.Cookie, closed.ID, closed.Closed = 9999, 3, true
	closed.BytesSent = 1 << 20
	r := fakeReader{"a": append(sfs, closed)}
	mfs := gather(t, newTestExporter(t, r, 10, "a"))
	if k := len(mfs["mptcp_xdp_subflow_info"].GetMetric()); k != 2 {
		t.Errorf("%d subflow series, want the 2 live ones", k)
	}
	m := mfs["mptcp_xdp_connection_sent_bytes_total"].GetMetric()[0]
	if want := float64(1<<10 + 2<<10 + 1<<20); m.GetCounter().GetValue() != want {
		t.Errorf("connection sent %v, want %v (closed subflow included)", m.GetCounter().GetValue(), want)
	}
	if v := mfs["mptcp_xdp_connection_subflows"].GetMetric()[0].GetGauge().GetValue(); v != 2 {
		t.Errorf("connection_subflows %v, want 2 live", v)
	}
}

// A failing source is reported and counted; the others still come.
func TestFailingSourceIsolated(t *testing.T) {
	r := fakeReader{"a": synth(1, 2)} // namespace "b" fails
	e := newTestExporter(t, r, 10, "a", "b")
	gather(t, e)
	mfs := gather(t, e)
	up := map[string]float64{}
	for _, m := range mfs["mptcp_xdp_scrape_up"].GetMetric() {
		up[label(m, "source")+"/"+label(m, "netns")] = value(m)
	}
	errs := map[string]float64{}
	for _, m := range mfs["mptcp_xdp_scrape_errors_total"].GetMetric() {
		errs[label(m, "source")+"/"+label(m, "netns")] = value(m)
	}
	if up["subflows/a"] != 1 || up["subflows/b"] != 0 || errs["subflows/b"] != 2 || errs["subflows/a"] != 0 {
		t.Errorf("up %v errors %v: want subflows/a up, subflows/b down with 2 errors", up, errs)
	}
	if up["datapath/"] != 1 {
		t.Errorf("datapath up %v with an empty root", up["datapath/"])
	}
	// Namespaces a and b do not exist: MPTcpExt fails in both, and says so.
	if up["mptcpext/a"] != 0 || errs["mptcpext/a"] != 2 {
		t.Errorf("mptcpext/a up %v errors %v", up["mptcpext/a"], errs["mptcpext/a"])
	}
	if k := len(mfs["mptcp_xdp_subflow_info"].GetMetric()); k != 2 {
		t.Errorf("%d subflow series from the namespace that works, want 2", k)
	}
	if _, ok := mfs["mptcp_xdp_build_info"]; !ok {
		t.Error("no build_info")
	}
}

// Our own namespace's MPTcpExt counters are exported as the kernel prints them.
func TestMPTCPExtOwnNamespace(t *testing.T) {
	e := newTestExporter(t, nil, 10)
	mfs := gather(t, e)
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		t.Fatal(err)
	}
	want, err := ParseMPTCPExt(b)
	if err != nil {
		t.Fatal(err)
	}
	ns := e.Namespaces()[0]
	got := mfs["mptcp_xdp_kernel_mptcpext_total"].GetMetric()
	if len(got) != len(want)-1 {
		t.Errorf("%d MPTcpExt series, want %d (all but %s)", len(got), len(want)-1, currEstab)
	}
	for _, m := range got {
		if label(m, "netns") != ns {
			t.Errorf("netns label %q, want %q", label(m, "netns"), ns)
		}
		// Counters only grow: the exported value is at most the later reading.
		if _, ok := want[label(m, "counter")]; !ok {
			t.Errorf("unknown counter %q", label(m, "counter"))
		}
	}
	if _, ok := mfs["mptcp_xdp_kernel_mptcp_current_established"]; !ok {
		t.Error("no current_established gauge")
	}
	if _, ok := mfs["mptcp_xdp_subflows"]; ok {
		t.Error("subflow metrics without a reader")
	}
}

func TestParseMPTCPExt(t *testing.T) {
	in := "TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: MPCapableSYNRX MPJoinSynRx MPCurrEstab\nMPTcpExt: 3 4 5\n"
	m, err := ParseMPTCPExt([]byte(in))
	if err != nil || m["MPCapableSYNRX"] != 3 || m["MPJoinSynRx"] != 4 || m["MPCurrEstab"] != 5 || len(m) != 3 {
		t.Errorf("got %v, %v", m, err)
	}
	if _, err := ParseMPTCPExt([]byte("TcpExt: A\nTcpExt: 1\n")); err == nil {
		t.Error("no error without MPTcpExt")
	}
	if _, err := ParseMPTCPExt([]byte("MPTcpExt: A B\nMPTcpExt: 1\n")); err == nil {
		t.Error("no error on a short value line")
	}
}

// promlint (what `promtool check metrics` runs) finds nothing to say about our metrics.
func TestLint(t *testing.T) {
	e := newTestExporter(t, fakeReader{"a": synth(2, 3)}, 10, "a")
	problems, err := testutil.CollectAndLint(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

var descName = regexp.MustCompile(`fqName: "([a-z0-9_]+)"`)

// DescribedNames lists the name of every metric the exporter can produce.
func describedNames() []string {
	var out []string
	for _, d := range allDescs() {
		out = append(out, descName.FindStringSubmatch(d.String())[1])
	}
	return out
}

// docs/metrics.md documents exactly the metrics the exporter produces, each with its labels.
func TestDocsListEveryMetric(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(mptcp_xdp_[a-z0-9_]+)`").FindAllStringSubmatch(doc, -1) {
		documented[m[1]] = true
	}
	names := describedNames()
	for _, n := range names {
		if !documented[n] {
			t.Errorf("%s is not in a table row of docs/metrics.md", n)
		}
		delete(documented, n)
	}
	for n := range documented {
		t.Errorf("docs/metrics.md documents %s, which the exporter does not produce", n)
	}
	// Every label of every metric is named in its row.
	for _, d := range allDescs() {
		s := d.String()
		n := descName.FindStringSubmatch(s)[1]
		row := regexp.MustCompile("(?m)^\\| `" + n + "` .*$").FindString(doc)
		lm := regexp.MustCompile(`variableLabels: \{([^}]*)\}`).FindStringSubmatch(s)
		if lm == nil || lm[1] == "" {
			continue
		}
		for _, l := range strings.Split(lm[1], ",") {
			if !strings.Contains(row, "`"+l+"`") {
				t.Errorf("docs/metrics.md row of %s does not name label %s", n, l)
			}
		}
	}
}

func TestLargestIsStableAndOrdered(t *testing.T) {
	in := []sfRef{{0, 0, 0, 5}, {0, 0, 1, 9}, {0, 1, 0, 5}, {1, 0, 0, 7}}
	got := Largest(in, 3)
	want := []sfRef{{0, 0, 1, 9}, {1, 0, 0, 7}, {0, 0, 0, 5}}
	if !slices.Equal(got, want) {
		t.Errorf("Largest = %v, want %v", got, want)
	}
	if !slices.Equal(in, []sfRef{{0, 0, 0, 5}, {0, 0, 1, 9}, {0, 1, 0, 5}, {1, 0, 0, 7}}) {
		t.Error("Largest reordered its input")
	}
}

func TestSubflowLabel(t *testing.T) {
	if l := SubflowLabel(&stats.Subflow{ID: 3, Cookie: 7}); l != "3" {
		t.Errorf("label %q", l)
	}
	if l := SubflowLabel(&stats.Subflow{Cookie: 7}); l != "cookie-7" {
		t.Errorf("label without id %q", l)
	}
}

var _ = errors.New
