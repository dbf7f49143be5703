package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// TestBackendSetupJoinPort: `lb backend-setup` on the server sets allow_join_initial_addr_port=0
// and a signal endpoint for its address with the join port. A client connecting to that address
// (one address of its own, so that its only way to a second subflow is what the server announces)
// then receives the ADD_ADDR with the port (its PortAdd) and joins there: the server's kernel
// counts the join on the port (MPJoinPortSynRx, MPJoinPortAckRx) and ss shows the subflow on it,
// with the connection's token. Running it again changes nothing; --undo deletes the endpoint and
// sets the sysctl back, after which a new connection joins nowhere.
func TestBackendSetupJoinPort(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	l, err := lab.New(lab.Config{Prefix: fmt.Sprintf("bs%04x", time.Now().UnixNano()&0xffff)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, ns := range []string{l.Client, l.Server} {
		if err := l.SetLimits(ns, 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	const joinPort = 20001
	vip := netip.AddrPortFrom(l.Paths[0].ServerIP4, 80)
	setup := func(extra ...string) (changed []string) {
		t.Helper()
		out := mxOK(t, append([]string{"--netns", l.Server, "lb", "backend-setup", "--vip", vip.String(), "--join-port", fmt.Sprint(joinPort), "-o", "json"}, extra...)...)
		var r struct {
			Sysctl   string   `json:"sysctl"`
			Changed  []string `json:"changed"`
			Endpoint *struct {
				Port uint16 `json:"port"`
			} `json:"endpoint"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return r.Changed
	}
	if ch := setup(); len(ch) != 2 {
		t.Errorf("first backend-setup changed %v, want the endpoint and the sysctl", ch)
	}
	if ch := setup(); len(ch) != 0 {
		t.Errorf("backend-setup again changed %v, want nothing", ch)
	}
	if v, err := lab.ReadSysctl(l.Server, "net/mptcp/allow_join_initial_addr_port"); err != nil || v != "0" {
		t.Fatalf("allow_join_initial_addr_port %q (%v), want 0", v, err)
	}
	eps, err := l.Endpoints(l.Server)
	if err != nil || len(eps) != 1 {
		t.Fatalf("server endpoints %+v (%v), want the VIP's", eps, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv0, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	cli0, err := l.MIB(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Pair(ctx, vip.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var srv lab.Delta
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		m, err := l.MIB(l.Server)
		if err != nil {
			t.Fatal(err)
		}
		if srv = m.Sub(srv0); srv.MPTCP("MPJoinPortAckRx") >= 1 {
			break
		}
	}
	cli1, err := l.MIB(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	cli := cli1.Sub(cli0)
	if srv.MPTCP("MPJoinPortSynRx") != 1 || srv.MPTCP("MPJoinPortAckRx") != 1 || cli.MPTCP("PortAdd") != 1 {
		t.Errorf("server MPJoinPortSynRx %d MPJoinPortAckRx %d, client PortAdd %d: want 1 each",
			srv.MPTCP("MPJoinPortSynRx"), srv.MPTCP("MPJoinPortAckRx"), cli.MPTCP("PortAdd"))
	}
	out, err := exec.Command("ss", "-N", l.Server, "-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", joinPort)).CombinedOutput()
	if err != nil || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 || !strings.Contains(string(out), fmt.Sprintf("%s:%d", vip.Addr(), joinPort)) {
		t.Errorf("ss on the server: %v %q, want one subflow on %s:%d", err, out, vip.Addr(), joinPort)
	}
	conns, err := l.Subflows(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.State != "LISTEN" && c.Subflows != 1 {
			t.Errorf("server connection %+v: want its join counted (1 subflow beyond the first)", c)
		}
	}
	p.Close()

	// Undone, a new connection joins nowhere: the join came from the setup.
	if ch := setup("--undo"); len(ch) != 2 {
		t.Errorf("--undo changed %v, want the endpoint and the sysctl", ch)
	}
	if v, _ := lab.ReadSysctl(l.Server, "net/mptcp/allow_join_initial_addr_port"); v != "1" {
		t.Errorf("after --undo allow_join_initial_addr_port %q, want 1", v)
	}
	if eps, err := l.Endpoints(l.Server); err != nil || len(eps) != 0 {
		t.Errorf("after --undo endpoints %+v (%v), want none", eps, err)
	}
	if ch := setup("--undo"); len(ch) != 0 {
		t.Errorf("--undo again changed %v, want nothing", ch)
	}
	srv1, _ := l.MIB(l.Server)
	p2, err := l.Pair(ctx, vip.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	time.Sleep(time.Second)
	srv2, _ := l.MIB(l.Server)
	if d := srv2.Sub(srv1); d.MPTCP("MPJoinSynRx") != 0 || d.MPTCP("MPJoinPortSynRx") != 0 {
		t.Errorf("after --undo a connection joined: MPJoinSynRx %d MPJoinPortSynRx %d", d.MPTCP("MPJoinSynRx"), d.MPTCP("MPJoinPortSynRx"))
	}
	t.Logf("backend-setup: join on %s:%d (server MPJoinPortSynRx %d, MPJoinPortAckRx %d; client PortAdd %d)",
		vip.Addr(), joinPort, srv.MPTCP("MPJoinPortSynRx"), srv.MPTCP("MPJoinPortAckRx"), cli.MPTCP("PortAdd"))
}
