package bgp_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labbgp"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// The test binary is also the speaker's child process: run with childEnv set, it serves the
// child protocol on stdin and stdout, as `mptcp-xdp lb bgp-speaker` does.
const childEnv = "MPTCP_XDP_BGP_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		if err := bgp.Serve(os.Stdin, os.Stdout, log); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	testutil.Main(m)
}

const (
	routerASN  = 65000
	speakerASN = 65001
)

var (
	vip4 = netip.MustParsePrefix("10.0.0.10/32")
	vip6 = netip.MustParsePrefix("fd00::10/128")
)

// topo is a router namespace with one link to each speaker namespace: link i is 10.200.i.0/24
// and fd20:i::/64, the router .1 / ::1, the speaker .2 / ::2.
type topo struct {
	router   string
	speakers []string
	r        *labbgp.Router
}

func routerAddr4(i int) netip.Addr  { return netip.AddrFrom4([4]byte{10, 200, byte(i), 1}) }
func speakerAddr4(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, byte(i), 2}) }
func routerAddr6(i int) netip.Addr  { return netip.MustParseAddr(fmt.Sprintf("fd20:%d::1", i)) }
func speakerAddr6(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd20:%d::2", i)) }

func ip(t *testing.T, ns string, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// newTopo builds n speakers and starts BIRD in the router with a v4 and a v6 session to each
// (router holdTime seconds, 0: labbgp's default).
func newTopo(t *testing.T, n, holdTime int) *topo {
	t.Helper()
	testutil.RequireRoot(t)
	var b [2]byte
	_, _ = rand.Read(b[:])
	pfx := "bg-" + hex.EncodeToString(b[:])
	tp := &topo{router: pfx + "-rtr"}
	for i := 0; i < n; i++ {
		tp.speakers = append(tp.speakers, fmt.Sprintf("%s-s%d", pfx, i))
	}
	for _, ns := range append([]string{tp.router}, tp.speakers...) {
		if err := netns.Create(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netns.Delete(ns) })
		ip(t, ns, "link", "set", "lo", "up")
	}
	var peers []labbgp.Peer
	for i, s := range tp.speakers {
		dev := fmt.Sprintf("r%d", i)
		ip(t, tp.router, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", s)
		ip(t, tp.router, "addr", "add", routerAddr4(i).String()+"/24", "dev", dev)
		ip(t, tp.router, "addr", "add", routerAddr6(i).String()+"/64", "dev", dev, "nodad")
		ip(t, tp.router, "link", "set", dev, "up")
		ip(t, s, "addr", "add", speakerAddr4(i).String()+"/24", "dev", "eth0")
		ip(t, s, "addr", "add", speakerAddr6(i).String()+"/64", "dev", "eth0", "nodad")
		ip(t, s, "link", "set", "eth0", "up")
		peers = append(peers, labbgp.Peer{Addr: speakerAddr4(i), ASN: speakerASN, HoldTime: holdTime},
			labbgp.Peer{Addr: speakerAddr6(i), ASN: speakerASN, HoldTime: holdTime})
	}
	r, err := labbgp.New(tp.router, labbgp.Config{RouterID: netip.MustParseAddr("10.200.255.1"), ASN: routerASN, Peers: peers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bird log:\n%s", r.Log())
		}
		r.Close()
	})
	tp.r = r
	return tp
}

// speaker starts a child speaker in speaker namespace i, peering with the router over IPv4 and
// IPv6 (hold time hold, 0: the default).
func (tp *topo) speaker(t *testing.T, i int, hold time.Duration) *bgp.Child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "1")
	cfg := bgp.Config{
		LocalASN: speakerASN, RouterID: speakerAddr4(i),
		Peers: []bgp.Peer{
			{Addr: routerAddr4(i), ASN: routerASN, HoldTime: hold},
			{Addr: routerAddr6(i), ASN: routerASN, HoldTime: hold},
		},
	}
	c, err := bgp.StartChild([]string{exe}, tp.speakers[i], cfg, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

var _ io.Writer = testWriter{}

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// waitEstablished waits until every peer of c is established and returns their states.
func waitEstablished(t *testing.T, c *bgp.Child) []bgp.PeerState {
	t.Helper()
	var st []bgp.PeerState
	err := labbgp.Wait(ctx(t, 60*time.Second), func() (bool, error) {
		var err error
		st, err = c.Peers()
		if err != nil {
			return false, err
		}
		for _, p := range st {
			if p.State != "established" {
				return false, nil
			}
		}
		return len(st) > 0, nil
	})
	if err != nil {
		t.Fatalf("sessions not established: %v (%+v)", err, st)
	}
	return st
}

func wantHops(t *testing.T, tp *topo, p netip.Prefix, want ...netip.Addr) {
	t.Helper()
	hops, err := tp.r.WaitNextHops(ctx(t, 60*time.Second), p, len(want))
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if hops[i] != want[i] {
			t.Fatalf("%s: next hops %v, want %v", p, hops, want)
		}
	}
}

// One speaker in its own namespace announces a v4 and a v6 VIP; the router's kernel FIB gets
// both, through the speaker's addresses; withdrawing one removes its route only.
func TestAnnounceV4V6(t *testing.T) {
	tp := newTopo(t, 1, 0)
	c := tp.speaker(t, 0, 0)
	st := waitEstablished(t, c)
	// The sessions' local addresses are the namespace's (the host has none of them).
	for _, p := range st {
		want := speakerAddr4(0)
		if p.Addr.Is6() {
			want = speakerAddr6(0)
		}
		if p.Local != want {
			t.Fatalf("session to %s from %s, want %s (the speaker's namespace)", p.Addr, p.Local, want)
		}
	}
	for i := 0; i < 2; i++ {
		if s, err := tp.r.ProtocolState(i); err != nil || s != "Established" {
			t.Fatalf("bird %s: %q %v", labbgp.ProtocolName(i), s, err)
		}
	}
	for _, p := range []netip.Prefix{vip4, vip6} {
		if err := c.Announce(p); err != nil {
			t.Fatal(err)
		}
	}
	wantHops(t, tp, vip4, speakerAddr4(0))
	wantHops(t, tp, vip6, speakerAddr6(0))
	if got := c.Announced(); len(got) != 2 {
		t.Fatalf("announced %v", got)
	}
	if err := c.Withdraw(vip4); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4)
	if hops, err := tp.r.Routes(vip6); err != nil || len(hops) != 1 {
		t.Fatalf("v6 route after the v4 withdrawal: %v %v", hops, err)
	}
	if err := c.Announce(netip.MustParsePrefix("10.0.0.0/24")); err == nil {
		t.Fatal("a /24 was accepted")
	}
}

// Three speakers in three namespaces announce the same VIP: the router installs one route with
// three next hops (ECMP). A withdrawal, a graceful stop and a SIGKILL each take one next hop away.
func TestECMPThreeSpeakers(t *testing.T) {
	tp := newTopo(t, 3, 0)
	var cs []*bgp.Child
	for i := 0; i < 3; i++ {
		cs = append(cs, tp.speaker(t, i, 0))
	}
	for _, c := range cs {
		waitEstablished(t, c)
		for _, p := range []netip.Prefix{vip4, vip6} {
			if err := c.Announce(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantHops(t, tp, vip4, speakerAddr4(0), speakerAddr4(1), speakerAddr4(2))
	wantHops(t, tp, vip6, speakerAddr6(0), speakerAddr6(1), speakerAddr6(2))

	start := time.Now()
	if err := cs[1].Withdraw(vip4); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4, speakerAddr4(0), speakerAddr4(2))
	t.Logf("withdraw: next hop gone from the FIB in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	if err := cs[2].Stop(); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4, speakerAddr4(0))
	wantHops(t, tp, vip6, speakerAddr6(0), speakerAddr6(1))
	t.Logf("graceful stop: next hops gone from the FIB in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	cs[0].Kill()
	wantHops(t, tp, vip4)
	wantHops(t, tp, vip6, speakerAddr6(1))
	t.Logf("SIGKILL of the speaker: next hops gone from the FIB in %s (the kernel closes its sessions)", time.Since(start).Round(time.Millisecond))
}

// A link cut silently (every packet between router and speaker dropped, no carrier change, no
// FIN or RST) is noticed only when the hold time expires.
func TestHoldTimeExpiry(t *testing.T) {
	const hold = 3 * time.Second
	tp := newTopo(t, 1, 0)
	c := tp.speaker(t, 0, hold)
	waitEstablished(t, c)
	if err := c.Announce(vip4); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4, speakerAddr4(0))
	// Blackhole routes on both sides: the link stays up, packets vanish.
	start := time.Now()
	ip(t, tp.router, "route", "add", "blackhole", speakerAddr4(0).String()+"/32")
	ip(t, tp.speakers[0], "route", "add", "blackhole", routerAddr4(0).String()+"/32")
	time.Sleep(hold / 3)
	if hops, err := tp.r.Routes(vip4); err != nil || len(hops) != 1 {
		t.Fatalf("route gone before the hold time (%s after the cut): %v %v", time.Since(start), hops, err)
	}
	wantHops(t, tp, vip4)
	if !strings.Contains(tp.r.Log(), "Hold timer expired") {
		t.Fatalf("route gone, but bird's log has no hold timer expiry:\n%s", tp.r.Log())
	}
	t.Logf("silent cut: route gone from the FIB %s after the cut (hold time %s)", time.Since(start).Round(time.Millisecond), hold)
}

// A child whose parent goes away (its stdin closes) withdraws and closes its sessions.
func TestChildEndsWithItsPipe(t *testing.T) {
	tp := newTopo(t, 1, 0)
	c := tp.speaker(t, 0, 0)
	waitEstablished(t, c)
	if err := c.Announce(vip4); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4, speakerAddr4(0))
	if err := bgp.ClosePipe(c); err != nil {
		t.Fatal(err)
	}
	wantHops(t, tp, vip4)
	if err := bgp.WaitExit(c, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
