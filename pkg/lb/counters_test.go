package lb

// Packet tests of the per-VIP-id and per-backend counters (mptcpx_lb_vstats, mptcpx_lb_bstats),
// read back through the pinned maps as the exporter reads them.

import (
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// pinnedBalancer loads the balancer with its maps pinned in a private bpffs directory and returns
// it with the maps opened from the pins (OpenPinnedMaps), so that what the tests read is what a
// scrape reads.
func pinnedBalancer(t *testing.T) *Balancer {
	t.Helper()
	dir, err := os.MkdirTemp("/sys/fs/bpf", "mxlbm-test-")
	if err != nil {
		t.Fatalf("private bpffs directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testConfig
	cfg.PinPath = dir
	spec, err := Spec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		t.Fatalf("load balancer: %v", err)
	}
	t.Cleanup(coll.Close)
	m, err := OpenPinnedMaps(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if _, err := os.Stat(dir + "/" + MapVIPStats); err != nil {
		t.Errorf("per-VIP counters not pinned: %v", err)
	}
	if _, err := os.Stat(dir + "/" + MapBEStats); err != nil {
		t.Errorf("per-backend counters not pinned: %v", err)
	}
	if loIfindex == 0 {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		loIfindex = lo.Index
	}
	return &Balancer{Program: coll.Programs[ProgName], Maps: m}
}

func vipStats(t *testing.T, m *Maps, id uint32) VIPStats {
	t.Helper()
	s, err := m.ReadVIPStats(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func beStats(t *testing.T, m *Maps, id uint32) BackendStats {
	t.Helper()
	s, err := m.ReadBackendStats(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// nonZeroBE and nonZeroVIP list the counters that are not 0, by name.
func nonZeroBE(s BackendStats) map[string]uint64 {
	out := map[string]uint64{}
	for i, v := range s {
		if v != 0 {
			out[BackendStat(i).String()] = v
		}
	}
	return out
}

func nonZeroVIP(s VIPStats) map[string]uint64 {
	out := map[string]uint64{}
	for i, v := range s {
		if v != 0 {
			out[VIPStat(i).String()] = v
		}
	}
	return out
}

func sameCounts(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// The per-backend and per-VIP counters of new flows, learned tokens, steered joins, unknown joins
// by policy, collisions and take-overs, each checked against what the frames did (verdict, output
// bytes, flow and token tables) and against the global counters.
func TestPerBackendAndVIPCounters(t *testing.T) {
	b := pinnedBalancer(t)
	r := rand.New(rand.NewPCG(41, 42))
	ring := setup(t, b.Maps, vip4, 1, true, ForwardL2, JoinDrop, 3)

	// New flows: each lands where Maglev says, counted on that backend.
	wantBE := map[uint32]map[string]uint64{1: {}, 2: {}, 3: {}}
	add := func(id uint32, c string, n uint64) { wantBE[id][c] += n }
	const n = 30
	for range n {
		s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}
		id := ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
		expectL2(t, b, s, id)
		add(id, "new_flow", 1)
		add(id, "forwarded", 1)
	}

	// A connection learned on its owner, then joins steered to it.
	first := segment{src: clientAddr(r, vip4), dst: vip4}
	owner := ring[FlowHash(first.key(), DefaultHashSeed)%RingSize]
	rkey := r.Uint64()
	token, _ := ServerToken(rkey)
	// Its SYN, placed by the balancer, then its third ACK: a token is learned only on such a flow.
	expectL2(t, b, segment{src: first.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}, owner)
	if ret, _ := learn(t, b, first, rkey); ret != xdpTX {
		t.Fatalf("third ACK: verdict %d", ret)
	}
	add(owner, "new_flow", 1)
	add(owner, "forwarded", 2)
	add(owner, "token_learned", 1)
	const joins = 7
	for range joins {
		join := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(token, r.Uint32())}}
		expectL2(t, b, join, owner)
		add(owner, "join_steered", 1)
		add(owner, "forwarded", 1)
	}

	for id, want := range wantBE {
		for k, v := range want {
			if v == 0 {
				delete(want, k)
			}
		}
		if got := nonZeroBE(beStats(t, b.Maps, id)); !sameCounts(got, want) {
			t.Errorf("backend %d counters %v, want %v", id, got, want)
		}
	}
	wantVIP := map[string]uint64{"packets": n + 2 + joins, "new_flow": n + 1, "token_learned": 1, "join_steered": joins}
	if got := nonZeroVIP(vipStats(t, b.Maps, 1)); !sameCounts(got, wantVIP) {
		t.Errorf("vip 1 counters %v, want %v", got, wantVIP)
	}
	// The per-backend figures add up to the global ones.
	g := stats(t, b.Maps)
	var sum BackendStats
	for id := uint32(1); id <= 3; id++ {
		s := beStats(t, b.Maps, id)
		for i := range sum {
			sum[i] += s[i]
		}
	}
	if sum[BackendStatNewFlow] != g[StatNewFlow] || sum[BackendStatJoinSteered] != g[StatJoinSteered] ||
		sum[BackendStatTokenLearned] != g[StatTokenLearned] || sum[BackendStatForwarded] != g[StatFwdL2] {
		t.Errorf("per-backend sums %v, global %v", sum, g.Map())
	}

	// Removing a backend clears its counters: an id given to another backend starts from zero.
	if err := b.DeleteBackend(3); err != nil {
		t.Fatal(err)
	}
	if got := nonZeroBE(beStats(t, b.Maps, 3)); len(got) != 0 {
		t.Errorf("removed backend 3 still counts %v", got)
	}
}

func TestUnknownJoinCountersByPolicy(t *testing.T) {
	b := pinnedBalancer(t)
	r := rand.New(rand.NewPCG(43, 44))
	vips := map[UnknownJoin]netip.AddrPort{
		JoinDrop: netip.MustParseAddrPort("10.0.0.1:80"),
		JoinHash: netip.MustParseAddrPort("10.0.0.2:80"),
		JoinPass: netip.MustParseAddrPort("10.0.0.3:80"),
	}
	rings := map[UnknownJoin][]uint32{}
	for pol, vip := range vips {
		rings[pol] = setup(t, b.Maps, vip, uint32(pol), true, ForwardL2, pol, 3)
	}
	outcome := map[UnknownJoin]string{JoinDrop: "join_unknown_drop", JoinHash: "join_unknown_hash", JoinPass: "join_unknown_pass"}
	verdict := map[UnknownJoin]uint32{JoinDrop: xdpDrop, JoinHash: xdpTX, JoinPass: xdpPass}
	hashed := map[uint32]uint64{}
	const n = 5
	for _, pol := range []UnknownJoin{JoinDrop, JoinHash, JoinPass} {
		vip := vips[pol]
		for range n {
			join := segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: []layers.TCPOption{optJoinSYN(r.Uint32(), 1)}}
			if ret, _ := run(t, b.Program, join.frame(t)); ret != verdict[pol] {
				t.Fatalf("%s: verdict %d, want %d", pol, ret, verdict[pol])
			}
			if pol == JoinHash {
				hashed[rings[pol][FlowHash(join.key(), DefaultHashSeed)%RingSize]]++
			}
		}
		want := map[string]uint64{"packets": n, outcome[pol]: n}
		if got := nonZeroVIP(vipStats(t, b.Maps, uint32(pol))); !sameCounts(got, want) {
			t.Errorf("vip %s (%s) counters %v, want %v", vip, pol, got, want)
		}
	}
	for id := uint32(1); id <= 3; id++ {
		want := map[string]uint64{}
		if hashed[id] != 0 {
			want["join_hashed"], want["forwarded"] = hashed[id], hashed[id]
		}
		if got := nonZeroBE(beStats(t, b.Maps, id)); !sameCounts(got, want) {
			t.Errorf("backend %d counters %v, want %v", id, got, want)
		}
	}
	g := stats(t, b.Maps)
	if g[StatJoinUnknown] != 3*n || g[StatJoinDropped] != n {
		t.Errorf("global counters %v", g.Map())
	}

	// Deleting the last VIP of an id clears the id's counters; one of several keeps them.
	shared := netip.MustParseAddrPort("[fd00::2]:80")
	if err := b.PutVIP(VIP{Addr: shared, ID: uint32(JoinHash), JoinSteering: true, UnknownJoin: JoinHash}); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVIP(vips[JoinHash]); err != nil {
		t.Fatal(err)
	}
	if got := vipStats(t, b.Maps, uint32(JoinHash)); got[VIPStatJoinUnknownHash] != n {
		t.Errorf("vip id %d lost its counters while %s still has the id: %v", JoinHash, shared, nonZeroVIP(got))
	}
	if err := b.DeleteVIP(shared); err != nil {
		t.Fatal(err)
	}
	if got := nonZeroVIP(vipStats(t, b.Maps, uint32(JoinHash))); len(got) != 0 {
		t.Errorf("vip id %d kept %v after its last VIP went", JoinHash, got)
	}
}

func TestCollisionCountersPerBackend(t *testing.T) {
	b := pinnedBalancer(t)
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	k1, k2, token := collidingKeys(t)
	r := rand.New(rand.NewPCG(45, 46))
	c1 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	c2 := segment{src: clientAddr(r, vip4), dst: vip4, ack: true}
	if err := b.PutFlows([]Flow{{FlowKey: c1.key(), Backend: 1}, {FlowKey: c2.key(), Backend: 2}}); err != nil {
		t.Fatal(err)
	}
	learn(t, b, c1, k1)
	learn(t, b, c2, k2) // backend 2's connection minted backend 1's live token
	if got, want := nonZeroBE(beStats(t, b.Maps, 1)), map[string]uint64{"token_learned": 1, "forwarded": 1}; !sameCounts(got, want) {
		t.Errorf("backend 1 counters %v, want %v", got, want)
	}
	if got, want := nonZeroBE(beStats(t, b.Maps, 2)), map[string]uint64{"collision": 1, "forwarded": 1}; !sameCounts(got, want) {
		t.Errorf("backend 2 counters %v, want %v", got, want)
	}

	// Idle past the threshold: backend 2 takes the mapping over.
	tk, _, _ := b.LookupToken(0, token)
	tk.LastSeen = idleSince(testConfig.CollisionIdle)
	if err := b.PutToken(tk); err != nil {
		t.Fatal(err)
	}
	// A flow learns once: the take-over comes from a new connection of backend 2 (on the same
	// 5-tuple, written afresh).
	if err := b.PutFlows([]Flow{{FlowKey: c2.key(), Backend: 2}}); err != nil {
		t.Fatal(err)
	}
	learn(t, b, c2, k2)
	if got, want := nonZeroBE(beStats(t, b.Maps, 2)), map[string]uint64{"collision": 1, "token_replaced": 1, "token_learned": 1, "forwarded": 2}; !sameCounts(got, want) {
		t.Errorf("backend 2 counters %v, want %v", got, want)
	}
	if got, want := nonZeroVIP(vipStats(t, b.Maps, 0)), map[string]uint64{"packets": 3, "token_learned": 2, "collision": 1, "token_replaced": 1}; !sameCounts(got, want) {
		t.Errorf("vip 0 counters %v, want %v", got, want)
	}
}

// The Go mirrors of enum lb_vip_stat and enum lb_backend_stat.
func TestCounterEnumsMatchHeader(t *testing.T) {
	src, err := os.ReadFile("../../bpf/include/mx_lb_types.h")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		enum, prefix string
		names        []string
	}{
		{"lb_vip_stat", "LB_VSTAT_", vipStatNames[:]},
		{"lb_backend_stat", "LB_BSTAT_", backendStatNames[:]},
	} {
		body := regexp.MustCompile(`(?s)enum\s+` + e.enum + `\s*\{(.*?)\};`).FindStringSubmatch(string(src))
		if body == nil {
			t.Fatalf("enum %s not found", e.enum)
		}
		got := map[string]int{}
		for _, m := range regexp.MustCompile(`([A-Z0-9_]+)\s*=\s*(\d+)`).FindAllStringSubmatch(body[1], -1) {
			got[m[1]], _ = strconv.Atoi(m[2])
		}
		if len(got) != len(e.names)+1 || got[e.prefix+"MAX"] != len(e.names) {
			t.Errorf("enum %s: %d enumerators, MAX %d; Go has %d names", e.enum, len(got), got[e.prefix+"MAX"], len(e.names))
		}
		for i, n := range e.names {
			c := e.prefix + strings.ToUpper(n)
			if v, ok := got[c]; !ok || v != i {
				t.Errorf("%s: C %d (present %v), Go %d", c, v, ok, i)
			}
		}
	}
}

// Occupancy's batched walk counts what ListFlows and ListTokens list, over more than one batch.
func TestOccupancy(t *testing.T) {
	b := pinnedBalancer(t)
	r := rand.New(rand.NewPCG(47, 48))
	const nFlows, nTokens = 3*occupancyBatch + 17, occupancyBatch + 5
	var flows []Flow
	for i := range nFlows {
		flows = append(flows, Flow{FlowKey: FlowKey{Src: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, byte(i >> 8), byte(i)}), uint16(1024+i%60000)), Dst: vip4},
			Backend: uint32(i % 3)})
	}
	if err := b.PutVIP(VIP{Addr: vip4, ID: 0}); err != nil {
		t.Fatal(err)
	}
	if err := b.PutFlows(flows); err != nil {
		t.Fatal(err)
	}
	for i := range nTokens {
		if err := b.PutToken(Token{VIPID: uint32(i % 2), Token: r.Uint32(), Backend: uint32(i % 5)}); err != nil {
			t.Fatal(err)
		}
	}
	o, err := b.Occupancy()
	if err != nil {
		t.Fatal(err)
	}
	lf, err := b.ListFlows()
	if err != nil {
		t.Fatal(err)
	}
	lt, err := b.ListTokens()
	if err != nil {
		t.Fatal(err)
	}
	wantF, wantT := map[uint32]int{}, map[uint32]int{}
	for _, f := range lf {
		wantF[f.Backend]++
	}
	for _, tk := range lt {
		wantT[tk.Backend]++
	}
	if o.Flows != len(lf) || o.Tokens != len(lt) || len(lf) != nFlows {
		t.Errorf("occupancy %d flows %d tokens, listed %d and %d (put %d flows)", o.Flows, o.Tokens, len(lf), len(lt), nFlows)
	}
	for id, n := range wantF {
		if o.FlowsByBackend[id] != n {
			t.Errorf("backend %d: %d flows counted, %d listed", id, o.FlowsByBackend[id], n)
		}
	}
	for id, n := range wantT {
		if o.TokensByBackend[id] != n {
			t.Errorf("backend %d: %d tokens counted, %d listed", id, o.TokensByBackend[id], n)
		}
	}
}

// An ipip frame too long for the egress MTU once encapsulated that may be fragmented (IPv4 without
// DF) is passed, and counted on its VIP id and its backend; one that fits is forwarded and counted
// as forwarded. (With DF it is answered with an ICMP error: toobig_test.go.)
func TestMTUCountersPerBackend(t *testing.T) {
	b := pinnedBalancer(t)
	const mtu = 1500
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread enters a namespace of its own and is never unlocked: it exits with the
		// goroutine, and no other goroutine runs in that namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Errorf("lo: %v", err)
			return
		}
		if err := netlink.LinkSetMTU(lo, mtu); err != nil {
			t.Errorf("lo mtu: %v", err)
			return
		}
		if err := b.PutVIP(VIP{Addr: vip4, ID: 2, JoinSteering: true, Forward: ForwardIPIP}); err != nil {
			t.Error(err)
			return
		}
		be := testBackend(7, false, lo.Attrs().Index)
		if err := b.PutBackend(be); err != nil {
			t.Error(err)
			return
		}
		fillRing(t, b.Maps, 2, 7)
		r := rand.New(rand.NewPCG(49, 50))
		s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}
		empty := len(serialize(t, s.ipLayers()...))
		for _, c := range []struct {
			innerLen int
			want     uint32
		}{{mtu - 20, xdpTX}, {mtu - 19, xdpPass}, {mtu, xdpPass}} {
			s.payload = make([]byte, c.innerLen-empty)
			if ret, _ := run(t, b.Program, withoutDF(s.frame(t))); ret != c.want {
				t.Errorf("inner packet of %d bytes: verdict %d, want %d", c.innerLen, ret, c.want)
			}
		}
		if got, want := nonZeroBE(beStats(t, b.Maps, 7)), map[string]uint64{"new_flow": 3, "forwarded": 1, "mtu": 2}; !sameCounts(got, want) {
			t.Errorf("backend 7 counters %v, want %v", got, want)
		}
		if got, want := nonZeroVIP(vipStats(t, b.Maps, 2)), map[string]uint64{"packets": 3, "new_flow": 3, "mtu": 2}; !sameCounts(got, want) {
			t.Errorf("vip 2 counters %v, want %v", got, want)
		}
		if g := stats(t, b.Maps); g[StatMTU] != 2 || g[StatFwdIPIP] != 1 {
			t.Errorf("global counters %v", g.Map())
		}
	}()
	<-done
}

// A balancer pinned by an older mptcp-xdp lacks the counter maps: opening it says what to do.
func TestOpenPinnedWithoutCounterMaps(t *testing.T) {
	dir, err := os.MkdirTemp("/sys/fs/bpf", "mxlbm-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testConfig
	cfg.PinPath = dir
	spec, err := Spec(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{MapVIPStats, MapBEStats} {
		spec.Maps[n].Pinning = ebpf.PinNone // as an older version pinned them: not at all
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	if _, err := OpenPinnedMaps(dir); err == nil || !strings.Contains(err.Error(), "attach it again") {
		t.Errorf("open without the counter maps: %v", err)
	}
}
