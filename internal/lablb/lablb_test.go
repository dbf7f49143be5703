package lablb_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

func newLab(t *testing.T) *lablb.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := lablb.New(lablb.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// Plain routing, no XDP: the balancer's kernel routes the VIP to backend 1. A client MPTCP connection
// to the VIP lands there and the client's path manager opens its second subflow over the second path,
// which the same backend accepts (MPJoinAckRx +1, ss -M shows one extra subflow on both ends); data
// arrives intact and the backend answers directly through the balancer's routing.
func TestSmokeRoutedVIP(t *testing.T) {
	l := newLab(t)
	const target = 1
	if err := l.RouteVIP(target); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
		t.Run(vip.String(), func(t *testing.T) {
			be := l.Backends[target]
			before, err := l.MIB(be.Netns)
			if err != nil {
				t.Fatal(err)
			}
			c, err := l.Dial(ctx, netip.AddrPortFrom(vip, uint16(srv.Port)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if c.Backend != target || !lab.IsMPTCP(c.Conn) {
				t.Fatalf("landed on backend %d (want %d), MPTCP %v", c.Backend, target, lab.IsMPTCP(c.Conn))
			}
			d, err := (&lab.Lab{}).WaitMIB(ctx, be.Netns, before, "MPTcpExt.MPJoinAckRx", 1)
			if err != nil {
				t.Fatal(err)
			}
			if d.MPTCP("MPCapableSYNRX") != 1 || d.MPTCP("MPJoinNoTokenFound") != 0 {
				t.Errorf("backend MIB: MPCapableSYNRX %+d MPJoinNoTokenFound %+d", d.MPTCP("MPCapableSYNRX"), d.MPTCP("MPJoinNoTokenFound"))
			}
			for _, ns := range []string{l.Client, be.Netns} {
				conn, err := (&lab.Lab{}).WaitSubflows(ctx, ns, 1, true)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %s → %s token %08x subflows %d", ns, conn.Local, conn.Peer, conn.Token, conn.Subflows)
			}
			if err := c.Transfer(ctx, 4<<20); err != nil {
				t.Fatal(err)
			}
		})
	}
}
