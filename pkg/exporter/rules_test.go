package exporter

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

const rulesDir = "../../deploy/prometheus"

// deploy/prometheus/rules.yml: promtool accepts it, its unit tests (rules_test.yml) pass, and every
// metric it names is one the exporter produces.
func TestPrometheusRules(t *testing.T) {
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatalf("promtool is not installed (apt-get install prometheus; .ci/run installs it): %v", err)
	}
	rules := filepath.Join(rulesDir, "rules.yml")
	if out, err := exec.Command("promtool", "check", "rules", rules).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	cmd := exec.Command("promtool", "test", "rules", "rules_test.yml")
	cmd.Dir = rulesDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
	b, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	names := describedNames()
	used := regexp.MustCompile(`\bmptcp_xdp_[a-z0-9_]+`).FindAllString(string(b), -1)
	if len(used) == 0 {
		t.Fatal("rules.yml names no mptcp_xdp metric")
	}
	for _, n := range used {
		if !slices.Contains(names, n) {
			t.Errorf("rules.yml uses %s, which the exporter does not produce", n)
		}
	}
	// Every alert has a test.
	tests, err := os.ReadFile(filepath.Join(rulesDir, "rules_test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^\s+- alert: (\S+)`).FindAllStringSubmatch(string(b), -1) {
		if !regexp.MustCompile(`alertname: ` + m[1] + `\n`).Match(tests) {
			t.Errorf("alert %s has no test in rules_test.yml", m[1])
		}
	}
}
