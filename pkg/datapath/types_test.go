package datapath

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

const typesHeader = "../../bpf/include/mx_types.h"

// enumerators returns the enumerators of `enum name { ... };` in C source, in order.
func enumerators(t *testing.T, src, name string) (names []string, values []int) {
	t.Helper()
	body := regexp.MustCompile(`(?s)enum\s+` + name + `\s*\{(.*?)\};`).FindStringSubmatch(src)
	if body == nil {
		t.Fatalf("enum %s not found in %s", name, typesHeader)
	}
	item := regexp.MustCompile(`^\s*([A-Z0-9_]+)\s*=\s*(\d+)\s*,?`)
	for _, line := range strings.Split(body[1], "\n") {
		line = regexp.MustCompile(`/\*.*?\*/|//.*`).ReplaceAllString(line, "")
		if strings.TrimSpace(line) == "" {
			continue
		}
		m := item.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("enum %s: cannot read %q (every enumerator must have an explicit value)", name, line)
		}
		v, _ := strconv.Atoi(m[2])
		names, values = append(names, m[1]), append(values, v)
	}
	return names, values
}

// TestTypesMatchGo checks that enum mx_class and enum mx_pkt in the shared C header name the same
// counters, in the same order, as pkg/mptcp, and that the generated counters struct has room for
// exactly those.
func TestTypesMatchGo(t *testing.T) {
	src, err := os.ReadFile(typesHeader)
	if err != nil {
		t.Fatal(err)
	}

	check := func(enum, prefix, max string, goNames []string) {
		names, values := enumerators(t, string(src), enum)
		last := len(names) - 1
		if last < 0 || names[last] != max {
			t.Fatalf("enum %s must end with %s, ends with %v", enum, max, names)
		}
		if values[last] != len(goNames) {
			t.Errorf("%s = %d, Go has %d", max, values[last], len(goNames))
		}
		if last != len(goNames) {
			t.Errorf("enum %s has %d counters, Go %d", enum, last, len(goNames))
		}
		for i := 0; i < min(last, len(goNames)); i++ {
			c := strings.ToLower(strings.TrimPrefix(names[i], prefix))
			if values[i] != i || c != goNames[i] {
				t.Errorf("enum %s[%d]: C %s = %d, Go %q", enum, i, names[i], values[i], goNames[i])
			}
		}
	}

	var classes, packets []string
	for _, c := range mptcp.Classes() {
		classes = append(classes, c.String())
	}
	for i := range mptcp.NumPacketCounters {
		packets = append(packets, mptcp.PacketCounter(i).String())
	}
	check("mx_class", "MX_", "MX_CLASS_MAX", classes)
	check("mx_pkt", "MX_PKT_", "MX_PKT_MAX", packets)

	if n := len(XdpMxCounters{}.Options); n != len(mptcp.Classes()) {
		t.Errorf("XdpMxCounters.Options has %d entries, want %d", n, len(mptcp.Classes()))
	}
	if n := len(XdpMxCounters{}.Packets); n != mptcp.NumPacketCounters {
		t.Errorf("XdpMxCounters.Packets has %d entries, want %d", n, mptcp.NumPacketCounters)
	}
	// The counters end where the per-CPU parse scratch that shares their map value begins.
	if a, b := unsafe.Offsetof(XdpMxCounters{}.Scratch), unsafe.Sizeof(counts{}); a != b {
		t.Errorf("XdpMxCounters holds %d bytes of counters, the tests' counts %d", a, b)
	}
}
