package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/labfleet"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// joinForm is how the backends tell clients where to join.
type joinForm int

const (
	portForm joinForm = iota // the VIP's address with a port of the backend's own (lb backend-setup --join-port)
	addrForm                 // an address of the backend's own at the VIP's port (a signal endpoint without port)
)

// setupJoins configures every backend for form: the C flag, and the endpoint announced.
func (f *fleet) setupJoins(t *testing.T, form joinForm, v6 bool) {
	t.Helper()
	for j, b := range f.Backends {
		switch form {
		case portForm:
			if _, err := f.Exec("", bin, "--netns", b.Netns, "lb", "backend-setup", "--vip", f.vip(v6).String(),
				"--join-port", fmt.Sprint(f.svc.JoinPort(j))); err != nil {
				t.Fatal(err)
			}
		case addrForm:
			if err := lab.WriteSysctls(b.Netns, map[string]string{"net/mptcp/allow_join_initial_addr_port": "0"}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.IP(b.Netns, "mptcp", "endpoint", "add", labfleet.JoinAddr6(j).String(), "signal"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestJoinPortsFleet: stateless joins behind ECMP. The backends set the C flag and announce where
// to join; every balancer maps each announced place to its backend (join_port, join_addr) and
// steers nothing by token (join_steering: false). Every connection must end with two subflows on
// one backend, no backend may refuse a join for want of a token, the balancers must steer and
// learn nothing, and every transfer must arrive intact. IPv4 announces the VIP with a port; for
// IPv6 the port form is tried first, and then the address form.
func TestJoinPortsFleet(t *testing.T) {
	const n = 200
	t.Run("ipv4-port", func(t *testing.T) { joinFleet(t, portForm, false, n) })
	t.Run("ipv6-port", func(t *testing.T) { ipv6PortForm(t) })
	t.Run("ipv6-addr", func(t *testing.T) { joinFleet(t, addrForm, true, n) })
	t.Run("l2-ipv4-port", func(t *testing.T) { joinFleet(t, portForm, false, n, "l2") })
}

// joinFleet runs n connections through a fleet forwarding by ipip, or as forward says.
func joinFleet(t *testing.T, form joinForm, v6 bool, n int, forward ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	svc := labfleet.Service{JoinSteering: false}
	if len(forward) != 0 {
		svc.Forward = forward[0]
	}
	if form == portForm {
		svc.JoinPortBase = 20000
	} else {
		svc.JoinAddrs = true
	}
	f := newFleet(t, svc)
	f.setupJoins(t, form, v6)
	base, err := f.BackendMIBs()
	if err != nil {
		t.Fatal(err)
	}
	st0, err := f.BalancerStats()
	if err != nil {
		t.Fatal(err)
	}
	conns, err := f.DialN(ctx, f.vip(v6), n, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer labfleet.CloseAll(conns)
	var d labfleet.Deltas
	answered := waitFor(60*time.Second, func() bool {
		d, err = f.Deltas(base)
		return err == nil && labfleet.Sum(d.MPTCP("MPJoinAckRx"))+labfleet.Sum(d.MPTCP("MPJoinNoTokenFound")) >= int64(n)
	})
	if err != nil {
		t.Fatal(err)
	}
	per := make([]int64, len(f.Backends))
	for _, c := range conns {
		per[c.Backend]++
	}
	for j := range f.Backends {
		if d[j].MPTCP("MPJoinAckRx") != per[j] || d[j].MPTCP("MPJoinNoTokenFound") != 0 {
			t.Errorf("backend %d holds %d connections: MPJoinAckRx %d, MPJoinNoTokenFound %d", j, per[j],
				d[j].MPTCP("MPJoinAckRx"), d[j].MPTCP("MPJoinNoTokenFound"))
		}
		if port := d[j].MPTCP("MPJoinPortAckRx"); (form == portForm) != (port == per[j]) || form == addrForm && port != 0 {
			t.Errorf("backend %d: %d joins on its join port, %d connections", j, port, per[j])
		}
	}
	if !answered {
		t.Errorf("joins answered by the backends: accepted %v, refused %v, want %d", d.MPTCP("MPJoinAckRx"), d.MPTCP("MPJoinNoTokenFound"), n)
	}
	bs, err := f.BackendSubflows(f.svc.Port)
	if err != nil {
		t.Fatal(err)
	}
	two := 0
	for j, b := range bs {
		two += b.Two
		if b.Two != int(per[j]) || b.One != 0 || b.More != 0 {
			t.Errorf("backend %d (%d connections): ss -M %+v", j, per[j], b)
		}
	}
	// Every join left by the client's second path: toward an announced address, Linux 6.18's
	// path manager uses its `fullmesh` endpoints (a plain `subflow` endpoint joins from the
	// first subflow's address, measured: 0 of 200 from the second path).
	joins, fromSecond := 0, 0
	for k := range f.Balancers {
		fl, err := f.Flows(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range fl {
			if x.Dst == f.vip(v6) {
				continue
			}
			joins++
			if a := x.Src.Addr(); a == f.Paths[1].ClientIP4 || a == f.Paths[1].ClientIP6 {
				fromSecond++
			}
		}
	}
	if joins != n || fromSecond != n {
		t.Errorf("the balancers hold %d join flows, %d of them from the client's second path, want %d", joins, fromSecond, n)
	}
	st1, err := f.BalancerStats()
	if err != nil {
		t.Fatal(err)
	}
	// Every frame went the configured way: l2 by MAC rewrite through the bridge, ipip tunnelled.
	l2, ipip := labfleet.Sum(labfleet.Stat(st1, st0, lb.StatFwdL2)), labfleet.Sum(labfleet.Stat(st1, st0, lb.StatFwdIPIP))
	if (f.Config.Forward == "l2") != (l2 > 0 && ipip == 0) || (f.Config.Forward == "ipip") != (ipip > 0 && l2 == 0) {
		t.Errorf("%s: the balancers forwarded %d frames by l2, %d by ipip", f.Config.Forward, l2, ipip)
	}
	for _, s := range []lb.Stat{lb.StatJoinSteered, lb.StatJoinUnknown, lb.StatTokenLearned} {
		if v := labfleet.Stat(st1, st0, s); labfleet.Sum(v) != 0 {
			t.Errorf("balancers counted %s %v, want none", s, v)
		}
	}
	errs := labfleet.TransferAll(ctx, conns, 64<<10, 0, 0)
	bad := 0
	for _, e := range errs {
		if e != nil {
			if bad++; bad <= 3 {
				t.Error(e)
			}
		}
	}
	where := "the VIP's address at the backend's join port"
	if form == addrForm {
		where = "the backend's own IPv6 join address at the VIP's port"
	}
	t.Logf("%s: %d connections to %s on backends %v, joins to %s: %d on two subflows on their backend (ss -M), MPJoinAckRx %v, "+
		"MPJoinNoTokenFound %v, flows placed per balancer (new_flow) %v, nothing steered or learned by token; %d of %d transfers intact",
		f.Config.Forward, n, f.vip(v6), per, where, two, d.MPTCP("MPJoinAckRx"), d.MPTCP("MPJoinNoTokenFound"),
		labfleet.Stat(st1, st0, lb.StatNewFlow), n-bad, n)
}

// ipv6PortForm: what Linux 6.18 does with an IPv6 address and a port to announce, 30 bytes of
// ADD_ADDR, on connections with TCP timestamps (12 bytes with padding), where 28 bytes of option
// space are left: it drops the announcement (MPTcpExt AddAddrTxDrop, one per connection) and sends
// none (AddAddrTx 0); the client hears of no address (AddAddr 0) and opens no join, since the C
// flag forbids the VIP's own address and port: every connection stays on one subflow, and works.
func ipv6PortForm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newFleet(t, labfleet.Service{JoinSteering: false, JoinPortBase: 20000})
	f.setupJoins(t, portForm, true)
	base, err := f.BackendMIBs()
	if err != nil {
		t.Fatal(err)
	}
	cbase, err := f.MIB(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	const n = 30
	conns, err := f.DialN(ctx, f.vip(true), n, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer labfleet.CloseAll(conns)
	per := make([]int64, len(f.Backends))
	for _, c := range conns {
		per[c.Backend]++
	}
	var d labfleet.Deltas
	waitFor(10*time.Second, func() bool {
		d, err = f.Deltas(base)
		return err == nil && labfleet.Sum(d.MPTCP("AddAddrTxDrop")) >= n
	})
	if err != nil {
		t.Fatal(err)
	}
	// Time for an announcement or a join that would still come (a join SYN is answered in
	// milliseconds here; an announcement is retried after net.mptcp.add_addr_timeout, 2 min).
	time.Sleep(2 * time.Second)
	if d, err = f.Deltas(base); err != nil {
		t.Fatal(err)
	}
	cm, err := f.MIB(f.Client)
	if err != nil {
		t.Fatal(err)
	}
	cd := cm.Sub(cbase)
	bs, err := f.BackendSubflows(f.svc.Port)
	if err != nil {
		t.Fatal(err)
	}
	for j := range f.Backends {
		if d[j].MPTCP("AddAddrTxDrop") != per[j] || d[j].MPTCP("AddAddrTx") != 0 || d[j].MPTCP("MPJoinSynRx") != 0 {
			t.Errorf("backend %d, %d connections: AddAddrTxDrop %d, AddAddrTx %d, MPJoinSynRx %d", j, per[j],
				d[j].MPTCP("AddAddrTxDrop"), d[j].MPTCP("AddAddrTx"), d[j].MPTCP("MPJoinSynRx"))
		}
		if bs[j].One != int(per[j]) || bs[j].Two+bs[j].More != 0 {
			t.Errorf("backend %d, %d connections: ss -M %+v", j, per[j], bs[j])
		}
	}
	if cd.MPTCP("AddAddr") != 0 || cd.MPTCP("MPJoinSynTx") != 0 {
		t.Errorf("client: AddAddr %d, MPJoinSynTx %d, want 0", cd.MPTCP("AddAddr"), cd.MPTCP("MPJoinSynTx"))
	}
	errs := labfleet.TransferAll(ctx, conns, 64<<10, 0, 0)
	bad := 0
	for _, e := range errs {
		if e != nil {
			if bad++; bad <= 3 {
				t.Error(e)
			}
		}
	}
	t.Logf("IPv6 VIP with join ports, TCP timestamps on: %d connections on backends %v; AddAddrTxDrop %v, AddAddrTx %v, client AddAddr %d, "+
		"joins 0: every connection on one subflow; %d of %d transfers intact", n, per, d.MPTCP("AddAddrTxDrop"), d.MPTCP("AddAddrTx"),
		cd.MPTCP("AddAddr"), n-bad, n)
}
