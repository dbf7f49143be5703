package lb

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
)

// TestJoinPorts: stateless join routing. Every backend runs `lb backend-setup` (the C flag, and
// the VIP announced with a port of its own); the balancer, from its config file, maps each
// backend's join port to it and steers no join by token (join_steering: false, so no token state
// is used at all). Every connection's join arrives on its own backend's port: each backend's kernel
// counts as many joins on its port (MPJoinPortSynRx, MPJoinPortAckRx) as it holds connections, and
// none without a token (MPJoinNoTokenFound); the balancer steered no join by token and learned
// none; `lb status` lists the join ports; the data of every connection arrives.
func TestJoinPorts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := newConfigSetup(ctx, t, lablb.Config{NoEndpoints: true})
	l := s.Lab
	// The client accepts one announced address: its only way to a second subflow.
	if _, err := l.IP(l.Client, "mptcp", "limits", "set", "subflows", "1", "add_addr_accepted", "1"); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString(s.configInterfaces())
	fmt.Fprintf(&b, "vips:\n  - addr: %s\n    join_steering: false\nbackends:\n", s.vip)
	for j, be := range l.Backends {
		port := 20000 + j
		mx(t, "--netns", be.Netns, "lb", "backend-setup", "--vip", s.vip.String(), "--join-port", fmt.Sprint(port))
		t.Cleanup(func() {
			_, _ = mxErr("--netns", be.Netns, "lb", "backend-setup", "--vip", s.vip.String(), "--join-port", fmt.Sprint(port), "--undo")
		})
		fmt.Fprintf(&b, "  - addr: %s\n    join_port: %d\n", be.IP4, port)
	}
	file := filepath.Join(t.TempDir(), "lb.yaml")
	if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cp := startControlPlane(t, l.LB, "--config", file)
	t.Cleanup(func() { _, _ = mxErr("--netns", l.LB, "lb", "detach") })

	st := lbStatus(t, l.LB)
	ports := 0
	for _, v := range st.VIPs {
		if v.JoinPortOf != "" {
			ports++
			if !strings.HasPrefix(v.Addr, l.VIP4.String()+":200") {
				t.Errorf("join port %+v: want the VIP's address and a port 200xx", v)
			}
		}
	}
	if ports != len(l.Backends) {
		t.Fatalf("status lists %d join ports, want %d: %+v\n%s", ports, len(l.Backends), st.VIPs, cp.logs)
	}
	st0 := st.Stats
	base := s.mibs(t)
	const n = 30
	conns := s.dial(ctx, t, n, 10)
	defer closeAll(conns)
	j := s.waitJoins(ctx, t, base, n)
	after := s.mibs(t)
	per := perBackend(conns, len(l.Backends))
	for i := range l.Backends {
		d := after[i].Sub(base[i])
		if d.MPTCP("MPJoinPortSynRx") != int64(per[i]) || d.MPTCP("MPJoinPortAckRx") != int64(per[i]) || d.MPTCP("MPJoinNoTokenFound") != 0 {
			t.Errorf("backend %d holds %d connections: MPJoinPortSynRx %d, MPJoinPortAckRx %d, MPJoinNoTokenFound %d", i, per[i],
				d.MPTCP("MPJoinPortSynRx"), d.MPTCP("MPJoinPortAckRx"), d.MPTCP("MPJoinNoTokenFound"))
		}
	}
	st1 := lbStatus(t, l.LB).Stats
	if st1["join_steered"] != st0["join_steered"] || st1["token_learned"] != st0["token_learned"] {
		t.Errorf("the balancer steered %d joins by token and learned %d tokens, want none",
			st1["join_steered"]-st0["join_steered"], st1["token_learned"]-st0["token_learned"])
	}
	v := s.view(t)
	if v.ClientTwo != n {
		t.Errorf("%d of %d connections have two subflows (view %+v)", v.ClientTwo, n, v)
	}
	if ok, errs := transfer(ctx, conns, 64<<10); ok != n {
		t.Errorf("%d of %d transfers: %v", ok, n, firstErrs(errs, 3))
	}
	t.Logf("join ports: %d connections on backends %v, every join on its backend's port (answered %d), none steered by token", n, per, j.Answered())
}
