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
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/exporter"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

const deployDir = "../../deploy"

// chartDir holds the Helm chart, whose templates are not YAML: test/deploy renders and checks it,
// and commits its renders: deploy/kubernetes/mptcp-xdp.yaml and those of renderDir, which the
// tests here check as they check every deploy file.
const (
	chartDir  = deployDir + "/helm"
	renderDir = "../../test/deploy/testdata"
)

// manifests are the Kubernetes manifests: the static one and the chart's other renders.
func manifests(t *testing.T) []string {
	t.Helper()
	renders, err := filepath.Glob(filepath.Join(renderDir, "*.yaml"))
	if err != nil || len(renders) == 0 {
		t.Fatalf("no chart renders in %s (make manifests writes them): %v", renderDir, err)
	}
	return append([]string{filepath.Join(deployDir, "kubernetes/mptcp-xdp.yaml")}, renders...)
}

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
	walk := func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && filepath.Clean(path) == filepath.Clean(chartDir) {
			return filepath.SkipDir
		}
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
	}
	for _, dir := range []string{deployDir, renderDir} {
		if err := filepath.WalkDir(dir, walk); err != nil {
			t.Fatal(err)
		}
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

// podSpec is the part of a DaemonSet's pod template that TestDeployKubernetesServe checks.
type podSpec struct {
	InitContainers []podContainer `yaml:"initContainers"`
	Containers     []podContainer `yaml:"containers"`
	Volumes        []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
			Type string `yaml:"type"`
		} `yaml:"hostPath"`
		EmptyDir any `yaml:"emptyDir"`
	} `yaml:"volumes"`
}

type podContainer struct {
	Name  string   `yaml:"name"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	VolumeMounts   []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		ReadOnly         bool   `yaml:"readOnly"`
		MountPropagation string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
}

type probe struct {
	HTTPGet *struct {
		Path   string `yaml:"path"`
		Port   any    `yaml:"port"`
		Scheme string `yaml:"scheme"`
	} `yaml:"httpGet"`
}

// TestDeployKubernetesServe checks the exporter's container of the Kubernetes manifest: its probes
// reach --health-listen's /healthz over plain HTTP (the metrics port may require TLS and basic
// authentication, which a probe does not present), and it mounts only mptcp-xdp's pin directories,
// read-only, each at its path on the host, on an empty /sys/fs/bpf (the container's /sys is a
// sysfs of its own, where no mount point can be created), never the host's whole bpffs.
func TestDeployKubernetesServe(t *testing.T) {
	for _, m := range manifests(t) {
		t.Run(filepath.Base(m), func(t *testing.T) { checkKubernetesServe(t, m) })
	}
}

func checkKubernetesServe(t *testing.T, file string) {
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var spec *podSpec
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Template struct {
					Spec podSpec `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if doc.Kind != "DaemonSet" {
			continue
		}
		for _, c := range doc.Spec.Template.Spec.Containers {
			if len(c.Args) > 0 && c.Args[0] == "serve" {
				if spec != nil {
					t.Fatal("two DaemonSets run mptcp-xdp serve")
				}
				spec = &doc.Spec.Template.Spec
			}
		}
	}
	if spec == nil {
		t.Fatal("no DaemonSet in the manifest runs mptcp-xdp serve")
	}
	hostPaths := map[string]string{} // volume -> host path
	emptyDirs := map[string]bool{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = filepath.Clean(v.HostPath.Path)
			if v.HostPath.Type != "Directory" && v.HostPath.Type != "DirectoryOrCreate" {
				t.Errorf("volume %s: hostPath type %q, want Directory or DirectoryOrCreate", v.Name, v.HostPath.Type)
			}
		}
		if v.EmptyDir != nil {
			emptyDirs[v.Name] = true
		}
	}
	ld := &loader.Loader{Root: loader.DefaultRoot}
	roots := []string{ld.Root, ld.LBRoot(), ld.HistoryRoot()}
	bpffs := filepath.Dir(loader.DefaultRoot)

	found := false
	for _, c := range spec.Containers {
		if len(c.Args) == 0 || c.Args[0] != "serve" {
			continue
		}
		found = true
		cmd, _, err := newRootCmd().Find(c.Args)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(c.Args[1:]); err != nil {
			t.Fatalf("serve %v: %v", c.Args[1:], err)
		}
		flag := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
		if r := flag("bpffs-root"); r != "" {
			t.Errorf("serve --bpffs-root %s: the manifest keeps the default root, %s", r, loader.DefaultRoot)
		}
		port := func(addr string) string {
			i := strings.LastIndex(addr, ":")
			if i < 0 {
				return ""
			}
			return addr[i+1:]
		}
		metricsPort, healthPort := port(flag("listen")), port(flag("health-listen"))
		if healthPort == "" || healthPort == "0" {
			t.Errorf("serve has no --health-listen with a fixed port (%q)", flag("health-listen"))
		}
		if healthPort == metricsPort {
			t.Errorf("--health-listen port %s is the metrics port", healthPort)
		}
		named := map[string]string{} // port name -> number
		for _, p := range c.Ports {
			named[p.Name] = strconv.Itoa(p.ContainerPort)
		}
		for what, p := range map[string]*probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("serve has no %s httpGet", what)
				continue
			}
			g := p.HTTPGet
			num := fmt.Sprint(g.Port)
			if n, ok := named[num]; ok {
				num = n
			}
			if g.Path != exporter.HealthPath || num != healthPort || (g.Scheme != "" && g.Scheme != "HTTP") {
				t.Errorf("%s: %s %s port %v (%s), want HTTP %s on the --health-listen port %s", what, g.Scheme, g.Path, g.Port, num, exporter.HealthPath, healthPort)
			}
		}

		mounted := map[string]bool{} // root -> mounted
		view := false                // an emptyDir on /sys/fs/bpf
		for _, m := range c.VolumeMounts {
			mp := filepath.Clean(m.MountPath)
			if mp == bpffs && emptyDirs[m.Name] {
				view = true
				continue
			}
			hp, ok := hostPaths[m.Name]
			if !ok {
				if strings.HasPrefix(mp+"/", bpffs+"/") {
					t.Errorf("mount %s at %s: not a host directory", m.Name, mp)
				}
				continue
			}
			if hp == "/" || strings.HasPrefix(bpffs+"/", hp+"/") { // the bpffs or a directory above it
				t.Errorf("mount %s: the host's %s, which holds every tool's pins", m.Name, hp)
				continue
			}
			if !strings.HasPrefix(hp, bpffs+"/") {
				continue // not bpffs
			}
			if !slices.Contains(roots, hp) {
				t.Errorf("mount %s: host %s is not a pin root of mptcp-xdp (%v)", m.Name, hp, roots)
			}
			if !m.ReadOnly {
				t.Errorf("mount %s of %s is not readOnly", m.Name, hp)
			}
			if m.MountPropagation == "Bidirectional" {
				t.Errorf("mount %s of %s propagates mounts back to the host", m.Name, hp)
			}
			if mp != hp {
				t.Errorf("mount %s: host %s at %s, want the same path (serve's default root)", m.Name, hp, mp)
			}
			mounted[hp] = true
		}
		for _, r := range roots {
			if !mounted[r] {
				t.Errorf("serve does not mount the pin root %s", r)
			}
		}
		if len(mounted) > 0 && !view {
			t.Errorf("serve mounts pin directories under %s without an emptyDir at %s to hold their mount points", bpffs, bpffs)
		}
	}
	if !found {
		t.Fatal("no container runs mptcp-xdp serve")
	}
}
