package control

import (
	"fmt"
	"strings"
	"testing"
)

const joinAddrConfig = `
interfaces: [eth0]
vips:
  - addr: 10.0.0.10:80
    forward: ipip
  - addr: "[fd00::10]:80"
    forward: ipip
  - addr: "[fd00::11]:443"
backends:
  - addr: 10.2.1.2
    join_port: 20001
    join_addr: fd00:1::2
  - addr: 10.2.0.2
    join_port: 20000
    join_addr: fd00:1::1
`

// A backend's join_addr routes its joins on every VIP of the address's family, at that VIP's port
// and with its forwarding, to that backend, as join ports do: one entry per such VIP, beside the
// join ports (which go on every VIP's address).
func TestParseConfigJoinAddr(t *testing.T) {
	d, err := ParseConfig([]byte(joinAddrConfig))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, jp := range d.JoinPorts {
		got = append(got, fmt.Sprintf("%s->%s/%s", jp.Addr, jp.Owner, jp.Forward))
	}
	// In address order, whatever the file's order, so that instances give them the same ids.
	want := "10.0.0.10:20000->10.2.0.2/ipip 10.0.0.10:20001->10.2.1.2/ipip " +
		"[fd00::10]:20000->10.2.0.2/ipip [fd00::10]:20001->10.2.1.2/ipip " +
		"[fd00::11]:20000->10.2.0.2/l2 [fd00::11]:20001->10.2.1.2/l2 " +
		"[fd00:1::1]:80->10.2.0.2/ipip [fd00:1::1]:443->10.2.0.2/l2 " +
		"[fd00:1::2]:80->10.2.1.2/ipip [fd00:1::2]:443->10.2.1.2/l2"
	if strings.Join(got, " ") != want {
		t.Errorf("join entries\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
}

func TestParseConfigJoinAddrErrors(t *testing.T) {
	for _, tc := range []struct{ old, new, want string }{
		{"join_addr: fd00:1::2", "join_addr: fd00:1::x", "backends[0].join_addr: \"fd00:1::x\""},
		{"join_addr: fd00:1::1", "join_addr: fd00:1::2", "backends[1].join_addr: fd00:1::2 is given twice"},
		{"join_addr: fd00:1::2", "join_addr: fd00::10", "backends[0].join_addr: fd00::10 is a VIP's address"},
		{"join_addr: fd00:1::1", "join_addr: 10.2.1.2", "backends[1].join_addr: 10.2.1.2 is given twice"},
		{"join_addr: fd00:1::2", "join_addr: 10.2.0.2", "backends[1].addr: 10.2.0.2 is a join_addr"},
		// An IPv4 join address with no IPv4 VIP.
		{"  - addr: 10.0.0.10:80\n    forward: ipip\n  - addr: \"[fd00::10]", "  - addr: \"[fd00::10]", ""},
	} {
		edited := strings.Replace(joinAddrConfig, tc.old, tc.new, 1)
		if tc.want == "" {
			edited = strings.Replace(edited, "join_addr: fd00:1::2", "join_addr: 10.9.9.9", 1)
			tc.want = "backends[0].join_addr: 10.9.9.9: no VIP of its family"
		}
		if edited == joinAddrConfig {
			t.Fatalf("%s: the edit did not apply", tc.want)
		}
		_, err := ParseConfig([]byte(edited))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want one line containing %q", tc.want, err, tc.want)
		}
	}
}
