package sockopt_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// pair is one MPTCP connection across a lab: the client's and the server's end.
type pair struct {
	lab    *lab.Lab
	client *net.TCPConn
	server *net.TCPConn
}

// family names a test variant.
func family(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}

// newPair builds a lab with the given number of paths, dials one MPTCP connection over IPv4 or
// IPv6 and waits until both ends have one subflow per path.
func newPair(t testing.TB, paths int, v6 bool) *pair {
	t.Helper()
	l := testutil.NewLab(t, lab.Config{Paths: paths, Subflows: true, IPv6: v6})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	host := l.Paths[0].ServerIP4.String()
	if v6 {
		host = l.Paths[0].ServerIP6.String()
	}
	lp, err := l.Pair(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lp.Close() })
	p := &pair{lab: l, client: lp.Client.(*net.TCPConn), server: lp.Server.(*net.TCPConn)}
	p.waitSubflows(t, paths)
	return p
}

// exchange writes n bytes client→server and m bytes server→client and reads them fully.
func (p *pair) exchange(t testing.TB, n, m int) {
	t.Helper()
	errc := make(chan error, 2)
	go func() { _, err := p.client.Write(make([]byte, n)); errc <- err }()
	go func() { _, err := p.server.Write(make([]byte, m)); errc <- err }()
	if _, err := io.ReadFull(p.server, make([]byte, n)); err != nil {
		t.Fatalf("server read: %v", err)
	}
	if _, err := io.ReadFull(p.client, make([]byte, m)); err != nil {
		t.Fatalf("client read: %v", err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
}

// waitSubflows waits until both ends have n established subflows.
func (p *pair) waitSubflows(t testing.TB, n int) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ci, err1 := sockopt.TCPInfo(p.client)
		si, err2 := sockopt.TCPInfo(p.server)
		if err1 != nil || err2 != nil {
			t.Fatalf("TCPInfo: client %v, server %v", err1, err2)
		}
		if established(ci) == n && established(si) == n {
			return
		}
		last = fmt.Sprintf("client %d/%d, server %d/%d established", established(ci), len(ci), established(si), len(si))
	}
	t.Fatalf("want %d subflows on both ends: %s", n, last)
}

func established(ti []sockopt.SubflowTCPInfo) int {
	n := 0
	for _, t := range ti {
		if t.StateName() == "ESTAB" {
			n++
		}
	}
	return n
}
