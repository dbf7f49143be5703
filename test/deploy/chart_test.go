// Package deploy renders the Helm chart deploy/helm/mptcp-xdp through the Helm Go library, with the
// defaults and with the values of the chart's ci/ directory, and checks every object it renders:
// a strict decode into its Kubernetes type (k8s.io/api, and the Prometheus Operator's API for the
// monitors and rules: an unknown or misspelt field fails), selectors that select, mounts of
// declared volumes, the capabilities and bpffs mounts the README names, the rules and dashboard
// as the files under deploy/ have them. Each render is compared with its committed copy
// (deploy/kubernetes/mptcp-xdp.yaml, testdata/*.yaml): `make manifests` (this test with -update)
// rewrites them, and cmd/mptcp-xdp's deploy tests check the command lines of those copies against
// the binary's own command tree. It is a package of its own because it links Helm and client-go.
package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
)

var update = flag.Bool("update", false, "rewrite the committed renders (make manifests)")

// TestMain keeps Helm's loader quiet: it logs each symbolic link of the chart (files/ links to the
// rules and the dashboard under deploy/) at info level.
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

const (
	chartDir  = "../../deploy/helm/mptcp-xdp"
	release   = "mptcp-xdp"
	namespace = "mptcp-xdp"
	// binary is where the image holds mptcp-xdp (cmd/mkimage).
	binary = "/usr/local/bin/mptcp-xdp"
)

// header opens deploy/kubernetes/mptcp-xdp.yaml.
const header = `# mptcp-xdp on every node of a Kubernetes cluster: an init container attaches the datapath to the
# node's uplink, then ` + "`mptcp-xdp serve`" + ` exports the datapath counters, the node's MPTcpExt counters
# and every MPTCP connection and subflow of the node's network namespace on <node IP>:9464.
# docs/metrics.md lists the metrics; deploy/prometheus/kubernetes.yml scrapes them.
#
# Rendered from the Helm chart deploy/helm/mptcp-xdp (release mptcp-xdp, namespace mptcp-xdp)
# with deploy/helm/mptcp-xdp/ci/manifest-values.yaml by ` + "`make manifests`" + `: edit the chart, not
# this file (test/deploy fails when they differ). The image is the one ` + "`make image`" + ` builds
# (docs/deploy.md); set the uplink in the attach container (the chart: exporter.attach.interfaces).
`

// renderCase is one set of values and where its render is committed.
type renderCase struct {
	name   string
	values string // file under the chart's ci/, or "" for the defaults
	golden string
	header string
}

var cases = []renderCase{
	{name: "default", golden: "testdata/default.yaml"},
	{name: "manifest", values: "ci/manifest-values.yaml", golden: "../../deploy/kubernetes/mptcp-xdp.yaml", header: header},
	{name: "all", values: "ci/all-values.yaml", golden: "testdata/all.yaml"},
	{name: "lbconfig", values: "ci/lbconfig-values.yaml", golden: "testdata/lbconfig.yaml"},
}

// render renders the chart as `helm template --namespace mptcp-xdp mptcp-xdp CHART -f values`
// and returns the manifests in Helm's install order, each as `---\n# Source: ...\n` and its YAML.
func render(t *testing.T, vals map[string]any) []releaseutil.Manifest {
	t.Helper()
	ms, err := renderErr(vals)
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func renderErr(vals map[string]any) ([]releaseutil.Manifest, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	rv, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: release, Namespace: namespace, Revision: 1, IsInstall: true}, nil)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Render(ch, rv)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	for f := range files {
		if strings.HasSuffix(f, "NOTES.txt") {
			delete(files, f)
		}
	}
	hooks, ms, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("sort manifests: %w", err)
	}
	if len(hooks) > 0 {
		return nil, fmt.Errorf("the chart renders %d hooks: a static manifest cannot hold them", len(hooks))
	}
	return ms, nil
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	if file == "" {
		return map[string]any{}
	}
	b, err := os.ReadFile(filepath.Join(chartDir, file))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

func joinManifests(head string, ms []releaseutil.Manifest) []byte {
	var b bytes.Buffer
	b.WriteString(head)
	for _, m := range ms {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, strings.TrimSpace(m.Content))
	}
	return b.Bytes()
}

// TestChartRenders renders each case, checks every object, and compares the render with its
// committed copy (-update rewrites it).
func TestChartRenders(t *testing.T) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ms := render(t, readValues(t, c.values))
			objs := decodeAll(t, ms)
			checkObjects(t, c.name, objs)
			got := joinManifests(c.header, ms)
			if *update {
				if err := os.MkdirAll(filepath.Dir(c.golden), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(c.golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(c.golden)
			if err != nil {
				t.Fatalf("%v (make manifests writes it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from a fresh render of the chart with %q: run make manifests\n%s", c.golden, c.values, firstDiff(string(want), string(got)))
			}
		})
	}
}

// firstDiff shows the first line where two texts differ.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n  committed: %q\n  rendered:  %q", i+1, x, y)
		}
	}
	return ""
}

// object is one decoded manifest.
type object struct {
	source string
	kind   string
	meta   *metav1.ObjectMeta
	obj    any
}

// decodeAll decodes every manifest strictly into its type.
func decodeAll(t *testing.T, ms []releaseutil.Manifest) []object {
	t.Helper()
	var out []object
	for _, m := range ms {
		o, err := decodeStrict(m.Content)
		if err != nil {
			t.Errorf("%s: %v", m.Name, err)
			continue
		}
		o.source = m.Name
		out = append(out, o)
	}
	return out
}

// decodeStrict decodes one YAML document into the type of its apiVersion and kind, failing on
// duplicate keys, unknown fields and fields whose case differs from the type's.
func decodeStrict(doc string) (object, error) {
	js, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return object{}, err
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return object{}, err
	}
	var o object
	o.kind = tm.Kind
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		v := &corev1.Namespace{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "v1 Service":
		v := &corev1.Service{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "v1 ConfigMap":
		v := &corev1.ConfigMap{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "apps/v1 DaemonSet":
		v := &appsv1.DaemonSet{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "monitoring.coreos.com/v1 ServiceMonitor":
		v := &monitoringv1.ServiceMonitor{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "monitoring.coreos.com/v1 PodMonitor":
		v := &monitoringv1.PodMonitor{}
		o.obj, o.meta = v, &v.ObjectMeta
	case "monitoring.coreos.com/v1 PrometheusRule":
		v := &monitoringv1.PrometheusRule{}
		o.obj, o.meta = v, &v.ObjectMeta
	default:
		return object{}, fmt.Errorf("%s %s: no type to check it against: add one to decodeStrict", tm.APIVersion, tm.Kind)
	}
	strict, err := kjson.UnmarshalStrict(js, o.obj)
	if err != nil {
		return object{}, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if len(strict) > 0 {
		return object{}, fmt.Errorf("%s: %v", tm.Kind, errorsJoin(strict))
	}
	return o, nil
}

func errorsJoin(errs []error) string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Error())
	}
	return strings.Join(s, "; ")
}

// The capabilities the README names, per container: attaching (the datapath, the balancer, the
// history) needs BPF, PERFMON and NET_ADMIN; serving BPF and PERFMON, and SYS_ADMIN only to enter
// named network namespaces.
var wantCaps = map[string][]string{
	"attach":    {"BPF", "PERFMON", "NET_ADMIN"},
	"history":   {"BPF", "PERFMON", "NET_ADMIN"},
	"lb-attach": {"BPF", "PERFMON", "NET_ADMIN"},
	"lb-run":    {"BPF", "PERFMON", "NET_ADMIN"},
	"serve":     {"BPF", "PERFMON"},
}

// checkObjects checks what a strict decode cannot: names, labels, that selectors select, that
// mounts name volumes, the capabilities and mounts the README names, the files under deploy/.
func checkObjects(t *testing.T, name string, objs []object) {
	t.Helper()
	kinds := map[string][]object{}
	for _, o := range objs {
		kinds[o.kind] = append(kinds[o.kind], o)
		for _, e := range validation.IsDNS1123Subdomain(o.meta.Name) {
			t.Errorf("%s: name %q: %s", o.source, o.meta.Name, e)
		}
		if o.kind != "Namespace" && o.meta.Namespace == "" {
			t.Errorf("%s: %s %s has no namespace", o.source, o.kind, o.meta.Name)
		}
		checkLabels(t, o.source, o.meta.Labels)
	}
	var exporterPods *corev1.PodTemplateSpec
	for _, o := range kinds["DaemonSet"] {
		ds := o.obj.(*appsv1.DaemonSet)
		checkDaemonSet(t, o.source, ds)
		if ds.Spec.Template.Labels["app.kubernetes.io/component"] == "exporter" {
			exporterPods = &ds.Spec.Template
		}
	}
	if exporterPods == nil {
		t.Fatalf("%s: no exporter DaemonSet", name)
	}
	var svc *corev1.Service
	for _, o := range kinds["Service"] {
		svc = o.obj.(*corev1.Service)
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(exporterPods.Labels)) || len(svc.Spec.Selector) == 0 {
			t.Errorf("%s: Service selector %v does not select the exporter's pods %v", o.source, svc.Spec.Selector, exporterPods.Labels)
		}
		for _, p := range svc.Spec.Ports {
			if !containerHasPort(exporterPods, p.TargetPort.String()) {
				t.Errorf("%s: Service port %s targets %s, which the exporter does not name", o.source, p.Name, p.TargetPort.String())
			}
		}
	}
	for _, o := range kinds["ServiceMonitor"] {
		sm := o.obj.(*monitoringv1.ServiceMonitor)
		if svc == nil {
			t.Fatalf("%s: a ServiceMonitor without a Service", o.source)
		}
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(svc.Labels)) {
			t.Errorf("%s: selector %v does not select the Service %v (%v)", o.source, sm.Spec.Selector, svc.Labels, err)
		}
		for _, e := range sm.Spec.Endpoints {
			if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
				t.Errorf("%s: endpoint port %q is not a port of the Service", o.source, e.Port)
			}
		}
	}
	for _, o := range kinds["PodMonitor"] {
		pm := o.obj.(*monitoringv1.PodMonitor)
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(exporterPods.Labels)) {
			t.Errorf("%s: selector %v does not select the exporter's pods %v (%v)", o.source, pm.Spec.Selector, exporterPods.Labels, err)
		}
		for _, e := range pm.Spec.PodMetricsEndpoints {
			if e.Port == nil || !containerHasPort(exporterPods, *e.Port) {
				t.Errorf("%s: endpoint port %v is not a port of the exporter", o.source, e.Port)
			}
		}
	}
	for _, o := range kinds["PrometheusRule"] {
		checkRules(t, o.source, o.obj.(*monitoringv1.PrometheusRule))
	}
	for _, o := range kinds["ConfigMap"] {
		cm := o.obj.(*corev1.ConfigMap)
		if strings.HasSuffix(cm.Name, "-lb-config") {
			checkBalancerConfig(t, o.source, cm, kinds["DaemonSet"])
			continue
		}
		checkDashboard(t, o.source, cm)
	}
	if name == "lbconfig" && len(kinds["ConfigMap"]) != 1 {
		t.Errorf("balancer.config: %d ConfigMaps, want the balancer's config", len(kinds["ConfigMap"]))
	}
	if name == "all" {
		for _, k := range []string{"Namespace", "Service", "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} {
			if len(kinds[k]) != 1 {
				t.Errorf("every option on: %d %s, want 1", len(kinds[k]), k)
			}
		}
		if len(kinds["DaemonSet"]) != 2 {
			t.Errorf("every option on: %d DaemonSets, want the exporter's and the balancer's", len(kinds["DaemonSet"]))
		}
	}
}

func checkLabels(t *testing.T, where string, l map[string]string) {
	t.Helper()
	for k, v := range l {
		for _, e := range validation.IsQualifiedName(k) {
			t.Errorf("%s: label key %q: %s", where, k, e)
		}
		for _, e := range validation.IsValidLabelValue(v) {
			t.Errorf("%s: label %s value %q: %s", where, k, v, e)
		}
	}
}

func containerHasPort(p *corev1.PodTemplateSpec, port string) bool {
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == port || fmt.Sprint(cp.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}

func checkDaemonSet(t *testing.T, where string, ds *appsv1.DaemonSet) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not select its own pods %v (the API server refuses it): %v", where, ds.Spec.Selector, ds.Spec.Template.Labels, err)
	}
	checkLabels(t, where, ds.Spec.Template.Labels)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Errorf("%s: not on the host network", where)
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		if _, dup := volumes[v.Name]; dup {
			t.Errorf("%s: volume %s twice", where, v.Name)
		}
		volumes[v.Name] = v
	}
	used := map[string]bool{}
	names := map[string]bool{}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		cw := where + ": container " + c.Name
		if names[c.Name] {
			t.Errorf("%s: twice", cw)
		}
		names[c.Name] = true
		for _, e := range validation.IsDNS1123Label(c.Name) {
			t.Errorf("%s: %s", cw, e)
		}
		if !strings.HasPrefix(c.Image, "ghcr.io/mptcp-xdp/mptcp-xdp:") && !strings.Contains(c.Image, "@sha256:") {
			t.Errorf("%s: image %q, not the one make image builds", cw, c.Image)
		}
		if len(c.Command) == 0 || c.Command[0] != binary {
			t.Errorf("%s: command %q does not run %s", cw, c.Command, binary)
		}
		mounts := map[string]string{} // mount path -> volume
		for _, m := range c.VolumeMounts {
			if _, ok := volumes[m.Name]; !ok {
				t.Errorf("%s: mounts volume %s, which the pod does not declare", cw, m.Name)
			}
			used[m.Name] = true
			mounts[filepath.Clean(m.MountPath)] = m.Name
		}
		sc := c.SecurityContext
		if sc == nil || sc.Capabilities == nil {
			t.Errorf("%s: no capabilities", cw)
			continue
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", cw)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: root filesystem not read-only", cw)
		}
		var drop, add []string
		for _, d := range sc.Capabilities.Drop {
			drop = append(drop, string(d))
		}
		for _, a := range sc.Capabilities.Add {
			add = append(add, string(a))
		}
		base := c.Name
		if strings.HasPrefix(base, "attach-") {
			base = "attach"
		}
		want, ok := wantCaps[base]
		if !ok {
			t.Errorf("%s: no capabilities known for this container: add it to wantCaps", cw)
			continue
		}
		want = slices.Clone(want)
		if base == "serve" && slices.Contains(append(slices.Clone(c.Command), c.Args...), "--netns") {
			want = append(want, "SYS_ADMIN")
		}
		if !slices.Equal(drop, []string{"ALL"}) || !slices.Equal(add, want) {
			t.Errorf("%s: capabilities drop %v add %v, want drop [ALL] add %v", cw, drop, add, want)
		}
		// Attaching pins in the host's bpffs: the README's /sys/fs/bpf, from the host.
		if base != "serve" {
			v, ok := volumes[mounts["/sys/fs/bpf"]]
			if !ok || v.HostPath == nil || filepath.Clean(v.HostPath.Path) != "/sys/fs/bpf" {
				t.Errorf("%s: does not mount the host's /sys/fs/bpf at /sys/fs/bpf", cw)
			}
		}
		if base == "history" {
			v, ok := volumes[mounts["/host/sys/fs/cgroup"]]
			if !ok || v.HostPath == nil || v.HostPath.Path != "/sys/fs/cgroup" || !slices.Contains(c.Command, "/host/sys/fs/cgroup") {
				t.Errorf("%s: does not attach to the host's cgroup v2 root mounted at /host/sys/fs/cgroup", cw)
			}
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe} {
			if p != nil && p.HTTPGet != nil && !containerHasPort(&corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{c}}}, p.HTTPGet.Port.String()) {
				t.Errorf("%s: probe port %s is not a port of the container", cw, p.HTTPGet.Port.String())
			}
		}
	}
	for n := range volumes {
		if !used[n] {
			t.Errorf("%s: volume %s is mounted by no container", where, n)
		}
	}
}

// checkRules: the PrometheusRule holds deploy/prometheus/rules.yml's groups, whole.
func checkRules(t *testing.T, where string, pr *monitoringv1.PrometheusRule) {
	t.Helper()
	b, err := os.ReadFile("../../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	var file monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(b, &file); err != nil {
		t.Fatalf("deploy/prometheus/rules.yml: %v", err)
	}
	if len(file.Groups) == 0 || !reflect.DeepEqual(file, pr.Spec) {
		t.Errorf("%s: the PrometheusRule's groups are not those of deploy/prometheus/rules.yml (%d groups there, %d here)", where, len(file.Groups), len(pr.Spec.Groups))
	}
}

// checkDashboard: the ConfigMap holds deploy/grafana/mptcp-xdp.json, byte for byte, with the
// label Grafana's sidecar looks for.
func checkDashboard(t *testing.T, where string, cm *corev1.ConfigMap) {
	t.Helper()
	b, err := os.ReadFile("../../deploy/grafana/mptcp-xdp.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["mptcp-xdp.json"]; got != strings.TrimRight(string(b), "\n") {
		t.Errorf("%s: the dashboard is not deploy/grafana/mptcp-xdp.json (%d bytes, want %d)", where, len(got), len(b))
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("%s: no grafana_dashboard: \"1\" label (%v)", where, cm.Labels)
	}
	if !json.Valid([]byte(cm.Data["mptcp-xdp.json"])) {
		t.Errorf("%s: the dashboard is not JSON", where)
	}
}

// TestChartStrictDecode shows the strict decode failing: a misspelt field in a rendered
// DaemonSet, and in a ServiceMonitor, is refused.
func TestChartStrictDecode(t *testing.T) {
	ms := render(t, readValues(t, "ci/all-values.yaml"))
	tried := map[string]bool{}
	for _, m := range ms {
		o, err := decodeStrict(m.Content)
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		var bad string
		switch o.kind {
		case "DaemonSet":
			bad = strings.Replace(m.Content, "hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true", 1)
		case "ServiceMonitor":
			bad = strings.Replace(m.Content, "      path: /metrics", "      path: /metrics\n      schme: https", 1)
		default:
			continue
		}
		if bad == m.Content {
			t.Fatalf("%s: could not misspell a field", m.Name)
		}
		tried[o.kind] = true
		if _, err := decodeStrict(bad); err == nil || !strings.Contains(err.Error(), "unknown field") {
			t.Errorf("%s with a misspelt field decoded: %v", m.Name, err)
		}
	}
	if !tried["DaemonSet"] || !tried["ServiceMonitor"] {
		t.Errorf("tried %v, want a DaemonSet and a ServiceMonitor", tried)
	}
}

// TestChartRefuses: values that cannot make a working balancer fail the render with a message.
func TestChartRefuses(t *testing.T) {
	_, err := renderErr(map[string]any{"balancer": map[string]any{"enabled": true}})
	if err == nil || !strings.Contains(err.Error(), "balancer.interfaces") {
		t.Errorf("balancer without interfaces: %v, want a failure naming balancer.interfaces", err)
	}
	_, err = renderErr(map[string]any{"balancer": map[string]any{"enabled": true, "interfaces": []any{"eth2"},
		"config": map[string]any{"interfaces": []any{"eth2"}}}})
	if err == nil || !strings.Contains(err.Error(), "balancer.config") {
		t.Errorf("balancer.config and balancer.interfaces both: %v, want a failure naming balancer.config", err)
	}
	_, err = renderErr(map[string]any{"balancer": map[string]any{"enabled": true, "config": map[string]any{"vips": []any{}}}})
	if err == nil || !strings.Contains(err.Error(), "balancer.config.interfaces") {
		t.Errorf("balancer.config without interfaces: %v, want a failure naming balancer.config.interfaces", err)
	}
}

// checkBalancerConfig: the balancer's ConfigMap holds a config file lb run --config accepts (the
// binary's own parser), with the hash seed file where the Secret is mounted; the balancer's pods
// run lb run --config on it with no lb attach init container, mount it and a writable /run/mptcp-xdp
// for the pid file, and carry its checksum so that a change rolls them.
func checkBalancerConfig(t *testing.T, where string, cm *corev1.ConfigMap, dss []object) {
	t.Helper()
	text, ok := cm.Data["lb.yaml"]
	if !ok {
		t.Fatalf("%s: no lb.yaml in %v", where, cm.Data)
	}
	d, err := control.ParseConfig([]byte(text))
	if err != nil {
		t.Fatalf("%s: lb run --config would refuse lb.yaml: %v\n%s", where, err, text)
	}
	if len(d.Ifaces) == 0 || len(d.VIPs) == 0 || len(d.Backends) == 0 || d.SeedFile != "/etc/mptcp-xdp/lb/seed" {
		t.Errorf("%s: config %+v: want interfaces, VIPs, backends and the mounted seed file", where, d)
	}
	var pods *corev1.PodTemplateSpec
	for _, o := range dss {
		if ds := o.obj.(*appsv1.DaemonSet); ds.Spec.Template.Labels["app.kubernetes.io/component"] == "balancer" {
			pods = &ds.Spec.Template
		}
	}
	if pods == nil {
		t.Fatalf("%s: no balancer DaemonSet", where)
	}
	if len(pods.Spec.InitContainers) != 0 {
		t.Errorf("balancer with a config file: init containers %v, want none (lb run --config attaches)", pods.Spec.InitContainers)
	}
	if len(pods.Spec.Containers) != 1 {
		t.Fatalf("balancer pods: %d containers", len(pods.Spec.Containers))
	}
	c := pods.Spec.Containers[0]
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) || c.Args[i+1] != "/etc/mptcp-xdp/lb-config/lb.yaml" || !slices.Equal(c.Args[:2], []string{"lb", "run"}) {
		t.Errorf("lb-run args %v: want lb run --config /etc/mptcp-xdp/lb-config/lb.yaml", c.Args)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	vols := map[string]corev1.Volume{}
	for _, v := range pods.Spec.Volumes {
		vols[v.Name] = v
	}
	if m, ok := mounts["/etc/mptcp-xdp/lb-config"]; !ok || vols[m.Name].ConfigMap == nil || vols[m.Name].ConfigMap.Name != cm.Name {
		t.Errorf("the config is not mounted from ConfigMap %s at /etc/mptcp-xdp/lb-config: %v", cm.Name, c.VolumeMounts)
	}
	if m, ok := mounts["/run/mptcp-xdp"]; !ok || m.ReadOnly || vols[m.Name].EmptyDir == nil {
		t.Errorf("no writable emptyDir at /run/mptcp-xdp for lb run's pid file: %v", c.VolumeMounts)
	}
	if m, ok := mounts["/etc/mptcp-xdp/lb"]; !ok || vols[m.Name].Secret == nil {
		t.Errorf("the hash seed Secret is not mounted at /etc/mptcp-xdp/lb: %v", c.VolumeMounts)
	}
	if pods.Annotations["checksum/lb-config"] == "" {
		t.Errorf("balancer pods carry no checksum/lb-config annotation: %v", pods.Annotations)
	}
}

// TestChartLint runs Helm's linter (helm lint) on the chart with each case's values.
func TestChartLint(t *testing.T) {
	for _, c := range cases {
		l := lint.RunAll(chartDir, readValues(t, c.values), namespace)
		for _, m := range l.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("%s: helm lint: %v", c.name, m)
			} else {
				t.Logf("%s: helm lint: %v", c.name, m)
			}
		}
	}
}
