package refbench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// Sizes compiled into ref_lb.c.
const (
	refRingSize = 65537
	refMaxVIPs  = 8
)

// The two programs under test.
const (
	progRef = 0 // the reference balancer
	progMx  = 1 // mptcp-xdp's balancer
)

var progNames = [2]string{"reference", "mptcp-xdp"}

// mode is one forwarding mode and client family: a VIP of its own (with its own ring, the same in
// both balancers) and its backends.
type mode struct {
	name     string
	fwd      lb.Forward
	v6       bool
	vip      netip.AddrPort
	id       uint32
	backends []uint32
}

var modes = []mode{
	{"l2/ipv4", lb.ForwardL2, false, netip.MustParseAddrPort("198.51.100.1:443"), 0, []uint32{1, 2, 3, 4}},
	{"l2/ipv6", lb.ForwardL2, true, netip.MustParseAddrPort("[2001:db8:ff::1]:443"), 1, []uint32{5, 6, 7, 8}},
	{"ipip/ipv4", lb.ForwardIPIP, false, netip.MustParseAddrPort("198.51.100.2:443"), 2, []uint32{1, 2, 3, 4}},
	{"ipip/ipv6", lb.ForwardIPIP, true, netip.MustParseAddrPort("[2001:db8:ff::2]:443"), 3, []uint32{5, 6, 7, 8}},
}

// backend i: backends 1-4 have IPv4 addresses (outer IPv4 in ipip mode), 5-8 IPv6.
func backend(i uint32, ifindex int) lb.Backend {
	b := lb.Backend{ID: i, MAC: net.HardwareAddr{0x02, 0xbe, 0, 0, 0, byte(i)},
		SrcMAC: net.HardwareAddr{0x02, 0x1b, 0, 0, 0, byte(i)}, Ifindex: ifindex}
	if i <= 4 {
		b.Addr = netip.AddrFrom4([4]byte{10, 0, 1, byte(i)})
		b.SrcAddr = netip.MustParseAddr("10.0.1.254")
	} else {
		b.Addr = netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 15: byte(i)})
		b.SrcAddr = netip.MustParseAddr("fd00:1::fe")
	}
	return b
}

// sinkKey is what the sink counts a frame forwarded to backend i in mode m under: its MAC, and in
// ipip mode the outer destination.
func sinkKey(m mode, i uint32) RefRbSinkKey {
	b := backend(i, 0)
	k := RefRbSinkKey{}
	copy(k.Mac[:], b.MAC)
	if m.fwd == lb.ForwardIPIP {
		k.Addr = b.Addr.As16()
	}
	return k
}

// addr16 is a as the datapaths hold it: IPv4 v4-mapped.
func addr16(a netip.Addr) [16]byte { return a.As16() }

func refFlowKey(src, dst netip.AddrPort) RefRbFlowKey {
	return RefRbFlowKey{Src: addr16(src.Addr()), Dst: addr16(dst.Addr()), Sport: htons(src.Port()), Dport: htons(dst.Port()), Proto: 6}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// env is the lab with both balancers loaded and configured alike: the same VIPs, backends, rings,
// hash seed and flow-table size.
type env struct {
	lab   *lab
	ref   RefObjects
	mx    *lb.Balancer
	seed  uint32
	rings map[uint32][]uint32
	next  uint32 // the next unused client number
	rng   *rand.Rand
	// tokens ever given out by serverKey: no two connections of a run share one (a collision
	// would keep mptcp-xdp from learning the newer token, and change the case's work).
	tokens map[uint32]bool
	// wait: how long measure waits for the sink to count every frame.
	wait time.Duration
	// full: the flow tables were filled (envConfig.fill); else the cases remove the flows
	// their SYNs stored after each round, so that the tables stay as empty as they began.
	full bool
}

// serverKey returns a random server key whose token no earlier key of the run had.
func (e *env) serverKey() (key uint64, token uint32, keyHash uint64) {
	for {
		key = e.rng.Uint64()
		token, keyHash = lb.ServerToken(key)
		if token != 0 && !e.tokens[token] {
			e.tokens[token] = true
			return key, token, keyHash
		}
	}
}

// envConfig: the flow-table size of both balancers; mptcp-xdp's token-table size (0: its default);
// noSteering turns join steering off on mptcp-xdp's VIPs (a diagnostic: the join cases then fail).
type envConfig struct {
	maxFlows, maxTokens uint32
	noSteering          bool
	// fill: both flow tables are filled to capacity before the first case, as a busy balancer's
	// are, so that both insert into a full LRU (evicting) from the start, whatever the cases
	// inserted before (the reference stores joins in its LRU, mptcp-xdp in its protected table).
	fill bool
}

func newEnv(tb testing.TB, cfg envConfig) *env {
	tb.Helper()
	e := &env{seed: 0x5eed1234, rings: map[uint32][]uint32{}, tokens: map[uint32]bool{}, wait: 5 * time.Second, rng: rand.New(rand.NewPCG(11, 12))}
	spec, err := LoadRef()
	if err != nil {
		tb.Fatal(err)
	}
	if err := spec.Variables["rb_hash_seed"].Set(e.seed); err != nil {
		tb.Fatal(err)
	}
	spec.Maps["rb_flows"].MaxEntries = cfg.maxFlows
	if err := spec.LoadAndAssign(&e.ref, nil); err != nil {
		tb.Fatalf("load reference balancer: %v", err)
	}
	tb.Cleanup(func() { e.ref.Close() })
	// The rate guard off: the reference stores every SYN, and a round sends SYNs faster than the
	// guard's default allows (125,000 a second per CPU), so with it mptcp-xdp would refuse some
	// and take its guard's path, which new_syn does not compare (it checks that none was guarded).
	if e.mx, err = lb.Load(lb.Config{HashSeed: e.seed, MaxVIPs: 4, MaxFlows: cfg.maxFlows, MaxTokens: cfg.maxTokens,
		NewFlowRate: lb.NewFlowRateUnlimited}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.mx.Close() })

	// The kernel's per-program run time and count, for as long as the fd is open.
	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		tb.Fatalf("enable BPF run-time statistics: %v", err)
	}
	tb.Cleanup(func() { stats.Close() })

	e.lab = newLab(tb, e.ref.RbSink, e.ref.RbRefLb)

	for i := uint32(1); i <= 8; i++ {
		b := backend(i, e.lab.balIdx)
		b.MTU = e.lab.balMTU // as the control plane writes it (control.NextHop.MTU)
		if err := e.mx.PutBackend(b); err != nil {
			tb.Fatal(err)
		}
		rb := RefRbBackend{Addr: addr16(b.Addr), SrcAddr: addr16(b.SrcAddr)}
		copy(rb.Mac[:], b.MAC)
		copy(rb.SrcMac[:], b.SrcMAC)
		if b.Addr.Is6() {
			rb.OuterV6 = 1
		}
		if err := e.ref.RbBackends.Put(i, rb); err != nil {
			tb.Fatal(err)
		}
	}
	for _, m := range modes {
		if err := e.mx.PutVIP(lb.VIP{Addr: m.vip, ID: m.id, JoinSteering: !cfg.noSteering, Forward: m.fwd, UnknownJoin: lb.JoinDrop}); err != nil {
			tb.Fatal(err)
		}
		vk := RefRbVipKey{Addr: addr16(m.vip.Addr()), Port: htons(m.vip.Port()), Proto: 6}
		if err := e.ref.RbVips.Put(vk, RefRbVip{Id: m.id, Forward: uint32(m.fwd)}); err != nil {
			tb.Fatal(err)
		}
		// A ring of the mode's backends in a random order, written to both balancers.
		ring := make([]uint32, lb.RingSize)
		for s := range ring {
			ring[s] = m.backends[e.rng.IntN(len(m.backends))]
		}
		if err := e.mx.WriteRing(m.id, ring); err != nil {
			tb.Fatal(err)
		}
		keys := make([]uint32, len(ring))
		for s := range keys {
			keys[s] = m.id*refRingSize + uint32(s)
		}
		if _, err := e.ref.RbRing.BatchUpdate(keys, ring, nil); err != nil {
			tb.Fatalf("write the reference's ring: %v", err)
		}
		e.rings[m.id] = ring
		for _, i := range m.backends {
			for _, k := range []RefRbSinkKey{sinkKey(m, i), sinkKey(modes[0], i)} {
				if err := e.ref.RbSinkCounts.Put(k, uint64(0)); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	e.full = cfg.fill
	if cfg.fill {
		if err := e.fillFlows(cfg.maxFlows); err != nil {
			tb.Fatal(err)
		}
	}
	// What lb run's GC keeps (and the join rounds' protected flows keep marked as they go).
	if err := e.mx.Maps.RefreshProtectHint(); err != nil {
		tb.Fatal(err)
	}
	return e
}

// fillFlows writes n flows to an address no frame of the benchmark goes to into both flow tables.
func (e *env) fillFlows(n uint32) error {
	dst := netip.MustParseAddrPort("192.0.2.1:80")
	keys := make([]RefRbFlowKey, n)
	vals := make([]uint32, n)
	flows := make([]lb.Flow, n)
	now := lb.Monotonic()
	for i := range keys {
		src := clientAddr(1<<31+uint32(i), false)
		keys[i], vals[i] = refFlowKey(src, dst), 1
		flows[i] = lb.Flow{FlowKey: lb.FlowKey{Src: src, Dst: dst}, Backend: 1, LastSeen: now}
	}
	for off := 0; off < len(keys); off += 65536 {
		end := min(off+65536, len(keys))
		if _, err := e.ref.RbFlows.BatchUpdate(keys[off:end], vals[off:end], nil); err != nil {
			return fmt.Errorf("fill the reference's flow table: %w", err)
		}
	}
	// mptcp-xdp keys a flow by its VIP's id: the filler's address is a VIP of its own to it (id 0
	// with port 80, which no frame of the benchmark is sent to).
	if err := e.mx.PutVIP(lb.VIP{Addr: dst, ID: 0, Forward: lb.ForwardL2}); err != nil {
		return fmt.Errorf("fill mptcp-xdp's flow table: %w", err)
	}
	if err := e.mx.PutFlows(flows); err != nil {
		return fmt.Errorf("fill mptcp-xdp's flow table: %w", err)
	}
	return nil
}

// hashBackend is the backend that both balancers' rings give a new flow src -> m.vip.
func (e *env) hashBackend(m mode, src netip.AddrPort) uint32 {
	return e.rings[m.id][lb.FlowHash(lb.FlowKey{Src: src, Dst: m.vip}, e.seed)%lb.RingSize]
}

// clients returns n client addresses never used before.
func (e *env) clients(m mode, n int) []netip.AddrPort {
	out := make([]netip.AddrPort, n)
	for i := range out {
		out[i] = clientAddr(e.next, m.v6)
		e.next++
	}
	return out
}

// putRefFlows writes flows into the reference's flow table.
func (e *env) putRefFlows(m mode, srcs []netip.AddrPort, backends []uint32) error {
	keys := make([]RefRbFlowKey, len(srcs))
	for i, s := range srcs {
		keys[i] = refFlowKey(s, m.vip)
	}
	if _, err := e.ref.RbFlows.BatchUpdate(keys, backends, nil); err != nil {
		return fmt.Errorf("put %d reference flows: %w", len(keys), err)
	}
	return nil
}

func (e *env) deleteRefFlows(m mode, srcs []netip.AddrPort) error {
	keys := make([]RefRbFlowKey, len(srcs))
	for i, s := range srcs {
		keys[i] = refFlowKey(s, m.vip)
	}
	if _, err := e.ref.RbFlows.BatchDelete(keys, nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete reference flows: %w", err)
	}
	return nil
}

// readSink returns the sink's counts by key, and the frames it could not attribute.
func (e *env) readSink() (map[RefRbSinkKey]uint64, uint64, error) {
	out := map[RefRbSinkKey]uint64{}
	var (
		k RefRbSinkKey
		v uint64
	)
	it := e.ref.RbSinkCounts.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, 0, fmt.Errorf("read sink: %w", err)
	}
	var other uint64
	for i := uint32(0); i < 2; i++ {
		if err := e.ref.RbSinkOther.Lookup(i, &v); err != nil {
			return nil, 0, fmt.Errorf("read sink: %w", err)
		}
		other += v
	}
	return out, other, nil
}

func sum(m map[RefRbSinkKey]uint64) (s uint64) {
	for _, v := range m {
		s += v
	}
	return s
}

// measure sends frames through the program behind the balancer's link, waits until the sink has
// counted as many frames, and checks that the sink counted exactly want per key, nothing else, and
// that the program ran once per frame. It returns the program's kernel-measured time per run.
func (e *env) measure(prog *ebpf.Program, frames [][]byte, want map[RefRbSinkKey]uint64) (time.Duration, error) {
	if err := e.lab.use(prog); err != nil {
		return 0, err
	}
	before, otherBefore, err := e.readSink()
	if err != nil {
		return 0, err
	}
	s0, err := prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("program stats: %w", err)
	}
	if err := e.lab.sender.send(frames); err != nil {
		return 0, err
	}
	var after map[RefRbSinkKey]uint64
	var other uint64
	for deadline := time.Now().Add(e.wait); ; {
		if after, other, err = e.readSink(); err != nil {
			return 0, err
		}
		if sum(after)-sum(before)+other-otherBefore >= uint64(len(frames)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s1, err := prog.Stats()
	if err != nil {
		return 0, fmt.Errorf("program stats: %w", err)
	}
	runs := s1.RunCount - s0.RunCount
	var errs []error
	if runs != uint64(len(frames)) {
		errs = append(errs, fmt.Errorf("the program ran %d times for %d frames", runs, len(frames)))
	}
	if other != otherBefore {
		errs = append(errs, fmt.Errorf("the sink got %d frames for no expected backend", other-otherBefore))
	}
	for k, v := range after {
		if got := v - before[k]; got != want[k] {
			errs = append(errs, fmt.Errorf("backend %x/%s: %d frames, want %d", k.Mac, netip.AddrFrom16(k.Addr).Unmap(), got, want[k]))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if runs == 0 {
		return 0, errors.New("no runs")
	}
	return (s1.Runtime - s0.Runtime) / time.Duration(runs), nil
}

// round is one round of a case: the frames both programs get, where each must send them, and
// what to do around the pair of measurements.
type round struct {
	frames   [][]byte
	want     [2]map[RefRbSinkKey]uint64
	setup    func() error
	teardown func() error
	// check runs after mptcp-xdp's measurement with the difference of its counters.
	check func(d lb.Stats) error
}

// kase is one benchmarked case: prepare sets the state up once and returns the round builder.
type kase struct {
	name string
	// consume: the balancer's events are read during the rounds, as `mptcp-xdp lb run` does.
	consume bool
	target  float64
	prepare func(tb testing.TB, e *env, m mode, n int) func() round
}

const trackedFlows = 4096

// cycle repeats frames (with their backends) to n frames.
func cycle(fr [][]byte, be []uint32, n int) ([][]byte, []uint32) {
	out, ob := make([][]byte, n), make([]uint32, n)
	for i := range out {
		out[i], ob[i] = fr[i%len(fr)], be[i%len(be)]
	}
	return out, ob
}

func counts(m mode, be []uint32) map[RefRbSinkKey]uint64 {
	w := map[RefRbSinkKey]uint64{}
	for _, b := range be {
		w[sinkKey(m, b)]++
	}
	return w
}

// tracked places trackedFlows flows in both balancers (with tokens in mptcp-xdp's when mptcp) and
// returns their frames (opts) and backends.
func tracked(tb testing.TB, e *env, m mode, opts []layers.TCPOption, mptcp bool) ([][]byte, []uint32) {
	tb.Helper()
	srcs := e.clients(m, trackedFlows)
	be := make([]uint32, len(srcs))
	flows := make([]lb.Flow, len(srcs))
	now := lb.Monotonic()
	var fr [][]byte
	for i, s := range srcs {
		be[i] = m.backends[i%len(m.backends)]
		flows[i] = lb.Flow{FlowKey: lb.FlowKey{Src: s, Dst: m.vip}, Backend: be[i], LastSeen: now, Opened: true}
		if mptcp {
			_, tok, kh := e.serverKey()
			flows[i].Token, flows[i].Learned = tok, true
			if err := e.mx.PutToken(lb.Token{VIPID: m.id, Token: tok, Backend: be[i], KeyHash: kh, LastSeen: now}); err != nil {
				tb.Fatal(err)
			}
		}
		fr = append(fr, seg{src: s, dst: m.vip, ack: true, opts: opts}.frame(tb))
	}
	if err := e.mx.PutFlows(flows); err != nil {
		tb.Fatal(err)
	}
	if err := e.putRefFlows(m, srcs, be); err != nil {
		tb.Fatal(err)
	}
	return fr, be
}

// consumeEvents runs pkg/control's event consumer (the one `mptcp-xdp lb run` runs) until the
// returned stop is called.
func consumeEvents(tb testing.TB, e *env) (*control.EventCounts, func() error) {
	tb.Helper()
	// First the events left from cases that ran without a consumer, so that only this case's
	// are counted.
	r, err := lb.NewEventReader(e.mx.Maps)
	if err != nil {
		tb.Fatal(err)
	}
	for {
		r.SetDeadline(time.Now())
		if _, err := r.Read(); err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				tb.Fatalf("drain events: %v", err)
			}
			break
		}
	}
	r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	counts := &control.EventCounts{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); err = control.ConsumeEvents(ctx, e.mx.Maps, counts, nil) }()
	return counts, func() error { cancel(); wg.Wait(); return err }
}
