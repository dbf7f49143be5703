package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// The backends' decapsulator (bpf/lb_decap.c) accepts an outer IPv4/IPv6 packet only when it is
// addressed to this host (DecapAllow.Local), comes from a balancer (DecapAllow.Balancers) and
// carries a TCP segment to a VIP (DecapAllow.VIPs). DecapMaps.SetAllow is the one writer of its
// maps: the loader's attach and the packet tests both go through it.

// MapDecapVIPs is the decapsulator's map of the inner destinations it accepts (beside MapDecapAddr
// and MapDecapStat in types.go).
const MapDecapVIPs = datapath.LbDecapMapMptcpxDcVips

// Decapsulator address flags (enum lb_dc_addr_flags): the value of MapDecapAddr.
const (
	decapLocal    = uint32(datapath.LbDecapLbDcAddrFlagsLB_DC_ADDR_LOCAL)
	decapBalancer = uint32(datapath.LbDecapLbDcAddrFlagsLB_DC_ADDR_BALANCER)
)

// DecapAllow is what the decapsulator accepts. Empty lists accept nothing.
type DecapAllow struct {
	Local     []netip.Addr     // this host's addresses: outer destinations that are decapsulated
	Balancers []netip.Addr     // the balancers' outer source addresses (their address toward this host)
	VIPs      []netip.AddrPort // inner TCP destinations; port 0: every port of the address
}

// DecapStats are the decapsulator's counters summed over CPUs (struct lb_decap_stats). Every frame
// counts in Packets and, if it is IPv4 or IPv6 carrying IPv4 or IPv6, in at most one other.
type DecapStats struct {
	Packets       uint64 `json:"packets"`        // every frame seen
	Decap         uint64 `json:"decap"`          // decapsulated: the inner packet went up the stack
	Malformed     uint64 `json:"malformed"`      // inner header not what the outer one says, or cut short (passed)
	RefusedDst    uint64 `json:"refused_dst"`    // outer destination not an address of this host (passed)
	RefusedSource uint64 `json:"refused_source"` // outer source not a balancer's (passed)
	RefusedInner  uint64 `json:"refused_inner"`  // inner packet not an unfragmented TCP segment to a VIP (passed)
}

// Sub returns s - o, counter by counter.
func (s DecapStats) Sub(o DecapStats) DecapStats {
	return DecapStats{s.Packets - o.Packets, s.Decap - o.Decap, s.Malformed - o.Malformed,
		s.RefusedDst - o.RefusedDst, s.RefusedSource - o.RefusedSource, s.RefusedInner - o.RefusedInner}
}

func (s DecapStats) add(o DecapStats) DecapStats {
	return DecapStats{s.Packets + o.Packets, s.Decap + o.Decap, s.Malformed + o.Malformed,
		s.RefusedDst + o.RefusedDst, s.RefusedSource + o.RefusedSource, s.RefusedInner + o.RefusedInner}
}

// fromDecapStats converts one CPU's counters (TestDecapStatsFields holds it to every field).
func fromDecapStats(c datapath.LbDecapLbDecapStats) DecapStats {
	return DecapStats{c.Packets, c.Decap, c.Malformed, c.RefusedDst, c.RefusedSource, c.RefusedInner}
}

// DecapMaps are the decapsulator's maps.
type DecapMaps struct {
	Addrs *ebpf.Map // 16-byte address → enum lb_dc_addr_flags
	VIPs  *ebpf.Map // struct lb_vip_key → unused
	Stats *ebpf.Map // per-CPU struct lb_decap_stats
}

// DecapSpec is the decapsulator's object; with pin, every map is pinned by name (in the
// CollectionOptions' PinPath).
func DecapSpec(pin bool) (*ebpf.CollectionSpec, error) {
	spec, err := datapath.LoadLbDecap()
	if err != nil {
		return nil, fmt.Errorf("read embedded decapsulator object: %w", err)
	}
	if pin {
		for _, name := range []string{MapDecapAddr, MapDecapVIPs, MapDecapStat} {
			spec.Maps[name].Pinning = ebpf.PinByName
		}
	}
	return spec, nil
}

// DecapMapsOf are the decapsulator's maps in coll (still coll's: close coll, not them).
func DecapMapsOf(coll *ebpf.Collection) (*DecapMaps, error) {
	m := &DecapMaps{Addrs: coll.Maps[MapDecapAddr], VIPs: coll.Maps[MapDecapVIPs], Stats: coll.Maps[MapDecapStat]}
	if m.Addrs == nil || m.VIPs == nil || m.Stats == nil {
		return nil, errors.New("not a decapsulator's collection")
	}
	return m, nil
}

// OpenPinnedDecap opens the decapsulator's maps pinned in dir, read-only (BPF_F_RDONLY): to read
// its allowlist and counters. Close them when done.
func OpenPinnedDecap(dir string) (*DecapMaps, error) {
	var m DecapMaps
	for _, p := range []struct {
		name string
		mp   **ebpf.Map
	}{{MapDecapAddr, &m.Addrs}, {MapDecapVIPs, &m.VIPs}, {MapDecapStat, &m.Stats}} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, p.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			_ = m.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", p.name, err)
		}
		*p.mp = mp
	}
	return &m, nil
}

// Close closes the maps.
func (m *DecapMaps) Close() error {
	var errs []error
	for _, mp := range []*ebpf.Map{m.Addrs, m.VIPs, m.Stats} {
		if mp != nil {
			errs = append(errs, mp.Close())
		}
	}
	return errors.Join(errs...)
}

// decapEntries are the map contents a allows, or why a is not valid.
func decapEntries(a DecapAllow) (map[[16]byte]uint32, map[datapath.LbDecapLbVipKey]bool, error) {
	addrs := map[[16]byte]uint32{}
	for _, l := range a.Local {
		if !l.IsValid() {
			return nil, nil, errors.New("invalid local address")
		}
		addrs[addr16(l)] |= decapLocal
	}
	for _, b := range a.Balancers {
		if !b.IsValid() || b.IsUnspecified() || b.IsMulticast() {
			return nil, nil, fmt.Errorf("balancer source address %v: not a unicast address", b)
		}
		addrs[addr16(b)] |= decapBalancer
	}
	vips := map[datapath.LbDecapLbVipKey]bool{}
	for _, v := range a.VIPs {
		if !v.Addr().IsValid() || v.Addr().IsUnspecified() || v.Addr().IsMulticast() {
			return nil, nil, fmt.Errorf("VIP %v: not a unicast address", v)
		}
		vips[decapVIPKey(v)] = true
	}
	return addrs, vips, nil
}

func decapVIPKey(v netip.AddrPort) datapath.LbDecapLbVipKey {
	return datapath.LbDecapLbVipKey{Addr: addr16(v.Addr()), Port: netOrder16(v.Port()), Proto: ipprotoTCP}
}

// SetAllow makes the maps hold a and nothing else: what a adds is accepted from now on, what it
// no longer holds is refused. Entries that stay are updated in place, never removed, so that their
// traffic is never refused meanwhile; stale entries go first, so that a set as large as the maps
// fits.
func (m *DecapMaps) SetAllow(a DecapAllow) error {
	addrs, vips, err := decapEntries(a)
	if err != nil {
		return err
	}
	if n := len(addrs); n > int(m.Addrs.MaxEntries()) {
		return fmt.Errorf("%d local and balancer addresses: the decapsulator holds %d", n, m.Addrs.MaxEntries())
	}
	if n := len(vips); n > int(m.VIPs.MaxEntries()) {
		return fmt.Errorf("%d VIPs: the decapsulator holds %d", n, m.VIPs.MaxEntries())
	}
	if err := deleteStale(m.Addrs, func(k [16]byte) bool { return addrs[k] != 0 }); err != nil {
		return fmt.Errorf("decapsulator addresses: %w", err)
	}
	if err := deleteStale(m.VIPs, func(k datapath.LbDecapLbVipKey) bool { return vips[k] }); err != nil {
		return fmt.Errorf("decapsulator VIPs: %w", err)
	}
	for k, f := range addrs {
		if err := m.Addrs.Put(k, f); err != nil {
			return fmt.Errorf("decapsulator address %v: %w", addrFrom16(k), err)
		}
	}
	for k := range vips {
		if err := m.VIPs.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("decapsulator VIP %v: %w", vipOfKey(k), err)
		}
	}
	return nil
}

// deleteStale deletes the keys of mp that keep refuses.
func deleteStale[K comparable](mp *ebpf.Map, keep func(K) bool) error {
	var stale []K
	var k K
	var v uint32
	it := mp.Iterate()
	for it.Next(&k, &v) {
		if !keep(k) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list: %w", err)
	}
	for _, k := range stale {
		if err := mp.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete: %w", err)
		}
	}
	return nil
}

func vipOfKey(k datapath.LbDecapLbVipKey) netip.AddrPort {
	return netip.AddrPortFrom(addrFrom16(k.Addr), netOrder16(k.Port))
}

// Allow reads the allowlist back, each list sorted.
func (m *DecapMaps) Allow() (DecapAllow, error) {
	var a DecapAllow
	var k [16]byte
	var f uint32
	it := m.Addrs.Iterate()
	for it.Next(&k, &f) {
		if f&decapLocal != 0 {
			a.Local = append(a.Local, addrFrom16(k))
		}
		if f&decapBalancer != 0 {
			a.Balancers = append(a.Balancers, addrFrom16(k))
		}
	}
	if err := it.Err(); err != nil {
		return DecapAllow{}, fmt.Errorf("read decapsulator addresses: %w", err)
	}
	var vk datapath.LbDecapLbVipKey
	var unused uint32
	it = m.VIPs.Iterate()
	for it.Next(&vk, &unused) {
		a.VIPs = append(a.VIPs, vipOfKey(vk))
	}
	if err := it.Err(); err != nil {
		return DecapAllow{}, fmt.Errorf("read decapsulator VIPs: %w", err)
	}
	slices.SortFunc(a.Local, netip.Addr.Compare)
	slices.SortFunc(a.Balancers, netip.Addr.Compare)
	slices.SortFunc(a.VIPs, netip.AddrPort.Compare)
	return a, nil
}

// ReadStats sums the per-CPU counters.
func (m *DecapMaps) ReadStats() (DecapStats, error) {
	var perCPU []datapath.LbDecapLbDecapStats
	if err := m.Stats.Lookup(uint32(0), &perCPU); err != nil {
		return DecapStats{}, fmt.Errorf("read decapsulator stats: %w", err)
	}
	var s DecapStats
	for _, c := range perCPU {
		s = s.add(fromDecapStats(c))
	}
	return s, nil
}

// DecapVIPString prints an allowed inner destination as ParseDecapVIP reads it: ADDR:PORT, or ADDR
// alone for every port.
func DecapVIPString(v netip.AddrPort) string {
	if v.Port() == 0 {
		return v.Addr().String()
	}
	return v.String()
}

// ParseDecapVIP reads an allowed inner destination, ADDR[:PORT] (an IPv6 address with a port in
// brackets); without a port, every port of the address.
func ParseDecapVIP(s string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 0), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("VIP %q: want ADDR or ADDR:PORT ([V6]:PORT)", s)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("VIP %q: port 0 (leave the port out for every port)", s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}
