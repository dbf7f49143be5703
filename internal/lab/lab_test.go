package lab_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
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

func TestTransferRatesSplitTraffic(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Subflows: true, RatesMbit: []int{200, 40}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var ticks int
	res, err := l.Transfer(ctx, lab.TransferConfig{Duration: 2 * time.Second, Interval: 500 * time.Millisecond,
		OnTick: func(tk lab.TransferTick) {
			ticks++
			t.Logf("tick %v: %.1f Mbit/s %v", tk.Elapsed.Round(time.Millisecond), tk.TotalMbps, tk.Paths)
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("result %+v", res)
	if !res.MPTCP || !res.ChecksumOK || res.Sent == 0 || res.Sent != res.Received {
		t.Fatalf("transfer: %+v", res)
	}
	if ticks < 3 {
		t.Errorf("%d ticks, want >= 3", ticks)
	}
	if res.PathBytes[1] == 0 || res.PathBytes[0] <= res.PathBytes[1] {
		t.Errorf("path bytes %v: want both used, path 0 (200 Mbit/s) more than path 1 (40 Mbit/s)", res.PathBytes)
	}
	// Neither path exceeds its rate by much: tbf shapes at the sender.
	secs := res.Duration.Seconds()
	for i, max := range []float64{200, 40} {
		if got := float64(res.PathBytes[i]) * 8 / secs / 1e6; got > max*1.15 {
			t.Errorf("path %d carried %.1f Mbit/s, above its %v Mbit/s rate", i, got, max)
		}
	}
}

func TestIPv6(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Subflows: true, IPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.Transfer(ctx, lab.TransferConfig{Duration: 500 * time.Millisecond, Addr: l.Paths[0].ServerIP6.String()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.MPTCP || !res.ChecksumOK || res.Sent == 0 {
		t.Fatalf("transfer: %+v", res)
	}
	after, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	if d.MPTCP("MPJoinAckRx") != 1 || d["Ip6.InReceives"] == 0 {
		t.Errorf("MPJoinAckRx %d Ip6.InReceives %d: want an IPv6 join", d.MPTCP("MPJoinAckRx"), d["Ip6.InReceives"])
	}
	if res.PathBytes[1] == 0 {
		t.Errorf("path bytes %v: the IPv6 subflow on path 1 carried nothing", res.PathBytes)
	}
}

func TestNewFailureCleansUp(t *testing.T) {
	testutil.RequireRoot(t)
	restore := lab.SetSetupHook(func(step string) error { return errors.New("injected") })
	defer restore()
	prefix := "mxfail" + strconv.Itoa(os.Getpid()%100000)
	_, err := lab.New(lab.Config{Prefix: prefix})
	if err == nil || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("New: %v, want the injected error", err)
	}
	for _, ns := range []string{prefix + "-cli", prefix + "-srv"} {
		if netns.Exists(ns) {
			netns.Delete(ns)
			t.Errorf("%s left behind", ns)
		}
	}
}

func TestNewLeavesForeignNamespaces(t *testing.T) {
	testutil.RequireRoot(t)
	prefix := "mxforeign" + strconv.Itoa(os.Getpid()%100000)
	srv := prefix + "-srv"
	if err := netns.Create(srv); err != nil {
		t.Fatal(err)
	}
	defer netns.Delete(srv)
	if _, err := lab.New(lab.Config{Prefix: prefix}); err == nil {
		t.Fatal("New succeeded over an existing namespace")
	}
	if !netns.Exists(srv) {
		t.Error("New deleted a namespace it did not make")
	}
	if netns.Exists(prefix + "-cli") {
		netns.Delete(prefix + "-cli")
		t.Error("client namespace left behind")
	}
}
