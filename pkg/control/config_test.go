package control

import (
	"fmt"
	"strings"
	"testing"
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
	want := "[l0 l1] auto [{10.0.0.10:80 {l2 drop true}} {[fd00::10]:80 {ipip hash false}}] [{10.2.0.2 1} {10.2.1.2 2}]"
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
