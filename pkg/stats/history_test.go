package stats_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// historyReader enables the subflow history under a temporary bpffs root (so that no other test's
// reader, which looks at the default root, ever sees it) and returns a reader that uses it.
func historyReader(t *testing.T, maxAge time.Duration) (*stats.Reader, *loader.Loader) {
	t.Helper()
	testutil.RequireRoot(t)
	base := testutil.TempBPFFS(t, "mx-histtest-")
	l, err := loader.New(filepath.Join(base, "mptcp-xdp"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.EnableHistory(loader.HistoryOptions{MaxAge: maxAge, MaxEntries: 4096}); err != nil {
		t.Fatalf("enable history: %v", err)
	}
	t.Cleanup(func() {
		if err := l.DisableHistory(); err != nil {
			t.Errorf("disable history: %v", err)
		}
		if _, err := os.Stat(l.HistoryRoot()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("disable left %s behind (%v)", l.HistoryRoot(), err)
		}
	})
	r := newReader(t)
	r.SetHistoryDir(l.HistoryRoot())
	return r, l
}

// connOf reads the connection with token tok in ns.
func connOf(t *testing.T, r *stats.Reader, ns string, tok stats.Token) *stats.Connection {
	t.Helper()
	conns, err := r.Connections(ns)
	if err != nil {
		t.Fatal(err)
	}
	return stats.Find(conns, tok)
}

// TestHistorySubflowRemoved removes a subflow mid-transfer (`ip mptcp endpoint del` on the client of
// a 3-path lab, data flowing client → server) and reads both ends every few milliseconds throughout:
// the connection's byte and retransmit totals never decrease, the removed subflow is listed closed
// with final figures no lower than the iterator last saw and bounded by the bytes written, with its
// establishment and close times; it is not listed in any other namespace; it ages out.
func TestHistorySubflowRemoved(t *testing.T) {
	r, hl := historyReader(t, time.Hour)
	l := testutil.NewLab(t, lab.Config{Paths: 3, Subflows: true, RatesMbit: []int{40, 40, 40}})
	other := testutil.NewLab(t, lab.Config{Paths: 2, Subflows: true})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A connection in the other lab too, whose subflow is removed as well: its closed subflow must
	// never show in this lab's namespaces (nor this lab's in its).
	op, err := other.Pair(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer op.Close()

	p, err := l.Pair(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var written, read atomic.Uint64
	stop := make(chan struct{})
	done := make(chan error, 2)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			n, err := p.Client.Write(buf)
			written.Add(uint64(n))
			if err != nil {
				done <- err
				return
			}
		}
	}()
	go func() {
		n, _ := io.Copy(io.Discard, p.Server)
		read.Add(uint64(n))
		done <- nil
	}()

	// The client's token, from its iterator records: the connection with 3 live subflows.
	var tok stats.Token
	for found := false; !found; {
		conns, err := r.Connections(l.Client)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range conns {
			if c.Live() == 3 && c.Totals().BytesAcked > 1<<20 {
				tok, found = c.Token, true
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no connection with 3 subflows and data in %s", l.Client)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c := connOf(t, r, l.Client, tok)
	for _, s := range c.Subflows {
		if s.Established.IsZero() || time.Since(s.Established) > time.Minute || time.Since(s.Established) < 0 {
			t.Errorf("live subflow %d: established %v, want a time of the last minute", s.Cookie, s.Established)
		}
	}

	// The subflow to remove: the one from path 1's client address.
	var victim stats.Subflow
	for _, s := range c.Subflows {
		if s.Local.Addr() == l.Paths[1].ClientIP4 {
			victim = s
		}
	}
	if victim.Cookie == 0 || victim.Role() != "join" {
		t.Fatalf("no join subflow from %s: %+v", l.Paths[1].ClientIP4, c.Subflows)
	}
	eps, err := l.Endpoints(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	epID := 0
	for _, e := range eps {
		if e.Address == l.Paths[1].ClientIP4.String() {
			epID = e.ID
		}
	}

	var last stats.Subflow // the victim as the iterator last saw it
	var prev stats.Totals
	check := func(now stats.Totals) {
		t.Helper()
		if now.BytesSent < prev.BytesSent || now.BytesAcked < prev.BytesAcked ||
			now.BytesRetrans < prev.BytesRetrans || now.TotalRetrans < prev.TotalRetrans || now.SegsOut < prev.SegsOut {
			t.Fatalf("client totals went backwards: %+v then %+v", prev, now)
		}
		prev = now
	}
	var srvPrev uint64
	removed := false
	reads := 0
	var closed *stats.Subflow
	for deadline := time.Now().Add(30 * time.Second); closed == nil; reads++ {
		if time.Now().After(deadline) {
			t.Fatalf("subflow %d never listed closed after endpoint %d was deleted", victim.Cookie, epID)
		}
		c := connOf(t, r, l.Client, tok)
		if c == nil {
			t.Fatal("connection vanished")
		}
		check(c.Totals())
		if sc := connOf(t, r, l.Server, srvToken(t, r, l.Server)); sc != nil {
			got := sc.Totals().BytesReceived
			if got < srvPrev {
				t.Fatalf("server bytes received went backwards: %d then %d", srvPrev, got)
			}
			srvPrev = got
		}
		for i := range c.Subflows {
			s := c.Subflows[i]
			if s.Cookie != victim.Cookie {
				continue
			}
			if s.Closed {
				closed = &s
			} else {
				last = s
			}
		}
		if !removed && reads >= 20 { // a few reads with three live subflows first
			if err := l.DelEndpoint(l.Client, epID); err != nil {
				t.Fatal(err)
			}
			if err := other.FlushEndpoints(other.Client); err != nil {
				t.Fatal(err)
			}
			removed = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A few more reads while data still flows on the other subflows.
	for range 20 {
		check(connOf(t, r, l.Client, tok).Totals())
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	t.Logf("%d reads; victim last seen live: sent %d acked %d; closed: sent %d acked %d retrans %d, state %s, role %s, lived %s",
		reads, last.BytesSent, last.BytesAcked, closed.BytesSent, closed.BytesAcked, closed.TotalRetrans, closed.State, closed.Role(),
		closed.ClosedAt.Sub(closed.Established))

	if closed.BytesAcked < last.BytesAcked || closed.BytesSent < last.BytesSent || closed.SegsOut < last.SegsOut ||
		closed.TotalRetrans < last.TotalRetrans {
		t.Errorf("final figures below the last live ones:\nlive   %+v\nclosed %+v", last, *closed)
	}
	if w := written.Load(); closed.BytesAcked == 0 || closed.BytesAcked > w+2 {
		t.Errorf("closed subflow acked %d bytes; want 1 to %d (written + SYN/FIN)", closed.BytesAcked, w+2)
	}
	if closed.Token != tok || closed.Local != victim.Local || closed.Remote != victim.Remote || closed.ID != victim.ID ||
		closed.LocalID != victim.LocalID || closed.RemoteID != victim.RemoteID || closed.Role() != "join" || closed.State != stats.StateClose {
		t.Errorf("closed subflow identity:\n%+v\nwant that of\n%+v", *closed, victim)
	}
	if closed.Established.IsZero() || closed.ClosedAt.Before(closed.Established) || time.Since(closed.ClosedAt) > time.Minute {
		t.Errorf("closed subflow times: established %v closed %v", closed.Established, closed.ClosedAt)
	}

	// Namespaces: this lab's closed subflows only in their namespace; the other lab's only in its.
	mine := closedCookies(t, r, l.Client)
	if !mine[victim.Cookie] {
		t.Errorf("victim %d not among %s's closed subflows", victim.Cookie, l.Client)
	}
	theirs := closedCookies(t, r, other.Client)
	deadline := time.Now().Add(10 * time.Second)
	for len(theirs) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		theirs = closedCookies(t, r, other.Client)
	}
	if len(theirs) == 0 {
		t.Errorf("the other lab's removed subflow is not listed closed in %s", other.Client)
	}
	for _, ns := range []string{l.Server, other.Client, other.Server, ""} {
		for ck := range closedCookies(t, r, ns) {
			if mine[ck] {
				t.Errorf("%s's closed subflow %d listed in namespace %q", l.Client, ck, ns)
			}
		}
	}
	for ck := range theirs {
		if mine[ck] {
			t.Errorf("%s's closed subflow %d listed in %s", other.Client, ck, l.Client)
		}
	}

	// Aging: with a 1 s age limit, the closed entries go from listings and from the map.
	if _, err := hl.EnableHistory(loader.HistoryOptions{MaxAge: time.Second}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := closedCookies(t, r, l.Client); got[victim.Cookie] {
		t.Errorf("closed subflow still listed after the 1s age limit")
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(hl.HistoryRoot(), loader.PinHistoryMap), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v []byte
	if err := m.Lookup(victim.Cookie, &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("aged-out entry still in the map (lookup: %v)", err)
	}
	if c := connOf(t, r, l.Client, tok); c == nil || c.Live() != 2 {
		t.Errorf("after aging, connection %v: want its 2 live subflows", c)
	}
	if err := <-done; err != nil {
		t.Fatalf("transfer: %v", err)
	}
}

// srvToken is the token of the server end's one connection in ns.
func srvToken(t *testing.T, r *stats.Reader, ns string) stats.Token {
	t.Helper()
	conns, err := r.Connections(ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		if c.Live() > 0 {
			return c.Token
		}
	}
	return 0
}

func closedCookies(t *testing.T, r *stats.Reader, ns string) map[uint64]bool {
	t.Helper()
	sfs, err := r.Subflows(ns)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, s := range sfs {
		if s.Closed {
			out[s.Cookie] = true
		}
	}
	return out
}
