package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const deployDir = "../../deploy"

// invocation is one mptcp-xdp command line found in a deploy file.
type invocation struct {
	where string
	args  []string // after the binary
}

// deployInvocations parses every file under deploy/ (YAML, JSON, systemd units; anything else
// fails) and returns the mptcp-xdp command lines they run.
func deployInvocations(t *testing.T) []invocation {
	t.Helper()
	var out []invocation
	err := filepath.WalkDir(deployDir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(deployDir, path)
		switch filepath.Ext(path) {
		case ".yaml", ".yml":
			dec := yaml.NewDecoder(bytes.NewReader(b))
			for i := 0; ; i++ {
				var doc map[string]any
				if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					return fmt.Errorf("%s: document %d: %w", rel, i, err)
				}
				if doc["kind"] == "DaemonSet" {
					out = append(out, podInvocations(t, rel, doc)...)
				}
			}
		case ".json":
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				return fmt.Errorf("%s: %w", rel, err)
			}
		case ".service":
			sc := bufio.NewScanner(bytes.NewReader(b))
			for n := 1; sc.Scan(); n++ {
				line := strings.TrimSpace(sc.Text())
				for _, key := range []string{"ExecStart=", "ExecStop=", "ExecReload="} {
					if cmd, ok := strings.CutPrefix(line, key); ok {
						f := strings.Fields(cmd)
						if len(f) > 0 && filepath.Base(f[0]) == "mptcp-xdp" {
							out = append(out, invocation{fmt.Sprintf("%s:%d", rel, n), f[1:]})
						}
					}
				}
			}
		default:
			return fmt.Errorf("%s: no check for this kind of file: add one to deploy_test.go", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// podInvocations returns the mptcp-xdp command lines of a DaemonSet's containers.
func podInvocations(t *testing.T, file string, ds map[string]any) []invocation {
	t.Helper()
	var ds2 struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []container `yaml:"initContainers"`
					Containers     []container `yaml:"containers"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	b, err := yaml.Marshal(ds)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &ds2); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var out []invocation
	for _, c := range append(ds2.Spec.Template.Spec.InitContainers, ds2.Spec.Template.Spec.Containers...) {
		argv := append(append([]string{}, c.Command...), c.Args...)
		if len(argv) == 0 || filepath.Base(argv[0]) != "mptcp-xdp" {
			t.Errorf("%s: container %s does not run mptcp-xdp (command %v)", file, c.Name, c.Command)
			continue
		}
		out = append(out, invocation{file + ": container " + c.Name, argv[1:]})
	}
	return out
}

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
}

// TestDeployFilesNameRealFlags checks that the deploy files parse and that every mptcp-xdp command
// line in them names a real subcommand with flags it has, and values those flags accept.
func TestDeployFilesNameRealFlags(t *testing.T) {
	invs := deployInvocations(t)
	seen := map[string]bool{}
	for _, inv := range invs {
		root := newRootCmd()
		c, rest, err := root.Find(inv.args)
		if err != nil || c == root {
			t.Errorf("%s: %v names no mptcp-xdp subcommand (%v)", inv.where, inv.args, err)
			continue
		}
		seen[c.Name()] = true
		for _, a := range rest {
			if name, ok := strings.CutPrefix(a, "--"); ok {
				name, _, _ = strings.Cut(name, "=")
				if c.Flags().Lookup(name) == nil {
					t.Errorf("%s: mptcp-xdp %s has no flag --%s", inv.where, c.Name(), name)
				}
			}
		}
		if err := c.ParseFlags(rest); err != nil {
			t.Errorf("%s: mptcp-xdp %s %v: %v", inv.where, c.Name(), rest, err)
		}
		if err := c.ValidateArgs(c.Flags().Args()); err != nil {
			t.Errorf("%s: mptcp-xdp %s %v: %v", inv.where, c.Name(), rest, err)
		}
	}
	for _, want := range []string{"serve", "attach", "detach"} {
		if !seen[want] {
			t.Errorf("no deploy file runs mptcp-xdp %s (found %d command lines)", want, len(invs))
		}
	}
}

// TestDeployPrometheusConfig checks the scrape configs: promtool accepts the static one, and the
// Kubernetes one keeps the DaemonSet's port by the name the DaemonSet gives it.
func TestDeployPrometheusConfig(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatalf("promtool is not installed (apt-get install prometheus): %v", err)
	}
	if out, err := exec.Command("promtool", "check", "config", filepath.Join(deployDir, "prometheus/prometheus.yml")).CombinedOutput(); err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(deployDir, "prometheus/kubernetes.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName string `yaml:"job_name"`
			Relabel []struct {
				Source []string `yaml:"source_labels"`
				Regex  string   `yaml:"regex"`
				Action string   `yaml:"action"`
			} `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	ds, err := os.ReadFile(filepath.Join(deployDir, "kubernetes/mptcp-xdp.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, sc := range cfg.ScrapeConfigs {
		for _, r := range sc.Relabel {
			if r.Action == "keep" && len(r.Source) == 1 && r.Source[0] == "__meta_kubernetes_pod_container_port_name" {
				found = true
				if !regexp.MustCompile(`(?m)^\s+- name: ` + regexp.QuoteMeta(r.Regex) + `\n\s+containerPort: 9464`).Match(ds) {
					t.Errorf("kubernetes.yml keeps port %q, which the DaemonSet does not name for 9464", r.Regex)
				}
			}
		}
	}
	if !found {
		t.Error("kubernetes.yml does not select the metrics port")
	}
}

var metricRE = regexp.MustCompile(`\bmptcp_xdp_[a-z0-9_]+`)

// TestDeployGrafanaDashboard checks that every query of the dashboard names only documented
// metrics (docs/metrics.md, itself checked against the exporter) and is valid PromQL (promtool).
func TestDeployGrafanaDashboard(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatalf("promtool is not installed (apt-get install prometheus): %v", err)
	}
	b, err := os.ReadFile(filepath.Join(deployDir, "grafana/mptcp-xdp.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{} // name -> type
	for _, m := range regexp.MustCompile("(?m)^\\| `(mptcp_xdp_[a-z0-9_]+)` \\| ([a-z]+) \\|").FindAllStringSubmatch(string(doc), -1) {
		documented[m[1]] = m[2]
	}
	known := func(n string) bool {
		if _, ok := documented[n]; ok {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(n, suf); ok && documented[base] == "histogram" {
				return true
			}
		}
		return false
	}
	expand := strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*", "$netns", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			if inner, ok := strings.CutPrefix(v.Definition, "label_values("); ok {
				exprs = append(exprs, strings.TrimSpace(inner[:strings.LastIndex(inner, ",")]))
			}
		}
	}
	titles := map[string]bool{}
	for _, p := range dash.Panels {
		titles[p.Title] = true
	}
	for _, e := range exprs {
		for _, m := range metricRE.FindAllString(e, -1) {
			if !known(m) {
				t.Errorf("dashboard query uses %s, which docs/metrics.md does not document: %s", m, e)
			}
		}
		js, _ := json.Marshal(expand.Replace(e))
		fmt.Fprintf(&rules, "      - record: dashboard:q%d\n        expr: %s\n", n, js)
		n++
	}
	if n < 10 {
		t.Errorf("only %d queries in the dashboard", n)
	}
	for _, want := range []string{"Subflows per connection", "Per-subflow smoothed RTT", "Per-subflow throughput sent", "MPTCP option rate by class", "Join failures"} {
		if !titles[want] {
			t.Errorf("dashboard has no panel %q", want)
		}
	}
	f := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("dashboard queries are not valid PromQL: %v\n%s", err, out)
	}
	var names []string
	for k := range documented {
		names = append(names, k)
	}
	sort.Strings(names)
	if len(names) == 0 {
		t.Fatal("no metric rows found in docs/metrics.md")
	}
}
