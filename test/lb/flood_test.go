package lb

import (
	"context"
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

const (
	// floodTable is the flow and token table size of the flood test's balancer: small, so that
	// the flood sends many times what would fill them.
	floodTable = 4096
	// floodPrefill is what the flood sends before any connection joins (each forged MP_CAPABLE ACK
	// would once have taken a token entry: half of them fill the token table four times).
	floodPrefill = 8 * floodTable
	// floodMin is the fewest spoofed frames the flood sends (it goes on while the joins run).
	floodMin = 30 * floodTable
	// floodConns is the number of legitimate connections, half opened before the flood.
	floodConns = 60
)

// newSmallSetup is newSetup (join steering, unknown joins dropped, no subflow endpoint) with the
// balancer loaded through pkg/control with floodTable-entry flow and token tables.
func newSmallSetup(t *testing.T, o options) *setup {
	t.Helper()
	return newSmallSetupWith(t, o, "mxhard", lb.Config{MaxFlows: floodTable, MaxTokens: floodTable})
}

// newSmallSetupWith is newSmallSetup with the lab's name prefix and the balancer's load-time
// configuration given.
func newSmallSetupWith(t *testing.T, o options, prefix string, cfg lb.Config) *setup {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := lablb.New(lablb.Config{Prefix: prefix, NoEndpoints: true})
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
	o.noEndpoints = true
	vipAddr := l.VIP4
	if o.v6 {
		vipAddr = l.VIP6
	}
	s := &setup{Lab: l, opts: o, srv: srv, vip: netip.AddrPortFrom(vipAddr, uint16(srv.Port))}
	fwd, err := lb.ParseForward(o.forward)
	if err != nil {
		t.Fatal(err)
	}
	policy := control.DefaultPolicy
	policy.Forward = fwd
	spec := control.Spec{Netns: l.LB, VIPs: []netip.AddrPort{s.vip}, Policy: policy.Set(),
		Config: cfg}
	for _, p := range l.Paths {
		spec.Ifaces = append(spec.Ifaces, p.LBIf)
	}
	addr := func(b lablb.Backend) netip.Addr {
		if o.v6 {
			return b.IP6
		}
		return b.IP4
	}
	for _, b := range l.Backends {
		spec.Backends = append(spec.Backends, control.BackendSpec{Addr: addr(b), Weight: 1})
		if o.forward == "ipip" {
			mx(t, "--netns", b.Netns, "lb", "decap", b.If, "--balancer", b.LBIP4.String(), "--balancer", b.LBIP6.String(),
				"--vip", s.vip.String())
			t.Cleanup(func() { mx(t, "--netns", b.Netns, "lb", "decap", "--detach", b.If) })
		}
	}
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithTimeout(ctx, 30*time.Second)
	defer acancel()
	bal, err := control.Attach(actx, ld, spec)
	if err != nil {
		t.Fatal(err)
	}
	bal.Close()
	t.Cleanup(func() { mx(t, "--netns", l.LB, "lb", "detach") })
	st := lbStatus(t, l.LB)
	if len(st.VIPs) != 1 || len(st.Backends) != len(l.Backends) {
		t.Fatalf("status after attach: %+v", st)
	}
	s.vid = st.VIPs[0].ID
	for _, b := range l.Backends {
		for _, e := range st.Backends {
			if e.Addr == addr(b).String() {
				s.ids = append(s.ids, e.ID)
			}
		}
	}
	if len(s.ids) != len(l.Backends) {
		t.Fatalf("backends %+v in status %+v", l.Backends, st.Backends)
	}
	return s
}

// spoofFrames are the two frames the flood sends, patched per send: a plain ACK with a DSS option,
// and a forged MP_CAPABLE third ACK carrying both keys (a fresh receiver key each time, as if to
// cost the balancer a SHA-256 and a token), from random sources in 198.18.0.0/16 or 2001:db8:f::/112.
type spoofFrames struct {
	plain, keys []byte
}

func newSpoofFrames(t *testing.T, f *forger) spoofFrames {
	t.Helper()
	build := func(opt layers.TCPOption) []byte {
		tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(f.vip.Port()), Seq: 1, Ack: 1, ACK: true, Window: 502,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, opt}}
		eth := &layers.Ethernet{SrcMAC: f.src, DstMAC: f.dst, EthernetType: layers.EthernetTypeIPv4}
		var ip gopacket.SerializableLayer
		if f.vip.Addr().Is4() {
			ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{198, 18, 0, 1}, DstIP: f.vip.Addr().AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip4)
			ip = ip4
		} else {
			eth.EthernetType = layers.EthernetTypeIPv6
			ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
				SrcIP: netip.MustParseAddr("2001:db8:f::1").AsSlice(), DstIP: f.vip.Addr().AsSlice()}
			_ = tcp.SetNetworkLayerForChecksum(ip6)
			ip = ip6
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
			t.Fatal(err)
		}
		return append([]byte(nil), buf.Bytes()...)
	}
	keys := make([]byte, 18)
	keys[0], keys[1] = 0x01, 0x81 // MP_CAPABLE v1, flags A|H
	return spoofFrames{
		plain: build(layers.TCPOption{OptionType: 30, OptionLength: 8, OptionData: []byte{0x20, 0x01, 0, 0, 0, 1}}),
		keys:  build(layers.TCPOption{OptionType: 30, OptionLength: 20, OptionData: keys}),
	}
}

// patch gives frame a random source address and port (the IPv4 checksum fixed; the TCP checksum
// left stale, so that a backend the frame reaches drops it without answering) and, for the
// MP_CAPABLE frame, a random receiver key.
func (f *forger) patch(frame []byte, key bool) {
	tcp := 34
	if f.vip.Addr().Is4() {
		ip := frame[14:34]
		binary.BigEndian.PutUint32(ip[12:], 0xc6120000|f.rng.Uint32()&0xffff)
		binary.BigEndian.PutUint16(ip[10:], 0)
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		sum = sum&0xffff + sum>>16
		sum = sum&0xffff + sum>>16
		binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	} else {
		tcp = 54
		binary.BigEndian.PutUint16(frame[14+8+14:], uint16(f.rng.Uint32())) // source's last 16 bits
	}
	binary.BigEndian.PutUint16(frame[tcp:], uint16(1024+f.rng.IntN(60000)))
	binary.BigEndian.PutUint32(frame[tcp+4:], f.rng.Uint32()) // seq
	if key {
		binary.BigEndian.PutUint64(frame[len(frame)-8:], f.rng.Uint64())
	}
}

func (f *forger) sendRaw(ctx context.Context, frame []byte) error {
	sa := &unix.SockaddrLinklayer{Ifindex: f.ifindex, Halen: 6}
	copy(sa.Addr[:], f.dst)
	for {
		err := unix.Sendto(f.fd, frame, 0, sa)
		if err == unix.ENOBUFS || err == unix.EAGAIN {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			continue
		}
		return err
	}
}

// Spoofed non-SYN packets and forged MP_CAPABLE ACKs, as fast as the client's namespace can send
// them and many times what fills the balancer's 4,096-entry flow and token tables, while
// connections open, learn their tokens and join (the join-steering run, on a small balancer): no
// legitimate connection loses a subflow (ss -M on the client and backends, the backends' MIB: every
// join accepted, none refused for want of a token), the balancer learns exactly the legitimate
// tokens, and every spoofed frame is counted (nonsyn_miss), with no failed insert. In l2 over IPv4
// and ipip over IPv6.
func TestHostileFlood(t *testing.T) {
	for _, o := range []options{{forward: "l2"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) { floodRun(t, o) })
	}
}

func floodRun(t *testing.T, o options) {
	s := newSmallSetup(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := ld.OpenLB(s.LB)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if got := maps.Flows.MaxEntries(); got != floodTable {
		t.Fatalf("flow table of %d entries, want %d", got, floodTable)
	}
	base := s.mibs(t)
	st0, err := maps.ReadStats()
	if err != nil {
		t.Fatal(err)
	}

	// Half the connections first, on one subflow each: their tokens are learned before the flood.
	first := s.dial(ctx, t, floodConns/2, 15)
	defer closeAll(first)

	f, err := newForger(s)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	frames := newSpoofFrames(t, f)
	fl := startFlood(ctx, f, func(i int) ([]byte, bool) {
		if i%2 == 1 {
			return frames.keys, true
		}
		return frames.plain, false
	})
	defer fl.abort(cancel)

	// During the flood: the first half's connections join (the endpoint makes the path manager
	// join every existing connection), and the second half opens, learns and joins.
	for fl.sent.Load() < floodPrefill && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // until the flood alone would have filled the tables many times
	}
	sentAtEndpoints := fl.sent.Load()
	if err := s.AddSubflowEndpoints(); err != nil {
		t.Fatal(err)
	}
	second := s.dial(ctx, t, floodConns-floodConns/2, 15)
	defer closeAll(second)
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	s.waitJoins(wctx, t, base, floodConns)
	wcancel()
	sentAtJoins := fl.sent.Load()
	fl.stop()
	if fl.err != nil {
		t.Fatalf("flood: %v after %d frames", fl.err, fl.sent.Load())
	}
	n := fl.sent.Load()

	all := append(append([]*lablb.Conn(nil), first...), second...)
	// Counted once the frames have crossed the balancer: its counters only grow, so wait until
	// they account for every frame sent (or the deadline, and fail).
	var d lb.Stats
	for {
		st1, err := maps.ReadStats()
		if err != nil {
			t.Fatal(err)
		}
		d = st1.Sub(st0)
		if int64(d[lb.StatNonSYNMiss]) >= n || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	j := s.joins(t, base)
	v := s.view(t)
	occ, err := maps.Occupancy()
	if err != nil {
		t.Fatal(err)
	}
	match, bad := s.tokenMatches(t, v)
	okN, errs := transfer(ctx, all, 16<<10)

	t.Logf("flood: %d spoofed frames (half forged MP_CAPABLE ACKs) in %v (%.0f/s), %d before the first join, %d by the time every join was answered; tables of %d",
		n, fl.took.Round(time.Millisecond), float64(n)/fl.took.Seconds(), sentAtEndpoints, sentAtJoins, floodTable)
	t.Logf("balancer: nonsyn_miss %d new_flow %d token_learned %d join_steered %d join_unknown %d insert_failed %d collision %d; flows %d tokens %d",
		d[lb.StatNonSYNMiss], d[lb.StatNewFlow], d[lb.StatTokenLearned], d[lb.StatJoinSteered], d[lb.StatJoinUnknown],
		d[lb.StatInsertFailed], d[lb.StatCollision], occ.Flows, occ.Tokens)
	t.Logf("backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v; ss -M: client %d with 2 subflows, %d with 1",
		j.SynRx, j.AckRx, j.NoToken, v.ClientTwo, v.ClientOne)

	if n < floodMin {
		t.Errorf("flood sent %d frames, want at least %d", n, floodMin)
	}
	if int64(d[lb.StatNonSYNMiss]) < n {
		t.Errorf("nonsyn_miss %d, %d spoofed frames sent", d[lb.StatNonSYNMiss], n)
	}
	if d[lb.StatTokenLearned] != floodConns || occ.Tokens != floodConns {
		t.Errorf("tokens learned %d, in the table %d: want the %d legitimate ones", d[lb.StatTokenLearned], occ.Tokens, floodConns)
	}
	if d[lb.StatInsertFailed] != 0 {
		t.Errorf("insert_failed %d", d[lb.StatInsertFailed])
	}
	if occ.Flows > 2*floodConns {
		t.Errorf("%d flows stored, want at most the legitimate %d subflows", occ.Flows, 2*floodConns)
	}
	if v.ClientTwo != floodConns || v.ClientOne != 0 {
		t.Errorf("client: %d connections with 2 subflows and %d with 1, want %d and 0", v.ClientTwo, v.ClientOne, floodConns)
	}
	if lablb.Sum(j.NoToken) != 0 || lablb.Sum(j.AckRx) != floodConns {
		t.Errorf("MPJoinNoTokenFound %v (want 0), MPJoinAckRx %v (want %d in all)", j.NoToken, j.AckRx, floodConns)
	}
	if match != floodConns || len(bad) > 0 {
		t.Errorf("%d of %d backend tokens (ss -M) are the balancer's; mismatches: %v", match, floodConns, bad)
	}
	if okN != floodConns {
		t.Errorf("%d of %d transfers intact; first errors: %v", okN, floodConns, firstErrs(errs, 3))
	}
}

// flooder sends forged frames from a goroutine, never fewer than floodMin, until stopped.
type flooder struct {
	sent    atomic.Int64
	err     error         // of the send that ended the flood; read after stop
	took    time.Duration // from the first frame to the last; read after stop
	done    chan struct{}
	wg      sync.WaitGroup
	stopped bool
}

// startFlood sends frame(i) for i = 0, 1, ..., each patched by f (keys: an MP_CAPABLE ACK's keys
// too) and written raw.
func startFlood(ctx context.Context, f *forger, frame func(i int) (fr []byte, keys bool)) *flooder {
	fl := &flooder{done: make(chan struct{})}
	fl.wg.Add(1)
	go func() {
		defer fl.wg.Done()
		start := time.Now()
		defer func() { fl.took = time.Since(start) }()
		for i := 0; ; i++ {
			if i >= floodMin {
				select {
				case <-fl.done:
					return
				default:
				}
			}
			fr, keys := frame(i)
			f.patch(fr, keys)
			if fl.err = f.sendRaw(ctx, fr); fl.err != nil {
				return
			}
			fl.sent.Add(1)
		}
	}()
	return fl
}

// stop ends the flood and waits for its goroutine.
func (fl *flooder) stop() {
	if fl.stopped {
		return
	}
	fl.stopped = true
	close(fl.done)
	fl.wg.Wait()
}

// abort, deferred, stops a flood the test left running (it failed midway), cancelling the
// context its sends wait on first.
func (fl *flooder) abort(cancel context.CancelFunc) {
	if !fl.stopped {
		cancel()
		fl.stop()
	}
}
