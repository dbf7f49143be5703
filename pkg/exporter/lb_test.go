package exporter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// TestBalancerMetrics scrapes a running balancer with a real Prometheus: the balancer lab
// (internal/lablb: a client with two paths, the balancer, three backends) with the balancer
// attached on a private bpffs root, MPTCP connections through it, their joins steered by token but
// one whose token the test removed from the table (so its join is an unknown-token join, dropped
// by the default policy), and one backend drained. What Prometheus stores must equal the balancer's
// own counters (lb.Maps), the backends' kernel counters (MPJoinSynRx per backend = joins steered to
// it) and what `ss -M` shows in every backend (connections and joined subflows = flows, tokens).
func TestBalancerMetrics(t *testing.T) {
	testutil.RequireRoot(t)
	for _, bin := range []string{"prometheus", "promtool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (apt-get install prometheus; .ci/run installs it): %v", bin, err)
		}
	}
	dir := testutil.TempBPFFS(t, "mxlbm-test-")
	root := filepath.Join(dir, "mptcp-xdp")
	ld, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	l, err := lablb.New(lablb.Config{Prefix: fmt.Sprintf("mxlbm%04x", os.Getpid()&0xffff), NoEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	vip := netip.AddrPortFrom(l.VIP4, uint16(srv.Port))

	var ifaces []string
	for _, p := range l.Paths {
		ifaces = append(ifaces, p.LBIf)
	}
	var specs []control.BackendSpec
	for _, b := range l.Backends {
		specs = append(specs, control.BackendSpec{Addr: b.IP4, Weight: 1})
	}
	actx, acancel := context.WithTimeout(ctx, 20*time.Second)
	bal, err := control.Attach(actx, ld, control.Spec{Netns: l.LB, Ifaces: ifaces, VIPs: []netip.AddrPort{vip},
		Policy: control.DefaultPolicy.Set(), Backends: specs})
	acancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bal.Close()
		if err := ld.DetachLB(l.LB); err != nil {
			t.Errorf("detach balancer: %v", err)
		}
	})
	m := bal.Maps
	vips, err := m.ListVIPs()
	if err != nil || len(vips) != 1 {
		t.Fatalf("vips %v, %v", vips, err)
	}
	vid := vips[0].ID
	beID := map[string]uint32{} // backend address -> id
	for _, b := range bal.List() {
		beID[b.Addr.String()] = b.ID
	}

	// The exporter, served over HTTP, and Prometheus scraping it every second.
	e, err := New(Config{Root: root, Netns: []string{l.LB}, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := Registry(e)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Handler(reg, "test", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	prom := startProm(t, strings.TrimPrefix(hs.URL, "http://"))

	// Connections on one subflow each; once their tokens are learned, one is taken out of the
	// table, then the client's path manager joins every connection.
	base, err := l.BackendMIBs()
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	var conns []*lablb.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := l.Dial(ctx, vip)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	waitFor(ctx, t, "tokens learned", func() (string, error) {
		st, err := m.ReadStats()
		if err != nil || st[lb.StatTokenLearned] >= n {
			return "", err
		}
		return fmt.Sprintf("%d tokens learned of %d", st[lb.StatTokenLearned], n), nil
	})
	v0, err := l.Observe(vip)
	if err != nil {
		t.Fatal(err)
	}
	victimBE := conns[0].Backend
	if len(v0.Tokens[victimBE]) == 0 {
		t.Fatalf("ss -M shows no connection on backend %d, where connection 0 landed", victimBE)
	}
	victim := v0.Tokens[victimBE][0]
	if err := m.DeleteToken(vid, victim); err != nil {
		t.Fatal(err)
	}
	if err := l.AddSubflowEndpoints(); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "joins", func() (string, error) {
		j, err := l.Joins(base)
		if err != nil {
			return "", err
		}
		vs, err := m.ReadVIPStats(vid)
		if err != nil {
			return "", err
		}
		if lablb.Sum(j.AckRx) >= n-1 && vs[lb.VIPStatJoinUnknownDrop] >= 1 {
			return "", nil
		}
		return fmt.Sprintf("joins accepted %v, unknown-token joins dropped %d", j.AckRx, vs[lb.VIPStatJoinUnknownDrop]), nil
	})
	drained := l.Backends[2].IP4
	if _, err := bal.Drain(drained); err != nil {
		t.Fatal(err)
	}

	sel := fmt.Sprintf(`{netns=%q}`, l.LB)
	var last map[string]float64
	eventually(t, "balancer series", 30*time.Second, func() (string, error) {
		// Ground truth: the balancer's own counters and tables, the backends' kernels.
		st, err := m.ReadStats()
		if err != nil {
			return "", err
		}
		vs, err := m.ReadVIPStats(vid)
		if err != nil {
			return "", err
		}
		j, err := l.Joins(base)
		if err != nil {
			return "", err
		}
		view, err := l.Observe(vip)
		if err != nil {
			return "", err
		}
		want := map[string]float64{}
		for i, v := range st {
			want["datapath/"+lb.Stat(i).String()] = float64(v)
		}
		id := strconv.FormatUint(uint64(vid), 10)
		var steered, flows, tokens float64
		for k, b := range l.Backends {
			a := b.IP4.String()
			bs, err := m.ReadBackendStats(beID[a])
			if err != nil {
				return "", err
			}
			synRx := float64(j.SynRx[k])
			if float64(bs[lb.BackendStatJoinSteered]) != synRx {
				return fmt.Sprintf("backend %s: the datapath steered %d joins to it, its kernel received %v", a, bs[lb.BackendStatJoinSteered], synRx), nil
			}
			toks := float64(len(view.Tokens[k]))
			if k == victimBE {
				toks-- // the token the test removed
			}
			fl := float64(view.BackendAll[k] + view.BackendTwo[k]) // first subflows and joined ones
			want["steered/"+a] = synRx
			want["new_flows/"+a] = float64(srv.Accepted[k].Load())
			want["learned/"+a] = float64(view.BackendAll[k])
			want["tokens/"+a] = toks
			want["flows/"+a] = fl
			want["forwarded/"+a] = float64(bs[lb.BackendStatForwarded])
			want["hashed/"+a] = 0
			want["collisions/"+a] = 0
			want["takeovers/"+a] = 0
			want["passed/"+a+"/mtu"], want["passed/"+a+"/fwd_error"] = 0, 0
			act, drn := 1.0, 0.0
			if b.IP4 == drained {
				act, drn = 0, 1
			}
			want["state/"+a+"/active"], want["state/"+a+"/draining"] = act, drn
			steered += synRx
			flows += fl
			tokens += toks
		}
		want["vip_packets/"+id] = float64(vs[lb.VIPStatPackets])
		want["vip_new_flows/"+id] = n
		want["vip_learned/"+id] = n
		want["vip_steered/"+id] = steered
		want["vip_unknown/"+id+"/drop"] = float64(vs[lb.VIPStatJoinUnknownDrop])
		want["vip_unknown/"+id+"/hash"], want["vip_unknown/"+id+"/pass"] = 0, 0
		want["vip_collisions/"+id], want["vip_takeovers/"+id], want["vip_guarded/"+id] = 0, 0, 0
		for _, r := range []string{"no_backend", "mtu", "fwd_error"} {
			want["vip_passed/"+id+"/"+r] = 0
		}
		want["vip_info/"+id+"/"+vip.String()+"/l2/drop/true"] = 1
		want["entries/vips"], want["entries/backends"] = 1, float64(len(l.Backends))
		want["entries/flows"], want["entries/tokens"] = flows, tokens
		want["capacity/vips"], want["capacity/backends"] = float64(m.VIPs.MaxEntries()), float64(m.Backends.MaxEntries())
		want["capacity/flows"], want["capacity/tokens"] = float64(m.Flows.MaxEntries()), float64(m.Tokens.MaxEntries())

		got := map[string]float64{}
		for _, q := range []struct {
			key, metric string
			labels      []string
		}{
			{"datapath", "lb_datapath_total", []string{"counter"}},
			{"steered", "lb_backend_joins_steered_total", []string{"backend"}},
			{"new_flows", "lb_backend_new_flows_total", []string{"backend"}},
			{"learned", "lb_backend_tokens_learned_total", []string{"backend"}},
			{"tokens", "lb_backend_tokens", []string{"backend"}},
			{"flows", "lb_backend_flows", []string{"backend"}},
			{"forwarded", "lb_backend_forwarded_packets_total", []string{"backend"}},
			{"hashed", "lb_backend_unknown_joins_hashed_total", []string{"backend"}},
			{"collisions", "lb_backend_token_collisions_total", []string{"backend"}},
			{"takeovers", "lb_backend_token_takeovers_total", []string{"backend"}},
			{"passed", "lb_backend_passed_packets_total", []string{"backend", "reason"}},
			{"state", "lb_backend_state", []string{"backend", "state"}},
			{"vip_packets", "lb_vip_packets_total", []string{"vip_id"}},
			{"vip_new_flows", "lb_vip_new_flows_total", []string{"vip_id"}},
			{"vip_guarded", "lb_vip_guarded_flows_total", []string{"vip_id"}},
			{"vip_learned", "lb_vip_tokens_learned_total", []string{"vip_id"}},
			{"vip_steered", "lb_vip_joins_steered_total", []string{"vip_id"}},
			{"vip_unknown", "lb_vip_unknown_joins_total", []string{"vip_id", "outcome"}},
			{"vip_collisions", "lb_vip_token_collisions_total", []string{"vip_id"}},
			{"vip_takeovers", "lb_vip_token_takeovers_total", []string{"vip_id"}},
			{"vip_passed", "lb_vip_passed_packets_total", []string{"vip_id", "reason"}},
			{"vip_info", "lb_vip_info", []string{"vip_id", "vip", "forward", "unknown_join", "join_steering"}},
			{"entries", "lb_table_entries", []string{"table"}},
			{"capacity", "lb_table_capacity", []string{"table"}},
		} {
			r, err := prom.byLabels("mptcp_xdp_"+q.metric+sel, q.labels...)
			if err != nil {
				return "", err
			}
			for k, v := range r {
				got[q.key+"/"+k] = v
			}
		}
		// Every backend series carries the backend's id.
		ids, err := prom.byLabels("mptcp_xdp_lb_backend_flows"+sel, "backend", "backend_id")
		if err != nil {
			return "", err
		}
		for a, id := range beID {
			if _, ok := ids[a+"/"+strconv.FormatUint(uint64(id), 10)]; !ok {
				return fmt.Sprintf("no flows series of backend %s with backend_id %d: %v", a, id, ids), nil
			}
		}
		if want["vip_unknown/"+id+"/drop"] == 0 || steered < n-1 {
			return "", errors.New("the run produced no unknown-token join or too few steered joins")
		}
		last = want
		return diffMaps(got, want), nil
	})
	var keys []string
	for k := range last {
		if !strings.HasPrefix(k, "capacity/") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %s = %v\n", k, last[k])
	}
	t.Logf("balancer series equal to the ground truth (%d connections, victim token %08x on backend %d, %s drained):\n%s",
		n, victim, victimBE, drained, b.String())

	// The exposition passes promtool's lint and holds the balancer series.
	resp, err := http.Get(hs.URL + MetricsPath)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v %v", resp.Status, err)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	for _, s := range []string{"mptcp_xdp_lb_backend_joins_steered_total{", "mptcp_xdp_lb_vip_unknown_joins_total{", "mptcp_xdp_lb_table_capacity{"} {
		if !bytes.Contains(body, []byte(s)) {
			t.Errorf("the checked exposition has no %s series", s)
		}
	}
	if up, err := prom.byLabels(`mptcp_xdp_scrape_up{source="datapath"}`); err != nil || up[""] != 1 {
		t.Errorf("datapath source up: %v %v", up, err)
	}

	// Every balancer query of the Grafana dashboard finds series in this Prometheus.
	dash, err := os.ReadFile("../../deploy/grafana/mptcp-xdp.json")
	if err != nil {
		t.Fatal(err)
	}
	var board struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &board); err != nil {
		t.Fatal(err)
	}
	// (rate() needs two scrapes in its range: the first queries may come before the second.)
	expand := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*", "$balancer", l.LB)
	queries := 0
	for _, p := range board.Panels {
		for _, q := range p.Targets {
			if !strings.Contains(q.Expr, "mptcp_xdp_lb_") {
				continue
			}
			queries++
			eventually(t, "dashboard panel "+p.Title, 10*time.Second, func() (string, error) {
				r, err := prom.byLabels(expand.Replace(q.Expr))
				if err != nil || len(r) > 0 {
					return "", err
				}
				return q.Expr + ": no series", nil
			})
		}
	}
	if queries < 8 {
		t.Errorf("only %d balancer queries in the dashboard", queries)
	}
}

// waitFor polls check every 50 ms until it returns "" or ctx ends (a failure with its last answer).
func waitFor(ctx context.Context, t *testing.T, what string, check func() (string, error)) {
	t.Helper()
	for {
		msg, err := check()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if msg == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %s", what, msg)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// eventually retries check every 250 ms until it returns "" (nothing differs) or timeout passes,
// then fails with its last answer: Prometheus scrapes every second, so what the test reads from
// the kernel shows up within a scrape or two.
func eventually(t *testing.T, what string, timeout time.Duration, check func() (string, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff, err := check()
		if err == nil && diff == "" {
			return
		}
		if err != nil {
			diff = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v:\n%s", what, timeout, diff)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// diffMaps lists the keys whose values differ.
func diffMaps(got, want map[string]float64) string {
	var d []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			d = append(d, fmt.Sprintf("%s: missing, want %v", k, w))
		} else if g != w {
			d = append(d, fmt.Sprintf("%s: %v, want %v", k, g, w))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d = append(d, fmt.Sprintf("%s: %v, not expected", k, g))
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

// promServer is a Prometheus server run by a test.
type promServer struct{ url string }

// startProm runs prometheus scraping target every second, on a loopback port with its own
// temporary storage, waits until it is ready, and stops it at the end of the test.
func startProm(t *testing.T, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: lb\n    static_configs: [{targets: [%q]}]\n", target)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var log lockedLog
	cmd := exec.Command("prometheus", "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	p := &promServer{url: "http://" + addr}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(p.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-done:
			t.Fatalf("prometheus exited: %v\n%s", err, log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s:\n%s", log.String())
		}
	}
}

// byLabels evaluates expr now and maps each sample's value by the given labels joined with "/".
func (p *promServer) byLabels(expr string, labels ...string) (map[string]float64, error) {
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("query %s: %w", expr, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", expr, r.Error)
	}
	out := map[string]float64{}
	for _, e := range r.Data.Result {
		s, _ := e.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q: %w", expr, s, err)
		}
		var k []string
		for _, l := range labels {
			k = append(k, e.Metric[l])
		}
		out[strings.Join(k, "/")] = v
	}
	return out, nil
}

// lockedLog collects a process's output while the test may read it.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
