package lb

import (
	"errors"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

// TestTokenSHA256 feeds MP_CAPABLE third ACKs (and ACK+data, with and without checksum) carrying
// 100,000 random server keys through the balancer and checks every token and key hash it records
// against crypto/sha256.
func TestTokenSHA256(t *testing.T) {
	b := balancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 1)
	r := rand.New(rand.NewPCG(11, 12))
	s := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}

	// One frame, its receiver key patched in place: find where it lies.
	const marker = 0x0123456789abcdef
	frames := [3][]byte{}
	offs := [3]int{}
	for i, opt := range []layers.TCPOption{
		optMPCapableACK(0xfeedfacecafebeef, marker),
		optMPCapableData(0xfeedfacecafebeef, marker, 1),
		mptcpOpt(append(optMPCapableData(0xfeedfacecafebeef, marker, 1).OptionData, 0xab, 0xcd)...),
	} {
		s.opts = []layers.TCPOption{nop, nop, opt}
		s.payload = nil
		if i > 0 {
			s.payload = []byte{'x'}
		}
		frames[i] = s.frame(t)
		for off := range len(frames[i]) - 8 {
			if string(frames[i][off:off+8]) == string(be64(marker)) {
				offs[i] = off
			}
		}
		if offs[i] == 0 {
			t.Fatal("receiver key not found in the frame")
		}
	}

	const n = 100000
	start := time.Now()
	before := stats(t, b.Maps)
	for i := range n {
		key := r.Uint64()
		// A flow learns once: each key comes on a connection placed afresh (as its SYN would).
		if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 1}}); err != nil {
			t.Fatal(err)
		}
		f := frames[i%3]
		copy(f[offs[i%3]:], be64(key))
		if ret, _ := run(t, b.Program, f); ret != xdpTX {
			t.Fatalf("key %016x: verdict %d", key, ret)
		}
		token, keyHash := ServerToken(key)
		tk, ok, err := b.LookupToken(0, token)
		if err != nil || !ok || tk.KeyHash != keyHash || tk.Backend != 1 {
			t.Fatalf("key %016x: want token %08x key hash %016x; got %+v ok %v err %v", key, token, keyHash, tk, ok, err)
		}
	}
	d := stats(t, b.Maps).Sub(before)
	t.Logf("%d keys in %v; stats moved by %v", n, time.Since(start).Round(time.Millisecond), d.Map())
	if d[StatTokenLearned] != n || d[StatCollision] != 0 {
		t.Errorf("learned %d tokens, %d collisions; want %d, 0", d[StatTokenLearned], d[StatCollision], n)
	}
	drainEvents(t)
}

// collidingKeys returns two server keys with one token, found once by a birthday search over a
// seeded generator (rand.NewPCG(13, 14), after ~10^5 keys) and checked here with crypto/sha256.
func collidingKeys(t *testing.T) (uint64, uint64, uint32) {
	t.Helper()
	const k1, k2 = 0x360cb4b56457812d, 0xda0d441cccaf0bb4
	t1, h1 := ServerToken(k1)
	t2, h2 := ServerToken(k2)
	if t1 != t2 || h1 == h2 {
		t.Fatalf("keys %016x and %016x: tokens %08x %08x, key hashes %016x %016x", uint64(k1), uint64(k2), t1, t2, h1, h2)
	}
	return k1, k2, t1
}

// collisionIdle is the take-over threshold of TestTokenCollision's balancer: long enough that the
// collision half (two packets in a row) never crosses it, short enough that no mapping has to be
// dated further back than the machine has been up.
const collisionIdle = 2 * time.Second

func TestTokenCollision(t *testing.T) {
	// A balancer of its own, loaded with a short CollisionIdle, and its own event reader.
	cfg := testConfig
	cfg.CollisionIdle = collisionIdle
	b := loadBalancer(t, cfg)
	evr, err := NewEventReader(b.Maps)
	if err != nil {
		t.Fatal(err)
	}
	defer evr.Close()
	events := func() []Event {
		t.Helper()
		var out []Event
		for {
			evr.SetDeadline(time.Now())
			e, err := evr.Read()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
	}
	balancer(t) // the shared fixture finds loIfindex, the backends' interface in setup
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	k1, k2, token := collidingKeys(t)
	r := rand.New(rand.NewPCG(15, 16))
	c1 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	c2 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	if err := b.PutFlows([]Flow{{FlowKey: c1.key(), Backend: 1}, {FlowKey: c2.key(), Backend: 2}}); err != nil {
		t.Fatal(err)
	}
	before := stats(t, b.Maps)
	learn(t, b, c1, k1)
	learn(t, b, c1, k1) // a repeat (MP_CAPABLE + data after the third ACK): no collision
	ret, _ := learn(t, b, c2, k2)
	if ret != xdpTX {
		t.Fatalf("colliding connection's packet: verdict %d", ret)
	}
	d := stats(t, b.Maps).Sub(before)
	if d[StatTokenLearned] != 1 || d[StatCollision] != 1 || d[StatTokenReplaced] != 0 {
		t.Errorf("stats moved by %v", d.Map())
	}
	tk, _, _ := b.LookupToken(0, token)
	_, h1 := ServerToken(k1)
	if tk.Backend != 1 || tk.KeyHash != h1 {
		t.Errorf("token %08x now %+v, want the first connection's (backend 1) kept", token, tk)
	}
	if f := flowOf(t, b.Maps, c2.key()); f.Token != 0 || f.Backend != 2 {
		t.Errorf("colliding flow %+v: stays on backend 2 without the token", f)
	}
	evs := events()
	if len(evs) != 2 || evs[1].Type != EventCollision || evs[1].Token != token || evs[1].Backend != 2 || evs[1].Other != 1 || evs[1].Flow != c2.key() {
		t.Errorf("events %+v", evs)
	}

	// Once the first mapping has been idle past the threshold, the next one takes over: the
	// mapping is dated twice the threshold back (the machine has been up longer than that).
	tk.LastSeen = Monotonic() - 2*collisionIdle
	if tk.LastSeen <= 0 {
		t.Fatalf("CLOCK_MONOTONIC is %v: cannot date a mapping %v back", Monotonic(), 2*collisionIdle)
	}
	if err := b.PutToken(tk); err != nil {
		t.Fatal(err)
	}
	// A flow learns once: the take-over comes from a new connection of backend 2 (on the same
	// 5-tuple, written afresh).
	if err := b.PutFlows([]Flow{{FlowKey: c2.key(), Backend: 2}}); err != nil {
		t.Fatal(err)
	}
	before = stats(t, b.Maps)
	learn(t, b, c2, k2)
	d = stats(t, b.Maps).Sub(before)
	if d[StatTokenReplaced] != 1 || d[StatCollision] != 0 {
		t.Errorf("stats moved by %v", d.Map())
	}
	if tk, _, _ := b.LookupToken(0, token); tk.Backend != 2 {
		t.Errorf("token %08x now %+v, want backend 2", token, tk)
	}
	if evs := events(); len(evs) != 1 || evs[0].Type != EventTokenReplaced || evs[0].Backend != 2 || evs[0].Other != 1 {
		t.Errorf("events %+v", evs)
	}
}
