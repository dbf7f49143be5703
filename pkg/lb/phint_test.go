package lb

import (
	"math/rand/v2"
	"testing"

	"github.com/google/gopacket/layers"
)

// hintSlot reads the protected table's hint: the epoch, and the slot of flow k (to VIP id 0).
func hintSlot(t *testing.T, m *Maps, k FlowKey) (epoch, slot uint32) {
	t.Helper()
	e, s, err := m.protectHintMarks(flowID(k, 0))
	if err != nil {
		t.Fatal(err)
	}
	return e, uint32(s)
}

// TestProtectHint: with the protected table's hint kept (RefreshProtectHint, as lb run's GC keeps
// it), the flows the datapath itself puts into the protected table, a steered join and a draining
// backend's flow, are marked in the hint before they are stored (their slot holds the epoch of
// the moment), so a plain SYN on the join's 5-tuple still finds it and follows it (the spoofed-SYN
// rule) instead of taking the new-SYN shortcut, which skips the table where the hint proves it
// does not hold the flow. Refreshes mark them again; once one is deleted, one refresh leaves its
// slot two epochs old, which the shortcut trusts. Without the datapath's mark, the SYN on the
// join's 5-tuple would be placed by Maglev over the steered join (the agreement fuzz holds the
// rest of the shortcut to the general path, with the hint kept).
func TestProtectHint(t *testing.T) {
	b := balancer(t)
	ring := setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	maglev := func(s segment) uint32 { return ring[FlowHash(s.key(), DefaultHashSeed)%RingSize] }
	if e, _ := hintSlot(t, b.Maps, FlowKey{}); e != 0 {
		t.Fatalf("a new balancer's hint is at epoch %d, want 0 (not kept)", e)
	}
	if err := b.RefreshProtectHint(); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(81, 82))
	first := segment{src: clientAddr(r, vip4), dst: vip4}
	owner := maglev(first)
	expectL2(t, b, segment{src: first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}, owner)
	rkey := r.Uint64()
	token, _ := ServerToken(rkey)
	if ret, _ := learn(t, b, first, rkey); ret != xdpTX {
		t.Fatalf("third ACK: verdict %d", ret)
	}
	var join segment
	for {
		join = segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(token, r.Uint32())}}
		if maglev(join) != owner {
			break
		}
	}
	expectL2(t, b, join, owner)
	if f := flowOf(t, b.Maps, join.key()); !f.Protected || f.Token != token || f.Backend != owner {
		t.Fatalf("steered join's flow %+v: want protected, token %08x, backend %d", f, token, owner)
	}
	if e, s := hintSlot(t, b.Maps, join.key()); e != phintTrusted || s != e {
		t.Fatalf("after the steered join: epoch %d, its slot %d; want both %d", e, s, phintTrusted)
	}

	// A draining backend's flow, moved to the protected table by its next packet.
	var drain segment
	for {
		drain = segment{src: clientAddr(r, vip4), dst: vip4, syn: true}
		if maglev(drain) != owner {
			break
		}
	}
	be := maglev(drain)
	expectL2(t, b, drain, be)
	drain.syn, drain.ack = false, true
	d := testBackend(be, false, loIfindex)
	d.Draining = true
	if err := b.PutBackend(d); err != nil {
		t.Fatal(err)
	}
	expectL2(t, b, drain, be)
	if f := flowOf(t, b.Maps, drain.key()); !f.Protected || f.Backend != be {
		t.Fatalf("draining backend's flow %+v: want protected on backend %d", f, be)
	}
	if e, s := hintSlot(t, b.Maps, drain.key()); s != e {
		t.Fatalf("after the move: epoch %d, the flow's slot %d", e, s)
	}

	plainSYN := func(s segment) segment { return segment{src: s.src, dst: vip4, syn: true} }
	check := func(when string) {
		t.Helper()
		before := stats(t, b.Maps)
		expectL2(t, b, plainSYN(join), owner)
		if f := flowOf(t, b.Maps, join.key()); !f.Protected || f.Token != token || f.Backend != owner {
			t.Errorf("%s: after a plain SYN on the join's 5-tuple its flow is %+v", when, f)
		}
		if dd := stats(t, b.Maps).Sub(before); dd[StatNewFlow] != 0 || dd[StatFlowHit] != 1 {
			t.Errorf("%s: a SYN on the join's 5-tuple: stats moved by %v, want a flow hit", when, dd.Map())
		}
	}
	check("epoch 2")
	for range 3 {
		if err := b.RefreshProtectHint(); err != nil {
			t.Fatal(err)
		}
	}
	e, s := hintSlot(t, b.Maps, join.key())
	if e != phintTrusted+3 || e-s != 1 {
		t.Errorf("after three refreshes: epoch %d, the join's slot %d; want %d and %d", e, s, phintTrusted+3, phintTrusted+2)
	}
	check("three refreshes later")

	// Gone: its slot ages out after one refresh (unless another protected flow shares it).
	if err := b.DeleteFlows([]Flow{{FlowKey: join.key()}}); err != nil {
		t.Fatal(err)
	}
	if err := b.RefreshProtectHint(); err != nil {
		t.Fatal(err)
	}
	e, s = hintSlot(t, b.Maps, join.key())
	if e-s < 2 {
		t.Errorf("after the join's flow went and a refresh: epoch %d, its slot %d; want it two epochs old", e, s)
	}
	drainEvents(t)
}
