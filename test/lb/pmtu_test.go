package lb

// What the balancer does with frames that do not fit: path MTU discovery through ipip (the
// balancer answers a client's full-size segment with ICMP "fragmentation needed" / ICMPv6 "packet
// too big", and the client's kernel lowers its path MTU), and generic XDP, which runs after the
// balancer's GRO and is handed aggregates larger than any wire frame. Labs are named mxh5*.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/vishvananda/netlink"
)

// mtuOpts are what the labs of this file change from newSetup's.
type mtuOpts struct {
	backendMTU int    // MTU of the balancer–backend links (both ends); 0 keeps lablb.BackendMTU
	mode       string // lb attach --mode; "" keeps the default (native)
	// clientTSO turns TSO on at the client's veths (the lab has it off, with TX checksum offload):
	// the client's GSO skbs then cross the veth whole, as a local sender's (a container's) do, and
	// reach the balancer as aggregates. clientGSOMax, with it, sets their gso_max_size and
	// gso_ipv4_max_size (BIG TCP: aggregates over 64 KiB, IPv4 total length 0).
	clientTSO    bool
	clientGSOMax int
	// backends in the lab; 0 keeps lablb's 3.
	backends int
	// plainTCP: the client dials plain TCP, not MPTCP (an MPTCP mapping's data-level length is 16
	// bits, so MPTCP never sends a GSO packet over 64 KiB: BIG TCP needs plain TCP).
	plainTCP bool
	// routeVIP gives the balancer's kernel a route to the VIP through the first backend (what the
	// frames the datapath passes meet): with one backend, the stack forwards them where Maglev
	// would have.
	routeVIP bool
}

// newMTUSetup is newSetup (join steering, unknown joins dropped) in a lab named mxh5<hex> whose
// backend links and balancer attach follow m.
func newMTUSetup(t *testing.T, o options, m mtuOpts) *setup {
	t.Helper()
	var rnd [2]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	l := newLab(t, lablb.Config{Prefix: "mxh5" + hex.EncodeToString(rnd[:]), NoEndpoints: o.noEndpoints, Backends: m.backends})
	if m.backendMTU != 0 {
		for _, b := range l.Backends {
			for _, e := range [][2]string{{l.LB, b.LBIf}, {b.Netns, b.If}} {
				if _, err := l.IP(e[0], "link", "set", e[1], "mtu", strconv.Itoa(m.backendMTU)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if m.routeVIP {
		if err := l.RouteVIP(0); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range l.Paths {
		if m.clientTSO {
			if _, err := l.Exec(l.Client, "ethtool", "-K", p.ClientIf, "tx", "on", "tso", "on"); err != nil {
				t.Fatal(err)
			}
		}
		if m.clientGSOMax != 0 {
			// iproute2 6.1 has no gso_ipv4_max_size: netlink (IFLA_GSO_IPV4_MAX_SIZE, Linux 6.3).
			err := netns.Do(l.Client, func() error {
				lnk, err := netlink.LinkByName(p.ClientIf)
				if err != nil {
					return err
				}
				if err := netlink.LinkSetGSOMaxSize(lnk, m.clientGSOMax); err != nil {
					return fmt.Errorf("gso_max_size: %w", err)
				}
				return netlink.LinkSetGSOIPv4MaxSize(lnk, m.clientGSOMax)
			})
			if err != nil {
				t.Fatalf("%s: %v", p.ClientIf, err)
			}
		}
	}
	var extra []string
	if m.mode != "" {
		extra = append(extra, "--mode", m.mode)
	}
	return attachSetup(t, o, l, extra...)
}

// clientPMTU is the path MTU the client's kernel holds for the VIP from its address on path i
// (`ip route get VIP from ADDR`: a cached exception shows "mtu N"), 0 when it holds none.
func (s *setup) clientPMTU(t *testing.T, i int) (int, string) {
	t.Helper()
	p := s.Paths[i]
	args := []string{"route", "get", s.vip.Addr().String(), "from", p.ClientIP4.String()}
	if s.opts.v6 {
		args = []string{"-6", "route", "get", s.vip.Addr().String(), "from", p.ClientIP6.String()}
	}
	out, err := s.IP(s.Client, args...)
	if err != nil {
		t.Fatal(err)
	}
	out = strings.Join(strings.Fields(out), " ")
	m := regexp.MustCompile(`\bmtu (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0, out
	}
	n, _ := strconv.Atoi(m[1])
	return n, out
}

// transferAll dials n connections (plain TCP with tcp, else MPTCP) and sends size bytes on each,
// all within timeout; it returns how many arrived intact and how long that took.
func (s *setup) transferAll(t *testing.T, n, size int, tcp bool, timeout time.Duration) (int, []error, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	var cs []*lablb.Conn
	if tcp {
		for range n {
			c, err := s.dialTCP(ctx)
			if err != nil {
				closeAll(cs)
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
	} else {
		cs = s.dial(ctx, t, n, n)
	}
	// Aborted, not closed: a closed socket with data left would go on retransmitting it, orphaned,
	// while the caller compares counters.
	defer func() {
		for _, c := range cs {
			if tc, ok := c.Conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		closeAll(cs)
	}()
	ok, errs := transfer(ctx, cs, size)
	return ok, errs, time.Since(start)
}

// dialTCP connects from the client to the VIP over plain TCP (the backends' MPTCP listeners accept
// it) and reads which backend accepted, as lablb's Dial does for MPTCP.
func (s *setup) dialTCP(ctx context.Context) (*lablb.Conn, error) {
	var c net.Conn
	err := netns.Do(s.Client, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", s.vip.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tcp dial %s: %w", s.vip, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("read backend index from %s: %w", s.vip, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return &lablb.Conn{Conn: c, Backend: int(b[0])}, nil
}

// countedTransfers is transferAll of n MPTCP transfers of size bytes (60 s at most) between reads
// of the balancer's counters (st0, st1) and the client's MIB (c0, c1).
func (s *setup) countedTransfers(t *testing.T, n, size int) (ok int, errs []error, took time.Duration, st0, st1 map[string]uint64, c0, c1 lab.MIB) {
	t.Helper()
	var err error
	if c0, err = s.MIB(s.Client); err != nil {
		t.Fatal(err)
	}
	st0 = lbStatus(t, s.LB).Stats
	ok, errs, took = s.transferAll(t, n, size, false, 60*time.Second)
	st1 = lbStatus(t, s.LB).Stats
	if c1, err = s.MIB(s.Client); err != nil {
		t.Fatal(err)
	}
	return ok, errs, took, st0, st1, c0, c1
}

func mibDelta(after, before lab.MIB, keys ...string) string {
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s %+d", k, int64(after[k]-before[k]))
	}
	return strings.TrimSpace(b.String())
}

// TestIPIPPathMTU: the balancer–backend links have MTU 1500, like the client's, so a client's
// full-size segment (1500 bytes of IP, DF set) does not fit once the outer header is added. The
// balancer answers it with an ICMP "fragmentation needed" (IPv4, next-hop MTU 1480) or ICMPv6
// "packet too big" (1460 in 6in6), the client's kernel lowers its path MTU for the VIP, resends in
// smaller segments, and every transfer completes with its data intact. The ground truth is the
// client's: its route cache (`ip route get VIP from ADDR` shows "mtu 1480" / "mtu 1460" on both
// paths), and its MIB's received ICMP errors. Without the ICMP error the full-size segments went up
// the balancer's stack, which has no route to the VIP: every transfer stalled.
func TestIPIPPathMTU(t *testing.T) {
	for _, o := range []options{{forward: "ipip"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) {
			s := newMTUSetup(t, o, mtuOpts{backendMTU: 1500})
			want, icmpKey := 1480, "Icmp.InDestUnreachs"
			if o.v6 {
				want, icmpKey = 1460, "Icmp6.InPktTooBigs"
			}
			for i := range s.Paths {
				if mtu, route := s.clientPMTU(t, i); mtu != 0 {
					t.Fatalf("path %d: the client holds path MTU %d before any traffic: %s", i, mtu, route)
				}
			}
			const n, size = 8, 1 << 20
			ok, errs, took, st0, st1, c0, c1 := s.countedTransfers(t, n, size)
			t.Logf("%d of %d transfers of %d KiB intact in %v", ok, n, size>>10, took.Round(time.Millisecond))
			t.Logf("balancer: icmp_too_big %+d mtu %+d fwd_ipip %+d aggregate %+d", delta(st1, st0, "icmp_too_big"),
				delta(st1, st0, "mtu"), delta(st1, st0, "fwd_ipip"), delta(st1, st0, "aggregate"))
			t.Logf("client: %s", mibDelta(c1, c0, icmpKey, "Icmp.InErrors", "Icmp6.InErrors", "Tcp.RetransSegs"))
			if ok != n {
				t.Errorf("%d of %d transfers intact; first errors: %v", ok, n, firstErrs(errs, 3))
			}
			for i := range s.Paths {
				mtu, route := s.clientPMTU(t, i)
				t.Logf("path %d: %s", i, route)
				if mtu != want {
					t.Errorf("path %d: the client's path MTU to the VIP is %d, want %d (%s)", i, mtu, want, route)
				}
			}
			if d := delta(st1, st0, "icmp_too_big"); d == 0 || int64(c1[icmpKey]-c0[icmpKey]) < d {
				t.Errorf("balancer sent %d ICMP errors, the client received %d (%s)", d, c1[icmpKey]-c0[icmpKey], icmpKey)
			}
			if d := delta(st1, st0, "mtu") + delta(st1, st0, "aggregate"); d != 0 {
				t.Errorf("%d frames passed to the balancer's stack (mtu, aggregate)", d)
			}
		})
	}
}

// TestGenericMode is what the balancer does in generic XDP (lb attach --mode generic), which runs
// in the stack, on skbs. GRO stays on on the balancer's client-facing veths, as on every lab link,
// yet the kernel skips GRO on a device that has a generic XDP program (netif_elide_gro), so
// frames the client sends at wire size reach the program at wire size and are forwarded: the
// transfers complete. Aggregates still reach it when the sender's GSO packets cross the veth whole
// (client TSO on, as a local or container sender's do; GRO on a lower device, under a VLAN or
// macvlan, is the same on real NICs). The datapath passes them, counted in aggregate, to the
// balancer's stack, never forwarding them whole (a device refuses a frame over its MTU; before,
// l2 counted them forwarded and they vanished) nor answering them with an ICMP error (the client's
// path MTU stays as it was). The stack has no route to the VIP (IpExt.InNoRoutes counts every
// one): the transfers stall. With one backend and a kernel route to it, the stack forwards the
// aggregates itself (Ip.ForwDatagrams), and BIG TCP packets (IPv4 total length 0, plain TCP with
// gso_ipv4_max_size 185000) count as aggregates, not malformed. See docs/lb.md, "Generic XDP".
func TestGenericMode(t *testing.T) {
	const n, size = 4, 4 << 20
	for _, c := range []struct {
		name     string
		o        options
		m        mtuOpts
		complete bool // every transfer completes; else none does
	}{
		{"l2/gro", options{forward: "l2"}, mtuOpts{}, true},
		{"ipip/gro", options{forward: "ipip"}, mtuOpts{}, true},
		{"l2/gso", options{forward: "l2"}, mtuOpts{clientTSO: true}, false},
		{"ipip/gso", options{forward: "ipip"}, mtuOpts{clientTSO: true}, false},
		{"l2/gso/routed", options{forward: "l2"}, mtuOpts{clientTSO: true, backends: 1, routeVIP: true}, true},
		{"l2/bigtcp/routed", options{forward: "l2"}, mtuOpts{clientTSO: true, clientGSOMax: 185000, plainTCP: true, backends: 1, routeVIP: true}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.m.mode = "generic"
			s := newMTUSetup(t, c.o, c.m)
			st := lbStatus(t, s.LB)
			for _, i := range st.Interfaces {
				if i.XDPMode != "generic" {
					t.Fatalf("%s attached in mode %q", i.Interface, i.XDPMode)
				}
			}
			for _, p := range s.Paths {
				out, err := s.Exec(s.LB, "ethtool", "-k", p.LBIf)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out, "generic-receive-offload: on") {
					t.Fatalf("%s: GRO is off:\n%s", p.LBIf, out)
				}
			}
			nss := []string{s.Client, s.LB}
			for _, be := range s.Backends {
				nss = append(nss, be.Netns)
			}
			mibs := func() map[string]lab.MIB {
				out := map[string]lab.MIB{}
				for _, ns := range nss {
					m, err := s.MIB(ns)
					if err != nil {
						t.Fatal(err)
					}
					out[ns] = m
				}
				return out
			}
			before := mibs()
			st0 := st.Stats
			timeout := 20 * time.Second
			if !c.complete {
				timeout = 10 * time.Second
			}
			ok, errs, took := s.transferAll(t, n, size, c.m.plainTCP, timeout)
			// The connections are closed (reset if data was left): let what is in flight land
			// before the balancer's counters and the kernels' are read, so that they compare.
			time.Sleep(500 * time.Millisecond)
			// The balancer's stack counts a passed aggregate after the datapath does: its
			// counters read before and after the datapath's bracket them.
			lbBefore1, err := s.MIB(s.LB)
			if err != nil {
				t.Fatal(err)
			}
			st1 := lbStatus(t, s.LB).Stats
			after := mibs()
			d := func(ns, k string) int64 { return int64(after[ns][k] - before[ns][k]) }
			var beOctets int64
			for _, be := range s.Backends {
				beOctets += d(be.Netns, "IpExt.InOctets")
			}
			agg := delta(st1, st0, "aggregate")
			t.Logf("%d of %d transfers of %d KiB intact in %v; first errors %v", ok, n, size>>10, took.Round(time.Millisecond), firstErrs(errs, 1))
			t.Logf("balancer: aggregate %+d fwd_l2 %+d fwd_ipip %+d icmp_too_big %+d mtu %+d malformed %+d fwd_error %+d", agg,
				delta(st1, st0, "fwd_l2"), delta(st1, st0, "fwd_ipip"), delta(st1, st0, "icmp_too_big"), delta(st1, st0, "mtu"),
				delta(st1, st0, "malformed"), delta(st1, st0, "fwd_error"))
			t.Logf("balancer's stack: %s", mibDelta(after[s.LB], before[s.LB], "Ip.ForwDatagrams", "IpExt.InNoRoutes", "Icmp.OutDestUnreachs"))
			t.Logf("client: %s", mibDelta(after[s.Client], before[s.Client], "Ip.InReceives", "Icmp.InDestUnreachs", "Tcp.RetransSegs", "TcpExt.TCPTimeouts"))
			t.Logf("backends: IpExt.InOctets %+d in all (%d sent)", beOctets, n*size)

			for _, k := range []string{"icmp_too_big", "malformed", "fwd_error", "mtu"} {
				if v := delta(st1, st0, k); v != 0 {
					t.Errorf("%s %+d", k, v)
				}
			}
			for i := range s.Paths {
				if mtu, route := s.clientPMTU(t, i); mtu != 0 {
					t.Errorf("path %d: the client's path MTU to the VIP fell to %d: %s", i, mtu, route)
				}
			}
			switch {
			case c.complete && (ok != n || beOctets < n*size):
				t.Errorf("%d of %d transfers intact, backends received %d bytes of %d; first errors: %v", ok, n, beOctets, n*size, firstErrs(errs, 3))
			case !c.complete && ok != 0:
				t.Errorf("%d of %d transfers completed: the aggregates reached the backends", ok, n)
			}
			switch {
			case !c.m.clientTSO && agg != 0:
				t.Errorf("aggregate %+d with the client's TSO off: GRO aggregated on the generic XDP device", agg)
			case c.m.clientTSO && agg == 0:
				t.Errorf("no aggregate counted, with the client's GSO packets crossing the veth whole")
			case c.m.clientTSO && !c.m.routeVIP &&
				(int64(lbBefore1["IpExt.InNoRoutes"]-before[s.LB]["IpExt.InNoRoutes"]) > agg || d(s.LB, "IpExt.InNoRoutes") < agg):
				t.Errorf("the balancer's stack met %d packets with no route (%d when the datapath's counters were read), the datapath passed %d aggregates",
					d(s.LB, "IpExt.InNoRoutes"), int64(lbBefore1["IpExt.InNoRoutes"]-before[s.LB]["IpExt.InNoRoutes"]), agg)
			case c.m.routeVIP && d(s.LB, "Ip.ForwDatagrams")-d(s.Client, "Ip.InReceives") != agg:
				// The stack forwards the backend's packets to the client and the aggregates to the backend.
				t.Errorf("the balancer's stack forwarded %d packets beyond the client's %d, the datapath passed %d aggregates",
					d(s.LB, "Ip.ForwDatagrams")-d(s.Client, "Ip.InReceives"), d(s.Client, "Ip.InReceives"), agg)
			}
		})
	}
}

// TestIPIPMTUFollowsLink: the datapath encapsulates a frame that fits the egress MTU it holds for
// the backend (`lb status`'s backends[].mtu) without asking the kernel, so that figure must follow
// the link. The backend links start at MTU 1600, where a client's full-size segment fits inside the
// tunnel; `lb run` runs; then both ends of every backend link go down to 1500. lb run sees the link
// change and writes 1500 into every backend entry (well before its 30-second refresh), and the
// client's full-size segments are answered with ICMP: its path MTU to the VIP becomes 1480 (1460
// in 6in6) and every transfer completes. Had the entries kept 1600, those segments would be sent
// to a veth whose peer's MTU is 1500, which drops them silently: the transfers would stall and the
// client would learn no path MTU.
func TestIPIPMTUFollowsLink(t *testing.T) {
	for _, o := range []options{{forward: "ipip"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) {
			s := newMTUSetup(t, o, mtuOpts{backendMTU: 1600})
			want, icmpKey := 1480, "Icmp.InDestUnreachs"
			if o.v6 {
				want, icmpKey = 1460, "Icmp6.InPktTooBigs"
			}
			mtus := func() map[string]int {
				m := map[string]int{}
				for _, b := range lbStatus(t, s.LB).Backends {
					m[b.Addr] = b.MTU
				}
				return m
			}
			for a, mtu := range mtus() {
				if mtu != 1600 {
					t.Fatalf("backend %s: the datapath holds MTU %d after attach, want the link's 1600", a, mtu)
				}
			}
			cp := startControlPlane(t, s.LB, "--refresh-interval", "30s")
			for _, b := range s.Backends {
				for _, e := range [][2]string{{s.LB, b.LBIf}, {b.Netns, b.If}} {
					if _, err := s.IP(e[0], "link", "set", e[1], "mtu", "1500"); err != nil {
						t.Fatal(err)
					}
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				m, stale := mtus(), 0
				for _, mtu := range m {
					if mtu != 1500 {
						stale++
					}
				}
				if stale == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("5 s after the links went to MTU 1500 the datapath holds %v\nlb run:\n%s", m, cp.logs)
				}
				time.Sleep(50 * time.Millisecond)
			}
			const n, size = 4, 1 << 20
			ok, errs, took, st0, st1, c0, c1 := s.countedTransfers(t, n, size)
			t.Logf("%d of %d transfers of %d KiB intact in %v; balancer: icmp_too_big %+d fwd_ipip %+d; client: %s", ok, n, size>>10,
				took.Round(time.Millisecond), delta(st1, st0, "icmp_too_big"), delta(st1, st0, "fwd_ipip"), mibDelta(c1, c0, icmpKey))
			if ok != n {
				t.Errorf("%d of %d transfers intact; first errors: %v", ok, n, firstErrs(errs, 3))
			}
			for i := range s.Paths {
				if mtu, route := s.clientPMTU(t, i); mtu != want {
					t.Errorf("path %d: the client's path MTU to the VIP is %d, want %d (%s)", i, mtu, want, route)
				}
			}
			if d := delta(st1, st0, "icmp_too_big"); d == 0 || int64(c1[icmpKey]-c0[icmpKey]) < d {
				t.Errorf("balancer sent %d ICMP errors, the client received %d (%s)", d, c1[icmpKey]-c0[icmpKey], icmpKey)
			}
		})
	}
}
