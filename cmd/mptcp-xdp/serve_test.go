package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/exporter"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// serveEnv makes the test binary run the CLI (arguments separated by \x1f) instead of the tests:
// `serve` runs as its own process, so that it can be scraped, signalled and watched exit.
const serveEnv = "MX_SERVE_CLI"

// serveRootEnv sets the pin root of the CLI run through serveEnv (what tests set bpffsRoot to).
const serveRootEnv = "MX_SERVE_ROOT"

// TestServeHelperProcess is not a test: it is the `mptcp-xdp serve` process of the serve tests.
func TestServeHelperProcess(t *testing.T) {
	args, ok := os.LookupEnv(serveEnv)
	if !ok {
		return
	}
	if r := os.Getenv(serveRootEnv); r != "" {
		bpffsRoot = r
	}
	root := newRootCmd()
	root.SetArgs(strings.Split(args, "\x1f"))
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "mptcp-xdp: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// lockedBuffer collects a process's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// served is a running `mptcp-xdp serve`.
type served struct {
	addr   string // host:port it listens on
	health string // host:port of --health-listen, if given
	cmd    *exec.Cmd
	log    *lockedBuffer
	done   chan error // the process's exit
}

var (
	listeningRE = regexp.MustCompile(`msg="serving metrics" address=(\S+)`)
	healthRE    = regexp.MustCompile(`msg="serving health" address=(\S+)`)
)

// startServe runs `mptcp-xdp serve --listen 127.0.0.1:0 args...` and waits until it listens. It is
// stopped (SIGTERM) at the end of the test unless the test stopped it.
func startServe(t *testing.T, args ...string) *served {
	t.Helper()
	return startServeWrapped(t, nil, args...)
}

// startServeWrapped is startServe with serve run by wrap, a command line that ends by executing
// the rest of its arguments in its own process (setpriv, unshare): signals reach serve itself.
func startServeWrapped(t *testing.T, wrap []string, args ...string) *served {
	t.Helper()
	argv := append(append([]string{}, wrap...), os.Args[0], "-test.run=^TestServeHelperProcess$", "-test.count=1")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), serveEnv+"="+strings.Join(append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), "\x1f"))
	s := &served{cmd: cmd, log: &lockedBuffer{}, done: make(chan error, 1)}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start serve: %v", err)
	}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(s.log, line)
			if m := healthRE.FindStringSubmatch(line); m != nil {
				s.health = m[1] // logged before the metrics line that ends the wait
			}
			if m := listeningRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		s.done <- err
		close(s.done)
	}()
	t.Cleanup(func() {
		if err, running := s.stop(5 * time.Second); running && err != nil {
			t.Logf("serve %v: %v\n%s", args, err, s.log.String())
		}
	})
	select {
	case s.addr = <-found:
	case err := <-s.done:
		t.Fatalf("serve %v exited before listening: %v\n%s", args, err, s.log.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("serve %v did not listen within 20s:\n%s", args, s.log.String())
	}
	return s
}

// stop sends SIGTERM and waits for the exit; running says whether it was still running.
func (s *served) stop(timeout time.Duration) (err error, running bool) {
	if s.cmd.ProcessState != nil {
		return nil, false
	}
	select {
	case err, ok := <-s.done:
		if !ok {
			return nil, false
		}
		return err, false
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err, true
	case <-time.After(timeout):
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("still running %v after SIGTERM: killed", timeout), true
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// promServer is a Prometheus server (Debian's package) run by the test.
type promServer struct {
	url string
	log *lockedBuffer
}

// startPrometheus runs prometheus with config on a loopback port and its own temporary storage,
// waits until it is ready, and stops it at the end of the test. A missing prometheus fails the test.
func startPrometheus(t *testing.T, config string) *promServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus is not installed (apt-get install prometheus; .ci/run installs it): %v", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	p := &promServer{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: &lockedBuffer{}}
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+fmt.Sprintf("127.0.0.1:%d", port), "--log.level=warn")
	cmd.Stdout, cmd.Stderr = p.log, p.log
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
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.url + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-done:
			t.Fatalf("prometheus exited: %v\n%s", err, p.log.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s:\n%s", p.log.String())
		}
	}
}

// sample is one element of an instant vector.
type sample struct {
	Labels map[string]string
	Value  float64
}

// query evaluates expr now through the HTTP API.
func (p *promServer) query(expr string) ([]sample, error) {
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
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
	var out []sample
	for _, e := range r.Data.Result {
		s, _ := e.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q: %w", expr, s, err)
		}
		out = append(out, sample{Labels: e.Metric, Value: v})
	}
	return out, nil
}

// byLabels maps each sample of expr to its value, keyed by the given labels joined with "/".
func (p *promServer) byLabels(expr string, labels ...string) (map[string]float64, error) {
	ss, err := p.query(expr)
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, s := range ss {
		var k []string
		for _, l := range labels {
			k = append(k, s.Labels[l])
		}
		m[strings.Join(k, "/")] = s.Value
	}
	return m, nil
}

// eventually retries check until it returns "" (nothing differs) or timeout passes, then fails with
// its last answer. Prometheus scrapes every second: what the test reads from the kernel shows up
// within a scrape or two.
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
			t.Errorf("%s: after %v:\n%s", what, timeout, diff)
			return
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

// webConfig writes an exporter-toolkit web config with TLS (a fresh self-signed certificate for
// 127.0.0.1) and basic auth for user:password (bcrypt hash). It returns the config path and the
// certificate's PEM path (to trust it).
func webConfig(t *testing.T, user, password string) (cfg, certPEM string) {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mptcp-xdp test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cfg = filepath.Join(dir, "web.yml")
	for p, b := range map[string][]byte{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
		cfg: fmt.Appendf(nil, "tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  %s: %s\n",
			certPEM, keyPEM, user, hash),
	} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cfg, certPEM
}

// statsJSON is `mptcp-xdp stats -o json`.
type statsJSON struct {
	Interfaces []struct {
		Netns   string `json:"netns"`
		Name    string `json:"name"`
		Ingress struct {
			Packets map[string]uint64 `json:"packets"`
			Options map[string]uint64 `json:"options"`
		} `json:"ingress"`
		Egress struct {
			Packets map[string]uint64 `json:"packets"`
			Options map[string]uint64 `json:"options"`
		} `json:"egress"`
	} `json:"interfaces"`
}

// cliRun runs the CLI in this process against the test's bpffs root.
func cliRun(args ...string) (string, error) {
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		return "", fmt.Errorf("mptcp-xdp %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// unmap writes an address:port with a v4-mapped IPv6 address as IPv4, as the exporter labels it.
func unmap(a netip.AddrPort) string { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String() }

// TestServe is the exporter end to end: a lab of four paths with the datapath attached to the
// server's interfaces (through the CLI), one MPTCP connection of four subflows that moved data
// both ways and is then quiet, three `serve` processes (both namespaces; the server's with a cap
// of 2 subflow series; the server's behind TLS and basic auth) and a real Prometheus scraping
// them every second. What Prometheus stores must equal what `stats`, /proc/net/netstat and
// getsockopt(MPTCP_FULL_INFO) say.
func TestServe(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatalf("promtool is not installed (apt-get install prometheus): %v", err)
	}
	l := testutil.NewLab(t, lab.Config{Paths: 4, Subflows: true})
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()

	// A private pin root, so that other tests' attachments (and theirs of ours) stay apart.
	root := fmt.Sprintf("/sys/fs/bpf/mptcp-xdp-test-serve-%d", os.Getpid())
	saved := bpffsRoot
	bpffsRoot = root
	t.Cleanup(func() {
		for _, p := range l.Paths {
			if _, err := cliRun("--netns", l.Server, "detach", p.ServerIf); err != nil {
				t.Errorf("detach: %v", err)
			}
		}
		bpffsRoot = saved
		os.Remove(root)
	})
	for _, p := range l.Paths {
		if _, err := cliRun("--netns", l.Server, "attach", p.ServerIf); err != nil {
			t.Fatal(err)
		}
	}

	// The connection: four subflows, data both ways, then quiet.
	pair, err := l.Pair(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pair.Close() })
	if _, err := l.WaitSubflows(ctx, l.Client, 3, true); err != nil {
		t.Fatal(err)
	}
	const up, down = 3 << 20, 1 << 20
	errc := make(chan error, 2)
	go func() { _, err := pair.Client.Write(make([]byte, up)); errc <- err }()
	go func() { _, err := pair.Server.Write(make([]byte, down)); errc <- err }()
	if _, err := io.ReadFull(pair.Server, make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(pair.Client, make([]byte, down)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	all := startServe(t, "--bpffs-root", root, "--netns", l.Server, "--netns", l.Client, "--token-label")
	capped := startServe(t, "--bpffs-root", root, "--netns", l.Server, "--max-subflow-series", "2")
	webCfg, caPEM := webConfig(t, "scraper", "s3cret")
	secured := startServe(t, "--bpffs-root", root, "--netns", l.Server, "--web.config.file", webCfg)
	prom := startPrometheus(t, fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: all
    static_configs: [{targets: [%q]}]
  - job_name: capped
    static_configs: [{targets: [%q]}]
  - job_name: secured
    scheme: https
    tls_config: {ca_file: %q}
    basic_auth: {username: scraper, password: s3cret}
    static_configs: [{targets: [%q]}]
  - job_name: secured_noauth
    scheme: https
    tls_config: {ca_file: %q}
    static_configs: [{targets: [%q]}]
`, all.addr, capped.addr, caPEM, secured.addr, caPEM, secured.addr))

	t.Run("datapath counters equal stats", func(t *testing.T) {
		eventually(t, "datapath counters", 20*time.Second, func() (string, error) {
			out, err := cliRun("--netns", l.Server, "stats", "-o", "json")
			if err != nil {
				return "", err
			}
			var st statsJSON
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				return "", err
			}
			if len(st.Interfaces) != len(l.Paths) {
				return "", fmt.Errorf("stats lists %d interfaces, want %d", len(st.Interfaces), len(l.Paths))
			}
			want := map[string]float64{}
			var mptcpIn float64
			for _, i := range st.Interfaces {
				for _, d := range []struct {
					dir     string
					packets map[string]uint64
					options map[string]uint64
				}{{"ingress", i.Ingress.Packets, i.Ingress.Options}, {"egress", i.Egress.Packets, i.Egress.Options}} {
					for k, v := range d.packets {
						want["packets/"+i.Name+"/"+d.dir+"/"+k] = float64(v)
					}
					for k, v := range d.options {
						want["options/"+i.Name+"/"+d.dir+"/"+k] = float64(v)
					}
				}
				mptcpIn += float64(i.Ingress.Packets["mptcp"])
			}
			if mptcpIn == 0 {
				return "", errors.New("the datapath counted no MPTCP packet")
			}
			got := map[string]float64{}
			for _, q := range []struct{ metric, label string }{{"packets", "kind"}, {"options", "class"}} {
				m, err := prom.byLabels(fmt.Sprintf(`mptcp_xdp_datapath_%s_total{job="all",netns=%q}`, q.metric, l.Server), "interface", "direction", q.label)
				if err != nil {
					return "", err
				}
				for k, v := range m {
					got[q.metric+"/"+k] = v
				}
			}
			return diffMaps(got, want), nil
		})
	})

	t.Run("MPTcpExt equals /proc", func(t *testing.T) {
		for _, ns := range []string{l.Server, l.Client} {
			eventually(t, "MPTcpExt of "+ns, 20*time.Second, func() (string, error) {
				mib, err := l.MIB(ns)
				if err != nil {
					return "", err
				}
				want := map[string]float64{}
				for k, v := range mib {
					if name, ok := strings.CutPrefix(k, "MPTcpExt."); ok && name != "MPCurrEstab" {
						want[name] = float64(v)
					}
				}
				if want["MPJoinSynRx"]+want["MPJoinSynTx"] == 0 {
					return "", errors.New("no join counted by the kernel")
				}
				got, err := prom.byLabels(fmt.Sprintf(`mptcp_xdp_kernel_mptcpext_total{job="all",netns=%q}`, ns), "counter")
				if err != nil {
					return "", err
				}
				d := diffMaps(got, want)
				est, err := prom.byLabels(fmt.Sprintf(`mptcp_xdp_kernel_mptcp_current_established{job="all",netns=%q}`, ns))
				if err != nil {
					return "", err
				}
				if est[""] != float64(mib.MPTCP("MPCurrEstab")) {
					d += fmt.Sprintf("\nMPCurrEstab: %v, want %d", est[""], mib.MPTCP("MPCurrEstab"))
				}
				return strings.TrimSpace(d), nil
			})
		}
	})

	t.Run("connection and subflows equal getsockopt", func(t *testing.T) {
		for _, end := range []struct {
			ns   string
			conn net.Conn
		}{{l.Server, pair.Server}, {l.Client, pair.Client}} {
			eventually(t, "subflows of "+end.ns, 20*time.Second, func() (string, error) {
				full, err := sockopt.FullInfo(end.conn.(*net.TCPConn))
				if err != nil {
					return "", err
				}
				if len(full.Subflows) != 4 {
					return "", fmt.Errorf("getsockopt: %d subflows, want 4", len(full.Subflows))
				}
				tok := fmt.Sprintf("%08x", full.Info.Token)
				sel := fmt.Sprintf(`{job="all",netns=%q}`, end.ns)
				want := map[string]float64{"connections/": 1, "subflows/": 4,
					"connection_subflows/" + tok: 4, "srtt_count/": 4, "per_conn_count/": 1, "per_conn_sum/": 4}
				var sent, recv float64
				for _, s := range full.Subflows {
					id := strconv.Itoa(int(s.ID))
					k := tok + "/" + id
					want["info/"+k+"/"+unmap(s.Addr.Local)+"/"+unmap(s.Addr.Remote)] = 1
					want["srtt_us/"+k] = float64(s.TCP.RTT)
					want["cwnd/"+k] = float64(s.TCP.SndCwnd)
					want["sent/"+k] = float64(s.TCP.BytesSent)
					want["recv/"+k] = float64(s.TCP.BytesReceived)
					want["retrans_bytes/"+k] = float64(s.TCP.BytesRetrans)
					want["retrans_segs/"+k] = float64(s.TCP.TotalRetrans)
					want["delivery/"+k] = float64(s.TCP.DeliveryRate)
					sent += float64(s.TCP.BytesSent)
					recv += float64(s.TCP.BytesReceived)
				}
				want["connection_sent/"+tok] = sent
				want["connection_recv/"+tok] = recv
				got := map[string]float64{}
				for _, q := range []struct {
					key, expr string
					labels    []string
				}{
					{"connections", "mptcp_xdp_connections" + sel, nil},
					{"subflows", "mptcp_xdp_subflows" + sel, nil},
					{"srtt_count", "mptcp_xdp_srtt_seconds_count" + sel, nil},
					{"per_conn_count", "mptcp_xdp_subflows_per_connection_count" + sel, nil},
					{"per_conn_sum", "mptcp_xdp_subflows_per_connection_sum" + sel, nil},
					{"connection_subflows", "mptcp_xdp_connection_subflows" + sel, []string{"token"}},
					{"connection_sent", "mptcp_xdp_connection_sent_bytes_total" + sel, []string{"token"}},
					{"connection_recv", "mptcp_xdp_connection_received_bytes_total" + sel, []string{"token"}},
					{"info", "mptcp_xdp_subflow_info" + sel, []string{"token", "subflow", "local", "remote"}},
					{"srtt_us", "1e6 * mptcp_xdp_subflow_srtt_seconds" + sel, []string{"token", "subflow"}},
					{"cwnd", "mptcp_xdp_subflow_cwnd_segments" + sel, []string{"token", "subflow"}},
					{"sent", "mptcp_xdp_subflow_sent_bytes_total" + sel, []string{"token", "subflow"}},
					{"recv", "mptcp_xdp_subflow_received_bytes_total" + sel, []string{"token", "subflow"}},
					{"retrans_bytes", "mptcp_xdp_subflow_retransmitted_bytes_total" + sel, []string{"token", "subflow"}},
					{"retrans_segs", "mptcp_xdp_subflow_retransmitted_segments_total" + sel, []string{"token", "subflow"}},
					{"delivery", "mptcp_xdp_subflow_delivery_rate_bytes_per_second" + sel, []string{"token", "subflow"}},
				} {
					m, err := prom.byLabels(q.expr, q.labels...)
					if err != nil {
						return "", err
					}
					for k, v := range m {
						if q.key == "srtt_us" {
							v = math.Round(v)
						}
						got[q.key+"/"+k] = v
					}
				}
				return diffMaps(got, want), nil
			})
		}
	})

	t.Run("series cap", func(t *testing.T) {
		eventually(t, "capped series", 20*time.Second, func() (string, error) {
			var d []string
			all, err := prom.byLabels(fmt.Sprintf(`mptcp_xdp_subflow_sent_bytes_total{job="all",netns=%q} + mptcp_xdp_subflow_received_bytes_total{job="all",netns=%q}`, l.Server, l.Server), "subflow")
			if err != nil {
				return "", err
			}
			kept, err := prom.byLabels(`mptcp_xdp_subflow_info{job="capped"}`, "subflow")
			if err != nil {
				return "", err
			}
			if len(all) != 4 || len(kept) != 2 {
				return fmt.Sprintf("%d subflows uncapped (want 4), %d kept (want 2)", len(all), len(kept)), nil
			}
			for k := range kept {
				for o, ob := range all {
					if _, isKept := kept[o]; !isKept && ob > all[k] {
						d = append(d, fmt.Sprintf("kept subflow %s (%v bytes) over omitted %s (%v bytes)", k, all[k], o, ob))
					}
				}
			}
			for _, c := range []struct {
				expr string
				want float64
			}{
				{`mptcp_xdp_subflow_series_omitted{job="capped"}`, 2},
				{`mptcp_xdp_connection_series_omitted{job="capped"}`, 0},
				{`count(mptcp_xdp_subflow_sent_bytes_total{job="capped"})`, 2},
				{`count(mptcp_xdp_connection_subflows{job="capped"})`, 1},
				{`mptcp_xdp_subflows{job="capped"}`, 4},
				{`mptcp_xdp_srtt_seconds_count{job="capped"}`, 4},
				{`mptcp_xdp_subflows_per_connection_sum{job="capped"}`, 4},
				{`mptcp_xdp_subflow_series_omitted{job="all"}`, 0},
				// Without --token-label no series names the token; the connection label tells the
				// connection apart, the same on its per-subflow and per-connection series.
				{`count(mptcp_xdp_subflow_info{job="capped",token!=""}) or vector(0)`, 0},
				{`count(mptcp_xdp_connection_subflows{job="capped",token!=""}) or vector(0)`, 0},
				{`count(count by (connection) (mptcp_xdp_subflow_info{job="capped",connection=~"[0-9a-f]{16}"}) * on (connection) group_left count by (connection) (mptcp_xdp_connection_subflows{job="capped"}))`, 1},
			} {
				m, err := prom.byLabels(c.expr)
				if err != nil {
					return "", err
				}
				if v, ok := m[""]; !ok || v != c.want || len(m) != 1 {
					d = append(d, fmt.Sprintf("%s = %v, want %v", c.expr, m, c.want))
				}
			}
			return strings.Join(d, "\n"), nil
		})
	})

	t.Run("every source up", func(t *testing.T) {
		eventually(t, "scrape health", 20*time.Second, func() (string, error) {
			m, err := prom.byLabels(`mptcp_xdp_scrape_up{job="all"}`, "source", "netns")
			if err != nil {
				return "", err
			}
			want := map[string]float64{"datapath/": 1}
			for _, ns := range []string{l.Server, l.Client} {
				want["mptcpext/"+ns], want["subflows/"+ns] = 1, 1
			}
			return diffMaps(m, want), nil
		})
	})

	t.Run("promtool check metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + all.addr + "/metrics")
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
		if !bytes.Contains(body, []byte("mptcp_xdp_subflow_info{")) || !bytes.Contains(body, []byte("mptcp_xdp_datapath_options_total{")) {
			t.Error("the checked exposition lacks subflow or datapath series")
		}
	})

	t.Run("TLS and basic auth", func(t *testing.T) {
		pemBytes, err := os.ReadFile(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		for _, c := range []struct {
			user, pass string
			want       int
		}{{"", "", http.StatusUnauthorized}, {"scraper", "wrong", http.StatusUnauthorized}, {"other", "s3cret", http.StatusUnauthorized}, {"scraper", "s3cret", http.StatusOK}} {
			req, _ := http.NewRequest("GET", "https://"+secured.addr+"/metrics", nil)
			if c.user != "" {
				req.SetBasicAuth(c.user, c.pass)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s:%s: %v", c.user, c.pass, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("scrape as %q/%q: %s, want %d", c.user, c.pass, resp.Status, c.want)
			}
			if c.want == http.StatusOK && !bytes.Contains(body, []byte("mptcp_xdp_build_info")) {
				t.Error("authorized scrape has no mptcp_xdp_build_info")
			}
		}
		if resp, err := http.Get("http://" + secured.addr + "/metrics"); err == nil {
			if resp.StatusCode == http.StatusOK {
				t.Error("plain HTTP scrape of the TLS endpoint succeeded")
			}
			resp.Body.Close()
		}
		eventually(t, "Prometheus scrapes with credentials and is refused without", 20*time.Second, func() (string, error) {
			m, err := prom.byLabels(`up{job=~"secured.*"}`, "job")
			if err != nil {
				return "", err
			}
			return diffMaps(m, map[string]float64{"secured": 1, "secured_noauth": 0}), nil
		})
	})

	t.Run("graceful shutdown on SIGTERM", func(t *testing.T) {
		for _, s := range []*served{all, capped, secured} {
			err, running := s.stop(10 * time.Second)
			if !running || err != nil {
				t.Errorf("serve exit: running %v, %v\n%s", running, err, s.log.String())
			}
			if log := s.log.String(); !strings.Contains(log, `msg="shutting down"`) || !strings.Contains(log, "msg=stopped") {
				t.Errorf("serve did not log its shutdown:\n%s", log)
			}
		}
	})
}

// httpGet returns the status and body of a GET of url through client.
func httpGet(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestServeHealth is --health-listen: probes get an endpoint of their own. With TLS and basic
// authentication on the metrics port, where a probe without credentials is refused, /healthz on
// the health address answers 200 over plain HTTP without credentials, and serves no metric. It
// answers 503 when a pin root is there but is no live bpffs directory: a root that is not on a
// bpffs, and a root mounted into serve's mount namespace (as the Kubernetes manifest mounts it)
// whose directory the host then removed, as the last detach does.
func TestServeHealth(t *testing.T) {
	testutil.RequireRoot(t)
	plain := &http.Client{Timeout: 10 * time.Second}

	t.Run("TLS and basic auth on metrics", func(t *testing.T) {
		root := filepath.Join(testutil.TempBPFFS(t, "mxh2-health-"), "mptcp-xdp")
		if err := os.Mkdir(root, 0o700); err != nil {
			t.Fatal(err)
		}
		webCfg, caPEM := webConfig(t, "scraper", "s3cret")
		s := startServe(t, "--bpffs-root", root, "--web.config.file", webCfg, "--health-listen", "127.0.0.1:0")
		if s.health == "" {
			t.Fatalf("serve logged no health address:\n%s", s.log.String())
		}
		pemBytes, err := os.ReadFile(caPEM)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pemBytes)
		secure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		// What a probe of the metrics port gets without credentials.
		for _, path := range []string{"/", exporter.MetricsPath} {
			if code, _ := httpGet(t, secure, "https://"+s.addr+path); code != http.StatusUnauthorized {
				t.Errorf("metrics port %s without credentials: %d, want 401", path, code)
			}
		}
		if code, body := httpGet(t, plain, "http://"+s.health+exporter.HealthPath); code != http.StatusOK || body != "ok\n" {
			t.Errorf("health %s: %d %q, want 200 \"ok\\n\"", exporter.HealthPath, code, body)
		}
		if code, body := httpGet(t, plain, "http://"+s.health+exporter.MetricsPath); code != http.StatusNotFound || strings.Contains(body, "mptcp_xdp_") {
			t.Errorf("health address %s: %d %q, want 404 and no metric", exporter.MetricsPath, code, body)
		}
	})

	t.Run("root not on a bpffs", func(t *testing.T) {
		root := t.TempDir()
		s := startServe(t, "--bpffs-root", root, "--health-listen", "127.0.0.1:0")
		code, body := httpGet(t, plain, "http://"+s.health+exporter.HealthPath)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "pin root "+root+": not on a bpffs") {
			t.Errorf("health: %d %q, want 503 naming %s as not on a bpffs", code, body, root)
		}
	})

	t.Run("root removed on the host", func(t *testing.T) {
		src := filepath.Join(testutil.TempBPFFS(t, "mxh2-health-"), "mptcp-xdp")
		if err := os.Mkdir(src, 0o700); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "mptcp-xdp") // not on a bpffs until src is mounted on it
		if err := os.Mkdir(dst, 0o700); err != nil {
			t.Fatal(err)
		}
		wrap := []string{"unshare", "--mount", "--propagation", "private",
			"sh", "-c", `mount --bind "$1" "$2" && shift 2 && exec "$@"`, "sh", src, dst}
		s := startServeWrapped(t, wrap, "--bpffs-root", dst, "--health-listen", "127.0.0.1:0")
		if code, body := httpGet(t, plain, "http://"+s.health+exporter.HealthPath); code != http.StatusOK {
			t.Fatalf("health with %s mounted on %s: %d %q, want 200", src, dst, code, body)
		}
		if err := os.Remove(src); err != nil {
			t.Fatal(err)
		}
		code, body := httpGet(t, plain, "http://"+s.health+exporter.HealthPath)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "pin root "+dst+": removed") {
			t.Errorf("health after the host removed %s: %d %q, want 503 naming %s as removed", src, code, body, dst)
		}
	})
}

// TestServeReadOnlyPins shows that serve opens every pinned map it reads through a read-only fd.
// The datapath and a balancer are attached under a private root, every map pin is made 0400, and
// serve runs without CAP_DAC_OVERRIDE (setpriv), as root: a read-write open of those pins is then
// refused (a writer, `lb backend drain`, fails), a read-only one is not. Links keep their mode: the
// kernel has no read-only fd for a link (BPF_F_RDONLY on one is EINVAL). The scrape must hold the
// datapath's and the balancer's series, with the datapath source (which reads both) up.
func TestServeReadOnlyPins(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatalf("setpriv is not installed (util-linux): %v", err)
	}
	root := filepath.Join(testutil.TempBPFFS(t, "mxh2-ro-"), "mptcp-xdp")
	saved := bpffsRoot
	bpffsRoot = root
	t.Cleanup(func() { bpffsRoot = saved })
	ld, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Prefix: fmt.Sprintf("mxh2r%04x", os.Getpid()&0xffff), Paths: 2})
	dpIf, lbIf := l.Paths[0].ServerIf, l.Paths[1].ServerIf
	if _, err := cliRun("--netns", l.Server, "attach", dpIf); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := cliRun("--netns", l.Server, "detach", dpIf); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	m, err := ld.AttachLB(loader.LBAttachOptions{Netns: l.Server, Ifaces: []string{lbIf}})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	t.Cleanup(func() {
		if err := ld.DetachLB(l.Server); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	pins, err := ld.Pins("")
	if err != nil {
		t.Fatal(err)
	}
	var chmodded []string
	for _, p := range pins {
		if p.Object == loader.ObjectMap {
			if err := os.Chmod(p.Path, 0o400); err != nil {
				t.Fatal(err)
			}
			chmodded = append(chmodded, p.Path)
		}
	}
	if len(chmodded) < 12 {
		t.Fatalf("only %d map pins: %v", len(chmodded), chmodded)
	}
	noDAC := []string{"setpriv", "--bounding-set", "-dac_override,-dac_read_search"}

	// The control: the same process setup cannot open the pins for writing.
	argv := append(append([]string{}, noDAC...), os.Args[0], "-test.run=^TestServeHelperProcess$", "-test.count=1")
	w := exec.Command(argv[0], argv[1:]...)
	w.Env = append(os.Environ(), serveRootEnv+"="+root,
		serveEnv+"="+strings.Join([]string{"--netns", l.Server, "lb", "backend", "drain", "192.0.2.1"}, "\x1f"))
	if out, err := w.CombinedOutput(); err == nil || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("lb backend drain without CAP_DAC_OVERRIDE on 0400 pins: %v, want permission denied:\n%s", err, out)
	}

	s := startServeWrapped(t, noDAC, "--bpffs-root", root)
	code, body := httpGet(t, &http.Client{Timeout: 10 * time.Second}, "http://"+s.addr+exporter.MetricsPath)
	if code != http.StatusOK {
		t.Fatalf("scrape: %d", code)
	}
	for _, want := range []string{
		`mptcp_xdp_scrape_up{netns="",source="datapath"} 1`,
		fmt.Sprintf(`mptcp_xdp_datapath_packets_total{direction="ingress",interface=%q,kind="mptcp",netns=%q}`, dpIf, l.Server),
		`mptcp_xdp_lb_table_capacity{`,
		`mptcp_xdp_lb_datapath_total{`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape has no %s", want)
		}
	}
	if t.Failed() {
		t.Logf("serve's log:\n%s", s.log.String())
	}
}
