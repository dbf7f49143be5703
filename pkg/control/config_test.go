package control

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

const goodConfig = `
interfaces: [l0, l1]
vips:
  - addr: 10.0.0.10:80
  - addr: "[fd00::10]:80"
    forward: ipip
    unknown_join: hash
    join_steering: false
backends:
  - addr: 10.2.1.2
    weight: 2
  - addr: 10.2.0.2
`

// A valid file gives every VIP its own policy (defaults where a field is omitted) and the backends
// in address order whatever the file's order, so that instances given the same backends agree.
func TestParseConfig(t *testing.T) {
	d, err := ParseConfig([]byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("%v %v %v %v", d.Ifaces, d.Mode, d.VIPs, d.Backends)
	want := "[l0 l1] auto [{10.0.0.10:80 {l2 drop true} <nil>} {[fd00::10]:80 {ipip hash false} <nil>}] [{10.2.0.2 1} {10.2.1.2 2}]"
	if got != want {
		t.Errorf("parsed %s\nwant   %s", got, want)
	}
	swapped := strings.Replace(goodConfig, "  - addr: 10.2.1.2\n    weight: 2\n  - addr: 10.2.0.2\n", "  - addr: 10.2.0.2\n  - addr: 10.2.1.2\n    weight: 2\n", 1)
	if swapped == goodConfig {
		t.Fatal("the swap did not apply")
	}
	d2, err := ParseConfig([]byte(swapped))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(d2.Backends) != fmt.Sprint(d.Backends) {
		t.Errorf("backends in another order: %v, want %v", d2.Backends, d.Backends)
	}
}

// new_flow_rate: omitted is the default (lb.DefaultNewFlowRate, given explicitly: a Config 0 would
// keep the running program's limit, and the file says the whole state), 0 turns the guard off
// (lb.NewFlowRateUnlimited), any other value is the limit.
func TestParseConfigNewFlowRate(t *testing.T) {
	for _, tc := range []struct {
		line string
		want uint32
	}{
		{"", lb.DefaultNewFlowRate},
		{"new_flow_rate: 0\n", lb.NewFlowRateUnlimited},
		{"new_flow_rate: 500\n", 500},
		{"new_flow_rate: 4294967294\n", 4294967294},
	} {
		d, err := ParseConfig([]byte(tc.line + goodConfig))
		if err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if d.Config.NewFlowRate != tc.want {
			t.Errorf("%q: NewFlowRate %d, want %d", tc.line, d.Config.NewFlowRate, tc.want)
		}
	}
}

// Each error is one line naming the field (and its line, for what YAML itself refuses).
func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ old, new, want string }{
		{"interfaces: [l0, l1]", "interface: [l0]", "line 2: unknown field interface"},
		{"  - addr: 10.0.0.10:80", "  - addr: 10.0.0.10", "vips[0].addr"},
		{"    forward: ipip", "    forward: gre", "vips[1].forward"},
		{"    unknown_join: hash", "    unknown_join: maybe", "vips[1].unknown_join"},
		{"    weight: 2", "    weight: 100000", "backends[0].weight"},
		{"  - addr: 10.2.0.2", "  - addr: 10.2.1.2", "backends[1].addr: 10.2.1.2 is given twice"},
		{"  - addr: 10.2.0.2", "  - addr: 10.0.0.10", "backends[1].addr"}, // a VIP's address
		{"interfaces: [l0, l1]", "interfaces: []", "interfaces: give at least one"},
		{"    join_steering: false", "    join_steering: perhaps", "line 8"},
		{"interfaces: [l0, l1]", "interfaces: [l0, l1]\nnew_flow_rate: -1", "new_flow_rate: -1: want 0 (no guard) to 4294967294"},
		{"interfaces: [l0, l1]", "interfaces: [l0, l1]\nnew_flow_rate: 4294967295", "new_flow_rate: 4294967295: want 0 (no guard)"},
		{"interfaces: [l0, l1]", "interfaces: [l0, l1]\nnew_flow_rate: fast", "line 3"},
	} {
		edited := strings.Replace(goodConfig, tc.old, tc.new, 1)
		if edited == goodConfig {
			t.Fatalf("%s: the edit did not apply", tc.want)
		}
		_, err := ParseConfig([]byte(edited))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line containing %q", tc.want, err, tc.want)
		}
	}
	if _, err := ParseConfig(nil); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("an empty file: %v", err)
	}
}

// healthConfig checks every VIP (2 s, rise 2, fall 3 by default), the IPv6 VIP on its own port.
const healthConfig = `
interfaces: [l0]
health_check:
  interval: 1s
  fall: 2
vips:
  - addr: 10.0.0.10:80
  - addr: "[fd00::10]:443"
    health_check:
      port: 8443
      timeout: 300ms
      rise: 4
backends:
  - addr: 10.2.0.2
`

// A health_check section applies to every VIP, a VIP's own overrides its fields, and the port
// defaults to the VIP's; without any, nothing is checked.
func TestParseConfigHealth(t *testing.T) {
	d, err := ParseConfig([]byte(healthConfig))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range d.VIPs {
		got = append(got, fmt.Sprintf("%s %+v", v.Addr, *v.Health))
	}
	want := []string{
		"10.0.0.10:80 {Port:80 Interval:1s Timeout:500ms Rise:2 Fall:2}",
		"[fd00::10]:443 {Port:8443 Interval:1s Timeout:300ms Rise:4 Fall:2}",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("health checks:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := len(d.HealthChecks()); n != 2 {
		t.Errorf("HealthChecks: %d VIPs, want 2", n)
	}
	// Only a VIP's own section: that VIP alone, with the defaults.
	own := strings.Replace(healthConfig, "health_check:\n  interval: 1s\n  fall: 2\n", "", 1)
	if d, err = ParseConfig([]byte(own)); err != nil {
		t.Fatal(err)
	}
	if d.VIPs[0].Health != nil || *d.VIPs[1].Health != (HealthCheck{Port: 8443, Interval: DefaultHealthInterval, Timeout: 300 * time.Millisecond, Rise: 4, Fall: DefaultHealthFall}) {
		t.Errorf("a VIP's own section only: %+v %+v", d.VIPs[0].Health, d.VIPs[1].Health)
	}
	// A VIP opting out of the global section.
	optOut := strings.Replace(healthConfig, "      port: 8443\n      timeout: 300ms\n      rise: 4\n", "      enabled: false\n", 1)
	if d, err = ParseConfig([]byte(optOut)); err != nil {
		t.Fatal(err)
	}
	if d.VIPs[0].Health == nil || d.VIPs[1].Health != nil {
		t.Errorf("a VIP with enabled: false: %+v %+v, want the first checked and not the second", d.VIPs[0].Health, d.VIPs[1].Health)
	}
	if d, err = ParseConfig([]byte(goodConfig)); err != nil || len(d.HealthChecks()) != 0 {
		t.Errorf("no section: %v checks, err %v", d.HealthChecks(), err)
	}
}

// Every error of a health_check section is one line naming the field.
func TestParseConfigHealthErrors(t *testing.T) {
	for _, tc := range []struct{ old, new, want string }{
		{"  interval: 1s", "  interval: 0s", "health_check.interval: \"0s\": want a duration of at least 100ms"},
		{"  interval: 1s", "  interval: -1s", "health_check.interval"},
		{"  interval: 1s", "  interval: 2", "health_check.interval: \"2\""}, // no unit
		{"  interval: 1s", "  interval: 50ms", "health_check.interval"},
		{"  fall: 2", "  fall: 0", "health_check.fall: 0: want 1 to 100"},
		{"      rise: 4", "      rise: 0", "vips[1].health_check.rise: 0: want 1 to 100"},
		{"      rise: 4", "      rise: 1000", "vips[1].health_check.rise"},
		{"      timeout: 300ms", "      timeout: 1s", "vips[1].health_check.timeout: 1s: want less than the interval (1s)"},
		{"      timeout: 300ms", "      timeout: 0s", "vips[1].health_check.timeout: \"0s\": want a positive duration"},
		{"  fall: 2", "  fall: 2\n  timeout: 3s", "health_check.timeout: 3s: want less than the interval (1s)"},
		{"      port: 8443", "      port: 0", "vips[1].health_check.port: 0: want 1 to 65535"},
		{"      port: 8443", "      port: 70000", "vips[1].health_check.port: 70000"},
		{"  fall: 2", "  fall: 2\n  retries: 3", "unknown field retries"},
		{"      port: 8443", "      prot: 8443", "unknown field prot"},
		{"  fall: 2", "  fall: two", "line 5"},
		{"      rise: 4", "      rise: 4\n      enabled: false", "vips[1].health_check.enabled: false with other fields"},
		{"  fall: 2", "  fall: 2\n  enabled: false", "health_check.enabled: false with other fields"},
		{"  interval: 1s\n  fall: 2", "  enabled: false", "health_check.enabled: false: omit the section instead"},
		{"      rise: 4", "      rise: 4\n      enabled: maybe", "line 13"},
	} {
		edited := strings.Replace(healthConfig, tc.old, tc.new, 1)
		if edited == healthConfig {
			t.Fatalf("%s: the edit did not apply", tc.want)
		}
		_, err := ParseConfig([]byte(edited))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line containing %q", tc.want, err, tc.want)
		}
	}
}

// docs/lb.md's config examples are files ParseConfig accepts ("Health checks" completed with an
// interface and a backend), and say what they say.
func TestDocsConfigExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/lb.md")
	if err != nil {
		t.Fatal(err)
	}
	example := func(heading string) string {
		t.Helper()
		_, rest, ok := strings.Cut(string(doc), heading)
		_, rest, ok2 := strings.Cut(rest, "```yaml\n")
		block, _, ok3 := strings.Cut(rest, "```")
		if !ok || !ok2 || !ok3 {
			t.Fatalf("docs/lb.md: no YAML example after %q", heading)
		}
		return block
	}
	d, err := ParseConfig([]byte(example("## Config file")))
	if err != nil {
		t.Fatalf("the Config file example: %v", err)
	}
	if hc := d.HealthChecks(); len(hc) != 2 {
		t.Errorf("the Config file example checks %d VIPs, want both", len(hc))
	}
	d, err = ParseConfig([]byte("interfaces: [l0]\nbackends: [{addr: 10.2.0.2}]\n" + example("## Health checks")))
	if err != nil {
		t.Fatalf("the Health checks example: %v", err)
	}
	got := fmt.Sprint(d.VIPs[0].Health, d.VIPs[1].Health, d.VIPs[2].Health)
	if want := "&{80 2s 1s 2 3} &{8443 2s 1s 2 2} <nil>"; got != want {
		t.Errorf("the Health checks example: %s, want %s", got, want)
	}
}
