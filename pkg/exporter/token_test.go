package exporter

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
)

// newExporterWith makes an exporter of cfg on a private (empty) bpffs root.
func newExporterWith(t testing.TB, cfg Config) *Exporter {
	t.Helper()
	cfg.Root, cfg.Version = t.TempDir(), "test"
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// exposition is what a scrape of e returns, in the text format.
func exposition(t *testing.T, e *Exporter) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

// connLines are the lines of an exposition that carry a connection label.
func connLines(text string) string {
	var b strings.Builder
	for l := range strings.Lines(text) {
		if strings.Contains(l, "connection=") {
			b.WriteString(l)
		}
	}
	return b.String()
}

var connIDRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// Without Config.TokenLabel no series names a token, in a label or anywhere else; connections and
// subflows are still told apart (connection, subflow), consistently between the per-connection
// and per-subflow series and between scrapes, and the cap still holds.
func TestTokenLabelIsOptIn(t *testing.T) {
	r := fakeReader{"a": synth(3, 4), "b": synth(2, 1)} // the same tokens in both namespaces
	e := newExporterWith(t, Config{Netns: []string{"a", "b"}, Subflows: r, MaxSubflowSeries: 9})
	text := exposition(t, e)
	if bytes.Contains([]byte(text), []byte("token=")) {
		t.Error("a series has a token label without TokenLabel")
	}
	for i := range 3 {
		if tok := fmt.Sprintf("%08x", 0x10000000+i); bytes.Contains([]byte(text), []byte(tok)) {
			t.Errorf("the exposition holds token %s", tok)
		}
	}

	mfs := gather(t, e)
	info := mfs["mptcp_xdp_subflow_info"].GetMetric()
	if len(info) != 9 {
		t.Fatalf("%d subflow_info series, want 9 (the cap)", len(info))
	}
	// Every kept subflow is one series, identified by netns, connection and subflow; the largest 9
	// by bytes are every subflow of a's connections 1 and 2 and the last of connection 0.
	perConn := map[string]int{}
	seen := map[string]bool{}
	for _, m := range info {
		c := label(m, "connection")
		if !connIDRE.MatchString(c) {
			t.Errorf("connection label %q, want 16 hex digits", c)
		}
		k := label(m, "netns") + "/" + c + "/" + label(m, "subflow")
		if seen[k] {
			t.Errorf("two subflow_info series for %s", k)
		}
		seen[k] = true
		perConn[label(m, "netns")+"/"+c]++
	}
	if len(perConn) != 3 {
		t.Errorf("kept subflows of %d connections, want 3: %v", len(perConn), perConn)
	}
	conns := map[string]float64{}
	for _, m := range mfs["mptcp_xdp_connection_subflows"].GetMetric() {
		conns[label(m, "netns")+"/"+label(m, "connection")] = value(m)
	}
	if len(conns) != len(perConn) {
		t.Errorf("connection series %v, want one per connection of the kept subflows %v", conns, perConn)
	}
	for k := range perConn {
		if conns[k] != 4 {
			t.Errorf("connection_subflows of %s: %v, want 4", k, conns[k])
		}
	}
	// The same connection in another namespace (same token) is another connection.
	ids := map[string]string{}
	for _, ns := range []string{"a", "b"} {
		id := e.connID(ns, 0x10000000)
		if other, ok := ids[id]; ok {
			t.Errorf("namespaces %s and %s share connection id %s", other, ns, id)
		}
		ids[id] = ns
	}
	// Stable between scrapes.
	if again := exposition(t, e); connLines(again) != connLines(text) {
		t.Error("a second scrape names the series differently")
	}
	// Another exporter (serve restarted) uses another key.
	if f := newExporterWith(t, Config{Netns: []string{"a"}, Subflows: r}); f.connID("a", 0x10000000) == e.connID("a", 0x10000000) {
		t.Error("two exporters give a connection the same id: the key is not random")
	}
}

// With Config.TokenLabel every per-connection and per-subflow series also has the token, one token
// per connection label.
func TestTokenLabelWhenAsked(t *testing.T) {
	r := fakeReader{"a": synth(3, 2)}
	e := newExporterWith(t, Config{Netns: []string{"a"}, Subflows: r, MaxSubflowSeries: 100, TokenLabel: true})
	mfs := gather(t, e)
	for _, n := range []string{"connection_subflows", "connection_sent_bytes_total", "subflow_info", "subflow_sent_bytes_total"} {
		ms := mfs["mptcp_xdp_"+n].GetMetric()
		if len(ms) == 0 {
			t.Fatalf("no %s series", n)
		}
		tokOf := map[string]string{}
		for _, m := range ms {
			tok, c := label(m, "token"), label(m, "connection")
			if !regexp.MustCompile(`^1000000[0-2]$`).MatchString(tok) {
				t.Errorf("%s: token %q", n, tok)
			}
			if prev, ok := tokOf[c]; ok && prev != tok {
				t.Errorf("%s: connection %s has tokens %s and %s", n, c, prev, tok)
			}
			tokOf[c] = tok
		}
		if len(tokOf) != 3 {
			t.Errorf("%s: %d connections, want 3", n, len(tokOf))
		}
	}
}
