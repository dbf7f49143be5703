package lb

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// PutVIP adds or updates a VIP.
func (m *Maps) PutVIP(v VIP) error {
	if v.ID >= MaxVIPs {
		return fmt.Errorf("vip %s: id %d out of range (< %d)", v.Addr, v.ID, MaxVIPs)
	}
	// The flow tables key a flow by its VIP's id, source and ports: two VIPs of one id would
	// share flows if they had the same family and port.
	vips, err := m.ListVIPs()
	if err != nil {
		return fmt.Errorf("put vip %s: %w", v.Addr, err)
	}
	for _, o := range vips {
		if o.ID == v.ID && o.Addr != v.Addr && o.Addr.Port() == v.Addr.Port() && o.Addr.Addr().Unmap().Is4() == v.Addr.Addr().Unmap().Is4() {
			return fmt.Errorf("vip %s: id %d is %s's, of the same family and port (VIPs of one id must differ in either)", v.Addr, v.ID, o.Addr)
		}
	}
	val := datapath.LbLbVip{Id: v.ID, Forward: uint32(v.Forward), UnknownJoin: uint32(v.UnknownJoin)}
	if v.JoinSteering {
		val.Flags |= vipJoinSteering
	}
	if v.JoinPort {
		val.Flags |= vipJoinPort
	}
	if err := m.VIPs.Put(vipKey(v.Addr), val); err != nil {
		return fmt.Errorf("put vip %s: %w", v.Addr, err)
	}
	return nil
}

// DeleteVIP removes a VIP: its traffic passes to the balancer's stack from the next packet on.
func (m *Maps) DeleteVIP(addr netip.AddrPort) error {
	k := vipKey(addr)
	var v datapath.LbLbVip
	if err := m.VIPs.Lookup(k, &v); err != nil {
		return fmt.Errorf("delete vip %s: %w", addr, err)
	}
	if err := m.VIPs.Delete(k); err != nil {
		return fmt.Errorf("delete vip %s: %w", addr, err)
	}
	// The last VIP of its id takes the id's counters with it, so that a VIP given the id later
	// starts from zero.
	vips, err := m.ListVIPs()
	if err != nil {
		return fmt.Errorf("delete vip %s: %w", addr, err)
	}
	for _, o := range vips {
		if o.ID == v.Id {
			return nil
		}
	}
	if err := zeroPerCPU[datapath.LbLbVipStats](m.VIPStats, v.Id); err != nil {
		return fmt.Errorf("delete vip %s: clear counters of vip id %d: %w", addr, v.Id, err)
	}
	return nil
}

// ListVIPs lists the VIPs.
func (m *Maps) ListVIPs() ([]VIP, error) {
	var (
		k   datapath.LbLbVipKey
		v   datapath.LbLbVip
		out []VIP
	)
	it := m.VIPs.Iterate()
	for it.Next(&k, &v) {
		out = append(out, VIP{
			Addr:         netip.AddrPortFrom(addrFrom16(k.Addr), netOrder16(k.Port)),
			ID:           v.Id,
			JoinSteering: v.Flags&vipJoinSteering != 0,
			JoinPort:     v.Flags&vipJoinPort != 0,
			Forward:      Forward(v.Forward),
			UnknownJoin:  UnknownJoin(v.UnknownJoin),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate vips: %w", err)
	}
	return out, nil
}

// PutBackend adds or updates backend b.ID (active; draining when b.Draining).
func (m *Maps) PutBackend(b Backend) error {
	if b.ID >= MaxBackends {
		return fmt.Errorf("backend %s: id %d out of range (< %d)", b.Addr, b.ID, MaxBackends)
	}
	if len(b.MAC) != 6 || len(b.SrcMAC) != 6 || b.Ifindex <= 0 {
		return fmt.Errorf("backend %s: need 6-byte MACs and an egress ifindex", b.Addr)
	}
	if err := m.Backends.Put(b.ID, toBackend(b)); err != nil {
		return fmt.Errorf("put backend %d: %w", b.ID, err)
	}
	return nil
}

// DeleteBackend clears entry id: no packet goes to it any more, not even of its existing flows
// (they are placed anew). Drain first (PutBackend with Draining) to keep its connections.
func (m *Maps) DeleteBackend(id uint32) error {
	if err := m.Backends.Put(id, datapath.LbLbBackend{}); err != nil {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	// After the entry: no packet reaches the id any more, and a backend given it later starts
	// from zero.
	if err := zeroPerCPU[datapath.LbLbBackendStats](m.BackendStats, id); err != nil {
		return fmt.Errorf("delete backend %d: clear its counters: %w", id, err)
	}
	return nil
}

// Backend reads entry id; ok is false when it is not active.
func (m *Maps) Backend(id uint32) (b Backend, ok bool, err error) {
	var v datapath.LbLbBackend
	if err := m.Backends.Lookup(id, &v); err != nil {
		return Backend{}, false, fmt.Errorf("lookup backend %d: %w", id, err)
	}
	return fromBackend(id, v), v.Flags&backendActive != 0, nil
}

// ListBackends lists the active backends.
func (m *Maps) ListBackends() ([]Backend, error) {
	var (
		k   uint32
		v   datapath.LbLbBackend
		out []Backend
	)
	it := m.Backends.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&backendActive != 0 {
			out = append(out, fromBackend(k, v))
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate backends: %w", err)
	}
	return out, nil
}

// WriteRing replaces VIP vipID's Maglev lookup table (RingSize backend IDs) in one batch. Packets
// in flight see either table, slot by slot; flows already placed keep their backend.
func (m *Maps) WriteRing(vipID uint32, ring []uint32) error {
	if len(ring) != RingSize {
		return fmt.Errorf("ring of vip %d: %d slots, want %d", vipID, len(ring), RingSize)
	}
	if (uint64(vipID)+1)*RingSize > uint64(m.Ring.MaxEntries()) {
		return fmt.Errorf("ring of vip %d: the ring map holds %d vips", vipID, m.Ring.MaxEntries()/RingSize)
	}
	keys := make([]uint32, RingSize)
	for i := range keys {
		keys[i] = vipID*RingSize + uint32(i)
	}
	if _, err := m.Ring.BatchUpdate(keys, ring, nil); err != nil {
		return fmt.Errorf("write ring of vip %d: %w", vipID, err)
	}
	return nil
}

// ReadRing reads VIP vipID's lookup table back.
func (m *Maps) ReadRing(vipID uint32) ([]uint32, error) {
	out := make([]uint32, RingSize)
	for i := range out {
		if err := m.Ring.Lookup(vipID*RingSize+uint32(i), &out[i]); err != nil {
			return nil, fmt.Errorf("read ring of vip %d slot %d: %w", vipID, i, err)
		}
	}
	return out, nil
}

// flowMaps are the flow table and, when the balancer has it, the protected one.
func (m *Maps) flowMaps() []*ebpf.Map {
	if m.PFlows == nil {
		return []*ebpf.Map{m.Flows}
	}
	return []*ebpf.Map{m.Flows, m.PFlows}
}

// vipIndex reads the VIP table, which names the VIPs the flow tables key flows by.
func (m *Maps) vipIndex() (vipIndex, error) {
	vips, err := m.ListVIPs()
	if err != nil {
		return vipIndex{}, err
	}
	return newVIPIndex(vips), nil
}

// ListFlows returns every flow of the flow table and of the protected table (steered joins, flows
// of draining backends; Flow.Protected), each flow of a table once however the datapath changes
// it meanwhile (walk); a flow that the datapath moves to the protected table during the call may
// be listed from both. A flow of a VIP deleted since has no destination address (Flow.VIPID
// still names it, and DeleteFlows removes it).
func (m *Maps) ListFlows() ([]Flow, error) {
	vips, err := m.vipIndex()
	if err != nil {
		return nil, fmt.Errorf("list flows: %w", err)
	}
	var out []Flow
	for i, mp := range m.flowMaps() {
		err := walk(mp, func(k *datapath.LbLbFlowId, v *datapath.LbLbFlow) error {
			out = append(out, fromFlow(*k, *v, i == 1, vips))
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list flows: %w", err)
		}
	}
	return out, nil
}

// LookupFlow reads one flow, from the flow table or the protected one (where the datapath looks).
// A flow to an address that is no VIP is not there.
func (m *Maps) LookupFlow(k FlowKey) (f Flow, ok bool, err error) {
	var vip datapath.LbLbVip
	err = m.VIPs.Lookup(vipKey(k.Dst), &vip)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Flow{}, false, nil
	}
	if err != nil {
		return Flow{}, false, fmt.Errorf("lookup flow %s -> %s: vip: %w", k.Src, k.Dst, err)
	}
	return m.LookupFlowOf(Flow{FlowKey: k, VIPID: vip.Id})
}

// LookupFlowOf reads flow f again, as ListFlows gave it (by VIPID, source and ports: a flow of a VIP
// deleted since too), from the flow table or the protected one; Dst is f's.
func (m *Maps) LookupFlowOf(f Flow) (cur Flow, ok bool, err error) {
	id := flowID(f.FlowKey, f.VIPID)
	for i, mp := range m.flowMaps() {
		var v datapath.LbLbFlow
		err = mp.Lookup(id, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return Flow{}, false, fmt.Errorf("lookup flow %s -> %s: %w", f.Src, f.Dst, err)
		}
		cur = fromFlow(id, v, i == 1, vipIndex{})
		cur.Dst = f.Dst
		return cur, true, nil
	}
	return Flow{}, false, nil
}

// PutFlows writes flows in batches (restoring state, pre-placing flows, benchmarks), each to the
// table its Protected field names, as opened by a SYN (Flow.Opened: the control plane vouches for
// them). Every flow's Dst must be a VIP (PutVIP first): the tables key a flow by its VIP's id.
func (m *Maps) PutFlows(flows []Flow) error {
	vips, err := m.vipIndex()
	if err != nil {
		return fmt.Errorf("put flows: %w", err)
	}
	const batch = 65536
	for len(flows) > 0 {
		n := min(batch, len(flows))
		var keys [2][]datapath.LbLbFlowId
		var vals [2][]datapath.LbLbFlow
		for _, f := range flows[:n] {
			i := 0
			if f.Protected && m.PFlows != nil {
				i = 1
			}
			id, ok := vips.id(f.FlowKey)
			if !ok {
				return fmt.Errorf("put flow %s -> %s: %s is not a VIP", f.Src, f.Dst, f.Dst)
			}
			keys[i] = append(keys[i], flowID(f.FlowKey, id))
			vals[i] = append(vals[i], toFlow(f))
		}
		if len(keys[1]) != 0 {
			if err := m.markProtected(keys[1]); err != nil {
				return err
			}
		}
		for i, mp := range m.flowMaps() {
			if len(keys[i]) == 0 {
				continue
			}
			if _, err := mp.BatchUpdate(keys[i], vals[i], nil); err != nil {
				return fmt.Errorf("put %d flows: %w", len(keys[i]), err)
			}
		}
		flows = flows[n:]
	}
	return nil
}

// DeleteFlow removes one flow from both tables; a missing flow, or one to an address that is no
// VIP, is not an error (DeleteFlows removes flows of VIPs deleted since, as ListFlows gives them).
func (m *Maps) DeleteFlow(k FlowKey) error {
	var vip datapath.LbLbVip
	err := m.VIPs.Lookup(vipKey(k.Dst), &vip)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete flow %s -> %s: vip: %w", k.Src, k.Dst, err)
	}
	f := Flow{FlowKey: k, VIPID: vip.Id}
	return m.DeleteFlows([]Flow{f})
}

// DeleteFlows removes flows, as ListFlows gives them (by VIPID, source and ports: a flow of a VIP
// deleted since too), from both tables (garbage collection); a missing flow is not an error.
func (m *Maps) DeleteFlows(flows []Flow) error {
	for _, f := range flows {
		id := flowID(f.FlowKey, f.VIPID)
		for _, mp := range m.flowMaps() {
			if err := mp.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete flow %s -> %s: %w", f.Src, f.Dst, err)
			}
		}
	}
	return nil
}

// ProtectFlows moves the flows of backend id from the flow table (LRU: a flood of new flows may
// evict them) to the protected one, for a backend that starts draining (Maglev no longer finds
// its flows). The datapath moves a draining backend's flow by itself at its next packet; calling
// this right after the drain also covers idle flows. It returns how many it moved; a full
// protected table stops it with an error.
func (m *Maps) ProtectFlows(id uint32) (int, error) {
	if m.PFlows == nil {
		return 0, nil
	}
	var (
		keys []datapath.LbLbFlowId
		vals []datapath.LbLbFlow
	)
	err := walk(m.Flows, func(k *datapath.LbLbFlowId, v *datapath.LbLbFlow) error {
		if v.Backend == id {
			keys, vals = append(keys, *k), append(vals, *v)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("protect flows of backend %d: %w", id, err)
	}
	if err := m.markProtected(keys); err != nil {
		return 0, fmt.Errorf("protect flows of backend %d: %w", id, err)
	}
	n := 0
	for i := range keys {
		// NoExist: a packet may have moved it meanwhile (and the protected copy is the newer).
		if err := m.PFlows.Update(keys[i], vals[i], ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return n, fmt.Errorf("protect flows of backend %d: %w", id, err)
		}
		if err := m.Flows.Delete(keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("protect flows of backend %d: %w", id, err)
		}
		n++
	}
	return n, nil
}

// ListTokens returns every token mapping, each once however the datapath changes the table
// meanwhile (walk).
func (m *Maps) ListTokens() ([]Token, error) {
	var out []Token
	err := walk(m.Tokens, func(k *datapath.LbLbTokenKey, v *datapath.LbLbToken) error {
		out = append(out, fromToken(*k, *v))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

func fromToken(k datapath.LbLbTokenKey, v datapath.LbLbToken) Token {
	return Token{VIPID: k.VipId, Token: k.Token, Backend: v.Backend, KeyHash: v.KeyHash, LastSeen: timeNs(v.LastNs)}
}

// LookupToken reads the mapping of one token of a VIP.
func (m *Maps) LookupToken(vipID, token uint32) (t Token, ok bool, err error) {
	k := datapath.LbLbTokenKey{VipId: vipID, Token: token}
	var v datapath.LbLbToken
	err = m.Tokens.Lookup(k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return Token{}, false, nil
	}
	if err != nil {
		return Token{}, false, fmt.Errorf("lookup token %08x of vip %d: %w", token, vipID, err)
	}
	return fromToken(k, v), true, nil
}

// PutToken writes one token mapping (restoring state, tests).
func (m *Maps) PutToken(t Token) error {
	k := datapath.LbLbTokenKey{VipId: t.VIPID, Token: t.Token}
	v := datapath.LbLbToken{Backend: t.Backend, KeyHash: t.KeyHash, LastNs: uint64(t.LastSeen)}
	if err := m.Tokens.Put(k, v); err != nil {
		return fmt.Errorf("put token %08x of vip %d: %w", t.Token, t.VIPID, err)
	}
	return nil
}

// DeleteToken removes one token mapping; a missing one is not an error.
func (m *Maps) DeleteToken(vipID, token uint32) error {
	k := datapath.LbLbTokenKey{VipId: vipID, Token: token}
	if err := m.Tokens.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete token %08x of vip %d: %w", token, vipID, err)
	}
	return nil
}

// ReadStats sums the per-CPU counters.
func (m *Maps) ReadStats() (Stats, error) {
	return readStats(m.Stats)
}

func readStats(mp *ebpf.Map) (Stats, error) {
	var perCPU []datapath.LbLbStats
	if err := mp.Lookup(uint32(0), &perCPU); err != nil {
		return Stats{}, fmt.Errorf("read stats: %w", err)
	}
	var s Stats
	for _, c := range perCPU {
		for i := range s {
			s[i] += c.Count[i]
		}
	}
	return s, nil
}

// ListFlowsCount counts the flows of both flow tables (a full walk: for tests and status, not per
// packet).
func (m *Maps) ListFlowsCount() (int, error) {
	n := 0
	for _, mp := range m.flowMaps() {
		err := walk(mp, func(*datapath.LbLbFlowId, *datapath.LbLbFlow) error {
			n++
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("count flows: %w", err)
		}
	}
	return n, nil
}

// zeroPerCPU writes zeroes to every CPU's slot of entry id of a per-CPU array of V. A Maps without
// the counter maps (a balancer loaded without them) has nothing to clear.
func zeroPerCPU[V any](mp *ebpf.Map, id uint32) error {
	if mp == nil {
		return nil
	}
	n, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	return mp.Put(id, make([]V, n))
}

// ReadVIPStats sums the per-CPU counters of VIP id vipID.
func (m *Maps) ReadVIPStats(vipID uint32) (VIPStats, error) {
	var perCPU []datapath.LbLbVipStats
	if err := m.VIPStats.Lookup(vipID, &perCPU); err != nil {
		return VIPStats{}, fmt.Errorf("read counters of vip id %d: %w", vipID, err)
	}
	var s VIPStats
	for _, c := range perCPU {
		for i := range s {
			s[i] += c.Count[i]
		}
	}
	return s, nil
}

// ReadBackendStats sums the per-CPU counters of backend id.
func (m *Maps) ReadBackendStats(id uint32) (BackendStats, error) {
	var perCPU []datapath.LbLbBackendStats
	if err := m.BackendStats.Lookup(id, &perCPU); err != nil {
		return BackendStats{}, fmt.Errorf("read counters of backend %d: %w", id, err)
	}
	var s BackendStats
	for _, c := range perCPU {
		for i := range s {
			s[i] += c.Count[i]
		}
	}
	return s, nil
}
