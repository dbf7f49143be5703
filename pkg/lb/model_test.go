package lb_test

// A Go model of the balancer's decision for one frame (bpf/lb_xdp.c, as docs/lb.md documents it):
// the XDP verdict, the frame it sends, the backend it sends it to, and the flow and token tables
// afterwards. FuzzBalancerAgreement (agreement_test.go) runs the same frames through the loaded
// program and this model and requires the same answers.
//
// The model finds the headers with pkg/mptcp (mptcp.Locate: Ethernet, VLAN tags, IPv4 with options,
// IPv6 with extension headers), walks and classifies the TCP options with it (mptcp.WalkOptions,
// mptcp.ClassifyOption), so that the fuzz compares the balancer's parsing with the reference
// parser the counting datapath is fuzzed against; it reads the fields the balancer uses (lengths,
// addresses, ports, token, key) itself, and decides from the configuration the harness loaded and
// the table contents before the frame. It computes the Maglev slot with lb.FlowHash
// over rings from control.Maglev, and tokens with lb.ServerToken; nothing is asked of the program.
//
// Where docs/lb.md is silent, the model follows what the C source does, and says so:
//   - addresses are kept as the datapath's 16-byte form, so an IPv6 frame whose destination is the
//     IPv4-mapped form of an IPv4 VIP is traffic of that VIP (such addresses never appear on the
//     wire: RFC 4291 §2.5.5.2; a backend's TCP drops them);
//   - the TCP header, options included, must lie inside the frame (not inside the IP length);
//   - the IPv4 outer header of ipip has id 0 and no DF bit; IPv6's flow label is the 5-tuple's hash.
//
// Not modelled, because the harness never reaches it: the ipip MTU check and what follows it (ICMP
// too big, passing), since the egress devices are lo (MTU 65536) and interfaces that do not exist;
// BIG TCP's zero IP lengths, which need frames over 65,535 bytes (the harness's are at most
// maxFrame); generic XDP (the program is loaded for native XDP).

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// XDP verdicts.
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

var verdictNames = map[uint32]string{xdpAborted: "XDP_ABORTED", xdpDrop: "XDP_DROP", xdpPass: "XDP_PASS", xdpTX: "XDP_TX", xdpRedirect: "XDP_REDIRECT"}

func verdictName(v uint32) string {
	if n, ok := verdictNames[v]; ok {
		return n
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// Values of the datapath's flag words (bpf/include/mx_lb_types.h).
const (
	flowOpened  = 1 << 0 // LB_FLOW_OPENED
	flowLearned = 1 << 1 // LB_FLOW_LEARNED
	// tokSeenShift is LB_TOK_SEEN_SHIFT: lb_flow.tok_seen's unit, 2^20 ns.
	tokSeenShift = 20
	// lastNsGrain is LB_LAST_NS_GRAIN: a flow hit rewrites last_ns only when it is this old.
	lastNsGrain = 1 << 20
)

const (
	ethHLen     = 14
	ethPIPv4    = 0x0800
	ethPIPv6    = 0x86dd
	protoTCP    = 6
	protoIPIP   = 4
	protoIPv6   = 41
	tcpOptMax   = 40 // TCP option bytes at most (doff 15)
	mptcpKind   = 30
	mpCapable   = 0 // MPTCP subtypes
	mpJoin      = 1
	pickProbes  = 8 // LB_PICK_PROBES
	outerTTL    = 64
	maxIPLength = 0xffff
)

// vipKey is a VIP as the datapath keys it: the 16-byte address and the port.
type vipKey struct {
	addr [16]byte
	port uint16
}

func vipKeyOf(a netip.AddrPort) vipKey { return vipKey{addr: a.Addr().As16(), port: a.Port()} }

// lbModel is the configuration the harness loaded, as the model sees it.
type lbModel struct {
	vips     map[vipKey]lb.VIP
	backends map[uint32]lb.Backend // active entries; every other id is a zeroed (inactive) entry
	rings    map[uint32][]uint32   // per VIP id, from control.Maglev; a missing ring is all zeroes
	seed     uint32                // 5-tuple hash seed
	// collisionIdle and tokenRefresh are the loaded lb_collision_idle_ns and lb_token_refresh_ns.
	collisionIdle, tokenRefresh uint64
	ingress                     int // ingress ifindex of BPF_PROG_TEST_RUN (the netns's lo)
	// flowRate is the loaded lb_new_flow_rate (0: no guard).
	flowRate uint32
	// locate and classify are pkg/mptcp's parser (mptcp.Locate, mptcp.ClassifyOption) unless a
	// test gives the model a wrong one (TestBalancerAgreementCatchesWrongModel).
	locate   func(frame []byte) mptcp.Headers
	classify func(opt []byte, syn, ack bool) mptcp.Class
}

// guardWindow is LB_GUARD_WINDOW_NS.
const guardWindow = uint64(time.Second)

// guardState is the rate guard's state as the frame's CPU sees it: its window (mptcpx_lb_guard
// on that CPU) and when any CPU last refused a flow (mptcpx_lb_guard_on).
type guardState struct {
	win         uint64
	flows, late uint32
	on          uint64
}

// admit is the rate guard (lb_guard_admit): may a new flow be stored (late false), may a third
// ACK of a flow not in the table be placed late (late true)? It updates t's guard state.
func (m *lbModel) admit(o *outcome, t *tables, now uint64, late bool) bool {
	if m.flowRate == 0 {
		return !late
	}
	g := &t.guard
	if age(now, g.win) >= guardWindow {
		g.win, g.flows, g.late = now, 0, 0
	}
	if late {
		if g.on == 0 || age(now, g.on) > 2*guardWindow || g.late >= m.flowRate {
			o.note("guard: not engaged, or its late budget spent: nothing placed late")
			return false
		}
		g.late++
		o.note("guard engaged: the third ACK is placed late (%d of %d this window)", g.late, m.flowRate)
		return true
	}
	if g.flows >= m.flowRate {
		if age(now, g.on) >= guardWindow/8 {
			g.on = now
		}
		o.note("guard: %d new flows stored this window already: not stored", g.flows)
		return false
	}
	g.flows++
	return true
}

// tables are the flow table, the protected flow table and the token table.
type tables struct {
	flows, pflows map[datapath.LbLbFlowId]datapath.LbLbFlow
	tokens        map[datapath.LbLbTokenKey]datapath.LbLbToken
	guard         guardState // the rate guard's, as the frame's CPU sees it
}

func (s tables) clone() tables {
	return tables{flows: maps.Clone(s.flows), pflows: maps.Clone(s.pflows), tokens: maps.Clone(s.tokens), guard: s.guard}
}

// outcome is what the model predicts for one frame.
type outcome struct {
	verdict uint32
	out     []byte // the frame after the program: rewritten when forwarded, else the input
	backend int    // the backend the frame is forwarded to; -1 when it is not forwarded
	// malformed is how much the datapath's malformed counter moves: a broken IP or TCP header
	// (the frame passes), or broken TCP options of a VIP's frame (it goes on).
	malformed uint64
	after     tables
	trace     []string // how the model decided, for reports
}

func (o *outcome) note(format string, a ...any) { o.trace = append(o.trace, fmt.Sprintf(format, a...)) }

// mpOption is what the TCP options tell the balancer.
type mpOption struct {
	join, keys bool   // an MP_JOIN SYN; an MP_CAPABLE with both keys
	token      uint32 // MP_JOIN: the receiver's token
	rkey       uint64 // MP_CAPABLE: the receiver's (server's) key
	malformed  bool
}

// scanOptions walks the option block as pkg/mptcp walks it (mptcp.WalkOptions: all 40 option bytes,
// any number of NOPs, as docs/lb.md says) and stops at the first option that matters, by
// pkg/mptcp's classes: an MP_JOIN SYN (mptcp.MPJoinSYN), or an MP_CAPABLE with both keys
// (mptcp.MPCapableACK or MPCapableData) on an ACK, of version 1. A malformed option (its length
// byte missing, below 2 or past the block) ends the walk.
func (m *lbModel) scanOptions(opts []byte, syn, ack bool) mpOption {
	var mp mpOption
	classify := mptcp.ClassifyOption
	if m.classify != nil {
		classify = m.classify
	}
	bad := mptcp.WalkOptions(opts, func(o []byte) bool {
		if o[0] != mptcpKind {
			return true
		}
		switch classify(o, syn, ack) {
		case mptcp.MPJoinSYN: // address id, then the receiver's token
			mp.join, mp.token = true, binary.BigEndian.Uint32(o[4:8])
			return false
		case mptcp.MPCapableACK, mptcp.MPCapableData: // flags, sender's key, receiver's key
			if ack && o[2]&0x0f == 1 {
				mp.keys, mp.rkey = true, binary.BigEndian.Uint64(o[12:20])
				return false
			}
		}
		return true
	})
	mp.malformed = bad != nil
	return mp
}

// usable is the backend id may take a packet: active (and, for a new flow, not draining).
func (m *lbModel) usable(id uint32, newFlow bool) (lb.Backend, bool) {
	b, ok := m.backends[id]
	if !ok || b.Ifindex == 0 || (newFlow && b.Draining) {
		return lb.Backend{}, false
	}
	return b, true
}

// pick is Maglev: the backend of the slot hash % RingSize of the VIP's ring, or of one of the next
// slots (LB_PICK_PROBES in all) when that one's backend takes no new flows (a join port's owner
// takes its joins while draining).
func (m *lbModel) pick(vipID, hash uint32, joinPort bool) (uint32, lb.Backend, bool) {
	if vipID >= lb.MaxVIPs {
		return 0, lb.Backend{}, false
	}
	ring := m.rings[vipID]
	slot := hash % lb.RingSize
	for range pickProbes {
		var id uint32 // the ring map is an array: a slot never written holds 0
		if ring != nil {
			id = ring[slot]
		}
		if b, ok := m.usable(id, !joinPort); ok {
			return id, b, true
		}
		slot = (slot + 1) % lb.RingSize
	}
	return 0, lb.Backend{}, false
}

// decide predicts what the balancer does with frame, given the tables before it and the time now
// (CLOCK_MONOTONIC ns, as the datapath's lb_now).
func (m *lbModel) decide(frame []byte, before tables, now uint64) outcome {
	o := outcome{verdict: xdpPass, out: frame, backend: -1, after: before.clone()}
	pass := func(why string) outcome {
		o.note("%s: XDP_PASS, untouched", why)
		return o
	}
	malformed := func(why string) outcome {
		o.malformed = 1
		return pass("malformed: " + why)
	}
	be16 := func(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

	if len(frame) < ethHLen {
		return pass("shorter than an Ethernet header")
	}
	// Where the headers lie, by the one Go parser (pkg/mptcp, the reference of the shared C one).
	locate := mptcp.Locate
	if m.locate != nil {
		locate = m.locate
	}
	h := locate(frame)
	switch h.Status {
	case mptcp.HeadersOther:
		return pass("no TCP header to read (not IP, not TCP, or a later fragment)")
	case mptcp.HeadersMalformed:
		return malformed("broken IP header, or too many IPv6 extension headers")
	case mptcp.HeadersTruncated:
		return malformed("a header runs past the frame")
	}
	if h.L4 > mptcp.MaxL4Offset {
		return malformed(fmt.Sprintf("TCP header at %d, past MaxL4Offset", h.L4))
	}
	if h.Fragment {
		return pass("first fragment")
	}
	var (
		src, dst [16]byte
		ipOff    = h.L3
		ipLen    int // the IP packet's length (header included), from its header
		tcpOff   = h.L4
		tos      uint8
		v6       = h.IPv6
	)
	ip := frame[ipOff:]
	if !v6 {
		ihl := tcpOff - ipOff
		ipLen = int(be16(ip[2:4]))
		if ipLen < ihl+20 || ipOff+ipLen > len(frame) {
			return malformed(fmt.Sprintf("IPv4 total length %d", ipLen))
		}
		tos = ip[1]
		src = netip.AddrFrom4([4]byte(ip[12:16])).As16()
		dst = netip.AddrFrom4([4]byte(ip[16:20])).As16()
	} else {
		// The extension headers are part of the payload.
		ipLen = int(be16(ip[4:6])) + 40
		if ipLen < tcpOff-ipOff+20 || ipOff+ipLen > len(frame) {
			return malformed(fmt.Sprintf("IPv6 payload length %d", ipLen-40))
		}
		tos = ip[0]<<4 | ip[1]>>4
		src, dst = [16]byte(ip[8:24]), [16]byte(ip[24:40])
	}
	if len(frame) < tcpOff+20 {
		return malformed("TCP header truncated")
	}
	th := frame[tcpOff:]
	thl := int(th[12]>>4) * 4
	if thl < 20 || tcpOff+thl > len(frame) {
		return malformed(fmt.Sprintf("TCP header length %d", thl))
	}
	sport, dport := be16(th[0:2]), be16(th[2:4])
	key := lb.FlowKey{Src: netip.AddrPortFrom(netip.AddrFrom16(src).Unmap(), sport), Dst: netip.AddrPortFrom(netip.AddrFrom16(dst).Unmap(), dport)}
	vip, ok := m.vips[vipKey{addr: dst, port: dport}]
	if !ok {
		return pass(fmt.Sprintf("%s -> %s: no VIP", key.Src, key.Dst))
	}
	// The flow tables' key: the VIP by its id.
	fk := datapath.LbLbFlowId{Src: src, Sport: binary.NativeEndian.Uint16(th[0:2]),
		Dport: binary.NativeEndian.Uint16(th[2:4]), VipId: vip.ID}
	o.note("%s -> %s: VIP id %d (steering %v, %v, unknown join %v)", key.Src, key.Dst, vip.ID, vip.JoinSteering, vip.Forward, vip.UnknownJoin)

	syn, ack := th[13]&0x02 != 0, th[13]&0x10 != 0
	mp := m.scanOptions(th[20:thl], syn, ack)
	switch {
	case mp.join:
		o.note("MP_JOIN SYN, token %08x", mp.token)
	case mp.keys:
		o.note("MP_CAPABLE with the server's key %016x", mp.rkey)
	}
	if mp.malformed {
		o.malformed = 1
		o.note("malformed TCP options (counted; the packet goes on)")
	}
	steering, opening := vip.JoinSteering, syn && !ack
	hash := lb.FlowHash(key, m.seed)
	t := &o.after

	// The flow table, then the protected one.
	f, inFlows := t.flows[fk]
	prot := false
	if !inFlows {
		f, prot = t.pflows[fk]
	}
	known := inFlows || prot
	inProt := prot // the table the flow is in (it may move to the protected one)
	if known {
		o.note("flow known (protected %v): backend %d, token %08x, flags %#x", prot, f.Backend, f.Token, f.Flags)
	}
	// A non-SYN follows its flow. A SYN follows it only when the flow holds a live token (its
	// backend's) and the SYN is not that connection's own join again, nor (steering) another join,
	// which is judged as a join but stores nothing (guard).
	follow, guard := false, false
	if known {
		if !opening {
			follow = true
		} else if f.Token != 0 && !(mp.join && mp.token == f.Token) {
			tk, ok := t.tokens[datapath.LbLbTokenKey{VipId: vip.ID, Token: f.Token}]
			guard = ok && tk.Backend == f.Backend
			follow = guard && !(steering && mp.join)
			if guard {
				o.note("SYN on a flow with a live token: it stores nothing")
			}
		}
	}
	var (
		bid    uint32
		be     lb.Backend
		have   bool
		token  uint32
		insert int  // 1: a new flow for the flow table, 2: for the protected one
		late   bool // a third ACK placed late by the rate guard
		nflags = uint32(flowOpened)
	)
	if follow {
		bid = f.Backend
		be, have = m.usable(bid, false)
		if !have {
			o.note("the flow's backend %d is not usable", bid)
		}
	}
	hit := have
	store := func(k datapath.LbLbFlowId, v datapath.LbLbFlow, protected bool) {
		if protected {
			t.pflows[k] = v
		} else {
			t.flows[k] = v
		}
	}
	switch {
	case hit:
		o.note("follows its flow to backend %d", bid)
		if age(now, f.LastNs) >= lastNsGrain {
			f.LastNs = now
		}
		token = f.Token
		// The token table is read only when the flow's tok_seen cannot vouch for the token
		// (lb_xdp.c, LB_TOK_SEEN_SHIFT).
		if token != 0 && steering && !mp.keys && uint32(now>>tokSeenShift)-f.TokSeen >= uint32(m.tokenRefresh>>tokSeenShift) {
			tk := datapath.LbLbTokenKey{VipId: vip.ID, Token: token}
			if tv, ok := t.tokens[tk]; ok && tv.Backend == bid {
				if age(now, tv.LastNs) > m.tokenRefresh {
					tv.LastNs = now
					t.tokens[tk] = tv
					o.note("refreshes token %08x", token)
				}
				f.TokSeen = uint32(tv.LastNs >> tokSeenShift)
			}
		}
		store(fk, f, inProt)
		if !prot && be.Draining {
			if _, exists := t.pflows[fk]; !exists {
				t.pflows[fk] = f
				delete(t.flows, fk)
				inProt = true
				o.note("backend %d drains: the flow moves to the protected table", bid)
			}
		}
	case steering && mp.join:
		tv, ok := datapath.LbLbToken{}, false
		if mp.token != 0 {
			tv, ok = t.tokens[datapath.LbLbTokenKey{VipId: vip.ID, Token: mp.token}]
		}
		if ok {
			bid = tv.Backend
			be, have = m.usable(bid, false)
		}
		if have {
			token = mp.token
			insert = 2
			o.note("join steered by its token to backend %d", bid)
		} else {
			o.note("unknown join (policy %v)", vip.UnknownJoin)
			switch vip.UnknownJoin {
			case lb.JoinPass:
				o.verdict = xdpPass
				o.note("XDP_PASS, untouched")
				return o
			case lb.JoinHash:
			default: // drop, and any value the datapath does not know
				o.verdict = xdpDrop
				o.note("XDP_DROP")
				return o
			}
			bid, be, have = m.pick(vip.ID, hash, vip.JoinPort)
			insert = 1
			if have {
				o.note("placed by Maglev (slot %d) on backend %d", hash%lb.RingSize, bid)
			}
		}
		nflags |= flowLearned // a join carries no key
		if guard {
			insert = 0
		}
	default:
		bid, be, have = m.pick(vip.ID, hash, vip.JoinPort)
		if have && opening {
			insert = 1
			o.note("new flow, placed by Maglev (slot %d) on backend %d", hash%lb.RingSize, bid)
		} else if have {
			o.note("no flow: forwarded by Maglev (slot %d) to backend %d", hash%lb.RingSize, bid)
			if steering && mp.keys && m.admit(&o, t, now, true) {
				late, insert = true, 1
				nflags |= flowLearned
			}
		}
	}
	if !have {
		o.verdict = xdpPass
		o.note("no usable backend: XDP_PASS, untouched")
		return o
	}

	// Over the rate guard's limit a new flow is not stored, and a stale entry of its 5-tuple goes.
	if insert == 1 && !late && !m.admit(&o, t, now, false) {
		insert = 0
		if known {
			if prot {
				delete(t.pflows, fk)
			} else {
				delete(t.flows, fk)
			}
		}
	}
	// A token is learned on a flow opened by a SYN the balancer placed, once; or on a third ACK
	// placed late.
	if late {
		token = m.learn(&o, vip.ID, mp.rkey, bid, now)
	} else if hit && steering && mp.keys && f.Flags&flowOpened != 0 && f.Flags&flowLearned == 0 && f.Token == 0 {
		f.Flags |= flowLearned
		if learned := m.learn(&o, vip.ID, mp.rkey, bid, now); learned != 0 {
			f.Token = learned
		}
		// In the table the flow is in now: the protected one when it just moved there.
		store(fk, f, inProt)
	}
	if insert != 0 {
		nf := datapath.LbLbFlow{Backend: bid, Token: token, LastNs: now, Flags: nflags}
		if insert == 2 {
			t.pflows[fk] = nf
			if known && !prot {
				delete(t.flows, fk)
			}
		} else {
			t.flows[fk] = nf
			if prot {
				delete(t.pflows, fk)
			}
		}
	}

	o.backend = int(bid)
	o.verdict = xdpRedirect
	if be.Ifindex == m.ingress {
		o.verdict = xdpTX
	}
	if vip.Forward != lb.ForwardIPIP {
		out := append([]byte(nil), frame...)
		copy(out[0:6], be.MAC)
		copy(out[6:12], be.SrcMAC)
		o.out = out
		o.note("l2 to %s: %s", be.MAC, verdictName(o.verdict))
		return o
	}
	// The harness's egress devices never refuse the size (lo, or no device: see agreement_test.go),
	// so the MTU check passes; the IP length cannot overflow in frames of at most maxFrame bytes.
	if ipLen+outerLen(be) > maxIPLength {
		o.verdict, o.backend = xdpPass, -1
		o.note("encapsulated length %d over 65535: XDP_PASS, untouched", ipLen+outerLen(be))
		return o
	}
	o.out = encapsulate(frame, be, ipOff, v6, ipLen, tos, hash)
	o.note("ipip to %s: %s", be.Addr, verdictName(o.verdict))
	return o
}

// learn records token -> backend for a connection whose server key is rkey and returns the token
// when the flow now owns (or shares, as the same connection) the mapping, else 0.
func (m *lbModel) learn(o *outcome, vipID uint32, rkey uint64, bid uint32, now uint64) uint32 {
	token, keyHash := lb.ServerToken(rkey)
	tk := datapath.LbLbTokenKey{VipId: vipID, Token: token}
	t := o.after.tokens
	old, ok := t[tk]
	switch {
	case !ok:
		o.note("learns token %08x for backend %d", token, bid)
	case old.KeyHash == keyHash || old.Backend == bid:
		o.note("token %08x again (same key or same backend): refreshed, backend %d", token, bid)
	case age(now, old.LastNs) <= m.collisionIdle:
		o.note("token %08x collides with backend %d's live connection: not learned", token, old.Backend)
		return 0
	default:
		o.note("token %08x of backend %d idle: taken over by backend %d", token, old.Backend, bid)
	}
	t[tk] = datapath.LbLbToken{Backend: bid, KeyHash: keyHash, LastNs: now}
	return token
}

// encapsulate is the frame sent to backend be in ipip mode: an Ethernet header to the backend's
// next hop with the frame's VLAN tags (the IP header was at ipOff), the innermost EtherType the
// outer header's, an outer header of be.Addr's family, then the client's IP packet and whatever
// followed it in the frame.
func encapsulate(frame []byte, be lb.Backend, ipOff int, innerV6 bool, innerLen int, tos uint8, hash uint32) []byte {
	proto := byte(protoIPIP)
	if innerV6 {
		proto = protoIPv6
	}
	src, dst := addr16(be.SrcAddr), addr16(be.Addr)
	var outer []byte
	ethType := uint16(ethPIPv4)
	if netip.AddrFrom16(dst).Is4In6() { // the datapath's test (lb_is_v4mapped)
		h := make([]byte, 20)
		h[0] = 0x45
		h[1] = tos
		binary.BigEndian.PutUint16(h[2:], uint16(innerLen+20))
		h[8] = outerTTL
		h[9] = proto
		copy(h[12:16], src[12:])
		copy(h[16:20], dst[12:])
		binary.BigEndian.PutUint16(h[10:], ipv4Checksum(h))
		outer = h
	} else {
		ethType = ethPIPv6
		h := make([]byte, 40)
		binary.BigEndian.PutUint32(h[0:], 6<<28|uint32(tos)<<20|hash&0xfffff)
		binary.BigEndian.PutUint16(h[4:], uint16(innerLen))
		h[6] = proto
		h[7] = outerTTL
		copy(h[8:24], src[:])
		copy(h[24:40], dst[:])
		outer = h
	}
	out := make([]byte, 0, len(frame)+len(outer))
	out = append(out, be.MAC...)
	out = append(out, be.SrcMAC...)
	out = append(out, frame[12:ipOff-2]...) // the tags
	out = binary.BigEndian.AppendUint16(out, ethType)
	out = append(out, outer...)
	return append(out, frame[ipOff:]...)
}

// outerLen is the length of the outer IP header toward be.
func outerLen(be lb.Backend) int {
	if a := addr16(be.Addr); netip.AddrFrom16(a).Is4In6() {
		return 20
	}
	return 40
}

// addr16 is an address as the backend table holds it (IPv4 as ::ffff:a.b.c.d, none as zeroes).
func addr16(a netip.Addr) [16]byte {
	if !a.IsValid() {
		return [16]byte{}
	}
	return a.As16()
}

// ipv4Checksum is RFC 1071's checksum of an IPv4 header whose checksum field is zero.
func ipv4Checksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// age is lb_age (mx_lb.h): how long ago then was at now, 0 for a then after now (the control plane
// stamps with the precise clock, up to a tick ahead of the datapath's coarse one).
func age(now, then uint64) uint64 {
	if now > then {
		return now - then
	}
	return 0
}
