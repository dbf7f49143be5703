package labfleet

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// R's FIB as ip -j shows a multipath route with one next hop on a link without carrier, and a
// single-path route learned by a routing daemon.
func TestParseRoute(t *testing.T) {
	multi := `[{"dst":"10.0.0.10","flags":[],"nexthops":[{"gateway":"10.4.0.2","dev":"l0","weight":1,"flags":[]},` +
		`{"gateway":"10.4.1.2","dev":"l1","weight":1,"flags":["linkdown"]},{"gateway":"10.4.2.2","dev":"l2","weight":1,"flags":["dead","linkdown"]}]}]`
	hops, proto, err := parseRoute(multi)
	if err != nil {
		t.Fatal(err)
	}
	var usable []string
	for _, h := range hops {
		if h.Usable() {
			usable = append(usable, h.Gateway.String()+"@"+h.Dev)
		}
	}
	if len(hops) != 3 || proto != "" || fmt.Sprint(usable) != "[10.4.0.2@l0]" {
		t.Errorf("multipath: %+v %q, usable %v", hops, proto, usable)
	}
	single := `[{"dst":"fd00::10","gateway":"fd04::2","dev":"l0","protocol":"bird","metric":32,"flags":[],"pref":"medium"}]`
	hops, proto, err = parseRoute(single)
	if err != nil || len(hops) != 1 || hops[0].Gateway.String() != "fd04::2" || proto != "bird" || !hops[0].Usable() {
		t.Errorf("single path: %+v %q %v", hops, proto, err)
	}
	for _, bad := range []string{`[]`, `[{"dst":"x"},{"dst":"y"}]`, `not json`, `[{"nexthops":[{"gateway":"nowhere"}]}]`} {
		if _, _, err := parseRoute(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// The instances' files differ only in the order of the backends, and each names every backend
// once, with its own join port and address.
func TestConfigFileOrder(t *testing.T) {
	l := &Lab{VIP4: DefaultVIP4, VIP6: DefaultVIP6, Config: Config{Forward: "ipip"}}
	for k := range 3 {
		l.Balancers = append(l.Balancers, Balancer{Index: k, If: "eth0"})
		l.Backends = append(l.Backends, Backend{Index: k, IP4: netip.AddrFrom4([4]byte{10, 2, byte(k), 2})})
	}
	svc := Service{Port: 80, JoinPortBase: 20000, JoinAddrs: true, SeedFile: "/s"}
	var files []string
	var lines [][]string
	for k := range 3 {
		f := l.ConfigFile(k, svc)
		files = append(files, f)
		ls := strings.Split(f, "\n")
		slices.Sort(ls)
		lines = append(lines, ls)
	}
	if files[0] == files[1] || files[1] == files[2] || files[0] == files[2] {
		t.Errorf("two instances got the same order:\n%s", strings.Join(files, "\n"))
	}
	for k := 1; k < 3; k++ {
		if !slices.Equal(lines[k], lines[0]) {
			t.Errorf("instance %d's file has other lines than instance 0's:\n%s\n%s", k, files[k], files[0])
		}
	}
	for j, b := range l.Backends {
		want := fmt.Sprintf("  - addr: %s\n    join_port: %d\n    join_addr: %s\n", b.IP4, 20000+j, JoinAddr6(j))
		if !strings.Contains(files[0], want) {
			t.Errorf("backend %d: no %q in\n%s", j, want, files[0])
		}
	}
	if JoinAddr6(2).String() != "fd00:1::3" || !JoinPrefix6.Contains(JoinAddr6(7)) {
		t.Errorf("JoinAddr6(2) = %s", JoinAddr6(2))
	}
}
