package lb

// Packet tests of what a hostile client can do to the balancer's state (issue "Hostile input and
// faults", items 3, 4 and 13): spoofed non-SYN packets and forged MP_CAPABLE ACKs store nothing,
// a SYN flood cannot evict steered joins or flows of draining backends, a token is learned once
// and only on a flow whose SYN the balancer placed, a spoofed SYN never re-places a subflow, no
// pinned map holds the server's initial data sequence number, and no NOP padding hides a join.

import (
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

// hostileLab is a VIP over three backends with one legitimate MPTCP connection: its first subflow
// (placed by its SYN, token learned), a join steered to the owner from a 5-tuple Maglev places
// elsewhere, and a plain flow of backend 3, which then drains.
type hostileLab struct {
	b                      *Balancer
	ring                   []uint32
	first, join, drainFlow segment
	owner                  uint32
	token                  uint32
}

func newHostileLab(t *testing.T, r *rand.Rand) *hostileLab {
	t.Helper()
	l := &hostileLab{b: balancer(t)}
	l.ring = setup(t, l.b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	maglev := func(s segment) uint32 { return l.ring[FlowHash(s.key(), DefaultHashSeed)%RingSize] }

	l.first = segment{src: clientAddr(r, vip4), dst: vip4}
	l.owner = maglev(l.first)
	expectL2(t, l.b, segment{src: l.first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}, l.owner)
	rkey := r.Uint64()
	l.token, _ = ServerToken(rkey)
	if ret, _ := learn(t, l.b, l.first, rkey); ret != xdpTX {
		t.Fatalf("third ACK: verdict %d", ret)
	}
	if _, ok, _ := l.b.LookupToken(0, l.token); !ok {
		t.Fatal("legitimate token not learned")
	}
	for {
		l.join = segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(l.token, r.Uint32())}}
		if maglev(l.join) != l.owner {
			break
		}
	}
	expectL2(t, l.b, l.join, l.owner)
	if f := flowOf(t, l.b.Maps, l.join.key()); !f.Protected || f.Token != l.token || f.Backend != l.owner {
		t.Fatalf("steered join's flow %+v: want protected, token %08x, backend %d", f, l.token, l.owner)
	}

	for {
		l.drainFlow = segment{src: clientAddr(r, vip4), dst: vip4, syn: true}
		if maglev(l.drainFlow) == 3 && l.drainFlow.src != l.first.src {
			break
		}
	}
	expectL2(t, l.b, l.drainFlow, 3)
	l.drainFlow.syn, l.drainFlow.ack = false, true
	d3 := testBackend(3, false, loIfindex)
	d3.Draining = true
	if err := l.b.PutBackend(d3); err != nil {
		t.Fatal(err)
	}
	// Its next packet moves it out of the LRU: Maglev would not find it again.
	expectL2(t, l.b, l.drainFlow, 3)
	if f := flowOf(t, l.b.Maps, l.drainFlow.key()); !f.Protected || f.Backend != 3 {
		t.Fatalf("draining backend's flow %+v: want protected on backend 3", f)
	}
	drainEvents(t)
	return l
}

// check asserts that every legitimate flow and the token still stand and still steer.
func (l *hostileLab) check(t *testing.T) {
	t.Helper()
	if tk, ok, err := l.b.LookupToken(0, l.token); err != nil || !ok || tk.Backend != l.owner {
		t.Errorf("legitimate token %08x: %+v ok %v err %v, want backend %d", l.token, tk, ok, err, l.owner)
	}
	for _, s := range []segment{l.join, l.drainFlow} {
		if f, ok, err := l.b.LookupFlow(s.key()); err != nil || !ok || !f.Protected {
			t.Errorf("flow %s: %+v ok %v err %v, want it protected", s.src, f, ok, err)
		}
	}
	ack := func(s segment) segment {
		return segment{src: s.src, dst: s.dst, ack: true, opts: []layers.TCPOption{optDSS()}}
	}
	expectL2(t, l.b, ack(l.first), l.owner)
	expectL2(t, l.b, ack(l.join), l.owner)
	expectL2(t, l.b, l.drainFlow, 3)
	another := segment{src: clientAddr(rand.New(rand.NewPCG(99, 98)), vip4), dst: vip4, syn: true,
		opts: []layers.TCPOption{optJoinSYN(l.token, 5)}}
	expectL2(t, l.b, another, l.owner)
}

// spoofer rewrites one template frame's IPv4 source address and TCP source port (checksums are
// not checked by the balancer; every frame is still a distinct 5-tuple).
type spoofer struct {
	frame []byte
	r     *rand.Rand
}

func (s *spoofer) next() []byte {
	binary.BigEndian.PutUint32(s.frame[14+12:], 0xc6120000|s.r.Uint32()&0xffff) // 198.18.0.0/16
	binary.BigEndian.PutUint16(s.frame[14+20:], uint16(1024+s.r.IntN(60000)))
	return s.frame
}

// Twice as many spoofed non-SYN packets as the flow table holds, half of them forged MP_CAPABLE
// ACKs with both keys: every one is forwarded by Maglev, none stores a flow or a token, each is
// counted, and the legitimate connection keeps its flows, its token and its joins.
func TestNonSYNFloodStoresNothing(t *testing.T) {
	r := rand.New(rand.NewPCG(61, 62))
	l := newHostileLab(t, r)
	flowsBefore, err := l.b.ListFlowsCount()
	if err != nil {
		t.Fatal(err)
	}
	tokensBefore, _ := l.b.ListTokens()
	plain := &spoofer{segment{src: clientAddr(r, vip4), dst: vip4, ack: true, opts: []layers.TCPOption{optDSS()}}.frame(t), r}
	forged := &spoofer{segment{src: clientAddr(r, vip4), dst: vip4, ack: true,
		opts: []layers.TCPOption{nop, nop, optMPCapableACK(1, 0x5eed)}}.frame(t), r}
	n := 2 * int(testConfig.MaxFlows)
	before := stats(t, l.b.Maps)
	start := time.Now()
	for i := range n {
		sp := plain
		if i%2 == 1 {
			sp = forged
			// A fresh receiver key each time: each would cost a SHA-256 and a token.
			binary.BigEndian.PutUint64(sp.frame[len(sp.frame)-8:], r.Uint64())
		}
		if ret, _ := run(t, l.b.Program, sp.next()); ret != xdpTX {
			t.Fatalf("spoofed packet %d: verdict %d, want XDP_TX (forwarded by Maglev)", i, ret)
		}
	}
	d := stats(t, l.b.Maps).Sub(before)
	t.Logf("%d spoofed packets in %v; stats moved by %v", n, time.Since(start).Round(time.Millisecond), d.Map())
	if d[StatNonSYNMiss] != uint64(n) || d[StatNewFlow] != 0 || d[StatTokenLearned] != 0 || d[StatFwdL2] != uint64(n) || d[StatInsertFailed] != 0 {
		t.Errorf("stats moved by %v: want %d nonsyn_miss and fwd_l2, nothing learned or placed", d.Map(), n)
	}
	if got, _ := l.b.ListFlowsCount(); got != flowsBefore {
		t.Errorf("%d flows after the flood, %d before", got, flowsBefore)
	}
	if got, _ := l.b.ListTokens(); len(got) != len(tokensBefore) {
		t.Errorf("%d tokens after the flood, %d before", len(got), len(tokensBefore))
	}
	if evs := drainEvents(t); len(evs) != 0 {
		t.Errorf("%d events from the flood, first %+v", len(evs), evs[0])
	}
	l.check(t)
}

// A flood of spoofed SYNs fills the flow table (an LRU: it evicts flows Maglev finds again), but
// not the protected table: the steered join and the draining backend's flow stay.
func TestSYNFloodKeepsProtectedFlows(t *testing.T) {
	r := rand.New(rand.NewPCG(63, 64))
	l := newHostileLab(t, r)
	syn := &spoofer{segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}.frame(t), r}
	n := 2 * int(testConfig.MaxFlows)
	before := stats(t, l.b.Maps)
	for i := range n {
		if ret, _ := run(t, l.b.Program, syn.next()); ret != xdpTX {
			t.Fatalf("spoofed SYN %d: verdict %d", i, ret)
		}
	}
	d := stats(t, l.b.Maps).Sub(before)
	if d[StatNewFlow] != uint64(n) {
		t.Errorf("stats moved by %v", d.Map())
	}
	drainEvents(t)
	l.check(t)
}

// A token is learned on a flow whose SYN the balancer placed, and once: a forged MP_CAPABLE ACK on
// a 5-tuple it never saw open learns nothing, and a second key on a flow that learned is ignored.
func TestTokenLearnedOnceOnOpenedFlow(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	r := rand.New(rand.NewPCG(65, 66))

	stray := segment{src: clientAddr(r, vip4), dst: vip4}
	k := r.Uint64()
	tok, _ := ServerToken(k)
	before := stats(t, b.Maps)
	if ret, _ := learn(t, b, stray, k); ret != xdpTX {
		t.Fatalf("forged third ACK: verdict %d (forwarded like any stray packet)", ret)
	}
	if _, ok, _ := b.LookupToken(0, tok); ok {
		t.Errorf("token %08x learned from an ACK of no flow", tok)
	}
	if d := stats(t, b.Maps).Sub(before); d[StatTokenLearned] != 0 || d[StatNonSYNMiss] != 1 {
		t.Errorf("stats moved by %v", d.Map())
	}

	conn := segment{src: clientAddr(r, vip4), dst: vip4}
	run(t, b.Program, segment{src: conn.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}.frame(t))
	k1, k2 := r.Uint64(), r.Uint64()
	t1, _ := ServerToken(k1)
	t2, _ := ServerToken(k2)
	learn(t, b, conn, k1)
	learn(t, b, conn, k2) // an attacker's key on a flow that learned
	if _, ok, _ := b.LookupToken(0, t1); !ok {
		t.Errorf("the connection's token %08x not learned", t1)
	}
	if _, ok, _ := b.LookupToken(0, t2); ok {
		t.Errorf("a second key on one flow taught token %08x", t2)
	}
	if f := flowOf(t, b.Maps, conn.key()); f.Token != t1 || !f.Opened || !f.Learned {
		t.Errorf("flow %+v, want token %08x, opened and learned", f, t1)
	}
	if d := stats(t, b.Maps).Sub(before); d[StatTokenLearned] != 1 {
		t.Errorf("stats moved by %v", d.Map())
	}
}

// An idle mapping (past the take-over threshold) is not taken over by a forged MP_CAPABLE
// ACK with a colliding key on a flow the balancer never saw open.
func TestTakeoverNeedsOpenedFlow(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	k1, k2, token := collidingKeys(t)
	r := rand.New(rand.NewPCG(67, 68))
	_, h1 := ServerToken(k1)
	idle := idleSince(testConfig.CollisionIdle)
	if err := b.PutToken(Token{VIPID: 0, Token: token, Backend: 1, KeyHash: h1, LastSeen: idle}); err != nil {
		t.Fatal(err)
	}
	before := stats(t, b.Maps)
	for range 50 { // on 5-tuples of every backend
		learn(t, b, segment{src: clientAddr(r, vip4), dst: vip4}, k2)
	}
	if tk, _, _ := b.LookupToken(0, token); tk.Backend != 1 || tk.KeyHash != h1 {
		t.Errorf("token %08x now %+v: taken over by a forged ACK", token, tk)
	}
	if d := stats(t, b.Maps).Sub(before); d[StatTokenReplaced] != 0 || d[StatTokenLearned] != 0 {
		t.Errorf("stats moved by %v", d.Map())
	}
}

// A SYN with a live subflow's 5-tuple (spoofed) neither re-places the flow nor clears its token:
// a plain SYN follows the flow, a join SYN of an unknown token is dropped by policy. A client's
// retransmitted SYN (no token yet) and retransmitted join SYN still go where the first one went.
func TestSpoofedSYNKeepsLiveFlow(t *testing.T) {
	r := rand.New(rand.NewPCG(69, 70))
	l := newHostileLab(t, r)
	before := stats(t, l.b.Maps)
	for _, s := range []segment{
		{src: l.join.src, dst: vip4, syn: true},
		{src: l.join.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}},
		{src: l.join.src, dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(l.token^1, 1)}},
		{src: l.first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}},
		{src: l.first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(l.token^2, 1)}},
	} {
		if len(s.opts) == 1 && s.opts[0].OptionData[0]>>4 == 1 { // MP_JOIN
			if ret, _ := run(t, l.b.Program, s.frame(t)); ret != xdpDrop {
				t.Errorf("forged join on a live 5-tuple from %s: verdict %d, want XDP_DROP", s.src, ret)
			}
		} else {
			expectL2(t, l.b, s, l.owner)
		}
		if f := flowOf(t, l.b.Maps, s.key()); f.Token != l.token || f.Backend != l.owner {
			t.Errorf("after a spoofed SYN from %s: flow %+v, want token %08x on %d", s.src, f, l.token, l.owner)
		}
	}
	if d := stats(t, l.b.Maps).Sub(before); d[StatNewFlow] != 0 || d[StatJoinDropped] != 2 || d[StatFlowHit] != 3 {
		t.Errorf("stats moved by %v", d.Map())
	}
	// The connection's own join again (retransmitted): steered as before.
	before = stats(t, l.b.Maps)
	expectL2(t, l.b, l.join, l.owner)
	if d := stats(t, l.b.Maps).Sub(before); d[StatJoinSteered] != 1 {
		t.Errorf("retransmitted join: stats moved by %v", d.Map())
	}
	// A new connection's retransmitted SYN: placed by Maglev both times.
	s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}
	want := l.ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
	for want == 3 {
		s.src = clientAddr(r, vip4)
		want = l.ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
	}
	expectL2(t, l.b, s, want)
	expectL2(t, l.b, s, want)
	rk := r.Uint64()
	tok, _ := ServerToken(rk)
	learn(t, l.b, s, rk)
	if tk, ok, _ := l.b.LookupToken(0, tok); !ok || tk.Backend != want {
		t.Errorf("after a retransmitted SYN: token %+v ok %v, want backend %d", tk, ok, want)
	}
	drainEvents(t)
}

// The token table's key hash is digest bytes 4-11, never bytes 24-31 (the server's initial data
// sequence number).
func TestKeyHashIsNotIDSN(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 1)
	r := rand.New(rand.NewPCG(71, 72))
	for range 20 {
		s := segment{src: clientAddr(r, vip4), dst: vip4}
		if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 1}}); err != nil {
			t.Fatal(err)
		}
		key := r.Uint64()
		learn(t, b, s, key)
		var kb [8]byte
		binary.BigEndian.PutUint64(kb[:], key)
		d := sha256.Sum256(kb[:])
		tk, ok, err := b.LookupToken(0, binary.BigEndian.Uint32(d[0:4]))
		if err != nil || !ok {
			t.Fatalf("token not learned: %v", err)
		}
		if idsn := binary.BigEndian.Uint64(d[24:32]); tk.KeyHash == idsn || tk.KeyHash != binary.BigEndian.Uint64(d[4:12]) {
			t.Errorf("key %016x: key hash %016x, want digest[4:12] %x (never the IDSN %016x)", key, tk.KeyHash, d[4:12], idsn)
		}
	}
}

// An MP_JOIN SYN behind any number of NOPs (up to the 40 option bytes) is a join: an unknown token
// is dropped by policy, a known one steered.
func TestJoinBehindNOPs(t *testing.T) {
	r := rand.New(rand.NewPCG(73, 74))
	l := newHostileLab(t, r)
	for _, nops := range []int{0, 8, 15, 16, 17, 20, 28} {
		pad := make([]layers.TCPOption, nops)
		for i := range pad {
			pad[i] = nop
		}
		forged := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: append(pad, optJoinSYN(r.Uint32()|1, 1))}
		before := stats(t, l.b.Maps)
		if ret, _ := run(t, l.b.Program, forged.frame(t)); ret != xdpDrop {
			t.Errorf("forged join behind %d NOPs: verdict %d, want XDP_DROP", nops, ret)
		}
		if d := stats(t, l.b.Maps).Sub(before); d[StatJoinDropped] != 1 || d[StatNewFlow] != 0 {
			t.Errorf("forged join behind %d NOPs: stats moved by %v", nops, d.Map())
		}
		real := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: append(pad, optJoinSYN(l.token, 2))}
		expectL2(t, l.b, real, l.owner)
	}
	drainEvents(t)
}

// A full protected table refuses a steered join's flow: counted in insert_failed, and the join
// still reaches its backend.
func TestProtectedTableFullCounted(t *testing.T) {
	r := rand.New(rand.NewPCG(75, 76))
	l := newHostileLab(t, r)
	n := int(l.b.PFlows.MaxEntries()) - 2 // the join's and the draining flow are in already
	fill := make([]Flow, 0, n)
	for i := range n {
		src := [4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}
		fill = append(fill, Flow{FlowKey: FlowKey{Src: netip.AddrPortFrom(netip.AddrFrom4(src), 1000), Dst: vip4}, Backend: 1, Token: 7, Protected: true})
	}
	if err := l.b.PutFlows(fill); err != nil {
		t.Fatal(err)
	}
	before := stats(t, l.b.Maps)
	join := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(l.token, 9)}}
	expectL2(t, l.b, join, l.owner)
	if d := stats(t, l.b.Maps).Sub(before); d[StatInsertFailed] != 1 || d[StatJoinSteered] != 1 {
		t.Errorf("stats moved by %v", d.Map())
	}
	drainEvents(t)
}

// ProtectFlows moves a draining backend's idle flows out of the LRU.
func TestProtectFlows(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	r := rand.New(rand.NewPCG(77, 78))
	var flows []Flow
	for i := range 30 {
		flows = append(flows, Flow{FlowKey: FlowKey{Src: clientAddr(r, vip4), Dst: vip4}, Backend: uint32(1 + i%3)})
	}
	if err := b.PutFlows(flows); err != nil {
		t.Fatal(err)
	}
	n, err := b.ProtectFlows(2)
	if err != nil || n != 10 {
		t.Fatalf("ProtectFlows(2) moved %d (%v), want 10", n, err)
	}
	for _, f := range flows {
		got := flowOf(t, b.Maps, f.FlowKey)
		if got.Protected != (f.Backend == 2) || got.Backend != f.Backend {
			t.Errorf("flow %+v after ProtectFlows(2)", got)
		}
	}
	if c, _ := b.ListFlowsCount(); c != len(flows) {
		t.Errorf("%d flows, want %d", c, len(flows))
	}
}
