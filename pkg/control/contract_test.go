package control_test

import (
	"encoding/json"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// docJSON returns the JSON example that follows heading in docs/lb.md, its comments removed.
func docJSON(t *testing.T, heading string) map[string]any {
	t.Helper()
	doc, err := os.ReadFile("../../docs/lb.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), heading)
	if !ok {
		t.Fatalf("docs/lb.md has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```json\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatalf("docs/lb.md: no JSON example after %q", heading)
	}
	block = regexp.MustCompile(`(?m)\s*//.*$`).ReplaceAllString(block, "")
	var v map[string]any
	if err := json.Unmarshal([]byte(block), &v); err != nil {
		t.Fatalf("docs/lb.md example after %q: %v\n%s", heading, err, block)
	}
	return v
}

// asJSON is v marshalled and read back as generic JSON.
func asJSON(t *testing.T, v any) map[string]any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// sameKeys compares the field names of two JSON values, recursively (arrays by their first element).
func sameKeys(t *testing.T, path string, doc, got any) {
	t.Helper()
	switch d := doc.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			t.Errorf("%s: documented as an object, is %T", path, got)
			return
		}
		var dk, gk []string
		for k := range d {
			dk = append(dk, k)
		}
		for k := range g {
			gk = append(gk, k)
		}
		slices.Sort(dk)
		slices.Sort(gk)
		if !slices.Equal(dk, gk) {
			t.Errorf("%s: documented fields %v, output has %v", path, dk, gk)
			return
		}
		for k := range d {
			sameKeys(t, path+"."+k, d[k], g[k])
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(d) == 0 || len(g) == 0 {
			t.Errorf("%s: documented as a non-empty array, is %v", path, got)
			return
		}
		sameKeys(t, path+"[0]", d[0], g[0])
	}
}

// The JSON of `lb status` and `conn list --lb` is what docs/lb.md documents, field for field.
func TestJSONContract(t *testing.T) {
	st := control.Status{
		Interfaces:  []loader.LBLink{{Interface: "l0", Problem: "p"}},
		VIPs:        []control.VIPStatus{{Addr: "10.0.0.10:80"}},
		Backends:    []control.BackendStatus{{Addr: "10.2.0.2", SrcAddr: "10.2.0.1", Health: []control.BackendHealth{{VIP: "10.0.0.10:80"}}}},
		Stats:       lb.Stats{}.Map(),
		NewFlowRate: new(uint32),
		BGP: &control.BGPStatus{
			Peers: []bgp.PeerState{{State: "established", Local: netip.MustParseAddr("10.1.0.2"), Since: time.Unix(1, 0)}},
			VIPs:  []control.BGPVIP{{Addr: "10.0.0.10"}},
		},
	}
	sameKeys(t, "lb status", docJSON(t, "## `lb status -o json`"), asJSON(t, st))
	conns := control.Connections{Connections: []control.Connection{{Flows: []control.FlowAddrs{{Src: netip.MustParseAddrPort("10.0.1.2:1").String()}}}}}
	sameKeys(t, "conn list --lb", docJSON(t, "## `conn list --lb`"), asJSON(t, conns))
}
