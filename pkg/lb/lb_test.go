package lb

// Packet tests of the balancer through BPF_PROG_TEST_RUN (root, real kernel): verdicts, output
// frames byte for byte (expected frames built with gopacket), flow/token tables, counters, events.

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	vip4 = netip.MustParseAddrPort("10.0.0.1:80")
	vip6 = netip.MustParseAddrPort("[fd00::1]:443")
)

// clientAddr is a random client address of the VIP's family.
func clientAddr(r *rand.Rand, vip netip.AddrPort) netip.AddrPort {
	port := uint16(1024 + r.IntN(60000))
	if vip.Addr().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + r.IntN(250))}), port)
	}
	a := [16]byte{0x20, 0x01, 0x0d, 0xb8}
	for i := 8; i < 16; i++ {
		a[i] = byte(r.Uint32())
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

// setup adds vip with id, forwarding mode, policy, and backends 1..n (ifindex lo) cycling in its ring.
func setup(t *testing.T, m *Maps, vip netip.AddrPort, id uint32, steering bool, fwd Forward, uj UnknownJoin, n uint32) []uint32 {
	t.Helper()
	if err := m.PutVIP(VIP{Addr: vip, ID: id, JoinSteering: steering, Forward: fwd, UnknownJoin: uj}); err != nil {
		t.Fatal(err)
	}
	var ids []uint32
	for i := uint32(1); i <= n; i++ {
		if err := m.PutBackend(testBackend(i, vip.Addr().Is6(), loIfindex)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, i)
	}
	return fillRing(t, m, id, ids...)
}

// l2Out is the frame the balancer sends to backend id in l2 mode.
func l2Out(t *testing.T, s segment, id uint32) []byte {
	return serialize(t, append([]gopacket.SerializableLayer{s.eth(lbEgressMAC(id), backendMAC(id))}, s.ipLayers()...)...)
}

// expectL2 runs s and checks that it leaves for backend id, rewritten as l2 mode does.
func expectL2(t *testing.T, b *Balancer, s segment, id uint32) {
	t.Helper()
	ret, out := run(t, b.Program, s.frame(t))
	if ret != xdpTX {
		t.Fatalf("%s -> %s: verdict %d, want XDP_TX", s.src, s.dst, ret)
	}
	checkBytes(t, "l2 to backend", l2Out(t, s, id), out)
}

func flowOf(t *testing.T, m *Maps, k FlowKey) Flow {
	t.Helper()
	f, ok, err := m.LookupFlow(k)
	if err != nil || !ok {
		t.Fatalf("flow %s -> %s: ok %v, %v", k.Src, k.Dst, ok, err)
	}
	return f
}

func TestNewFlowMaglev(t *testing.T) {
	b := balancer(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, vip := range []netip.AddrPort{vip4, vip6} {
		t.Run(vip.String(), func(t *testing.T) {
			b := balancer(t)
			ring := setup(t, b.Maps, vip, 1, true, ForwardL2, JoinDrop, 3)
			before := stats(t, b.Maps)
			seen := map[uint32]int{}
			const n = 60
			misses := 0
			for i := range n {
				s := segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}
				if i%3 == 1 {
					s = segment{src: s.src, dst: vip, ack: true} // a packet of an unknown flow, not a SYN
				}
				want := ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
				seen[want]++
				expectL2(t, b, s, want)
				if !s.syn {
					// Forwarded where Maglev says, and nothing stored (no flood of them evicts a flow).
					misses++
					if _, ok, err := b.LookupFlow(s.key()); ok || err != nil {
						t.Errorf("non-SYN miss %s stored a flow (%v)", s.src, err)
					}
					continue
				}
				if f := flowOf(t, b.Maps, s.key()); f.Backend != want || f.Token != 0 || !f.Opened || f.Protected {
					t.Errorf("flow %+v, want backend %d, no token, opened, not protected", f, want)
				}
			}
			d := stats(t, b.Maps).Sub(before)
			if d[StatPackets] != n || d[StatVIP] != n || d[StatNewFlow] != uint64(n-misses) || d[StatNonSYNMiss] != uint64(misses) ||
				d[StatFwdL2] != n || d[StatFlowHit] != 0 {
				t.Errorf("stats moved by %v", d.Map())
			}
			if len(seen) != 3 {
				t.Errorf("%d flows reached only backends %v", n, seen)
			}
		})
	}
	_ = b
}

func TestFlowTableHit(t *testing.T) {
	b := balancer(t)
	ring := setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	r := rand.New(rand.NewPCG(3, 4))
	s := segment{src: clientAddr(r, vip4), dst: vip4, ack: true, opts: []layers.TCPOption{nop, nop, optDSS()}}
	maglev := ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
	pinned := maglev%3 + 1 // another backend
	if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: pinned}}); err != nil {
		t.Fatal(err)
	}
	before := stats(t, b.Maps)
	expectL2(t, b, s, pinned)
	if d := stats(t, b.Maps).Sub(before); d[StatFlowHit] != 1 || d[StatNewFlow] != 0 {
		t.Errorf("stats moved by %v", d.Map())
	}
	if f := flowOf(t, b.Maps, s.key()); f.LastSeen == 0 {
		t.Errorf("flow not refreshed: %+v", f)
	}

	// A SYN opens a new connection: Maglev decides whatever a stale entry of its 5-tuple says.
	syn := segment{src: s.src, dst: vip4, syn: true}
	expectL2(t, b, syn, maglev)
	if f := flowOf(t, b.Maps, s.key()); f.Backend != maglev {
		t.Errorf("after SYN: flow on %d, want %d", f.Backend, maglev)
	}

	// A flow whose backend was removed is placed anew.
	if err := b.PutFlows([]Flow{{FlowKey: s.key(), Backend: 9}}); err != nil {
		t.Fatal(err)
	}
	expectL2(t, b, s, maglev)
}

// learn sends the MP_CAPABLE third ACK of a connection on flow s carrying server key rkey.
func learn(t *testing.T, b *Balancer, s segment, rkey uint64) (uint32, []byte) {
	t.Helper()
	s.syn, s.ack = false, true
	s.opts = []layers.TCPOption{nop, nop, optMPCapableACK(0x1122334455667788, rkey)}
	return run(t, b.Program, s.frame(t))
}

func TestJoinSteering(t *testing.T) {
	for _, vip := range []netip.AddrPort{vip4, vip6} {
		t.Run(vip.String(), func(t *testing.T) {
			b := balancer(t)
			ring := setup(t, b.Maps, vip, 2, true, ForwardL2, JoinDrop, 3)
			r := rand.New(rand.NewPCG(5, 6))
			first := segment{src: clientAddr(r, vip), dst: vip}
			owner := ring[FlowHash(first.key(), DefaultHashSeed)%RingSize]
			rkey := r.Uint64()
			token, keyHash := ServerToken(rkey)

			before := stats(t, b.Maps)
			expectL2(t, b, segment{src: first.src, dst: vip, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}, owner)
			if ret, _ := learn(t, b, first, rkey); ret != xdpTX {
				t.Fatalf("third ACK: verdict %d", ret)
			}
			tk, ok, err := b.LookupToken(2, token)
			if err != nil || !ok || tk.Backend != owner || tk.KeyHash != keyHash {
				t.Fatalf("token %08x: %+v ok %v err %v; want backend %d key hash %016x", token, tk, ok, err, owner, keyHash)
			}
			if f := flowOf(t, b.Maps, first.key()); f.Token != token || f.Backend != owner {
				t.Errorf("first flow %+v, want token %08x backend %d", f, token, owner)
			}

			// Joins from many 5-tuples: every one reaches the owner, whatever Maglev says.
			const n = 20
			for range n {
				join := segment{src: clientAddr(r, vip), dst: vip, syn: true,
					opts: []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}}, optJoinSYN(token, r.Uint32())}}
				expectL2(t, b, join, owner)
				if f := flowOf(t, b.Maps, join.key()); f.Backend != owner || f.Token != token {
					t.Errorf("join flow %+v, want backend %d token %08x", f, owner, token)
				}
				// The join's later packets follow its flow.
				expectL2(t, b, segment{src: join.src, dst: vip, ack: true, opts: []layers.TCPOption{optDSS()}}, owner)
			}
			d := stats(t, b.Maps).Sub(before)
			if d[StatTokenLearned] != 1 || d[StatJoinSteered] != n || d[StatJoinUnknown] != 0 || d[StatFlowHit] != n+1 || d[StatNewFlow] != 1 {
				t.Errorf("stats moved by %v", d.Map())
			}
			evs := drainEvents(t)
			if len(evs) != 1+n || evs[0].Type != EventConnLearned || evs[0].Token != token || evs[0].Backend != owner || evs[0].Flow != first.key() {
				t.Fatalf("events %+v", evs)
			}
			for _, e := range evs[1:] {
				if e.Type != EventJoinSteered || e.Token != token || e.Backend != owner || e.Flow.Dst != vip {
					t.Errorf("event %+v, want join_steered to %d", e, owner)
				}
			}

			// MP_CAPABLE + data (the third ACK lost) also teaches the token, with or without checksum.
			for _, dataLen := range []int{22, 24} {
				s := segment{src: clientAddr(r, vip), dst: vip, ack: true, payload: []byte("hello")}
				run(t, b.Program, segment{src: s.src, dst: vip, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}.frame(t))
				rk := r.Uint64()
				opt := optMPCapableData(1, rk, 5)
				if dataLen == 24 {
					opt = mptcpOpt(append(opt.OptionData, 0xab, 0xcd)...)
				}
				s.opts = []layers.TCPOption{opt}
				run(t, b.Program, s.frame(t))
				tok, kh := ServerToken(rk)
				if tk, ok, _ := b.LookupToken(2, tok); !ok || tk.KeyHash != kh {
					t.Errorf("MP_CAPABLE+data (%d): token %08x not learned", dataLen, tok)
				}
			}
		})
	}
}

func TestUnknownJoin(t *testing.T) {
	b := balancer(t)
	r := rand.New(rand.NewPCG(7, 8))
	vips := map[UnknownJoin]netip.AddrPort{
		JoinDrop: netip.MustParseAddrPort("10.0.0.1:80"),
		JoinHash: netip.MustParseAddrPort("10.0.0.2:80"),
		JoinPass: netip.MustParseAddrPort("10.0.0.3:80"),
	}
	rings := map[UnknownJoin][]uint32{}
	for pol, vip := range vips {
		rings[pol] = setup(t, b.Maps, vip, uint32(pol), true, ForwardL2, pol, 3)
	}
	for _, pol := range []UnknownJoin{JoinDrop, JoinHash, JoinPass} {
		t.Run(pol.String(), func(t *testing.T) {
			vip := vips[pol]
			join := segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: []layers.TCPOption{optJoinSYN(r.Uint32(), 1)}}
			frame := join.frame(t)
			before := stats(t, b.Maps)
			ret, out := run(t, b.Program, frame)
			d := stats(t, b.Maps).Sub(before)
			_, pinned, _ := b.LookupFlow(join.key())
			if d[StatJoinUnknown] != 1 || d[StatJoinSteered] != 0 {
				t.Errorf("stats moved by %v", d.Map())
			}
			switch pol {
			case JoinDrop:
				if ret != xdpDrop || d[StatJoinDropped] != 1 || pinned {
					t.Errorf("verdict %d, dropped %d, pinned %v", ret, d[StatJoinDropped], pinned)
				}
			case JoinPass:
				if ret != xdpPass || d[StatJoinDropped] != 0 || pinned {
					t.Errorf("verdict %d, dropped %d, pinned %v", ret, d[StatJoinDropped], pinned)
				}
				checkBytes(t, "passed join", frame, out[:len(frame)])
			case JoinHash:
				want := rings[pol][FlowHash(join.key(), DefaultHashSeed)%RingSize]
				if ret != xdpTX || !pinned || d[StatJoinDropped] != 0 {
					t.Fatalf("verdict %d, pinned %v", ret, pinned)
				}
				checkBytes(t, "hashed join", l2Out(t, join, want), out)
			}
			if evs := drainEvents(t); len(evs) != 1 || evs[0].Type != EventJoinUnknown || evs[0].Flow != join.key() {
				t.Errorf("events %+v", evs)
			}
		})
	}

	// Without join steering (today's balancers, the baseline) a join is one more 5-tuple.
	t.Run("no-steering", func(t *testing.T) {
		b := balancer(t)
		ring := setup(t, b.Maps, vip4, 0, false, ForwardL2, JoinDrop, 3)
		first := segment{src: clientAddr(r, vip4), dst: vip4}
		rkey := r.Uint64()
		token, _ := ServerToken(rkey)
		before := stats(t, b.Maps)
		run(t, b.Program, segment{src: first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}.frame(t))
		learn(t, b, first, rkey)
		join := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(token, 1)}}
		expectL2(t, b, join, ring[FlowHash(join.key(), DefaultHashSeed)%RingSize])
		d := stats(t, b.Maps).Sub(before)
		if d[StatTokenLearned] != 0 || d[StatJoinUnknown] != 0 || d[StatJoinSteered] != 0 || d[StatNewFlow] != 2 {
			t.Errorf("stats moved by %v", d.Map())
		}
	})
}

func TestDrainingBackend(t *testing.T) {
	b := balancer(t)
	ring := setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	r := rand.New(rand.NewPCG(9, 10))

	// Backend 1's connection, learned before it starts draining.
	conn := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	if err := b.PutFlows([]Flow{{FlowKey: conn.key(), Backend: 1}}); err != nil {
		t.Fatal(err)
	}
	rkey := r.Uint64()
	token, _ := ServerToken(rkey)
	learn(t, b, conn, rkey)

	d1 := testBackend(1, false, loIfindex)
	d1.Draining = true
	if err := b.PutBackend(d1); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := b.Backend(1); err != nil || !ok || !got.Draining || got.Addr != d1.Addr || got.MAC.String() != d1.MAC.String() {
		t.Fatalf("backend 1 reads back as %+v ok %v err %v", got, ok, err)
	}

	// New flows avoid it: a flow whose slot names it takes the next slot's backend.
	hitDraining := 0
	for range 60 {
		s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true}
		slot := FlowHash(s.key(), DefaultHashSeed) % RingSize
		if ring[slot] == 1 {
			hitDraining++
		}
		for ring[slot] == 1 {
			slot = (slot + 1) % RingSize
		}
		expectL2(t, b, s, ring[slot])
	}
	if hitDraining == 0 {
		t.Errorf("no new flow hashed to the draining backend's slots: the test proves nothing")
	}
	// Its existing flow and its connection's joins still reach it.
	expectL2(t, b, conn, 1)
	join := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(token, 7)}}
	expectL2(t, b, join, 1)

	// A VIP whose every backend is draining passes new flows to the stack, untouched.
	fillRing(t, b.Maps, 0, 1)
	s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true}
	before := stats(t, b.Maps)
	frame := s.frame(t)
	ret, out := run(t, b.Program, frame)
	if ret != xdpPass || string(out[:len(frame)]) != string(frame) {
		t.Errorf("no usable backend: verdict %d", ret)
	}
	if d := stats(t, b.Maps).Sub(before); d[StatNoBackend] != 1 {
		t.Errorf("stats moved by %v", d.Map())
	}
}
