package lab_test

import (
	"context"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// These tests pin down the recipes the integration tests use to make the kernel emit the rarer
// MPTCP options, each checked with the receiving namespace's MPTcpExt counters.

func mib(t *testing.T, l *lab.Lab, ns string) lab.MIB {
	t.Helper()
	m, err := l.MIB(ns)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func waitMIB(t *testing.T, ctx context.Context, l *lab.Lab, ns string, base lab.MIB, key string, n int64) {
	t.Helper()
	if _, err := l.WaitMIB(ctx, ns, base, key, n); err != nil {
		t.Fatal(err)
	}
}

// TestAddAddrPrioRemoveAddr: a signal endpoint on the server → ADD_ADDR (and the client's echo) and a
// join to it; a backup change of the client's subflow endpoint → MP_PRIO; deleting the signal
// endpoint → REMOVE_ADDR.
func TestAddAddrPrioRemoveAddr(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Paths: 3})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ns := range []string{l.Client, l.Server} {
		if err := l.SetLimits(ns, 2, 2); err != nil {
			t.Fatal(err)
		}
	}
	p2 := l.Paths[2]
	cid, err := l.AddEndpoint(l.Client, p2.ClientIP4.String(), "dev", p2.ClientIf, "subflow")
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := mib(t, l, l.Client), mib(t, l, l.Server)
	pair, err := l.Pair(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	waitMIB(t, ctx, l, l.Server, srv, "MPTcpExt.MPJoinAckRx", 1)

	sid, err := l.AddEndpoint(l.Server, l.Paths[1].ServerIP4.String(), "signal")
	if err != nil {
		t.Fatal(err)
	}
	waitMIB(t, ctx, l, l.Client, cli, "MPTcpExt.AddAddr", 1)
	waitMIB(t, ctx, l, l.Server, srv, "MPTcpExt.EchoAdd", 1)
	waitMIB(t, ctx, l, l.Server, srv, "MPTcpExt.MPJoinAckRx", 2)
	if _, err := l.WaitSubflows(ctx, l.Server, 2, true); err != nil {
		t.Fatal(err)
	}

	if err := l.ChangeEndpoint(l.Client, cid, "backup"); err != nil {
		t.Fatal(err)
	}
	waitMIB(t, ctx, l, l.Server, srv, "MPTcpExt.MPPrioRx", 1)

	if err := l.DelEndpoint(l.Server, sid); err != nil {
		t.Fatal(err)
	}
	waitMIB(t, ctx, l, l.Client, cli, "MPTcpExt.RmAddr", 1)
	if _, err := l.WaitSubflows(ctx, l.Server, 1, true); err != nil {
		t.Fatal(err)
	}
	// The client also lists an implicit endpoint (no flags) for the address it joined the announced
	// address from.
	eps, err := l.Endpoints(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range eps {
		found = found || e.ID == cid && e.Backup && e.Subflow && e.Dev == p2.ClientIf
	}
	if !found {
		t.Errorf("client endpoints %+v: want id %d subflow backup dev %s", eps, cid, p2.ClientIf)
	}
}

// TestFastclose: SO_LINGER 0 then close, and close with unread data, each make the 6.18 kernel send
// MP_FASTCLOSE on every subflow (a RST with MP_TCPRST); a plain close does not.
func TestFastclose(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Subflows: true})
	for _, tc := range []struct {
		name      string
		close     func(*lab.Pair) error
		fastclose bool
	}{
		{"linger0", func(p *lab.Pair) error { return lab.Abort(p.Client) }, true},
		{"unread", func(p *lab.Pair) error {
			if _, err := p.Server.Write([]byte("never read")); err != nil {
				return err
			}
			time.Sleep(50 * time.Millisecond) // let it arrive
			return p.Client.Close()
		}, true},
		{"plain", func(p *lab.Pair) error { return p.Client.Close() }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			pair, err := l.Pair(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			defer pair.Close()
			if _, err := l.WaitSubflows(ctx, l.Server, 1, true); err != nil {
				t.Fatal(err)
			}
			srv := mib(t, l, l.Server)
			if err := tc.close(pair); err != nil {
				t.Fatal(err)
			}
			if !tc.fastclose {
				time.Sleep(200 * time.Millisecond)
				if d := mib(t, l, l.Server).Sub(srv); d.MPTCP("MPFastcloseRx") != 0 || d.MPTCP("MPRstRx") != 0 {
					t.Fatalf("plain close: MPFastcloseRx %d MPRstRx %d, want 0", d.MPTCP("MPFastcloseRx"), d.MPTCP("MPRstRx"))
				}
				return
			}
			// One MP_FASTCLOSE per subflow: two paths, two.
			d, err := l.WaitMIB(ctx, l.Server, srv, "MPTcpExt.MPFastcloseRx", 2)
			if err != nil {
				t.Fatal(err)
			}
			if d.MPTCP("MPRstRx") != 2 {
				t.Errorf("MPRstRx +%d, want 2", d.MPTCP("MPRstRx"))
			}
		})
	}
}
