package lab_test

import (
	"context"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/netns"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// serveDiscard accepts connections and reads them to EOF.
func serveDiscard(t *testing.T, ln net.Listener) {
	t.Helper()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
}

func TestTwoSubflows(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Subflows: true})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := l.Listen(ctx, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serveDiscard(t, ln)
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := l.Dial(ctx, net.JoinHostPort(l.Paths[0].ServerIP4.String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !lab.IsMPTCP(c) {
		t.Fatal("connection fell back to TCP")
	}
	// The client's path manager opens subflows once the connection is fully established, which
	// takes the first data.
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	conn := waitConn(t, l, l.Server, func(c lab.Conn) bool { return c.State == "ESTAB" && c.Subflows == 1 })
	t.Logf("server conn: %+v", conn)
	after, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	if d.MPTCP("MPJoinAckRx") != 1 || d.MPTCP("MPCapableSYNRX") != 1 {
		t.Errorf("server MIB deltas: MPJoinAckRx %d MPCapableSYNRX %d, want 1 and 1",
			d.MPTCP("MPJoinAckRx"), d.MPTCP("MPCapableSYNRX"))
	}
}

// waitConn polls `ss -M` in ns until a connection satisfies ok.
func waitConn(t *testing.T, l *lab.Lab, ns string, ok func(lab.Conn) bool) lab.Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last []lab.Conn
	for time.Now().Before(deadline) {
		conns, err := l.Subflows(ns)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if ok(c) {
				return c
			}
		}
		last = conns
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no matching MPTCP connection in %s; have %+v", ns, last)
	return lab.Conn{}
}

func TestCloseRemovesNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := lab.New(lab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !netns.Exists(l.Client) || !netns.Exists(l.Server) {
		t.Fatal("namespaces missing after New")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, ns := range []string{l.Client, l.Server} {
		if strings.Contains(string(out), ns) || netns.Exists(ns) {
			t.Errorf("namespace %s still exists after Close", ns)
		}
	}
}
