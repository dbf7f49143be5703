package lb_test

// FuzzBalancerAgreement: random frames through the loaded balancer program (prog.Run, real maps)
// and through the Go model of its decisions (model_test.go), which must agree on the verdict, the
// output frame, the backend the frame went to, the flow and token tables afterwards, and whether
// the frame counted as malformed. Run it with `make fuzz` (LBFUZZTIME executions).
//
// State: before every frame the harness puts the tables back to one baseline (flows of every kind,
// steered joins, tokens fresh, stale and idle, collisions waiting to happen) and tells the model
// that baseline; afterwards it reads the whole of every table and compares it with the model's.
// The program stamps entries with its clock (lb_now: bpf_ktime_get_ns as of the first packet of the
// timer tick on its CPU), which the harness cannot read: it brackets the run with CLOCK_MONOTONIC
// readings, reaching back a tick, and runs the model at both ends of that window. The two agree
// unless the run straddles an age threshold (token refresh 1 s, collision idle 5 s, against
// baseline ages of 10 ms, 2 s and hours): such an input is skipped, saying so, and would need a run
// that takes about a second.

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// maxFrame keeps frames inside what BPF_PROG_TEST_RUN takes for XDP without fragments (a page less
// headroom and skb_shared_info), with room for the outer header.
const maxFrame = 3000

// clockSlack widens the window of the run's timestamps on both sides (bpf_ktime_get_ns reads the
// monotonic clock through its NMI-safe accessor, which may lag clock_gettime by a little), and
// tickSlack reaches further back: the datapath's clock is read once per tick (at least 100 Hz).
const (
	clockSlack = uint64(time.Millisecond)
	tickSlack  = uint64(10 * time.Millisecond)
)

const (
	hashSeed      = 0x5eed0b1e // not the default, so that the seed visibly matters
	collisionIdle = 5 * time.Second
	// flowRate is the rate guard's limit: small, so that baseline's guard states reach each of its
	// branches.
	flowRate     = 2
	tokenRefresh = time.Second
	staleAge     = 2 * time.Second // refreshed on a hit, yet live for collisions
	// freshAge is the age of fresh tokens: older than the run's window reaches back (clockSlack and
	// tickSlack), so that no age is negative.
	freshAge = 50 * time.Millisecond
)

// FuzzBalancerAgreement requires the balancer program and the model to decide every frame alike.
func FuzzBalancerAgreement(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s.frame)
	}
	h := newHarness(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < ethHLen || len(frame) > maxFrame {
			t.Skip("outside what BPF_PROG_TEST_RUN accepts")
		}
		d, err := h.check(frame, h.model)
		if err != nil {
			t.Fatal(err)
		}
		if d.undecided != "" {
			t.Skip(d.undecided)
		}
		if d.diverged() {
			t.Error(d.report())
		}
	})
}

// TestBalancerAgreementCatchesWrongModel: the comparison fails when the model is wrong in any of
// the ways it compares (backend, verdict, output bytes, tables, malformed counter), so a passing
// FuzzBalancerAgreement means something.
func TestBalancerAgreementCatchesWrongModel(t *testing.T) {
	h := newHarness(t)
	seeds := seedFrames(t)
	for _, tc := range []struct {
		name  string
		wrong func(m *lbModel)
		what  func(d divergence) bool
	}{
		{"ring of VIP id 0 shifted by a slot", func(m *lbModel) {
			r := m.rings[0]
			m.rings[0] = append(slices.Clone(r[1:]), r[0])
		}, func(d divergence) bool { return d.backend }},
		{"unknown joins of 10.0.0.10:80 passed, not dropped", func(m *lbModel) {
			k := vipKeyOf(vipA)
			v := m.vips[k]
			v.UnknownJoin = lb.JoinPass
			m.vips[k] = v
		}, func(d divergence) bool { return d.verdict }},
		{"backend 2's MAC", func(m *lbModel) {
			b := m.backends[2]
			b.MAC = net.HardwareAddr{2, 0, 0, 0, 0, 0x99}
			m.backends[2] = b
		}, func(d divergence) bool { return d.output && !d.backend }},
		{"tokens refreshed on every hit", func(m *lbModel) { m.tokenRefresh = 0 },
			func(d divergence) bool { return d.tables && !d.verdict && !d.output }},
		{"hash seed", func(m *lbModel) { m.seed = lb.DefaultHashSeed },
			func(d divergence) bool { return d.backend }},
		{"rate guard off", func(m *lbModel) { m.flowRate = 0 },
			func(d divergence) bool { return d.tables && !d.verdict && !d.output }},
		{"rate guard's limit", func(m *lbModel) { m.flowRate = 3 },
			func(d divergence) bool { return d.tables && !d.verdict && !d.output }},
		// The parsing the fuzz compares with pkg/mptcp's: a model that read headers or options
		// otherwise than the reference parser would be caught.
		{"parser that ignores VLAN tags", func(m *lbModel) {
			m.locate = func(f []byte) mptcp.Headers {
				if len(f) >= 14 && (f[12] == 0x81 || f[12] == 0x88) {
					return mptcp.Headers{Status: mptcp.HeadersOther}
				}
				return mptcp.Locate(f)
			}
		}, func(d divergence) bool { return d.verdict || d.malformed }},
		{"parser that stops at IPv6 extension headers", func(m *lbModel) {
			m.locate = func(f []byte) mptcp.Headers {
				h := mptcp.Locate(f)
				if h.IPv6 && h.L4 != h.L3+40 {
					return mptcp.Headers{Status: mptcp.HeadersOther}
				}
				return h
			}
		}, func(d divergence) bool { return d.verdict || d.malformed }},
		{"parser that reads one VLAN tag only", func(m *lbModel) {
			m.locate = func(f []byte) mptcp.Headers {
				if h := mptcp.Locate(f); h.VLANTags < 2 {
					return h
				}
				return mptcp.Headers{Status: mptcp.HeadersOther}
			}
		}, func(d divergence) bool { return d.verdict || d.malformed }},
		{"option classes that ignore the ACK flag", func(m *lbModel) {
			m.classify = func(o []byte, syn, _ bool) mptcp.Class { return mptcp.ClassifyOption(o, syn, false) }
		}, func(d divergence) bool { return d.diverged() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wrong := h.model.clone()
			tc.wrong(wrong)
			caught := 0
			for _, s := range seeds {
				d, err := h.check(s.frame, wrong)
				if err != nil {
					t.Fatal(err)
				}
				if d.diverged() && tc.what(d) {
					caught++
				}
			}
			if caught == 0 {
				t.Errorf("a model with a wrong %s agreed with the program on all %d seeds", tc.name, len(seeds))
			}
			t.Logf("%d of %d seeds caught it", caught, len(seeds))
		})
	}
}

// The configuration the harness loads.
var (
	vipA  = netip.MustParseAddrPort("10.0.0.10:80")    // id 0, steering, l2, unknown joins dropped
	vipB  = netip.MustParseAddrPort("[fd00::10]:80")   // id 0 (dual stack with A), steering, ipip, hashed
	vipC  = netip.MustParseAddrPort("10.0.0.11:443")   // id 1, steering, ipip, passed
	vipD  = netip.MustParseAddrPort("[fd00::11]:443")  // id 1, no steering, l2
	vipE  = netip.MustParseAddrPort("10.0.0.12:80")    // id 2, steering, l2, hashed: an empty ring
	vipF  = netip.MustParseAddrPort("[fd00::12]:8080") // id 3, steering, ipip, dropped
	vipG  = netip.MustParseAddrPort("10.0.0.13:80")    // id 3, steering, values the datapath does not know
	vipH  = netip.MustParseAddrPort("[fd00::13]:80")   // id 2, steering, ipip, hashed: an empty ring
	notA  = netip.MustParseAddrPort("10.0.0.10:81")    // A's address, another port: no VIP
	notB  = netip.MustParseAddrPort("[fd00::10]:81")   // B's address, another port
	other = netip.MustParseAddrPort("198.51.100.1:80") // no VIP
)

// Server keys of the baseline's connections: the token of key k is lb.ServerToken(k).
const (
	keyA2      = 0xa2a2a2a2a2a2a2a2 // flow a2's connection (backend 2), joined by a4
	keyA3      = 0xa3a3a3a3a3a3a3a3 // flow a3's (backend 4, draining), stale
	keyA6      = 0xa6a6a6a6a6a6a6a6 // flow a6 says backend 1, the token says 3
	keyA7      = 0xa7a7a7a7a7a7a7a7 // flow a7's token has no mapping
	keyB1      = 0xb1b1b1b1b1b1b1b1 // flow b1's (backend 3), idle
	keyF1      = 0xf1f1f1f1f1f1f1f1 // flow f1's (backend 6, VIP id 3)
	keyCollide = 0xc0c0c0c0c0c0c0c0 // a live mapping to backend 3 with another key hash
	keyIdle    = 0x1d1e1d1e1d1e1d1e // an idle mapping to backend 3 with another key hash
	keySameBE  = 0x5a5e5a5e5a5e5a5e // a live mapping to backend 1 with another key hash
	keyRepeat  = 0x7e7e7e7e7e7e7e7e // a live mapping to backend 2 with this key's hash
	keyGone    = 0x6006600660066006 // a live mapping to backend 5, which is removed
	keyFresh   = 0x0123456789abcdef // no mapping
)

func tokenOf(k uint64) uint32 { t, _ := lb.ServerToken(k); return t }

var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
)

func client(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// Clients of the baseline flows.
var (
	cA1  = client("192.0.2.1:40001")      // A, backend 1, opened, nothing learned
	cA2  = client("192.0.2.2:40002")      // A, backend 2, token keyA2
	cA3  = client("192.0.2.3:40003")      // A, backend 4 (draining), token keyA3
	cA4  = client("192.0.2.4:40004")      // A, protected: the join of keyA2's connection
	cA5  = client("192.0.2.5:40005")      // A, backend 5 (removed)
	cA6  = client("192.0.2.6:40006")      // A, backend 1, token keyA6 mapped to backend 3
	cA7  = client("192.0.2.7:40007")      // A, backend 1, token keyA7 without mapping
	cA8  = client("192.0.2.8:40008")      // A, backend 1, learned (a collision): never again
	cA11 = client("192.0.2.11:40011")     // A, backend 4 (draining), opened, nothing learned
	cA12 = client("192.0.2.12:40012")     // A, protected, backend 3, opened, nothing learned
	cB1  = client("[2001:db8::1]:40001")  // B, backend 3, token keyB1 (idle)
	cB2  = client("[2001:db8::2]:40002")  // B, backend 1, opened, nothing learned
	cC1  = client("192.0.2.21:40021")     // C, backend 1, opened, nothing learned
	cD1  = client("[2001:db8::31]:40031") // D (no steering), backend 3
	cE1  = client("192.0.2.51:40051")     // E (empty ring), backend 1
	cF1  = client("[2001:db8::41]:40041") // F, backend 6, token keyF1
	cNew = client("192.0.2.99:50000")     // no flow
	cNw6 = client("[2001:db8::99]:50000")
)

type baseFlow struct {
	src, vip netip.AddrPort
	backend  uint32
	token    uint32
	flags    uint32
	prot     bool
}

type baseToken struct {
	vipID, token, backend uint32
	keyHash               uint64
	age                   time.Duration // last seen this long before the frame (0: freshAge); <0: at time 0 (idle)
}

func keyHashOf(k uint64) uint64 { _, h := lb.ServerToken(k); return h }

var (
	baseFlows = []baseFlow{
		{cA1, vipA, 1, 0, flowOpened, false},
		{cA2, vipA, 2, tokenOf(keyA2), flowOpened | flowLearned, false},
		{cA3, vipA, 4, tokenOf(keyA3), flowOpened | flowLearned, false},
		{cA4, vipA, 2, tokenOf(keyA2), flowOpened | flowLearned, true},
		{cA5, vipA, 5, 0, flowOpened, false},
		{cA6, vipA, 1, tokenOf(keyA6), flowOpened | flowLearned, false},
		{cA7, vipA, 1, tokenOf(keyA7), flowOpened | flowLearned, false},
		{cA8, vipA, 1, 0, flowOpened | flowLearned, false},
		{cA11, vipA, 4, 0, flowOpened, false},
		{cA12, vipA, 3, 0, flowOpened, true},
		{cB1, vipB, 3, tokenOf(keyB1), flowOpened | flowLearned, false},
		{cB2, vipB, 1, 0, flowOpened, false},
		{cC1, vipC, 1, 0, flowOpened, false},
		{cD1, vipD, 3, 0, flowOpened, false},
		{cE1, vipE, 1, 0, flowOpened, false},
		{cF1, vipF, 6, tokenOf(keyF1), flowOpened | flowLearned, false},
	}
	baseTokens = []baseToken{
		{0, tokenOf(keyA2), 2, keyHashOf(keyA2), 0},
		{0, tokenOf(keyA3), 4, keyHashOf(keyA3), staleAge},
		{0, tokenOf(keyA6), 3, keyHashOf(keyA6), 0},
		{0, tokenOf(keyB1), 3, keyHashOf(keyB1), -1},
		{0, tokenOf(keyCollide), 3, 1, 0},
		{0, tokenOf(keyIdle), 3, 2, -1},
		{0, tokenOf(keySameBE), 1, 3, 0},
		{0, tokenOf(keyRepeat), 2, keyHashOf(keyRepeat), 0},
		{0, tokenOf(keyGone), 5, keyHashOf(keyGone), 0},
		{0, 0, 1, 4, 0}, // token 0: a join carrying it is unknown all the same
		{1, tokenOf(keyA2), 3, keyHashOf(keyA2), 0}, // the same token in VIP id 1's namespace
		{3, tokenOf(keyF1), 6, keyHashOf(keyF1), staleAge},
	}
)

// backendOf is backend id's entry (lo is the ingress interface of BPF_PROG_TEST_RUN: XDP_TX; the
// others redirect to an interface index that does not exist, so that no device's MTU applies).
func backendOf(id uint32, v6 bool, ifindex int, draining bool) lb.Backend {
	b := lb.Backend{ID: id, MAC: net.HardwareAddr{0x02, 0xbe, 0, 0, 0, byte(id)},
		SrcMAC: net.HardwareAddr{0x02, 0x1b, 0, 0, 0, byte(id)}, Ifindex: ifindex, Draining: draining}
	if v6 {
		b.Addr = netip.AddrFrom16([16]byte{0xfd, 0, 0, 1, 15: byte(id)})
		b.SrcAddr = netip.MustParseAddr("fd00:1::fe")
	} else {
		b.Addr = netip.AddrFrom4([4]byte{10, 0, 1, byte(id)})
		b.SrcAddr = netip.MustParseAddr("10.0.1.254")
	}
	return b
}

// harness is one loaded balancer with the configuration above, and its model.
type harness struct {
	prog  *ebpf.Program
	m     *lb.Maps
	model *lbModel
	// last is what the maps held after the previous frame (nil: read them), so that restore need
	// not read them again; only the program and the harness write them.
	last     *tables
	lastCtrs *counters
	// guard and guardOn are the rate guard's maps, which restore writes on every CPU alike.
	guard, guardOn *ebpf.Map
}

func newHarness(tb testing.TB) *harness {
	tb.Helper()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	if lo.MTU < maxFrame+40 {
		tb.Fatalf("lo's MTU %d is below %d: encapsulated frames would meet the MTU check", lo.MTU, maxFrame+40)
	}
	var absent []int // interface indexes no device has
	for i := 4242; len(absent) < 2; i++ {
		if _, err := net.InterfaceByIndex(i); err != nil {
			absent = append(absent, i)
		}
	}

	spec, err := lb.Spec(lb.Config{HashSeed: hashSeed, CollisionIdle: collisionIdle, TokenRefresh: tokenRefresh,
		MaxVIPs: 4, MaxFlows: 4096, MaxTokens: 4096, NewFlowRate: flowRate})
	if err != nil {
		tb.Fatal(err)
	}
	// Small tables, so that reading all of them after every frame is cheap.
	spec.Maps[lb.MapPFlows].MaxEntries = 4096
	var objs datapath.LbObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load balancer program: %+v", ve)
		}
		tb.Fatalf("load balancer program: %v", err)
	}
	tb.Cleanup(func() { objs.Close() })
	h := &harness{prog: objs.MptcpxLb, m: &lb.Maps{
		VIPs: objs.MptcpxVips, Backends: objs.MptcpxBackends, Ring: objs.MptcpxRing,
		Flows: objs.MptcpxFlows, Tokens: objs.MptcpxTokens, Stats: objs.MptcpxLbStats,
		Events: objs.MptcpxLbEvts, VIPStats: objs.MptcpxLbVstats, BackendStats: objs.MptcpxLbBstats,
		PFlows: objs.MptcpxPflows,
	}, guard: objs.MptcpxLbGuard, guardOn: objs.MptcpxLbGuardOn}
	model := &lbModel{vips: map[vipKey]lb.VIP{}, backends: map[uint32]lb.Backend{}, rings: map[uint32][]uint32{},
		seed: hashSeed, collisionIdle: uint64(collisionIdle), tokenRefresh: uint64(tokenRefresh), ingress: lo.Index,
		flowRate: flowRate}

	backends := []lb.Backend{
		backendOf(1, false, lo.Index, false),
		backendOf(2, false, absent[0], false),
		backendOf(3, true, lo.Index, false),
		backendOf(4, true, absent[1], true), // draining
		backendOf(6, false, lo.Index, false),
	}
	for _, b := range backends {
		if err := h.m.PutBackend(b); err != nil {
			tb.Fatal(err)
		}
		model.backends[b.ID] = b
	}
	// Rings as the control plane builds them; ring 0 still holds the draining backend 4 and ring 1
	// the removed backend 5 (the windows before the control plane rebuilds them): new flows probe
	// past their slots.
	entry := func(b lb.Backend, w uint32) control.MaglevEntry {
		return control.MaglevEntry{Name: b.Addr.String(), ID: b.ID, Weight: w}
	}
	removed := control.MaglevEntry{Name: "10.0.1.5", ID: 5, Weight: 1}
	for id, entries := range map[uint32][]control.MaglevEntry{
		0: {entry(backends[0], 1), entry(backends[1], 2), entry(backends[2], 1), entry(backends[3], 1)},
		1: {entry(backends[0], 1), entry(backends[2], 1), removed},
		2: nil,
		3: {entry(backends[4], 1)},
	} {
		ring, err := control.Maglev(entries, lb.RingSize)
		if err != nil {
			tb.Fatal(err)
		}
		if err := h.m.WriteRing(id, ring); err != nil {
			tb.Fatal(err)
		}
		model.rings[id] = ring
	}
	for _, v := range agreementVIPs {
		if err := h.m.PutVIP(v); err != nil {
			tb.Fatal(err)
		}
		model.vips[vipKeyOf(v.Addr)] = v
	}
	h.model = model
	return h
}

func (m *lbModel) clone() *lbModel {
	c := *m
	c.vips, c.backends, c.rings = maps.Clone(m.vips), maps.Clone(m.backends), maps.Clone(m.rings)
	return &c
}

func monotonic() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return uint64(ts.Nano())
}

// agreementVIPs are the harness's VIPs. VIPs of one id differ in family (dual stack) or port, as
// PutVIP requires: the flow tables key a flow by its VIP's id, not its address.
var agreementVIPs = []lb.VIP{
	{Addr: vipA, ID: 0, JoinSteering: true, Forward: lb.ForwardL2, UnknownJoin: lb.JoinDrop},
	{Addr: vipB, ID: 0, JoinSteering: true, Forward: lb.ForwardIPIP, UnknownJoin: lb.JoinHash},
	{Addr: vipC, ID: 1, JoinSteering: true, Forward: lb.ForwardIPIP, UnknownJoin: lb.JoinPass},
	{Addr: vipD, ID: 1, JoinSteering: false, Forward: lb.ForwardL2, UnknownJoin: lb.JoinDrop},
	{Addr: vipE, ID: 2, JoinSteering: true, Forward: lb.ForwardL2, UnknownJoin: lb.JoinHash},
	{Addr: vipF, ID: 3, JoinSteering: true, Forward: lb.ForwardIPIP, UnknownJoin: lb.JoinDrop},
	{Addr: vipG, ID: 3, JoinSteering: true, Forward: lb.Forward(5), UnknownJoin: lb.UnknownJoin(9)},
	{Addr: vipH, ID: 2, JoinSteering: true, Forward: lb.ForwardIPIP, UnknownJoin: lb.JoinHash},
}

// flowKeyOf is the flow tables' key of a flow from src to dst, one of agreementVIPs.
func flowKeyOf(src, dst netip.AddrPort) datapath.LbLbFlowId {
	var k datapath.LbLbFlowId
	k.Src = src.Addr().As16()
	k.Sport, k.Dport = hostOrder(src.Port()), hostOrder(dst.Port())
	for _, v := range agreementVIPs {
		if v.Addr == dst {
			k.VipId = v.ID
			return k
		}
	}
	panic(fmt.Sprintf("flow to %s: not a VIP of the harness", dst))
}

// hostOrder is the uint16 whose memory holds port in network order (a __be16 field).
func hostOrder(port uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, port))
}

// guardStates are the rate guard's states restore writes, chosen by the frame's length (so that
// the fuzzer reaches each): times are ages before the run, far from the guard's thresholds (1 s
// window, engaged for 2 s, guard_on written at most every 125 ms).
var guardStates = []struct {
	winAge      time.Duration
	flows, late uint32
	onAge       time.Duration // 0: never engaged
}{
	{500 * time.Millisecond, 0, 0, 0},                                   // room in the window, never engaged
	{500 * time.Millisecond, flowRate, 0, 500 * time.Millisecond},       // window full, engaged: late budget left
	{2 * time.Second, flowRate, flowRate, 3 * time.Second},              // window over (starts afresh), engagement over
	{500 * time.Millisecond, flowRate, flowRate, 50 * time.Millisecond}, // window and late budget full, engaged just now
}

// baseline is the tables as restore writes them, at time now, for a frame of n bytes.
func baseline(now uint64, n int) tables {
	t := tables{flows: map[datapath.LbLbFlowId]datapath.LbLbFlow{}, pflows: map[datapath.LbLbFlowId]datapath.LbLbFlow{},
		tokens: map[datapath.LbLbTokenKey]datapath.LbLbToken{}}
	g := guardStates[n%len(guardStates)]
	t.guard = guardState{win: now - uint64(g.winAge), flows: g.flows, late: g.late}
	if g.onAge != 0 {
		t.guard.on = now - uint64(g.onAge)
	}
	for _, f := range baseFlows {
		v := datapath.LbLbFlow{Backend: f.backend, Token: f.token, LastNs: now - uint64(time.Second), Flags: f.flags}
		if f.prot {
			t.pflows[flowKeyOf(f.src, f.vip)] = v
		} else {
			t.flows[flowKeyOf(f.src, f.vip)] = v
		}
	}
	for _, b := range baseTokens {
		last := uint64(0)
		switch {
		case b.age == 0:
			last = now - uint64(freshAge)
		case b.age > 0:
			last = now - uint64(b.age)
		}
		t.tokens[datapath.LbLbTokenKey{VipId: b.vipID, Token: b.token}] = datapath.LbLbToken{Backend: b.backend, KeyHash: b.keyHash, LastNs: last}
	}
	return t
}

// dump reads every entry of a hash map.
func dump[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	var cursor ebpf.MapBatchCursor
	keys, vals := make([]K, 256), make([]V, 256)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", m, err)
		}
	}
}

func (h *harness) read() (tables, error) {
	var t tables
	var err error
	if t.flows, err = dump[datapath.LbLbFlowId, datapath.LbLbFlow](h.m.Flows); err != nil {
		return t, err
	}
	if t.pflows, err = dump[datapath.LbLbFlowId, datapath.LbLbFlow](h.m.PFlows); err != nil {
		return t, err
	}
	t.tokens, err = dump[datapath.LbLbTokenKey, datapath.LbLbToken](h.m.Tokens)
	return t, err
}

// put makes map m hold exactly want, given that it holds have.
func put[K comparable, V any](m *ebpf.Map, have, want map[K]V) error {
	for k := range have {
		if _, ok := want[k]; !ok {
			if err := m.Delete(k); err != nil {
				return fmt.Errorf("restore %s: %w", m, err)
			}
		}
	}
	keys, vals := make([]K, 0, len(want)), make([]V, 0, len(want))
	for k, v := range want {
		keys, vals = append(keys, k), append(vals, v)
	}
	if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("restore %s: %w", m, err)
	}
	return nil
}

// restore puts the baseline for a frame of n bytes back in the maps and returns it.
func (h *harness) restore(n int) (tables, error) {
	var have tables
	if h.last != nil {
		have, h.last = *h.last, nil
	} else {
		var err error
		if have, err = h.read(); err != nil {
			return tables{}, err
		}
	}
	want := baseline(monotonic(), n)
	if err := put(h.m.Flows, have.flows, want.flows); err != nil {
		return tables{}, err
	}
	g := want.guard
	cpus := make([]datapath.LbLbGuard, ebpf.MustPossibleCPU())
	for i := range cpus {
		cpus[i] = datapath.LbLbGuard{WinNs: g.win, Flows: g.flows, Late: g.late}
	}
	if err := h.guard.Put(uint32(0), cpus); err != nil {
		return tables{}, fmt.Errorf("restore guard: %w", err)
	}
	if err := h.guardOn.Put(uint32(0), g.on); err != nil {
		return tables{}, fmt.Errorf("restore guard_on: %w", err)
	}
	if err := put(h.m.PFlows, have.pflows, want.pflows); err != nil {
		return tables{}, err
	}
	// As lb run's GC keeps it: the SYN shortcut skips the protected table only where the hint
	// proves it does not hold the flow.
	if err := h.m.RefreshProtectHint(); err != nil {
		return tables{}, err
	}
	if err := put(h.m.Tokens, have.tokens, want.tokens); err != nil {
		return tables{}, err
	}
	return want, nil
}

// counters are what the program counted: frames forwarded per backend, and malformed frames.
type counters struct {
	forwarded map[uint32]uint64
	malformed uint64
}

func (h *harness) counters() (counters, error) {
	c := counters{forwarded: map[uint32]uint64{}}
	for id := range h.model.backends {
		s, err := h.m.ReadBackendStats(id)
		if err != nil {
			return c, err
		}
		c.forwarded[id] = s[lb.BackendStatForwarded]
	}
	s, err := h.m.ReadStats()
	if err != nil {
		return c, err
	}
	c.malformed = s[lb.StatMalformed]
	return c, nil
}

// divergence is how the program and the model differ on one frame.
type divergence struct {
	frame                    []byte
	undecided                string // the model cannot decide exactly (said why): not compared
	want                     outcome
	gotVerdict               uint32
	gotOut                   []byte
	gotBackend               int
	gotMalformed             uint64
	verdict, output, backend bool
	malformed                bool
	tables                   bool
	tableDiffs               []string
}

func (d divergence) diverged() bool {
	return d.verdict || d.output || d.backend || d.malformed || d.tables
}

func (d divergence) report() string {
	var b strings.Builder
	var what []string
	for _, w := range []struct {
		bad  bool
		name string
	}{{d.verdict, "verdict"}, {d.output, "output bytes"}, {d.backend, "backend"}, {d.malformed, "malformed counter"}, {d.tables, "tables"}} {
		if w.bad {
			what = append(what, w.name)
		}
	}
	fmt.Fprintf(&b, "balancer program and model disagree on the %s\n", strings.Join(what, ", "))
	fmt.Fprintf(&b, "frame (%d bytes):\n%s", len(d.frame), hex.Dump(d.frame))
	b.WriteString("model:\n")
	for _, l := range d.want.trace {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	fmt.Fprintf(&b, "verdict: program %s, model %s\n", verdictName(d.gotVerdict), verdictName(d.want.verdict))
	fmt.Fprintf(&b, "backend forwarded to: program %d, model %d (-1: none)\n", d.gotBackend, d.want.backend)
	fmt.Fprintf(&b, "malformed counted: program %d, model %d\n", d.gotMalformed, d.want.malformed)
	if d.output {
		fmt.Fprintf(&b, "output (- model, + program):\n%s", bytesDiff(d.want.out, d.gotOut))
	}
	for _, l := range d.tableDiffs {
		fmt.Fprintf(&b, "%s\n", l)
	}
	return b.String()
}

// bytesDiff shows two byte strings 16 bytes a line, both lines where they differ.
func bytesDiff(want, got []byte) string {
	var b strings.Builder
	win := func(p []byte, off int) []byte {
		if off >= len(p) {
			return nil
		}
		return p[off:min(off+16, len(p))]
	}
	for off := 0; off < max(len(want), len(got)); off += 16 {
		w, g := win(want, off), win(got, off)
		if string(w) == string(g) {
			fmt.Fprintf(&b, "  %04x % x\n", off, w)
			continue
		}
		fmt.Fprintf(&b, "- %04x % x\n+ %04x % x\n", off, w, off, g)
	}
	return b.String()
}

const stamped = ^uint64(0) // a last_ns the model set to the time of the run

// stampedSeen is a flow's tok_seen the model set from the time of the run (a token refreshed or
// learned now).
const stampedSeen = ^uint32(0)

// canonical replaces the model's timestamps "now" by stamped (stampedSeen for tok_seen).
func canonical(t tables, now uint64) tables {
	c := t.clone()
	for _, flows := range []map[datapath.LbLbFlowId]datapath.LbLbFlow{c.flows, c.pflows} {
		for k, v := range flows {
			if v.LastNs == now {
				v.LastNs = stamped
			}
			if v.TokSeen == uint32(now>>tokSeenShift) {
				v.TokSeen = stampedSeen
			}
			flows[k] = v
		}
	}
	for k, v := range c.tokens {
		if v.LastNs == now {
			v.LastNs = stamped
			c.tokens[k] = v
		}
	}
	if c.guard.win == now {
		c.guard.win = stamped
	}
	if c.guard.on == now {
		c.guard.on = stamped
	}
	return c
}

func sameOutcome(a, b outcome) bool {
	return a.verdict == b.verdict && string(a.out) == string(b.out) && a.backend == b.backend && a.malformed == b.malformed &&
		maps.Equal(a.after.flows, b.after.flows) && maps.Equal(a.after.pflows, b.after.pflows) && maps.Equal(a.after.tokens, b.after.tokens) && a.after.guard == b.after.guard
}

// diffTable lists the entries where got differs from want (a stamped want matches a time in
// [lo, hi]).
func diffTable[K comparable, V any](name string, want, got map[K]V, last func(V) uint64, setLast func(V, uint64) V, lo, hi uint64) []string {
	var out []string
	keys := slices.Collect(maps.Keys(want))
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		w, inW := want[k]
		g, inG := got[k]
		switch {
		case inW && !inG:
			out = append(out, fmt.Sprintf("%s: %s: model %s, program has none", name, keyString(k), valueString(w)))
		case !inW && inG:
			out = append(out, fmt.Sprintf("%s: %s: program %s, model has none", name, keyString(k), valueString(g)))
		default:
			if last(w) == stamped && last(g) >= lo && last(g) <= hi {
				w = setLast(w, last(g))
			}
			if any(w) != any(g) {
				out = append(out, fmt.Sprintf("%s: %s: model %s, program %s", name, keyString(k), valueString(w), valueString(g)))
			}
		}
	}
	slices.Sort(out)
	return out
}

// matchTokSeen gives each flow of want whose tok_seen the model stamped the program's, when that
// lies in [lo, hi] in tok_seen's unit.
func matchTokSeen(want, got map[datapath.LbLbFlowId]datapath.LbLbFlow, lo, hi uint64) {
	for k, w := range want {
		g, ok := got[k]
		if w.TokSeen != stampedSeen || !ok {
			continue
		}
		if g.TokSeen >= uint32(lo>>tokSeenShift) && g.TokSeen <= uint32(hi>>tokSeenShift) {
			w.TokSeen = g.TokSeen
			want[k] = w
		}
	}
}

func valueString(v any) string {
	at := func(ns uint64) string {
		if ns == stamped {
			return "now"
		}
		return fmt.Sprint(ns)
	}
	switch v := v.(type) {
	case datapath.LbLbFlow:
		return fmt.Sprintf("{backend %d, token %08x, last_ns %s, flags %#x, tok_seen %d}", v.Backend, v.Token, at(v.LastNs), v.Flags, v.TokSeen)
	case datapath.LbLbToken:
		return fmt.Sprintf("{backend %d, key_hash %016x, last_ns %s}", v.Backend, v.KeyHash, at(v.LastNs))
	}
	return fmt.Sprintf("%+v", v)
}

func keyString(k any) string {
	switch k := k.(type) {
	case datapath.LbLbFlowId:
		port := func(p uint16) uint16 { return hostOrder(p) }
		return fmt.Sprintf("flow %s -> vip id %d port %d", netip.AddrPortFrom(netip.AddrFrom16(k.Src).Unmap(), port(k.Sport)),
			k.VipId, port(k.Dport))
	case datapath.LbLbTokenKey:
		return fmt.Sprintf("token %08x of vip id %d", k.Token, k.VipId)
	}
	return fmt.Sprint(k)
}

// check runs frame through the program (from the baseline tables) and through model, and returns
// how they differ.
func (h *harness) check(frame []byte, model *lbModel) (divergence, error) {
	d := divergence{frame: frame}
	before, err := h.restore(len(frame))
	if err != nil {
		return d, err
	}
	c0 := h.lastCtrs
	if h.lastCtrs = nil; c0 == nil {
		c, err := h.counters()
		if err != nil {
			return d, err
		}
		c0 = &c
	}
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Repeat: 1}
	t0 := monotonic()
	ret, err := h.prog.Run(opts)
	t1 := monotonic()
	if err != nil {
		return d, fmt.Errorf("run: %w", err)
	}
	after, err := h.read()
	if err != nil {
		return d, err
	}
	c1, err := h.counters()
	if err != nil {
		return d, err
	}
	h.last, h.lastCtrs = &after, &c1
	d.gotVerdict, d.gotOut, d.gotBackend = ret, opts.DataOut, -1
	for id, n := range c1.forwarded {
		switch n - c0.forwarded[id] {
		case 0:
		case 1:
			if d.gotBackend >= 0 {
				return d, fmt.Errorf("backends %d and %d both counted the frame as forwarded", d.gotBackend, id)
			}
			d.gotBackend = int(id)
		default:
			return d, fmt.Errorf("backend %d counted %d frames forwarded for one", id, n-c0.forwarded[id])
		}
	}
	d.gotMalformed = c1.malformed - c0.malformed

	lo, hi := t0-clockSlack-tickSlack, t1+clockSlack
	early, late := model.decide(frame, before, lo), model.decide(frame, before, hi)
	early.after, late.after = canonical(early.after, lo), canonical(late.after, hi)
	if !sameOutcome(early, late) {
		d.undecided = fmt.Sprintf("the run took %v, straddling an age threshold: the model decides differently at its start and end", time.Duration(t1-t0))
		return d, nil
	}
	d.want = early
	d.verdict = ret != d.want.verdict
	d.output = string(d.gotOut) != string(d.want.out)
	d.backend = d.gotBackend != d.want.backend
	d.malformed = d.gotMalformed != d.want.malformed
	flowLast := func(v datapath.LbLbFlow) uint64 { return v.LastNs }
	flowSet := func(v datapath.LbLbFlow, t uint64) datapath.LbLbFlow { v.LastNs = t; return v }
	tokLast := func(v datapath.LbLbToken) uint64 { return v.LastNs }
	tokSet := func(v datapath.LbLbToken, t uint64) datapath.LbLbToken { v.LastNs = t; return v }
	matchTokSeen(d.want.after.flows, after.flows, lo, hi)
	matchTokSeen(d.want.after.pflows, after.pflows, lo, hi)
	d.tableDiffs = append(d.tableDiffs, diffTable("flows", d.want.after.flows, after.flows, flowLast, flowSet, lo, hi)...)
	d.tableDiffs = append(d.tableDiffs, diffTable("protected flows", d.want.after.pflows, after.pflows, flowLast, flowSet, lo, hi)...)
	d.tableDiffs = append(d.tableDiffs, diffTable("tokens", d.want.after.tokens, after.tokens, tokLast, tokSet, lo, hi)...)
	got, err := h.readGuard(before.guard)
	if err != nil {
		return d, err
	}
	d.tableDiffs = append(d.tableDiffs, diffGuard(d.want.after.guard, got, lo, hi)...)
	d.tables = len(d.tableDiffs) > 0
	return d, nil
}

// readGuard is the rate guard's state after a run: that of the CPU whose window changed from what
// restore wrote (was), else was; with guard_on.
func (h *harness) readGuard(was guardState) (guardState, error) {
	var cpus []datapath.LbLbGuard
	if err := h.guard.Lookup(uint32(0), &cpus); err != nil {
		return guardState{}, fmt.Errorf("read guard: %w", err)
	}
	got, changed := was, 0
	for _, c := range cpus {
		if c.WinNs != was.win || c.Flows != was.flows || c.Late != was.late {
			got.win, got.flows, got.late = c.WinNs, c.Flows, c.Late
			changed++
		}
	}
	if changed > 1 {
		return guardState{}, fmt.Errorf("the guard's window changed on %d CPUs for one frame", changed)
	}
	if err := h.guardOn.Lookup(uint32(0), &got.on); err != nil {
		return guardState{}, fmt.Errorf("read guard_on: %w", err)
	}
	return got, nil
}

// diffGuard lists how the guard's state got differs from want (a stamped time matches one in
// [lo, hi]).
func diffGuard(want, got guardState, lo, hi uint64) []string {
	same := func(w, g uint64) bool { return w == g || w == stamped && g >= lo && g <= hi }
	if same(want.win, got.win) && same(want.on, got.on) && want.flows == got.flows && want.late == got.late {
		return nil
	}
	return []string{fmt.Sprintf("guard: model %s, program %s", guardString(want), guardString(got))}
}

func guardString(g guardState) string {
	return fmt.Sprintf("{window %s, flows %d, late %d, guard_on %s}", valueString(g.win), g.flows, g.late, valueString(g.on))
}

// seed is a named frame of the seed corpus.
type seed struct {
	name  string
	frame []byte
}

// pkt is a TCP segment from a client to dst.
type pkt struct {
	src, dst netip.AddrPort
	flags    string // of "SAFRPU"
	opts     []layers.TCPOption
	payload  []byte
}

func (p pkt) frame(tb testing.TB) []byte {
	tb.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()), Seq: 1000, Ack: 2000,
		Window: 64240, Options: p.opts,
		SYN: strings.Contains(p.flags, "S"), ACK: strings.Contains(p.flags, "A"), FIN: strings.Contains(p.flags, "F"),
		RST: strings.Contains(p.flags, "R"), PSH: strings.Contains(p.flags, "P"), URG: strings.Contains(p.flags, "U")}
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.SerializableLayer
	if p.src.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, TOS: 0x28, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, TrafficClass: 0x28, FlowLabel: 0x12345, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: p.src.Addr().AsSlice(), DstIP: p.dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	return serialize(tb, eth, ip, tcp, gopacket.Payload(p.payload))
}

func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return slices.Clone(buf.Bytes())
}

func mptcpOpt(data ...byte) layers.TCPOption {
	return layers.TCPOption{OptionType: mptcpKind, OptionLength: uint8(2 + len(data)), OptionData: data}
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
func be64(v uint64) []byte { return append(be32(uint32(v>>32)), be32(uint32(v))...) }

func optCapableSYN() layers.TCPOption { return mptcpOpt(0x01, 0x81) }
func optCapableACK(rkey uint64) layers.TCPOption {
	return mptcpOpt(slices.Concat([]byte{0x01, 0x81}, be64(0x1122334455667788), be64(rkey))...)
}
func optCapableData(rkey uint64, csum bool) layers.TCPOption {
	d := slices.Concat([]byte{0x01, 0x81}, be64(0x1122334455667788), be64(rkey), []byte{0, 100})
	if csum {
		d = append(d, 0xab, 0xcd)
	}
	return mptcpOpt(d...)
}
func optJoin(token uint32) layers.TCPOption {
	return mptcpOpt(slices.Concat([]byte{0x10, 0x02}, be32(token), be32(0x0badcafe))...)
}
func optDSS() layers.TCPOption { return mptcpOpt(0x20, 0x01, 0, 0, 0, 1) }

var (
	nop      = layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	optMSS   = layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}
	optSACKP = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	optTS    = layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}
	optWS    = layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}
)

func nops(n int) []layers.TCPOption {
	o := make([]layers.TCPOption, n)
	for i := range o {
		o[i] = nop
	}
	return o
}

// seedFrames is the seed corpus: every path through the balancer at least once.
func seedFrames(tb testing.TB) []seed {
	tb.Helper()
	var out []seed
	add := func(name string, frame []byte) { out = append(out, seed{name, frame}) }
	addP := func(name string, p pkt) { add(name, p.frame(tb)) }
	patched := func(name string, p pkt, patch func(f []byte) []byte) { add(name, patch(p.frame(tb))) }
	linuxSYN := []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS, optCapableSYN()}

	// New connections.
	for _, v := range []netip.AddrPort{vipA, vipC, vipE, vipG} {
		addP("SYN to "+v.String(), pkt{src: cNew, dst: v, flags: "S", opts: linuxSYN})
	}
	for _, v := range []netip.AddrPort{vipB, vipD, vipF, vipH} {
		addP("SYN to "+v.String(), pkt{src: cNw6, dst: v, flags: "S", opts: linuxSYN})
	}
	for i := range 8 { // more 5-tuples: other slots of rings 0 and 1, past the draining and removed backends
		addP(fmt.Sprintf("SYN %d to A", i), pkt{src: netip.AddrPortFrom(cNew.Addr(), uint16(51000+i)), dst: vipA, flags: "S"})
		addP(fmt.Sprintf("SYN %d to C", i), pkt{src: netip.AddrPortFrom(cNew.Addr(), uint16(52000+i)), dst: vipC, flags: "S"})
	}
	addP("SYN with payload to B", pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxSYN, payload: []byte("fast open")})
	// The rate guard: restore's guard state follows the frame's length (guardStates), so 0-3
	// payload bytes meet each state: a SYN stored or not, a third ACK of a flow not in the table
	// placed late or not, a SYN over the limit on a known 5-tuple (its stale entry goes).
	for i := range len(guardStates) {
		pad := []byte("xyz")[:i]
		addP(fmt.Sprintf("guard %d: SYN to A", i), pkt{src: cNew, dst: vipA, flags: "S", opts: linuxSYN, payload: pad})
		addP(fmt.Sprintf("guard %d: third ACK of no flow to A", i), pkt{src: cNew, dst: vipA, flags: "A",
			opts: []layers.TCPOption{nop, nop, optCapableACK(keyFresh)}, payload: pad})
		addP(fmt.Sprintf("guard %d: third ACK of no flow to D (no steering)", i), pkt{src: cNw6, dst: vipD, flags: "A",
			opts: []layers.TCPOption{nop, nop, optCapableACK(keyFresh)}, payload: pad})
		addP(fmt.Sprintf("guard %d: SYN on a1's 5-tuple", i), pkt{src: cA1, dst: vipA, flags: "S", opts: linuxSYN, payload: pad})
		addP(fmt.Sprintf("guard %d: unknown join (hash) to B", i), pkt{src: cNw6, dst: vipB, flags: "S",
			opts: []layers.TCPOption{nop, nop, optJoin(0xdeadbeef)}, payload: pad})
	}

	// Packets of known flows.
	for _, c := range []struct {
		src, vip netip.AddrPort
	}{{cA1, vipA}, {cA2, vipA}, {cA3, vipA}, {cA4, vipA}, {cA5, vipA}, {cA6, vipA}, {cA8, vipA}, {cA12, vipA},
		{cB1, vipB}, {cB2, vipB}, {cC1, vipC}, {cD1, vipD}, {cE1, vipE}, {cF1, vipF}} {
		addP("data of "+c.src.String(), pkt{src: c.src, dst: c.vip, flags: "PA", opts: []layers.TCPOption{nop, nop, optDSS()}, payload: []byte("data")})
	}
	addP("FIN of a2", pkt{src: cA2, dst: vipA, flags: "FA"})
	addP("RST of b1", pkt{src: cB1, dst: vipB, flags: "R"})
	addP("ACK of no flow to A", pkt{src: cNew, dst: vipA, flags: "A"})
	addP("ACK of no flow to B", pkt{src: cNw6, dst: vipB, flags: "A", payload: []byte("x")})
	addP("ACK of no flow to E (empty ring)", pkt{src: cNew, dst: vipE, flags: "A"})

	// Third ACKs and first data with the server's key.
	for _, k := range []struct {
		name string
		key  uint64
	}{{"fresh key", keyFresh}, {"colliding key", keyCollide}, {"idle mapping's key", keyIdle},
		{"key of a mapping to the same backend", keySameBE}, {"repeated key", keyRepeat}} {
		addP("MP_CAPABLE ACK on a1, "+k.name, pkt{src: cA1, dst: vipA, flags: "A", opts: []layers.TCPOption{nop, nop, optCapableACK(k.key)}})
	}
	addP("MP_CAPABLE data on a1", pkt{src: cA1, dst: vipA, flags: "PA", opts: []layers.TCPOption{optCapableData(keyFresh, false)}, payload: []byte("GET /")})
	addP("MP_CAPABLE data with checksum on b2", pkt{src: cB2, dst: vipB, flags: "PA", opts: []layers.TCPOption{optCapableData(keyFresh, true)}, payload: []byte("GET /")})
	addP("MP_CAPABLE ACK on c1 (VIP id 1)", pkt{src: cC1, dst: vipC, flags: "A", opts: []layers.TCPOption{optCapableACK(keyA2)}})
	addP("MP_CAPABLE ACK on a12 (protected)", pkt{src: cA12, dst: vipA, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE ACK on a2 (learned already)", pkt{src: cA2, dst: vipA, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE ACK on a8 (collided once)", pkt{src: cA8, dst: vipA, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE ACK on d1 (no steering)", pkt{src: cD1, dst: vipD, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE ACK of no flow", pkt{src: cNew, dst: vipA, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE ACK on a5 (removed backend)", pkt{src: cA5, dst: vipA, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE SYN-ACK shape on a1", pkt{src: cA1, dst: vipA, flags: "SA", opts: []layers.TCPOption{optCapableACK(keyFresh)}})
	addP("MP_CAPABLE version 0 on a1", pkt{src: cA1, dst: vipA, flags: "A", opts: []layers.TCPOption{mptcpOpt(slices.Concat([]byte{0x00, 0x81}, be64(1), be64(keyFresh))...)}})

	// Joins.
	for _, j := range []struct {
		name  string
		vip   netip.AddrPort
		src   netip.AddrPort
		token uint32
	}{
		{"known token", vipA, cNew, tokenOf(keyA2)},
		{"token of a draining backend", vipA, cNew, tokenOf(keyA3)},
		{"token of a removed backend", vipA, cNew, tokenOf(keyGone)},
		{"idle token over IPv6", vipB, cNw6, tokenOf(keyB1)},
		{"unknown token (drop)", vipA, cNew, 0xdeadbeef},
		{"unknown token (hash)", vipB, cNw6, 0xdeadbeef},
		{"unknown token (pass)", vipC, cNew, 0xdeadbeef},
		{"known token of VIP id 1", vipC, cNew, tokenOf(keyA2)},
		{"unknown token, no steering", vipD, cNw6, 0xdeadbeef},
		{"unknown token, empty ring (hash)", vipE, cNew, 0xdeadbeef},
		{"unknown token, unknown policy", vipG, cNew, 0xdeadbeef},
		{"known token of VIP id 3", vipF, cNw6, tokenOf(keyF1)},
		{"token 0", vipA, cNew, 0},
		{"retransmitted join of a4", vipA, cA4, tokenOf(keyA2)},
		{"another join on a2's 5-tuple", vipA, cA2, 0xdeadbeef},
		{"a known token on a6's 5-tuple", vipA, cA6, tokenOf(keyA2)},
		{"join on a3's 5-tuple (draining)", vipA, cA3, tokenOf(keyA6)},
		{"join on b1's 5-tuple (idle token)", vipB, cB1, tokenOf(keyA2)},
	} {
		addP("MP_JOIN SYN, "+j.name, pkt{src: j.src, dst: j.vip, flags: "S", opts: []layers.TCPOption{optJoin(j.token), nop, optWS}})
	}
	addP("MP_JOIN SYN behind 28 NOPs", pkt{src: cNew, dst: vipA, flags: "S", opts: append(nops(28), optJoin(0xdeadbeef))})
	// The SYN layouts Linux writes, which the balancer reads without walking (lb_syn_layout), and
	// near misses that the walk decides.
	linuxJoin := func(token uint32) []layers.TCPOption {
		return []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS, optJoin(token)}
	}
	addP("Linux MP_JOIN SYN, known token", pkt{src: cNew, dst: vipA, flags: "S", opts: linuxJoin(tokenOf(keyA2))})
	addP("Linux MP_JOIN SYN, unknown token", pkt{src: cNew, dst: vipA, flags: "S", opts: linuxJoin(0xdeadbeef)})
	addP("Linux MP_JOIN SYN to B (hash)", pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxJoin(0xdeadbeef)})
	addP("Linux MP_JOIN SYN-ACK shape", pkt{src: cNew, dst: vipA, flags: "SA", opts: linuxJoin(tokenOf(keyA2))})
	addP("Linux SYN without MPTCP", pkt{src: cNew, dst: vipA, flags: "S", opts: []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS}})
	addP("Linux SYN, MP_CAPABLE, then an MP_JOIN", pkt{src: cNew, dst: vipA, flags: "S",
		opts: []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS, optCapableSYN(), optJoin(tokenOf(keyA2))}})
	addP("Linux MP_JOIN SYN, then a NOP", pkt{src: cNew, dst: vipA, flags: "S", opts: append(linuxJoin(tokenOf(keyA2)), nop)})
	addP("Linux SYN, then an MP_JOIN of 16 bytes", pkt{src: cNew, dst: vipA, flags: "S",
		opts: []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS, mptcpOpt(slices.Concat([]byte{0x10, 0x01}, be32(tokenOf(keyA2)), be32(2), be32(3))...)}})
	addP("Linux SYN, then an MP_CAPABLE with a key", pkt{src: cNew, dst: vipA, flags: "S",
		opts: []layers.TCPOption{optMSS, optSACKP, optTS, nop, optWS, mptcpOpt(slices.Concat([]byte{0x01, 0x81}, be32(1), be32(2))...)}})
	patched("Linux MP_JOIN SYN, window scale of length 4", pkt{src: cNew, dst: vipA, flags: "S", opts: linuxJoin(tokenOf(keyA2))},
		func(f []byte) []byte {
			// The window scale's length byte: 4 would swallow the MP_JOIN's kind (malformed walk).
			for i := len(f) - 32; i+2 < len(f); i++ {
				if f[i] == 1 && f[i+1] == 3 && f[i+2] == 3 {
					f[i+2] = 4
					break
				}
			}
			return f
		})
	addP("MP_JOIN behind an MP_JOIN of length 16", pkt{src: cNew, dst: vipA, flags: "S",
		opts: []layers.TCPOption{mptcpOpt(slices.Concat([]byte{0x10, 0x02}, be32(1), be32(2), be32(3))...), optJoin(tokenOf(keyA2))}})
	addP("MP_JOIN SYN-ACK shape", pkt{src: cNew, dst: vipA, flags: "SA", opts: []layers.TCPOption{optJoin(tokenOf(keyA2))}})
	addP("MP_JOIN of length 16 only", pkt{src: cNew, dst: vipA, flags: "S", opts: []layers.TCPOption{mptcpOpt(slices.Concat([]byte{0x10, 0x02}, be32(tokenOf(keyA2)), be32(2), be32(3))...)}})
	addP("MP_JOIN ACK (third ACK of a join)", pkt{src: cA4, dst: vipA, flags: "A", opts: []layers.TCPOption{mptcpOpt(make([]byte, 22)...)}})

	// SYNs on live 5-tuples.
	addP("SYN on a2 (live token)", pkt{src: cA2, dst: vipA, flags: "S", opts: linuxSYN})
	addP("SYN on a1 (no token: placed anew)", pkt{src: cA1, dst: vipA, flags: "S", opts: linuxSYN})
	addP("SYN on a4 (protected, live token)", pkt{src: cA4, dst: vipA, flags: "S"})
	addP("SYN on a6 (token of another backend)", pkt{src: cA6, dst: vipA, flags: "S"})
	addP("SYN on a7 (token without mapping)", pkt{src: cA7, dst: vipA, flags: "S"})
	addP("SYN on a12 (protected, no token)", pkt{src: cA12, dst: vipA, flags: "S"})
	addP("SYN on b1 (idle token)", pkt{src: cB1, dst: vipB, flags: "S"})
	addP("SYN on d1 (no steering)", pkt{src: cD1, dst: vipD, flags: "S"})

	// Not for the balancer.
	addP("TCP to A's address, another port", pkt{src: cNew, dst: notA, flags: "S"})
	addP("TCP to B's address, another port", pkt{src: cNw6, dst: notB, flags: "S"})
	addP("TCP to no VIP", pkt{src: cNew, dst: other, flags: "S"})
	udpIP := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: cNew.Addr().AsSlice(), DstIP: vipA.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: 5000, DstPort: 80}
	udp.SetNetworkLayerForChecksum(udpIP)
	add("UDP to A", serialize(tb, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4},
		udpIP, udp, gopacket.Payload("hello")))
	add("ICMP echo to A", serialize(tb, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4},
		&layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: cNew.Addr().AsSlice(), DstIP: vipA.Addr().AsSlice()},
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0)}, gopacket.Payload("ping")))
	add("ARP", serialize(tb, &layers.Ethernet{SrcMAC: clientMAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: cNew.Addr().AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: vipA.Addr().AsSlice()}))
	patched("VLAN-tagged SYN to A", pkt{src: cNew, dst: vipA, flags: "S"}, func(f []byte) []byte {
		return slices.Concat(f[:12], []byte{0x81, 0x00, 0x00, 0x07}, f[12:])
	})
	patched("IPv6 SYN to B behind a hop-by-hop header", pkt{src: cNw6, dst: vipB, flags: "S"}, func(f []byte) []byte {
		f[14+6] = 0                                  // next header: hop-by-hop
		f[14+5] += 8                                 // payload length
		hbh := []byte{protoTCP, 0, 1, 4, 0, 0, 0, 0} // TCP next, 8 bytes, PadN
		return slices.Concat(f[:54], hbh, f[54:])
	})
	// Other shapes of frame, which the balancer reads with the shared parser (mx_parse_hdrs) and
	// the model with pkg/mptcp's: VLAN tags (802.1Q, 802.1ad), IPv6 extension headers.
	tagged := func(name string, p pkt, tags ...[]byte) {
		patched(name, p, func(f []byte) []byte { return slices.Concat(f[:12], slices.Concat(tags...), f[12:]) })
	}
	q1 := []byte{0x81, 0x00, 0x20, 0x64}   // 802.1Q, priority 1, VLAN 100
	qinq := []byte{0x88, 0xa8, 0xa7, 0xd0} // 802.1ad, priority 5, VLAN 2000
	tagged("two tags: SYN to C (ipip)", pkt{src: cNew, dst: vipC, flags: "S", opts: linuxSYN}, qinq, q1)
	tagged("one tag: SYN to B (ipip, IPv6)", pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxSYN}, q1)
	tagged("two tags: SYN to D (l2, IPv6)", pkt{src: cNw6, dst: vipD, flags: "S", opts: linuxSYN}, qinq, q1)
	tagged("one tag: data of a2", pkt{src: cA2, dst: vipA, flags: "PA", opts: []layers.TCPOption{nop, nop, optDSS()}, payload: []byte("data")}, q1)
	tagged("two tags: data of b1 (ipip)", pkt{src: cB1, dst: vipB, flags: "PA", opts: []layers.TCPOption{nop, nop, optDSS()}, payload: []byte("data")}, qinq, q1)
	tagged("one tag: MP_JOIN SYN, known token", pkt{src: cNew, dst: vipA, flags: "S", opts: []layers.TCPOption{optJoin(tokenOf(keyA2)), nop, optWS}}, q1)
	tagged("two tags: MP_JOIN SYN, unknown token (drop)", pkt{src: cNew, dst: vipA, flags: "S", opts: []layers.TCPOption{optJoin(0xdeadbeef)}}, qinq, q1)
	tagged("one tag: MP_CAPABLE ACK on a1", pkt{src: cA1, dst: vipA, flags: "A", opts: []layers.TCPOption{nop, nop, optCapableACK(keyFresh)}}, q1)
	tagged("three tags: not read past two", pkt{src: cNew, dst: vipA, flags: "S"}, qinq, q1, q1)
	tagged("one tag: IPv4 first fragment", pkt{src: cNew, dst: vipA, flags: "S"}, q1)
	out[len(out)-1].frame[18+6] |= 0x20
	tagged("one tag, IPv4 version 5", pkt{src: cNew, dst: vipA, flags: "S"}, q1)
	out[len(out)-1].frame[18] = 0x55
	head := pkt{src: cNew, dst: vipA, flags: "S"}.frame(tb)[:12]
	add("one tag, cut", slices.Concat(head, q1[:3]))
	add("two tags, the second cut", slices.Concat(head, qinq, q1[:2]))
	add("one tag, IPv4 header cut", slices.Concat(head, q1, []byte{0x08, 0x00, 0x45, 0}))
	ext := func(name string, p pkt, hdrs ...[]byte) {
		// hdrs: each an extension header whose first byte is its own protocol number, which becomes
		// the previous header's next header; the last one's next header is TCP.
		patched(name, p, func(f []byte) []byte {
			var chain []byte
			prev := 14 + 6 // the IPv6 header's next header
			for _, h := range hdrs {
				h = slices.Clone(h)
				f[prev] = h[0]
				f = slices.Concat(f[:54+len(chain)], h, f[54+len(chain):])
				prev = 54 + len(chain)
				f[prev] = protoTCP
				chain = append(chain, h...)
			}
			binary.BigEndian.PutUint16(f[18:], binary.BigEndian.Uint16(f[18:])+uint16(len(chain)))
			return f
		})
	}
	hbh := []byte{0, 0, 1, 4, 0, 0, 0, 0}                    // hop-by-hop, PadN
	rt := []byte{43, 0, 4, 0, 0, 0, 0, 0}                    // routing, type 4, segments left 0
	dst := append([]byte{60, 1, 1, 12}, make([]byte, 12)...) // destination options, 16 bytes, PadN
	frag0 := []byte{44, 0, 0, 0, 1, 2, 3, 4}                 // fragment header, offset 0, last
	frag0m := []byte{44, 0, 0, 1, 1, 2, 3, 4}                // offset 0, more
	fragLater := []byte{44, 0, 0, 0x40, 1, 2, 3, 4}          // offset 8
	ah := []byte{51, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2}        // AH, 12 bytes (SPI, sequence number)
	ext("IPv6 SYN to B (ipip) behind hop-by-hop, routing, destination options", pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxSYN}, hbh, rt, dst)
	ext("IPv6 SYN to D (l2) behind destination options", pkt{src: cNw6, dst: vipD, flags: "S", opts: linuxSYN}, dst)
	ext("IPv6 data of b1 behind a routing header", pkt{src: cB1, dst: vipB, flags: "PA", opts: []layers.TCPOption{nop, nop, optDSS()}, payload: []byte("data")}, rt)
	ext("IPv6 MP_JOIN SYN to B behind hop-by-hop, idle token", pkt{src: cNw6, dst: vipB, flags: "S", opts: []layers.TCPOption{optJoin(tokenOf(keyB1))}}, hbh)
	ext("IPv6 MP_CAPABLE ACK on b2 behind hop-by-hop", pkt{src: cB2, dst: vipB, flags: "A", opts: []layers.TCPOption{optCapableACK(keyFresh)}}, hbh)
	ext("IPv6 SYN to B behind AH", pkt{src: cNw6, dst: vipB, flags: "S"}, ah)
	ext("IPv6 first fragment (last) to B", pkt{src: cNw6, dst: vipB, flags: "S"}, frag0)
	ext("IPv6 first fragment (more) to D", pkt{src: cNw6, dst: vipD, flags: "S"}, hbh, frag0m)
	ext("IPv6 later fragment to B", pkt{src: cNw6, dst: vipB, flags: "S"}, fragLater)
	nine := make([][]byte, 9)
	for i := range nine {
		nine[i] = []byte{60, 0, 1, 4, 0, 0, 0, 0}
	}
	ext("IPv6 nine destination options headers", pkt{src: cNw6, dst: vipB, flags: "S"}, nine...)
	ext("IPv6 eight destination options headers", pkt{src: cNw6, dst: vipB, flags: "S"}, nine[:8]...)
	ext("IPv6 hop-by-hop header past the frame", pkt{src: cNw6, dst: vipB, flags: "S"}, []byte{0, 200, 1, 4, 0, 0, 0, 0})
	ext("IPv6 payload length short of the extension headers", pkt{src: cNw6, dst: vipB, flags: "S"}, hbh, rt)
	out[len(out)-1].frame[19] -= 16
	tagged("two tags: IPv6 SYN to B", pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxSYN}, qinq, q1)
	{ // two tags and a hop-by-hop header
		f := slices.Clone(out[len(out)-1].frame)
		f[22+6] = 0
		f = slices.Concat(f[:62], hbh, f[62:])
		f[62] = protoTCP
		f[22+5] += 8
		add("two tags: IPv6 SYN to B behind hop-by-hop", f)
	}
	patched("IPv6 to the IPv4-mapped form of A", pkt{src: cNw6, dst: netip.AddrPortFrom(netip.AddrFrom16(vipA.Addr().As16()), 80), flags: "S"},
		func(f []byte) []byte { return f })

	// IPv4 variants.
	patched("IPv4 options (router alert) on a SYN to A", pkt{src: cNew, dst: vipA, flags: "S", opts: linuxSYN}, func(f []byte) []byte {
		f[14] = 0x46
		f[16], f[17] = byte((int(f[16])<<8|int(f[17])+4)>>8), byte(int(f[17])+4)
		return slices.Concat(f[:34], []byte{0x94, 0x04, 0, 0}, f[34:])
	})
	patched("IPv4 options on data of a2", pkt{src: cA2, dst: vipA, flags: "A", payload: []byte("data")}, func(f []byte) []byte {
		f[14] = 0x4f // 40 option bytes of NOPs
		f[17] += 40
		return slices.Concat(f[:34], slices.Repeat([]byte{1}, 40), f[34:])
	})
	patched("IPv4 first fragment", pkt{src: cNew, dst: vipA, flags: "S"}, func(f []byte) []byte { f[20] |= 0x20; return f })
	patched("IPv4 later fragment", pkt{src: cNew, dst: vipA, flags: "S"}, func(f []byte) []byte { f[20], f[21] = 0, 0x10; return f })
	patched("IPv4 SYN padded to 60 bytes", pkt{src: cNew, dst: vipA, flags: "S"}, func(f []byte) []byte { return append(f, 0, 0, 0, 0, 0, 0) })
	patched("IPv4 ipip SYN padded to 60 bytes", pkt{src: cNew, dst: vipC, flags: "S"}, func(f []byte) []byte { return append(f, 0xee, 0xee, 0xee, 0xee, 0xee, 0xee) })
	patched("TOS 0xff, ipip", pkt{src: cNew, dst: vipC, flags: "S"}, func(f []byte) []byte { f[15] = 0xff; return f })
	patched("IPv6 traffic class 0xff, ipip", pkt{src: cNw6, dst: vipB, flags: "S"}, func(f []byte) []byte { f[14] |= 0x0f; f[15] |= 0xf0; return f })

	// Malformed headers.
	syn4, syn6 := pkt{src: cNew, dst: vipA, flags: "S", opts: linuxSYN}.frame(tb), pkt{src: cNw6, dst: vipB, flags: "S", opts: linuxSYN}.frame(tb)
	add("Ethernet header only", syn4[:14])
	add("IPv4 truncated", syn4[:30])
	add("IPv4 header only", syn4[:34])
	add("IPv6 truncated", syn6[:50])
	add("IPv6 header only", syn6[:54])
	add("TCP header cut", syn4[:44])
	add("TCP options cut", syn4[:len(syn4)-4])
	add("TCP options cut (IPv6)", syn6[:len(syn6)-4])
	for name, patch := range map[string]func(f []byte){
		"IPv4 version 6":         func(f []byte) { f[14] = 0x65 },
		"IPv4 header length 16":  func(f []byte) { f[14] = 0x44 },
		"IPv4 header length 60":  func(f []byte) { f[14] = 0x4f },
		"IPv4 total length 0":    func(f []byte) { f[16], f[17] = 0, 0 },
		"IPv4 total length 39":   func(f []byte) { f[16], f[17] = 0, 39 },
		"IPv4 total length long": func(f []byte) { f[16], f[17] = 0x05, 0xdc },
		"TCP data offset 4":      func(f []byte) { f[46] = 0x40 },
		"TCP data offset 15":     func(f []byte) { f[46] = 0xf0 },
		"TCP option length 0":    func(f []byte) { f[55] = 0 },
		"TCP option length 1":    func(f []byte) { f[55] = 1 },
		"TCP option past block":  func(f []byte) { f[55] = 40 },
		"TCP EOL first":          func(f []byte) { f[54] = 0 },
	} {
		f := slices.Clone(syn4)
		patch(f)
		add(name, f)
	}
	for name, patch := range map[string]func(f []byte){
		"IPv6 version 4":           func(f []byte) { f[14] = 0x40 | f[14]&0x0f },
		"IPv6 payload length 0":    func(f []byte) { f[18], f[19] = 0, 0 },
		"IPv6 payload length 19":   func(f []byte) { f[18], f[19] = 0, 19 },
		"IPv6 payload length long": func(f []byte) { f[18], f[19] = 0x05, 0xdc },
		"IPv6 TCP data offset 3":   func(f []byte) { f[54+12] = 0x30 },
	} {
		f := slices.Clone(syn6)
		patch(f)
		add(name, f)
	}
	addP("broken options after an MP_JOIN", pkt{src: cNew, dst: vipA, flags: "S", opts: []layers.TCPOption{optJoin(tokenOf(keyA2)), {OptionType: 8, OptionLength: 12, OptionData: make([]byte, 2)}}})
	addP("broken options before an MP_CAPABLE ACK", pkt{src: cA1, dst: vipA, flags: "A", opts: []layers.TCPOption{{OptionType: 8, OptionLength: 30, OptionData: make([]byte, 2)}, optCapableACK(keyFresh)}})
	patched("TCP option kind without its length", pkt{src: cNew, dst: vipA, flags: "S", opts: nops(3)}, func(f []byte) []byte {
		f[len(f)-1] = 8 // the fourth option byte (EOL padding) becomes a timestamp kind
		return f
	})
	addP("SYN behind 36 NOPs and EOL", pkt{src: cNew, dst: vipA, flags: "S", opts: append(nops(36), layers.TCPOption{OptionType: layers.TCPOptionKindEndList})})
	addP("SYN behind 39 NOPs", pkt{src: cNew, dst: vipA, flags: "S", opts: nops(39)})
	return out
}
