package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// NextHop is how the balancer reaches a backend: the egress interface, the link-layer addresses to
// write into the frame, and the source address of an outer (ipip) header.
type NextHop struct {
	Addr    netip.Addr       `json:"addr"`    // the backend
	Gateway netip.Addr       `json:"gateway"` // the neighbour whose MAC is used (Addr when on-link)
	Ifindex int              `json:"ifindex"`
	Iface   string           `json:"iface"`
	SrcMAC  net.HardwareAddr `json:"src_mac"`
	DstMAC  net.HardwareAddr `json:"dst_mac"`
	SrcAddr netip.Addr       `json:"src_addr"` // the balancer's address toward Addr
	MTU     int              `json:"mtu"`      // the egress interface's MTU (0: not known)
	State   string           `json:"state"`    // neighbour state: reachable, stale, delay, probe, permanent
}

// ErrNotOnLink is returned, for l2 forwarding, for a backend reached through a router: rewriting the
// MAC would hand the VIP's frames to that router.
var ErrNotOnLink = errors.New("not on a link of the balancer")

// Resolver resolves next hops in one network namespace from the kernel's routing and neighbour
// tables (netlink), asking the kernel to resolve a neighbour it does not know yet.
type Resolver struct {
	ns string
	h  *netlink.Handle
	// static, when set, is all a resolver from NewStaticResolver knows: no kernel table is read.
	static map[netip.Addr]NextHop
}

// NewStaticResolver returns a resolver that knows only hops (by their Addr), every one on-link
// unless its Gateway says otherwise, and reads nothing from any kernel: the next hops of a
// balancer that forwards nothing (Offline).
func NewStaticResolver(hops ...NextHop) *Resolver {
	r := &Resolver{static: make(map[netip.Addr]NextHop, len(hops))}
	for _, nh := range hops {
		nh.Addr = nh.Addr.Unmap()
		if !nh.Gateway.IsValid() {
			nh.Gateway = nh.Addr
		}
		r.static[nh.Addr] = nh
	}
	return r
}

// NewResolver opens a resolver for the named network namespace ("" is the caller's).
func NewResolver(netnsName string) (*Resolver, error) {
	r := &Resolver{ns: netnsName}
	err := netns.Do(netnsName, func() error {
		var err error
		// Route netlink only: with no families the handle also opens XFRM and netfilter
		// sockets, which fail on a kernel whose xfrm_user module is not loaded.
		r.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle: %w", err)
	}
	return r, nil
}

// Close releases the netlink handle.
func (r *Resolver) Close() {
	if r.h != nil {
		r.h.Close()
	}
}

// usable neighbour states: the kernel has a link-layer address it believes or believed valid.
const usableNUD = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE |
	netlink.NUD_PERMANENT | netlink.NUD_NOARP

func nudName(s int) string {
	for _, n := range []struct {
		bit  int
		name string
	}{
		{netlink.NUD_REACHABLE, "reachable"}, {netlink.NUD_STALE, "stale"}, {netlink.NUD_DELAY, "delay"},
		{netlink.NUD_PROBE, "probe"}, {netlink.NUD_PERMANENT, "permanent"}, {netlink.NUD_NOARP, "noarp"},
		{netlink.NUD_INCOMPLETE, "incomplete"}, {netlink.NUD_FAILED, "failed"},
	} {
		if s&n.bit != 0 {
			return n.name
		}
	}
	return "none"
}

// Route returns the next hop of addr without its MAC: the egress interface, the gateway (addr when
// on-link) and the source address. With onLink, a gateway is an error (ErrNotOnLink).
func (r *Resolver) Route(addr netip.Addr, onLink bool) (NextHop, error) {
	addr = addr.Unmap()
	nh := NextHop{Addr: addr, Gateway: addr}
	if r.static != nil {
		s, ok := r.static[addr]
		if !ok {
			return nh, fmt.Errorf("route to %s: no next hop given for it", addr)
		}
		if onLink && s.Gateway != addr {
			return nh, fmt.Errorf("backend %s is reached through %s: %w (use --forward ipip)", addr, s.Gateway, ErrNotOnLink)
		}
		return s, nil
	}
	routes, err := r.h.RouteGet(addr.AsSlice())
	if err != nil {
		return nh, fmt.Errorf("route to %s: %w", addr, err)
	}
	if len(routes) == 0 {
		return nh, fmt.Errorf("route to %s: none", addr)
	}
	rt := routes[0]
	if rt.Gw != nil {
		gw, _ := netip.AddrFromSlice(rt.Gw)
		if onLink {
			return nh, fmt.Errorf("backend %s is reached through %s: %w (use --forward ipip)", addr, gw.Unmap(), ErrNotOnLink)
		}
		nh.Gateway = gw.Unmap()
	}
	lnk, err := r.h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return nh, fmt.Errorf("route to %s: link %d: %w", addr, rt.LinkIndex, err)
	}
	if lnk.Attrs().Flags&net.FlagLoopback != 0 {
		return nh, fmt.Errorf("backend %s is a local address of the balancer", addr)
	}
	nh.Ifindex, nh.Iface, nh.SrcMAC, nh.MTU = rt.LinkIndex, lnk.Attrs().Name, lnk.Attrs().HardwareAddr, lnk.Attrs().MTU
	if rt.Src != nil {
		nh.SrcAddr, _ = netip.AddrFromSlice(rt.Src)
		nh.SrcAddr = nh.SrcAddr.Unmap()
	}
	return nh, nil
}

// Lookup returns the next hop of addr with the MAC the neighbour table holds now; DstMAC is nil
// when the kernel has no usable entry.
func (r *Resolver) Lookup(addr netip.Addr, onLink bool) (NextHop, error) {
	nh, err := r.Route(addr, onLink)
	if err != nil || r.static != nil {
		return nh, err
	}
	fam := netlink.FAMILY_V4
	if nh.Gateway.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := r.h.NeighList(nh.Ifindex, fam)
	if err != nil {
		return nh, fmt.Errorf("neighbours of %s: %w", nh.Iface, err)
	}
	nh.State = "none"
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != nh.Gateway {
			continue
		}
		nh.State = nudName(n.State)
		if n.State&usableNUD != 0 && len(n.HardwareAddr) == 6 {
			nh.DstMAC = n.HardwareAddr
		}
	}
	return nh, nil
}

// Resolve returns the next hop of addr with its MAC, asking the kernel to resolve the neighbour
// (ARP or neighbour discovery) when it has no usable entry, and waiting for it until ctx ends.
func (r *Resolver) Resolve(ctx context.Context, addr netip.Addr, onLink bool) (NextHop, error) {
	asked := time.Time{}
	for {
		nh, err := r.Lookup(addr, onLink)
		if err != nil || nh.DstMAC != nil {
			return nh, err
		}
		if time.Since(asked) > time.Second {
			if err := r.solicit(nh); err != nil {
				return nh, err
			}
			asked = time.Now()
		}
		select {
		case <-ctx.Done():
			return nh, fmt.Errorf("resolve %s on %s: neighbour %s is %s: %w", addr, nh.Iface, nh.Gateway, nh.State, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// solicit makes the kernel resolve nh.Gateway: a neighbour "use" (NTF_USE, what a packet sent to it
// would do), or where that is refused a UDP datagram to the discard port.
func (r *Resolver) solicit(nh NextHop) error {
	if r.static != nil {
		return nil
	}
	fam := netlink.FAMILY_V4
	if nh.Gateway.Is6() {
		fam = netlink.FAMILY_V6
	}
	err := r.h.NeighSet(&netlink.Neigh{LinkIndex: nh.Ifindex, Family: fam, IP: nh.Gateway.AsSlice(), Flags: netlink.NTF_USE})
	if err == nil {
		return nil
	}
	slog.Debug("neighbour use refused, soliciting with a datagram", "addr", nh.Gateway, "err", err)
	return netns.Do(r.ns, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(nh.Gateway, 9).String())
		if err != nil {
			return fmt.Errorf("solicit neighbour %s: %w", nh.Gateway, err)
		}
		defer c.Close()
		_, _ = c.Write([]byte{0})
		return nil
	})
}

// NeighEvent is a change of one neighbour entry, or (Link) of one link.
type NeighEvent struct {
	Ifindex int
	Addr    netip.Addr
	MAC     net.HardwareAddr // nil when the entry is gone or unusable
	State   string
	Deleted bool
	// Link: a change of link Ifindex itself (its MTU, addresses or state), not of a neighbour;
	// Addr, MAC and State are then unset, and MTU is the link's.
	Link bool
	MTU  int
}

// Watch calls fn for every change of the namespace's neighbour table, and of any of its links,
// until ctx ends (then it returns nil) or a subscription fails.
func (r *Resolver) Watch(ctx context.Context, fn func(NeighEvent)) error {
	if r.static != nil {
		<-ctx.Done() // a static table never changes
		return nil
	}
	var h vns.NsHandle
	var err error
	if r.ns == "" {
		h, err = vns.Get()
	} else {
		h, err = vns.GetFromPath(netns.Path(r.ns))
	}
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer h.Close()
	ch := make(chan netlink.NeighUpdate, 256)
	lch := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 1)
	report := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	if err := netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
		Namespace:     &h,
		ErrorCallback: report,
	}); err != nil {
		return fmt.Errorf("subscribe to neighbour changes: %w", err)
	}
	if err := netlink.LinkSubscribeWithOptions(lch, done, netlink.LinkSubscribeOptions{
		Namespace:     &h,
		ErrorCallback: report,
	}); err != nil {
		return fmt.Errorf("subscribe to link changes: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("neighbour or link subscription: %w", err)
		case u, ok := <-lch:
			if !ok {
				return errors.New("link subscription closed")
			}
			ev := NeighEvent{Ifindex: int(u.Index), Link: true, Deleted: u.Header.Type == unix.RTM_DELLINK}
			if u.Link != nil {
				ev.MTU = u.Link.Attrs().MTU
			}
			slog.Debug("link change", "ifindex", ev.Ifindex, "mtu", ev.MTU, "deleted", ev.Deleted)
			fn(ev)
		case u, ok := <-ch:
			if !ok {
				return errors.New("neighbour subscription closed")
			}
			ip, ok := netip.AddrFromSlice(u.IP)
			if !ok {
				continue
			}
			ev := NeighEvent{Ifindex: u.LinkIndex, Addr: ip.Unmap(), State: nudName(u.State), Deleted: u.Type == unix.RTM_DELNEIGH}
			if !ev.Deleted && u.State&usableNUD != 0 && len(u.HardwareAddr) == 6 {
				ev.MAC = u.HardwareAddr
			}
			slog.Debug("neighbour change", "ifindex", ev.Ifindex, "addr", ev.Addr, "mac", ev.MAC, "state", ev.State, "deleted", ev.Deleted)
			fn(ev)
		}
	}
}

// IsLocal reports whether addr is one of the namespace's own addresses.
func (r *Resolver) IsLocal(addr netip.Addr) (bool, error) {
	if r.static != nil {
		return false, nil
	}
	addrs, err := r.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if la, ok := netip.AddrFromSlice(a.IP); ok && la.Unmap() == addr.Unmap() {
			return true, nil
		}
	}
	return false, nil
}
