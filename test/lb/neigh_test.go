package lb

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// A backend whose MAC changes keeps receiving: the balancer's kernel learns the new address (here
// from the backend's ARP request), `lb run` sees the neighbour change over netlink and rewrites the
// backend's entry, and new connections reach the backend with two subflows.
func TestNextHopFollowsNeighbourTable(t *testing.T) {
	s := newSetup(t, options{forward: "l2"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cp := startControlPlane(t, s.LB)
	defer cp.stop(t)

	be := s.Backends[0]
	newMAC := net.HardwareAddr{0x02, 0x6d, 0x78, 0x6c, 0x62, 0x01}
	if _, err := s.IP(be.Netns, "link", "set", be.If, "address", newMAC.String()); err != nil {
		t.Fatal(err)
	}
	// The backend forgets the balancer's MAC and talks to it: its ARP request carries its new MAC,
	// which the balancer's kernel records.
	if _, err := s.IP(be.Netns, "neigh", "flush", "dev", be.If); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(be.Netns, func() error {
		c, err := net.Dial("udp", net.JoinHostPort(be.LBIP4.String(), "9"))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte{0})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		st := lbStatus(t, s.LB)
		if st.Backends[0].Addr == be.IP4.String() && st.Backends[0].MAC == newMAC.String() {
			break
		}
		if ctx.Err() != nil || time.Since(start) > 20*time.Second {
			t.Fatalf("backend entry not rewritten with %s: %+v\nlb run:\n%s", newMAC, st.Backends[0], cp.logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("backend %s entry rewritten with its new MAC %s after %v", be.IP4, newMAC, time.Since(start).Round(time.Millisecond))

	base := s.mibs(t)
	cs := s.dial(ctx, t, 30, 15)
	defer closeAll(cs)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	j := s.waitJoins(wctx, t, base, 30)
	wcancel()
	landed := perBackend(cs, len(s.Backends))
	t.Logf("30 connections landed %v; MPJoinAckRx %v MPJoinNoTokenFound %v", landed, j.AckRx, j.NoToken)
	if landed[0] == 0 || j.AckRx[0] != int64(landed[0]) || lablb.Sum(j.NoToken) != 0 {
		t.Errorf("backend 0 after its MAC change: %d connections, %d joins accepted", landed[0], j.AckRx[0])
	}
}
