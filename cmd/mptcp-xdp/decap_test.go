package main

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// decapJSON is `lb decap -o json` as docs/lb.md documents it.
type decapJSON struct {
	Netns      string `json:"netns"`
	PinDir     string `json:"pin_dir"`
	Interfaces []struct {
		Interface string `json:"interface"`
	} `json:"decap"`
	Local     []string          `json:"local"`
	Balancers []string          `json:"balancers"`
	VIPs      []string          `json:"vips"`
	Stats     map[string]uint64 `json:"stats"`
}

// TestLBDecapAllowFlags: lb decap refuses to attach without --balancer or --vip (one line, naming
// both flags), attaches with them and prints them, replaces them when run again, shows them
// without an interface, and takes none with --detach.
func TestLBDecapAllowFlags(t *testing.T) {
	testutil.RequireRoot(t)
	useTempRoot(t, "mxh3decap-")
	ns := fmt.Sprintf("mxh3dc%06x", rand.IntN(1<<24))
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = netns.Delete(ns) })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, out)
	}
	decap := func(args ...string) []string { return append([]string{"--netns", ns, "lb", "decap"}, args...) }

	for _, args := range [][]string{{"lo"}, {"lo", "--balancer", "10.9.0.1"}, {"lo", "--vip", "10.0.0.1:80"}} {
		_, err := cliRun(decap(args...)...)
		if err == nil || !strings.Contains(err.Error(), "--balancer ADDR") || !strings.Contains(err.Error(), "--vip ADDR[:PORT]") {
			t.Errorf("lb decap %q: %v, want the error naming --balancer and --vip", args, err)
		}
	}
	for _, tc := range []struct{ args []string }{
		{[]string{"lo", "--balancer", "not-an-ip", "--vip", "10.0.0.1:80"}},
		{[]string{"lo", "--balancer", "10.9.0.1", "--vip", "10.0.0.1:0"}},
		{[]string{"lo", "--balancer", "0.0.0.0", "--vip", "10.0.0.1:80"}},
		{[]string{"--balancer", "10.9.0.1", "--vip", "10.0.0.1:80"}}, // no interface
	} {
		if _, err := cliRun(decap(tc.args...)...); err == nil {
			t.Errorf("lb decap %q accepted", tc.args)
		}
	}

	var st decapJSON
	cliJSON(t, &st, decap("lo", "--balancer", "10.9.0.1", "--balancer", "fd09::1", "--vip", "10.0.0.1:80", "--vip", "[fd00::1]:443", "--vip", "10.0.0.2")...)
	if len(st.Interfaces) != 1 || st.Interfaces[0].Interface != "lo" || !reflect.DeepEqual(st.Balancers, []string{"10.9.0.1", "fd09::1"}) ||
		!reflect.DeepEqual(st.VIPs, []string{"10.0.0.1:80", "10.0.0.2", "[fd00::1]:443"}) || !reflect.DeepEqual(st.Local, []string{"127.0.0.1", "::1"}) {
		t.Errorf("first attach printed %+v", st)
	}
	for _, k := range []string{"packets", "decap", "malformed", "refused_dst", "refused_source", "refused_inner"} {
		if _, ok := st.Stats[k]; !ok {
			t.Errorf("stats has no %s: %v", k, st.Stats)
		}
	}
	st = decapJSON{}
	cliJSON(t, &st, decap("lo", "--balancer", "10.9.0.2", "--vip", "10.0.0.1:80")...)
	if !reflect.DeepEqual(st.Balancers, []string{"10.9.0.2"}) || !reflect.DeepEqual(st.VIPs, []string{"10.0.0.1:80"}) {
		t.Errorf("second attach printed balancers %v VIPs %v, want only the second's", st.Balancers, st.VIPs)
	}
	st = decapJSON{}
	cliJSON(t, &st, decap()...)
	if len(st.Interfaces) != 1 || !reflect.DeepEqual(st.Balancers, []string{"10.9.0.2"}) || st.PinDir == "" {
		t.Errorf("lb decap without an interface printed %+v", st)
	}
	if out, err := cliRun(decap()...); err != nil || !strings.Contains(out, "balancers:  10.9.0.2") || !strings.Contains(out, "refused_source 0") {
		t.Errorf("lb decap table: %v\n%s", err, out)
	}

	if _, err := cliRun(decap("--detach", "lo", "--balancer", "10.9.0.2")...); err == nil {
		t.Error("lb decap --detach took --balancer")
	}
	out, err := cliRun(decap("--detach", "lo", "-o", "json")...)
	if err != nil || strings.Join(strings.Fields(out), "") != `{"decap":[]}` {
		t.Errorf("lb decap --detach of the last interface: %v\n%s", err, out)
	}
	if _, err := cliRun(decap()...); err == nil || !strings.Contains(err.Error(), "no decapsulator attached") {
		t.Errorf("lb decap with nothing attached: %v", err)
	}
}
