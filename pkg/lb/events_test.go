package lb

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// The datapath submits events without waking the consumer (BPF_RB_NO_WAKEUP) below a quarter of
// the ring: a reader that polls (a deadline, as ConsumeEvents' timer) still gets every event
// queued; once the ring is full, each event more is counted in event_lost, and the packets are
// handled all the same. Unknown joins under the drop policy, one event each.
func TestEventsFullRing(t *testing.T) {
	b := balancer(t)
	r := rand.New(rand.NewPCG(11, 12))
	vip := netip.MustParseAddrPort("10.0.0.1:80")
	setup(t, b.Maps, vip, 0, true, ForwardL2, JoinDrop, 3)

	join := segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: []layers.TCPOption{optJoinSYN(r.Uint32(), 1)}}
	frame := join.frame(t)
	// A few events first: read back by polling, nothing woke the reader.
	before := stats(t, b.Maps)
	for range 3 {
		if ret, _ := run(t, b.Program, frame); ret != xdpDrop {
			t.Fatalf("verdict %d, want XDP_DROP", ret)
		}
	}
	if evs := drainEvents(t); len(evs) != 3 {
		t.Fatalf("%d events read back, want 3", len(evs))
	}
	// Then more than the ring holds (256 KiB of 72-byte records: 3,640), in one run.
	const n = 5000
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Repeat: n}
	ret, err := b.Program.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	if ret != xdpDrop {
		t.Fatalf("verdict %d, want XDP_DROP", ret)
	}
	d := stats(t, b.Maps).Sub(before)
	evs := drainEvents(t)
	t.Logf("%d unknown joins: %d events read back, event_lost %d", n+3, 3+len(evs), d[StatEventLost])
	if d[StatJoinDropped] != n+3 {
		t.Errorf("join_dropped %d, want %d", d[StatJoinDropped], n+3)
	}
	if d[StatEventLost] == 0 {
		t.Errorf("event_lost 0 after %d events into a ring of %d bytes", n, b.Events.MaxEntries())
	}
	if uint64(len(evs))+d[StatEventLost] != n {
		t.Errorf("%d events read and %d lost, want %d in all", len(evs), d[StatEventLost], n)
	}
	for _, e := range evs {
		if e.Type != EventJoinUnknown {
			t.Fatalf("event %+v, want join_unknown", e)
		}
	}
}
