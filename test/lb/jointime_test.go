package lb

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

var (
	joinRuns   = flag.Int("jointime.runs", 1, "TestJoinCompletionTimes: labs built and measured one after the other")
	joinConns  = flag.Int("jointime.conns", 60, "TestJoinCompletionTimes: connections dialed per lab")
	joinPar    = flag.Int("jointime.par", 1, "TestJoinCompletionTimes: dials at a time (1: one after the other, as demo --lb)")
	joinRounds = flag.Int("jointime.rounds", 1, "TestJoinCompletionTimes: rounds of dialing, measuring and closing in each lab (later rounds may reuse the 5-tuples of earlier ones)")
	joinPorts  = flag.String("jointime.ports", "", "TestJoinCompletionTimes: the client's net.ipv4.ip_local_port_range (\"LO HI\"); a narrow one makes rounds reuse 5-tuples")
	joinFlood  = flag.Bool("jointime.flood", false, "TestJoinCompletionTimes: send forged MP_JOIN SYNs (random tokens) at the VIP over the first path while dialing, as TestJoinSteering does")
	joinPcap   = flag.String("jointime.pcap", "", "TestJoinCompletionTimes: directory for tcpdump captures of every namespace, one set per run")
)

const (
	// joinBound is how long a join may take to be answered: far beyond the SYN retransmissions a
	// dropped join SYN gets (1 s apart for the first net.ipv4.tcp_syn_linear_timeouts = 4, here
	// measured at 1.3, 2.5, 3.5 and 4.5 s, then doubling), so a join not answered by then never
	// will be.
	joinBound = 30 * time.Second
	// pollEvery is the pause between two readings of the client's subflows with ss.
	pollEvery = 10 * time.Millisecond
	// never is a time not seen.
	never time.Duration = math.MinInt64
)

// How long each connection's join takes through the balancer with join steering (l2, IPv4). The
// connections are dialed (one after the other by default, as demo --lb does) while the client's
// kernel reports its path-manager events (mptcp_pm_events: the connection created, fully
// established, a join's SYN-ACK validated, a subflow closed) and its subflows are read with ss every
// pollEvery. For every connection it records the times from its dial returning (the server's
// first byte read) to those events, and the join's state as ss last saw it. The distribution is
// logged; the assertions are what the kernel guarantees when steering works: every join answered
// within joinBound and on both ends, no backend refusing a join (MPJoinNoTokenFound 0), the
// client's MIB agreeing (one MPJoinSynAckRx per connection). -jointime.runs, -jointime.conns,
// -jointime.par and -jointime.pcap repeat, resize and capture it.
func TestJoinCompletionTimes(t *testing.T) {
	var all []joinTime
	for r := range *joinRuns {
		t.Run("run"+strconv.Itoa(r), func(t *testing.T) {
			all = append(all, joinTimesRun(t, r)...)
		})
	}
	if *joinRuns > 1 {
		t.Logf("all %d runs, %d connections:", *joinRuns, len(all))
		logJoinTimes(t, all)
		for _, x := range all {
			if x.slow() {
				t.Logf("  slow: %s", x)
			}
		}
	}
}

// joinTime is what the client's kernel showed of one connection and its join. Times are since
// the dial returned (negative: before), or never.
type joinTime struct {
	run, round  int
	idx         int
	local       string        // the connection's client address (first subflow)
	dialed      time.Duration // how long the dial took (SYN to the server's first byte)
	created     time.Duration // MPTCP_EVENT_CREATED (before the dial returned: negative)
	established time.Duration // MPTCP_EVENT_ESTABLISHED: fully established, the path manager may join
	answered    time.Duration // MPTCP_EVENT_SUB_ESTABLISHED: the join's SYN-ACK validated
	subClosed   int           // MPTCP_EVENT_SUB_CLOSED events (failed joins)
	seen        time.Duration // ss first showed the join subflow (any state)
	ssEstab     time.Duration // ss first showed it fully established (flag e)
	sub         lablb.Subflow // the join subflow as ss last showed it
	unanswered  int           // ss readings that showed the join before its SYN-ACK
}

// slow: a join not answered within 200 ms of the connection being fully established, or one whose
// subflow retransmitted.
func (x joinTime) slow() bool {
	return x.answered == never || x.established == never || x.answered-x.established > 200*time.Millisecond || x.sub.Retrans > 0 || x.subClosed > 0
}

func (x joinTime) String() string {
	return fmt.Sprintf("run %d round %d conn %d %s dial %s: created %s established %s join answered %s (ss: seen %s, established %s, %d readings unanswered, %s -> %s %s retrans %d, remote token %08x), %d subflows closed",
		x.run, x.round, x.idx, x.local, fmtDur(x.dialed), fmtDur(x.created), fmtDur(x.established), fmtDur(x.answered),
		fmtDur(x.seen), fmtDur(x.ssEstab), x.unanswered, x.sub.Local, x.sub.Peer, x.sub.State, x.sub.Retrans, x.sub.RemoteToken, x.subClosed)
}

// subflowLog is what the ss poller learns of the client's join subflows, keyed by local token.
type subflowLog struct {
	mu    sync.Mutex
	seen  map[uint32]time.Time     // join subflow first seen
	full  map[uint32]time.Time     // ... first seen fully established
	last  map[uint32]lablb.Subflow // ... as last seen
	early map[uint32]int           // readings of it before it was ESTAB
	reads int
	spent time.Duration
	err   error
}

func (p *subflowLog) poll(ctx context.Context, l *lablb.Lab) {
	for ctx.Err() == nil {
		t0 := time.Now()
		subs, err := l.Subflows(l.Client)
		now := time.Now()
		p.mu.Lock()
		p.reads++
		p.spent += now.Sub(t0)
		if err != nil {
			p.err = err
			p.mu.Unlock()
			return
		}
		for _, s := range subs {
			if !s.Join {
				continue
			}
			p.last[s.Token] = s
			if _, ok := p.seen[s.Token]; !ok {
				p.seen[s.Token] = now
			}
			if s.State != "ESTAB" {
				p.early[s.Token]++
			}
			if _, ok := p.full[s.Token]; !ok && s.Established {
				p.full[s.Token] = now
			}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(pollEvery):
		}
	}
}

func joinTimesRun(t *testing.T, run int) []joinTime {
	s := newJoinTimeSetup(t)
	if *joinPorts != "" {
		if err := lab.WriteSysctls(s.Client, map[string]string{"net/ipv4/ip_local_port_range": *joinPorts}); err != nil {
			t.Fatal(err)
		}
	}
	if *joinPcap != "" {
		startCaptures(t, s, filepath.Join(*joinPcap, "run"+strconv.Itoa(run)))
	}
	var jt []joinTime
	for r := range *joinRounds {
		jt = append(jt, joinTimesRound(t, s, run, r)...)
	}
	return jt
}

// joinTimesRound dials the connections, measures their joins, checks the kernels' counters and
// closes the connections.
func joinTimesRound(t *testing.T, s *setup, run, round int) []joinTime {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	n := *joinConns
	base := s.mibs(t)
	cbase, err := s.MIB(s.Client)
	if err != nil {
		t.Fatal(err)
	}
	st0 := lbStatus(t, s.LB).Stats
	evs, err := listenMPTCPEvents(s.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer evs.Close()
	p := &subflowLog{seen: map[uint32]time.Time{}, full: map[uint32]time.Time{}, last: map[uint32]lablb.Subflow{}, early: map[uint32]int{}}
	pctx, pcancel := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() { defer pwg.Done(); p.poll(pctx, s.Lab) }()
	defer func() { pcancel(); pwg.Wait() }()
	// The flood, until every join is answered (or the bound): a random token that a live
	// connection holds is odds of n in 2^32 per SYN, ignored.
	forged := 0
	stopFlood := func() {}
	if *joinFlood {
		f, err := newForger(s)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fctx, fcancel := context.WithCancel(ctx)
		var fwg sync.WaitGroup
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			for fctx.Err() == nil && f.send(fctx, f.rng.Uint32()) == nil {
				forged++
			}
		}()
		stopFlood = func() { fcancel(); fwg.Wait() }
		defer stopFlood()
	}

	conns := make([]*lablb.Conn, n)
	start := make([]time.Time, n)
	done := make([]time.Time, n)
	errs := make([]error, n)
	sem := make(chan struct{}, *joinPar)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start[i] = time.Now()
			conns[i], errs[i] = s.Dial(ctx, s.vip)
			done[i] = time.Now()
		}()
	}
	wg.Wait()
	defer closeAll(conns)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("dial %d of %d: %v", i, n, err)
		}
	}
	// Wait for every join's SYN-ACK (its SUB_ESTABLISHED event) and ss showing it fully
	// established, or joinBound after the last dial.
	deadline := time.Now().Add(joinBound)
	var jt []joinTime
	for {
		ev, everr := evs.Events()
		p.mu.Lock()
		jt = joinTimes(run, round, conns, start, done, ev, p)
		perr := p.err
		p.mu.Unlock()
		if perr != nil {
			t.Fatalf("ss: %v", perr)
		}
		if everr != nil {
			t.Fatalf("mptcp_pm_events: %v", everr)
		}
		ok := 0
		for _, x := range jt {
			if x.answered != never && x.ssEstab != never {
				ok++
			}
		}
		if ok == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	stopFlood()
	pcancel()
	pwg.Wait()
	j := s.joins(t, base)
	cm, err := s.MIB(s.Client)
	if err != nil {
		t.Fatal(err)
	}
	cd := cm.Sub(cbase)
	st1 := lbStatus(t, s.LB).Stats

	t.Logf("round %d: %d connections landed %v; ss read %d times, every %v plus %v on average for ss itself",
		round, n, perBackend(conns, len(s.Backends)), p.reads, pollEvery, (p.spent / time.Duration(max(p.reads, 1))).Round(time.Microsecond))
	logJoinTimes(t, jt)
	t.Logf("client: MPJoinSynTx %+d MPJoinSynAckRx %+d MPJoinSynAckHMacFailure %+d MPJoinRejected %+d TCPSynRetrans %+d",
		cd.MPTCP("MPJoinSynTx"), cd.MPTCP("MPJoinSynAckRx"), cd.MPTCP("MPJoinSynAckHMacFailure"), cd.MPTCP("MPJoinRejected"), cd["TcpExt.TCPSynRetrans"])
	t.Logf("backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v", j.SynRx, j.AckRx, j.NoToken)
	t.Logf("balancer: token_learned %+d join_steered %+d join_unknown %+d join_dropped %+d event_lost %+d; forged join SYNs sent %d",
		delta(st1, st0, "token_learned"), delta(st1, st0, "join_steered"), delta(st1, st0, "join_unknown"), delta(st1, st0, "join_dropped"), delta(st1, st0, "event_lost"), forged)
	for _, x := range jt {
		if x.slow() {
			t.Logf("slow: %s", x)
		}
	}

	answered := 0
	for _, x := range jt {
		if x.answered != never && x.ssEstab != never {
			answered++
		}
	}
	if answered != n {
		t.Errorf("%d of %d joins answered (SYN-ACK validated, ss shows the subflow fully established) within %v of the last dial", answered, n, joinBound)
	}
	if lablb.Sum(j.NoToken) != 0 {
		t.Errorf("MPJoinNoTokenFound %v, want 0 everywhere", j.NoToken)
	}
	if got := lablb.Sum(j.AckRx); got != int64(n) {
		t.Errorf("backends' MPJoinAckRx %v, want %d in all", j.AckRx, n)
	}
	if got := cd.MPTCP("MPJoinSynAckRx"); got != int64(n) {
		t.Errorf("client MPJoinSynAckRx %+d, want %d (one per connection)", got, n)
	}
	return jt
}

// joinTimes matches the client's events and ss readings with the connections: a connection's
// first subflow has the dial's local port (the CREATED event's sport), which gives its token.
func joinTimes(run, round int, conns []*lablb.Conn, start, done []time.Time, evs []mptcpEvent, p *subflowLog) []joinTime {
	byPort := map[uint16]int{}
	jt := make([]joinTime, len(conns))
	for i, c := range conns {
		byPort[uint16(c.LocalAddr().(*net.TCPAddr).Port)] = i
		jt[i] = joinTime{run: run, round: round, idx: i, local: c.LocalAddr().String(), dialed: done[i].Sub(start[i]),
			created: never, established: never, answered: never, seen: never, ssEstab: never}
	}
	since := func(i int, at time.Time) time.Duration {
		if at.IsZero() {
			return never
		}
		return at.Sub(done[i])
	}
	byToken := map[uint32]int{}
	for _, e := range evs {
		if e.typ != mptcpEventCreated {
			continue
		}
		if i, ok := byPort[e.sport]; ok {
			byToken[e.token] = i
			jt[i].created = since(i, e.at)
		}
	}
	for _, e := range evs {
		i, ok := byToken[e.token]
		if !ok {
			continue
		}
		switch e.typ {
		case mptcpEventEstablished:
			if jt[i].established == never {
				jt[i].established = since(i, e.at)
			}
		case mptcpEventSubEstablished:
			if jt[i].answered == never {
				jt[i].answered = since(i, e.at)
			}
		case mptcpEventSubClosed:
			jt[i].subClosed++
		}
	}
	for tok, i := range byToken {
		jt[i].seen, jt[i].ssEstab = since(i, p.seen[tok]), since(i, p.full[tok])
		jt[i].sub, jt[i].unanswered = p.last[tok], p.early[tok]
	}
	return jt
}

// newJoinTimeSetup is newSetup for l2 and IPv4 in a lab of the test's own namespace prefix.
func newJoinTimeSetup(t *testing.T) *setup {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := lablb.New(lablb.Config{Prefix: "mxjt"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	s := &setup{Lab: l, opts: options{forward: "l2"}, srv: srv, vip: netip.AddrPortFrom(l.VIP4, uint16(srv.Port))}
	args := []string{"--netns", l.LB, "lb", "attach"}
	for _, p := range l.Paths {
		args = append(args, p.LBIf)
	}
	args = append(args, "--vip", s.vip.String(), "--forward", "l2")
	for _, b := range l.Backends {
		args = append(args, "--backend", b.IP4.String())
	}
	mx(t, args...)
	s.attach = args
	t.Cleanup(func() { mx(t, "--netns", l.LB, "lb", "detach") })
	return s
}

// startCaptures runs tcpdump on every interface of every namespace of the lab (TCP, headers only)
// until the test ends, writing dir/<netns>.pcap. A frame the balancer redirects with XDP is not
// seen in the balancer's namespace, only at the backend's eth0.
func startCaptures(t *testing.T, s *setup, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ns := range s.Namespaces() {
		testutil.StartTcpdump(t, ns, "-i", "any", "-n", "-s", "200", "-U", "-w", filepath.Join(dir, ns+".pcap"), "tcp")
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d == never:
		return "never"
	case d < 0:
		return "-" + (-d).Round(10*time.Microsecond).String()
	}
	return d.Round(10 * time.Microsecond).String()
}

// logJoinTimes logs the distribution of each phase.
func logJoinTimes(t *testing.T, jt []joinTime) {
	t.Helper()
	for _, ph := range []struct {
		name string
		get  func(joinTime) time.Duration
	}{
		{"dial (SYN to first byte)", func(x joinTime) time.Duration { return x.dialed }},
		{"fully established", func(x joinTime) time.Duration { return x.established }},
		{"join answered", func(x joinTime) time.Duration { return x.answered }},
		{"answered - established", func(x joinTime) time.Duration {
			if x.answered == never || x.established == never {
				return never
			}
			return x.answered - x.established
		}},
		{"ss: join seen", func(x joinTime) time.Duration { return x.seen }},
		{"ss: join fully est.", func(x joinTime) time.Duration { return x.ssEstab }},
	} {
		var d []time.Duration
		missing := 0
		for _, x := range jt {
			if v := ph.get(x); v != never {
				d = append(d, v)
			} else {
				missing++
			}
		}
		t.Logf("  %-25s %s", ph.name+":", distribution(d, missing))
	}
}

// distribution is "n=60 min … median … p90 … p99 … max …" (nearest-rank percentiles).
func distribution(d []time.Duration, missing int) string {
	if len(d) == 0 {
		return fmt.Sprintf("n=0, never %d", missing)
	}
	slices.Sort(d)
	q := func(p float64) time.Duration {
		k := int(p*float64(len(d))+0.999999) - 1
		return d[min(max(k, 0), len(d)-1)]
	}
	s := fmt.Sprintf("n=%d min %s median %s p90 %s p99 %s max %s", len(d), fmtDur(d[0]), fmtDur(q(0.5)), fmtDur(q(0.9)), fmtDur(q(0.99)), fmtDur(d[len(d)-1]))
	if missing > 0 {
		s += fmt.Sprintf(", never %d", missing)
	}
	return s
}

// The MPTCP path manager's events (include/uapi/linux/mptcp_pm.h): the generic netlink family
// "mptcp_pm", multicast group "mptcp_pm_events"; the command is the event type.
const (
	mptcpEventCreated        = 1  // MPTCP_EVENT_CREATED: MP_CAPABLE handshake done (client: SYN-ACK)
	mptcpEventEstablished    = 2  // MPTCP_EVENT_ESTABLISHED: connection fully established
	mptcpEventSubEstablished = 10 // MPTCP_EVENT_SUB_ESTABLISHED: a join's SYN-ACK validated
	mptcpEventSubClosed      = 11 // MPTCP_EVENT_SUB_CLOSED: a subflow (e.g. a failed join) closed
	mptcpAttrToken           = 1  // u32
	mptcpAttrSport           = 9  // be16
	mptcpAttrDport           = 10 // be16
	mptcpAttrError           = 12 // u8
)

// mptcpEvent is one path-manager event of the client's kernel, stamped when the reader got it.
type mptcpEvent struct {
	at           time.Time
	typ          uint8
	token        uint32
	sport, dport uint16
	err          uint8
}

// mptcpEvents reads the path-manager events of one namespace until Close.
type mptcpEvents struct {
	fd      int
	done    chan struct{} // closed by Close
	stopped chan struct{} // closed by the reader as it returns
	mu      sync.Mutex
	evs     []mptcpEvent
	err     error
}

func listenMPTCPEvents(ns string) (*mptcpEvents, error) {
	fam, err := netlink.GenlFamilyGet("mptcp_pm")
	if err != nil {
		return nil, fmt.Errorf("genl family mptcp_pm: %w", err)
	}
	var grp uint32
	for _, g := range fam.Groups {
		if g.Name == "mptcp_pm_events" {
			grp = g.ID
		}
	}
	if grp == 0 {
		return nil, fmt.Errorf("mptcp_pm has no group mptcp_pm_events: %+v", fam.Groups)
	}
	fd := -1
	err = netns.Do(ns, func() error { // the socket belongs to the namespace it is created in
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_GENERIC)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket in %s: %w", ns, err)
	}
	setup := func() error {
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(grp)); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return err
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mptcp_pm_events in %s: %w", ns, err)
	}
	e := &mptcpEvents{fd: fd, done: make(chan struct{}), stopped: make(chan struct{})}
	go e.read()
	return e, nil
}

func (e *mptcpEvents) read() {
	defer close(e.stopped)
	buf := make([]byte, 1<<16)
	for {
		select {
		case <-e.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(e.fd, buf, 0)
		at := time.Now()
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			e.mu.Lock()
			e.err = err // ENOBUFS: events lost
			e.mu.Unlock()
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			e.mu.Lock()
			e.err = err
			e.mu.Unlock()
			return
		}
		for _, m := range msgs {
			if len(m.Data) < 4 { // genlmsghdr: cmd, version, reserved
				continue
			}
			ev := mptcpEvent{at: at, typ: m.Data[0]}
			attrs, err := nl.ParseRouteAttr(m.Data[4:])
			if err != nil {
				continue
			}
			for _, a := range attrs {
				switch a.Attr.Type {
				case mptcpAttrToken:
					ev.token = binary.NativeEndian.Uint32(a.Value)
				case mptcpAttrSport:
					ev.sport = binary.BigEndian.Uint16(a.Value)
				case mptcpAttrDport:
					ev.dport = binary.BigEndian.Uint16(a.Value)
				case mptcpAttrError:
					ev.err = a.Value[0]
				}
			}
			e.mu.Lock()
			e.evs = append(e.evs, ev)
			e.mu.Unlock()
		}
	}
}

// Events returns the events read so far and the reader's error (ENOBUFS: some were lost).
func (e *mptcpEvents) Events() ([]mptcpEvent, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]mptcpEvent(nil), e.evs...), e.err
}

func (e *mptcpEvents) Close() {
	close(e.done)
	<-e.stopped // within the 100 ms receive timeout
	unix.Close(e.fd)
}
