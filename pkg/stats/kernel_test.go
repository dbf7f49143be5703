package stats_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

func newReader(t testing.TB) *stats.Reader {
	t.Helper()
	testutil.RequireRoot(t)
	r, err := stats.NewReader()
	if err != nil {
		t.Fatalf("new reader: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close reader: %v", err)
		}
	})
	return r
}

// TestProbe: this kernel has everything the iterator needs, so the probe must pass.
func TestProbe(t *testing.T) {
	if err := stats.Probe(); err != nil {
		t.Fatal(err)
	}
}

// conn is one MPTCP connection of a test: both ends, and the tokens getsockopt gives for them.
type conn struct {
	name                     string
	client, server           *net.TCPConn
	clientToken, serverToken stats.Token
}

// TestKernel checks the iterator against the kernel's own views — `ss -M`, `ss -tie` and
// getsockopt(MPTCP_FULL_INFO) — for MPTCP connections with 1, 2 and 4 subflows over IPv4 and IPv6,
// on both ends, while quiet and after a transfer. The 2-path lab also holds a plain TCP connection
// and an MPTCP connection that fell back to TCP.
func TestKernel(t *testing.T) {
	r := newReader(t)
	for _, paths := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("%dsubflows", paths), func(t *testing.T) {
			l := testutil.NewLab(t, lab.Config{Paths: paths, Subflows: true, IPv6: true})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conns := []*conn{
				newConn(ctx, t, l, "ipv4", l.Paths[0].ServerIP4),
				newConn(ctx, t, l, "ipv6", l.Paths[0].ServerIP6),
			}
			if paths == 2 {
				plainAndFallback(ctx, t, l)
			}
			for _, c := range conns {
				for _, e := range []struct {
					ns    string
					token stats.Token
				}{{l.Client, c.clientToken}, {l.Server, c.serverToken}} {
					if err := waitSubflows(ctx, r, e.ns, e.token, paths); err != nil {
						t.Fatalf("%s: %v", c.name, err)
					}
				}
			}
			for _, ns := range []string{l.Client, l.Server} {
				side := strings.TrimPrefix(ns, l.Config.Prefix+"-")
				t.Run("ss/"+side, func(t *testing.T) { agreeSS(ctx, t, r, ns) })
			}
			for _, c := range conns {
				t.Run("tcpinfo/quiet/"+c.name, func(t *testing.T) {
					agreeTCPInfo(t, r, l.Client, c.client, c.clientToken, paths)
					agreeTCPInfo(t, r, l.Server, c.server, c.serverToken, paths)
				})
			}
			for _, c := range conns {
				transfer(t, c, 1<<20, 256<<10)
			}
			for _, c := range conns {
				t.Run("tcpinfo/after-transfer/"+c.name, func(t *testing.T) {
					agreeTCPInfo(t, r, l.Client, c.client, c.clientToken, paths)
					agreeTCPInfo(t, r, l.Server, c.server, c.serverToken, paths)
				})
			}
			if paths == 2 {
				t.Run("concurrent", func(t *testing.T) { concurrentReads(t, r, l.Client, 2*paths+1) })
			}
			t.Run("isolation", func(t *testing.T) {
				// The test's own network namespace holds none of the lab's subflows.
				sfs, err := r.Subflows("")
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range sfs {
					for _, c := range conns {
						if s.Token == c.clientToken || s.Token == c.serverToken {
							t.Errorf("subflow %v of the lab seen outside it", s.Local)
						}
					}
				}
			})
		})
	}
}

// newConn dials one MPTCP connection to host and learns both tokens with getsockopt.
func newConn(ctx context.Context, t *testing.T, l *lab.Lab, name string, host netip.Addr) *conn {
	t.Helper()
	p, err := l.Pair(ctx, host.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := &conn{name: name, client: p.Client.(*net.TCPConn), server: p.Server.(*net.TCPConn)}
	for _, e := range []struct {
		c   *net.TCPConn
		tok *stats.Token
	}{{c.client, &c.clientToken}, {c.server, &c.serverToken}} {
		info, err := sockopt.Info(e.c)
		if err != nil {
			t.Fatalf("%s: MPTCP_INFO: %v", name, err)
		}
		*e.tok = stats.Token(info.Token)
	}
	return c
}

// plainAndFallback opens a plain TCP connection to the lab's MPTCP listener port space and an
// MPTCP connection to a plain TCP listener (which falls back to TCP); both stay open for the test.
func plainAndFallback(ctx context.Context, t *testing.T, l *lab.Lab) {
	t.Helper()
	var ln net.Listener
	if err := netns.Do(l.Server, func() error {
		var err error
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // Go listeners use MPTCP by default since 1.24
		ln, err = lc.Listen(ctx, "tcp", ":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	addr := net.JoinHostPort(l.Paths[0].ServerIP4.String(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	var plain net.Conn
	if err := netns.Do(l.Client, func() error {
		var err error
		var d net.Dialer
		d.SetMultipathTCP(false)
		plain, err = d.DialContext(ctx, "tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	fb, err := lab.DialFrom(ctx, l.Client, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fb.Close() })
	for range 2 {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
	}
	if lab.IsMPTCP(fb) {
		t.Fatal("an MPTCP connection to a plain TCP listener did not fall back")
	}
}

// waitSubflows polls the iterator until connection tok of ns has n live subflows.
func waitSubflows(ctx context.Context, r *stats.Reader, ns string, tok stats.Token, n int) error {
	for {
		conns, err := r.Connections(ns)
		if err != nil {
			return err
		}
		got := 0
		if c := stats.Find(conns, tok); c != nil {
			got = c.Live()
		}
		if got == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connection %v in %s: %d subflows, want %d: %w", tok, ns, got, n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// agreeSS compares the iterator with `ss -M` (connections, tokens, subflow counts) and `ss -tie`
// (each subflow's cookie, addresses, state, token, address ids and flags). The two reads are not
// atomic, so a difference is retried until ctx ends.
func agreeSS(ctx context.Context, t *testing.T, r *stats.Reader, ns string) {
	for {
		diff, err := diffSS(r, ns)
		if err != nil {
			t.Fatal(err)
		}
		if diff == "" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("iterator and ss disagree in %s:\n%s", ns, diff)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func diffSS(r *stats.Reader, ns string) (string, error) {
	conns, err := r.Connections(ns)
	if err != nil {
		return "", err
	}
	ssConns, err := (&lab.Lab{}).Subflows(ns)
	if err != nil {
		return "", err
	}
	ssSfs, err := ssSubflows(ns)
	if err != nil {
		return "", err
	}
	var d strings.Builder
	// Connections: ss -M lists MPTCP sockets; "subflows" there counts those beyond the first.
	want := map[stats.Token]int{}
	for _, c := range ssConns {
		if c.State != "LISTEN" {
			want[stats.Token(c.Token)] = c.Subflows + 1
		}
	}
	got := map[stats.Token]int{}
	for _, c := range conns {
		got[c.Token] = c.Live()
	}
	if !reflect.DeepEqual(got, want) {
		fmt.Fprintf(&d, "connections (token: subflows): iterator %v, ss -M %v\n", got, want)
	}
	if len(want) == 0 {
		fmt.Fprintf(&d, "ss -M shows no MPTCP connection\n")
	}
	// Subflows, by cookie.
	bySS := map[uint64]ssSubflow{}
	for _, s := range ssSfs {
		bySS[s.Cookie] = s
	}
	seen := map[uint64]bool{}
	for _, c := range conns {
		for _, s := range c.Subflows {
			seen[s.Cookie] = true
			w, ok := bySS[s.Cookie]
			if !ok {
				fmt.Fprintf(&d, "subflow %x (%v -> %v) not an MPTCP subflow for ss\n", s.Cookie, s.Local, s.Remote)
				continue
			}
			g := ssSubflow{State: s.State.String(), Local: s.Local, Remote: s.Remote, Cookie: s.Cookie,
				Token: uint32(s.Token), LocalID: s.LocalID, RemoteID: s.RemoteID, Flags: s.Flags.String()}
			if g != w {
				fmt.Fprintf(&d, "subflow %x: iterator %+v, ss %+v\n", s.Cookie, g, w)
			}
		}
	}
	for _, s := range ssSfs {
		if !seen[s.Cookie] {
			fmt.Fprintf(&d, "subflow %x (%v -> %v) missing from the iterator\n", s.Cookie, s.Local, s.Remote)
		}
	}
	return d.String(), nil
}

// agreeTCPInfo compares the figures of connection tok's subflows with what
// getsockopt(MPTCP_FULL_INFO) on its socket returns, matched by subflow id and checked by address.
// An iterator read, the getsockopt and a second iterator read are repeated until both iterator
// reads agree (nothing moved in between); then every figure must be equal.
//
// Without MPTCP_FULL_INFO (before 6.5) FullInfo makes the three older calls, which give no ids: the
// subflows are then matched by their addresses alone.
func agreeTCPInfo(t *testing.T, r *stats.Reader, ns string, c *net.TCPConn, tok stats.Token, n int) {
	t.Helper()
	hasFullInfo, err := testutil.KernelHasStruct("mptcp_full_info")
	if err != nil {
		t.Fatal(err)
	}
	var last string
	for range 50 {
		a, err := subflowsOf(r, ns, tok)
		if err != nil {
			t.Fatal(err)
		}
		full, err := sockopt.FullInfo(c)
		if err != nil {
			t.Fatalf("MPTCP_FULL_INFO: %v", err)
		}
		b, err := subflowsOf(r, ns, tok)
		if err != nil {
			t.Fatal(err)
		}
		if full.IDs != hasFullInfo {
			t.Fatalf("FullInfo gave subflow ids %v on a kernel whose MPTCP_FULL_INFO exists: %v (the separate calls give none)", full.IDs, hasFullInfo)
		}
		if stats.Token(full.Info.Token) != tok {
			t.Fatalf("token: getsockopt %v, iterator %v", stats.Token(full.Info.Token), tok)
		}
		if !reflect.DeepEqual(a, b) {
			last = "the connection was not quiet"
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if last = diffTCPInfo(a, full, n); last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("connection %v in %s: %s", tok, ns, last)
}

func subflowsOf(r *stats.Reader, ns string, tok stats.Token) ([]stats.Subflow, error) {
	conns, err := r.Connections(ns)
	if err != nil {
		return nil, err
	}
	if c := stats.Find(conns, tok); c != nil {
		return c.Subflows, nil
	}
	return nil, nil
}

func diffTCPInfo(sfs []stats.Subflow, full *sockopt.Full, n int) string {
	var d strings.Builder
	if len(sfs) != n || len(full.Subflows) != n {
		fmt.Fprintf(&d, "subflows: iterator %d, getsockopt %d, want %d\n", len(sfs), len(full.Subflows), n)
	}
	for _, k := range full.Subflows {
		i := slices.IndexFunc(sfs, func(s stats.Subflow) bool {
			if !full.IDs {
				return s.Local == k.Addr.Local && s.Remote == k.Addr.Remote
			}
			return s.ID == k.ID
		})
		if i < 0 {
			fmt.Fprintf(&d, "subflow id %d (%v -> %v) missing from the iterator\n", k.ID, k.Addr.Local, k.Addr.Remote)
			continue
		}
		s, ti := sfs[i], k.TCP
		minRTT := time.Duration(ti.MinRTT) * time.Microsecond
		if ti.MinRTT == ^uint32(0) {
			minRTT = 0
		}
		for _, f := range []struct {
			name      string
			got, want any
		}{
			{"local", s.Local, k.Addr.Local},
			{"remote", s.Remote, k.Addr.Remote},
			{"state", uint8(s.State), ti.State},
			{"srtt", s.SRTT, time.Duration(ti.RTT) * time.Microsecond},
			{"rttvar", s.RTTVar, time.Duration(ti.RTTVar) * time.Microsecond},
			{"min_rtt", s.MinRTT, minRTT},
			{"cwnd", s.Cwnd, ti.SndCwnd},
			{"ssthresh", s.Ssthresh, ti.SndSsthresh},
			{"mss", s.MSS, ti.SndMSS},
			{"bytes_sent", s.BytesSent, ti.BytesSent},
			{"bytes_acked", s.BytesAcked, ti.BytesAcked},
			{"bytes_received", s.BytesReceived, ti.BytesReceived},
			{"bytes_retrans", s.BytesRetrans, ti.BytesRetrans},
			{"total_retrans", s.TotalRetrans, ti.TotalRetrans},
			{"retrans", s.Retrans, ti.Retrans},
			{"lost", s.Lost, ti.Lost},
			{"segs_in", s.SegsIn, ti.SegsIn},
			{"segs_out", s.SegsOut, ti.SegsOut},
			{"data_segs_in", s.DataSegsIn, ti.DataSegsIn},
			{"data_segs_out", s.DataSegsOut, ti.DataSegsOut},
			{"delivery_rate", s.DeliveryRate, ti.DeliveryRate},
			{"pacing_rate", s.PacingRate, ti.PacingRate},
		} {
			if f.got != f.want {
				fmt.Fprintf(&d, "subflow id %d %s: iterator %v, getsockopt %v\n", k.ID, f.name, f.got, f.want)
			}
		}
		// The JSON figures of both commands (subflow list, tcpinfo) agree as well.
		if got, want := s.Figures(), stats.FiguresOf(&ti); got != want {
			fmt.Fprintf(&d, "subflow id %d figures: iterator %+v, getsockopt %+v\n", k.ID, got, want)
		}
	}
	return d.String()
}

// transfer sends up bytes client→server and down bytes server→client, reading both fully.
func transfer(t *testing.T, c *conn, up, down int) {
	t.Helper()
	errc := make(chan error, 2)
	go func() { _, err := c.client.Write(make([]byte, up)); errc <- err }()
	go func() { _, err := c.server.Write(make([]byte, down)); errc <- err }()
	if _, err := io.ReadFull(c.server, make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c.client, make([]byte, down)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

// concurrentReads reads ns from several goroutines at once with one Reader (as an exporter
// serving parallel scrapes does): every read sees the same quiet subflows.
func concurrentReads(t *testing.T, r *stats.Reader, ns string, want int) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range cap(errs) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				sfs, err := r.Subflows(ns)
				if err == nil && len(sfs) != want {
					err = fmt.Errorf("%d subflows, want %d", len(sfs), want)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
