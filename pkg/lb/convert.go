package lb

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

const ipprotoTCP = 6

// netOrder16 turns a port into the uint16 whose in-memory bytes are the port in network order (the
// datapath keeps ports as __be16); it is its own inverse.
func netOrder16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// addr16 is the datapath's 16-byte address: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
func addr16(a netip.Addr) [16]byte {
	if !a.IsValid() {
		return [16]byte{}
	}
	return a.As16()
}

func addrFrom16(b [16]byte) netip.Addr {
	return netip.AddrFrom16(b).Unmap()
}

func mac6(m net.HardwareAddr) (out [6]byte) {
	copy(out[:], m)
	return out
}

func vipKey(a netip.AddrPort) datapath.LbLbVipKey {
	return datapath.LbLbVipKey{Addr: addr16(a.Addr()), Port: netOrder16(a.Port()), Proto: ipprotoTCP}
}

// flowID is the flow tables' key of flow k to the VIP of id vipID (struct lb_flow_id).
func flowID(k FlowKey, vipID uint32) datapath.LbLbFlowId {
	return datapath.LbLbFlowId{
		Src:   addr16(k.Src.Addr()),
		Sport: netOrder16(k.Src.Port()),
		Dport: netOrder16(k.Dst.Port()),
		VipId: vipID,
	}
}

// fromFlowKey is the 5-tuple of an event (struct lb_flow_key).
func fromFlowKey(k datapath.LbLbFlowKey) FlowKey {
	return FlowKey{
		Src: netip.AddrPortFrom(addrFrom16(k.Src), netOrder16(k.Sport)),
		Dst: netip.AddrPortFrom(addrFrom16(k.Dst), netOrder16(k.Dport)),
	}
}

// marshalFlowKey is the 5-tuple as lb_flow_hash reads it: source and destination addresses,
// ports, protocol (struct lb_flow_key's memory image before the flow tables' key came first in it).
func marshalFlowKey(k FlowKey) (b [40]byte) {
	src, dst := addr16(k.Src.Addr()), addr16(k.Dst.Addr())
	copy(b[0:16], src[:])
	copy(b[16:32], dst[:])
	binary.BigEndian.PutUint16(b[32:], k.Src.Port())
	binary.BigEndian.PutUint16(b[34:], k.Dst.Port())
	b[36] = ipprotoTCP
	return b
}

// fromFlow is the flow of table entry k, v; vips gives the VIP its key names (by id and port), and
// a flow of a VIP that is gone has an invalid destination address (and its port).
func fromFlow(k datapath.LbLbFlowId, v datapath.LbLbFlow, protected bool, vips vipIndex) Flow {
	dst, ok := vips.byID[vipPort{k.VipId, netOrder16(k.Dport)}]
	if !ok {
		dst = netip.AddrPortFrom(netip.Addr{}, netOrder16(k.Dport))
	}
	return Flow{FlowKey: FlowKey{Src: netip.AddrPortFrom(addrFrom16(k.Src), netOrder16(k.Sport)), Dst: dst},
		VIPID: k.VipId, Backend: v.Backend, Token: v.Token, LastSeen: time.Duration(v.LastNs),
		Opened: v.Flags&flowOpened != 0, Learned: v.Flags&flowLearned != 0, Protected: protected}
}

// vipPort is a VIP's id and port: what names a VIP in the flow tables' key.
type vipPort struct {
	id   uint32
	port uint16
}

// vipIndex resolves between a VIP's address and the id the flow tables name it by.
type vipIndex struct {
	byID   map[vipPort]netip.AddrPort
	byAddr map[netip.AddrPort]uint32
}

func newVIPIndex(vips []VIP) vipIndex {
	x := vipIndex{byID: make(map[vipPort]netip.AddrPort, len(vips)), byAddr: make(map[netip.AddrPort]uint32, len(vips))}
	for _, v := range vips {
		a := netip.AddrPortFrom(v.Addr.Addr().Unmap(), v.Addr.Port())
		x.byID[vipPort{v.ID, v.Addr.Port()}] = a
		x.byAddr[a] = v.ID
	}
	return x
}

// id is the id of the VIP k.Dst names.
func (x vipIndex) id(k FlowKey) (uint32, bool) {
	id, ok := x.byAddr[netip.AddrPortFrom(k.Dst.Addr().Unmap(), k.Dst.Port())]
	return id, ok
}

// toFlow is a flow as the control plane writes it: opened (it vouches for it), and learned when it
// has a token or says so.
func toFlow(f Flow) datapath.LbLbFlow {
	flags := uint32(flowOpened)
	if f.Learned || f.Token != 0 {
		flags |= flowLearned
	}
	return datapath.LbLbFlow{Backend: f.Backend, Token: f.Token, LastNs: uint64(f.LastSeen), Flags: flags}
}

func toBackend(b Backend) datapath.LbLbBackend {
	flags := uint16(backendActive)
	if b.Draining {
		flags |= backendDraining
	}
	return datapath.LbLbBackend{
		Addr:    addr16(b.Addr),
		Mac:     mac6(b.MAC),
		SrcMac:  mac6(b.SrcMAC),
		Ifindex: uint32(b.Ifindex),
		Flags:   flags,
		Mtu:     mtu16(b.MTU),
		SrcAddr: addr16(b.SrcAddr),
	}
}

// mtu16 is an MTU as the backend entry holds it: 0 (not known) for one that 16 bits cannot hold or
// that is negative, so that the datapath asks the kernel for every frame.
func mtu16(mtu int) uint16 {
	if mtu <= 0 || mtu > 0xffff {
		return 0
	}
	return uint16(mtu)
}

func fromBackend(id uint32, v datapath.LbLbBackend) Backend {
	b := Backend{
		ID:       id,
		MAC:      net.HardwareAddr(append([]byte(nil), v.Mac[:]...)),
		SrcMAC:   net.HardwareAddr(append([]byte(nil), v.SrcMac[:]...)),
		Ifindex:  int(v.Ifindex),
		Draining: v.Flags&backendDraining != 0,
		MTU:      int(v.Mtu),
	}
	if v.Addr != ([16]byte{}) {
		b.Addr = addrFrom16(v.Addr)
	}
	if v.SrcAddr != ([16]byte{}) {
		b.SrcAddr = addrFrom16(v.SrcAddr)
	}
	return b
}

func timeNs(v uint64) time.Duration { return time.Duration(v) }
