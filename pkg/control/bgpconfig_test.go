package control

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

const bgpSection = `
bgp:
  local_asn: 65001
  router_id: 10.1.0.2
  next_hop:
    v6: fd01::2
  peers:
    - address: 10.1.0.1
      asn: 65000
      hold_time: 9s
    - address: fd01::1
      asn: 65000
      port: 1179
`

func TestParseConfigBGP(t *testing.T) {
	d, err := ParseConfig([]byte(goodConfig + bgpSection))
	if err != nil {
		t.Fatal(err)
	}
	b := d.BGP
	if b == nil || b.LocalASN != 65001 || b.RouterID.String() != "10.1.0.2" || b.NextHop6.String() != "fd01::2" || b.NextHop4.IsValid() {
		t.Fatalf("bgp %+v", b)
	}
	if len(b.Peers) != 2 || b.Peers[0].Addr.String() != "10.1.0.1" || b.Peers[0].HoldTime != 9*time.Second ||
		b.Peers[1].Port != 1179 || b.Peers[1].ASN != 65000 || b.Peers[1].HoldTime != 0 {
		t.Fatalf("peers %+v", b.Peers)
	}
	d, err = ParseConfig([]byte(goodConfig))
	if err != nil || d.BGP != nil {
		t.Fatalf("without a bgp section: %+v %v", d, err)
	}
}

// Each error of the section is one line naming its field.
func TestParseConfigBGPErrors(t *testing.T) {
	for _, tc := range []struct{ old, new, want string }{
		{"  local_asn: 65001", "  local_asn: 0", "bgp.local_asn: "},
		{"  local_asn: 65001", "  local_asn: -1", "cannot unmarshal"},
		{"  router_id: 10.1.0.2", "  router_id: fd00::1", "bgp.router_id: "},
		{"    v6: fd01::2", "    v6: 10.1.0.2", "bgp.next_hop.v6: "},
		{"    v6: fd01::2", "    v4: fd01::2", "bgp.next_hop.v4: "},
		{"    - address: 10.1.0.1", "    - address: 10.1.0", "bgp.peers[0].address: "},
		{"    - address: fd01::1", "    - address: 10.1.0.1", "bgp.peers[1].address: 10.1.0.1 is given twice"},
		{"      asn: 65000\n      hold_time", "      asn: 0\n      hold_time", "bgp.peers[0].asn: "},
		{"      hold_time: 9s", "      hold_time: 1s", "bgp.peers[0].hold_time: "},
		{"      hold_time: 9s", "      hold_time: 9.5s", "bgp.peers[0].hold_time: "},
		{"      port: 1179", "      port: 70000", "bgp.peers[1].port: "},
		{"      port: 1179", "      passive: true", "bgp.peers[1].passive: needs bgp.listen_port"},
		{"      port: 1179", "      holdtime: 9s", "unknown field holdtime"},
		{"  router_id: 10.1.0.2", "  routerid: 10.1.0.2", "unknown field routerid"},
	} {
		in := strings.Replace(goodConfig+bgpSection, tc.old, tc.new, 1)
		if in == goodConfig+bgpSection {
			t.Fatalf("%q: the edit did not apply", tc.old)
		}
		_, err := ParseConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q -> %q: error %v, want one line with %q", tc.old, tc.new, err, tc.want)
		}
	}
	if _, err := ParseConfig([]byte(goodConfig + "bgp:\n  local_asn: 1\n  router_id: 1.1.1.1\n")); err == nil || !strings.Contains(err.Error(), "bgp.peers: give at least one") {
		t.Errorf("no peers: %v", err)
	}
}

// docs/lb.md's BGP example (completed with an interface, a VIP and a backend) is a file
// ParseConfig accepts, and says what it says; so is the Config file example's bgp section.
func TestDocsBGPExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/lb.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "## BGP")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	block, _, ok3 := strings.Cut(rest, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/lb.md: no YAML example after ## BGP")
	}
	d, err := ParseConfig([]byte("interfaces: [l0]\nvips: [{addr: 10.0.0.10:80}]\nbackends: [{addr: 10.2.0.2}]\n" + block))
	if err != nil {
		t.Fatalf("the BGP example: %v", err)
	}
	b := d.BGP
	got := fmt.Sprint(b.LocalASN, b.RouterID, b.NextHop4, b.NextHop6, b.ListenPort, b.Peers)
	if want := "65001 10.1.0.2 10.1.0.2 fd01::2 179 [{10.1.0.1 65000 179 9s false} {fd01::1 65000 0 0s true}]"; got != want {
		t.Errorf("the BGP example: %s, want %s", got, want)
	}
	_, rest, _ = strings.Cut(string(doc), "## Config file")
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	block, _, _ = strings.Cut(rest, "```")
	if d, err := ParseConfig([]byte(block)); err != nil || d.BGP == nil || len(d.BGP.Peers) != 1 {
		t.Errorf("the Config file example's bgp section: %+v %v", d, err)
	}
}
