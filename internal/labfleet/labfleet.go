// Package labfleet builds the fleet lab: several mptcp-xdp balancers behind a router's ECMP, as
// production L4 balancing runs (DESIGN.md, "Fleets of balancers"). A router namespace R connects a
// client (two links, so that every MPTCP connection can open a second subflow over its second
// path; its second path's endpoint is `subflow fullmesh`), N balancer namespaces (one link each: one-armed, the balancer sends its encapsulated
// frames back to R with XDP_TX) and backend namespaces (one link each). R routes the VIPs over the
// balancers as one ECMP route (fib_multipath_hash_policy 1: the 5-tuple; in this lab the hash the
// client's socket put on the packet, which is fixed per flow and independent between flows, see
// setup), so the first subflow of a connection and its join reach instances chosen independently. Backends answer clients
// directly through R (direct server return: the VIP on lo, ARP/ND for it off) and decapsulate with
// `mptcp-xdp lb decap` (the development kernel has no ipip driver).
//
//	client ─p0/c0─┐            ┌─l0/eth0─ balancer 0
//	       ─p1/c1─┤  router R  ├─l1/eth0─ balancer 1     (ECMP route to the VIPs over l0..l2)
//	              │            ├─l2/eth0─ balancer 2
//	              │            ├─b0/eth0─ backend 0      (VIP on lo, lb decap on eth0)
//	              └            ├─b1/eth0─ backend 1
//	                           └─b2/eth0─ backend 2
//
// With Config.Forward "l2" the backends sit on a bridge in R (br0, 10.3.0.0/24) instead, and every
// balancer has a second link onto it (eth1) through which it forwards by MAC rewrite
// (XDP_REDIRECT from eth0); the backends need no decapsulator then.
//
// The route to the VIPs comes from a RouteSource: Static (multipath routes written by the lab) by
// default; a routing daemon (BGP) can install it instead. R ignores routes through a link that is
// down (ignore_routes_with_linkdown), so a balancer whose link fails leaves the ECMP set. R's
// balancer-facing veths run mptcp-xdp's counting XDP program: a frame a balancer sends back with
// XDP_TX is dropped by veth unless the receiving end has NAPI (an XDP program, or GRO), and the
// counts show what each balancer sent.
//
// It needs root, veth, MPTCP and the mptcp-xdp binary (Config.Binary); it enters namespaces with
// setns (pkg/netns), never `ip netns exec`, so the host's bpffs stays visible.
package labfleet

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// LinkMTU is the MTU of the links between R, balancers and backends: 1500 plus room for the outer
// IPv6 header of ipip. The client's links stay at 1500, so its segments fit once encapsulated.
const LinkMTU = 1600

// Default service addresses, and the prefix of the backends' own IPv6 join addresses.
var (
	DefaultVIP4 = netip.MustParseAddr("10.0.0.10")
	DefaultVIP6 = netip.MustParseAddr("fd00::10")
	// JoinPrefix6 holds JoinAddr6(j) for every backend j; R routes it like the VIPs.
	JoinPrefix6 = netip.MustParsePrefix("fd00:1::/64")
)

// JoinAddr6 is backend j's own IPv6 join address (fd00:1::<j+1>): where it announces itself for
// joins when an IPv6 address with a port does not fit beside TCP timestamps.
func JoinAddr6(j int) netip.Addr {
	a := JoinPrefix6.Addr().As16()
	a[15] = byte(j + 1)
	return netip.AddrFrom16(a)
}

// Config describes a fleet lab. The zero value has 3 balancers and 3 backends.
type Config struct {
	// Prefix names the namespaces "<Prefix>-r", "<Prefix>-c", "<Prefix>-lb<k>", "<Prefix>-be<j>";
	// empty means "fl" and 4 random hex digits. It must start with "fl".
	Prefix string
	// Balancers and Backends; 0 means 3 of each.
	Balancers, Backends int
	// Binary is the mptcp-xdp binary (for the XDP programs on R and the backends' decapsulators).
	Binary string
	// Routes installs R's route to the VIPs; nil means Static{}.
	Routes RouteSource
	// Forward is how the balancers reach the backends: "ipip" (the default: one link per
	// backend to R, the balancers one-armed, the backends decapsulating) or "l2" (the backends on
	// a bridge in R, and every balancer with a second link onto that bridge, through which it
	// forwards by MAC).
	Forward string
}

// Path is one client–R link.
type Path struct {
	Index              int
	ClientIf, RIf      string // "p<i>" in the client, "c<i>" in R
	ClientIP4, RIP4    netip.Addr
	ClientIP6, RIP6    netip.Addr
	ClientNetns, Table string
}

// Balancer is one balancer namespace and its link to R.
type Balancer struct {
	Index     int
	Netns     string
	If, RIf   string // "eth0" in the balancer, "l<k>" in R
	IP4, RIP4 netip.Addr
	IP6, RIP6 netip.Addr
	// l2: the link onto the backends' bridge, "eth1" in the balancer, "s<k>" (a port of br0) in R.
	SegIf, SegRIf string
	SegIP4        netip.Addr
	SegIP6        netip.Addr
}

// Bridge is R's bridge of the backends' segment in l2 mode, and R's addresses on it.
const Bridge = "br0"

var (
	bridgeIP4 = netip.MustParseAddr("10.3.0.1")
	bridgeIP6 = netip.MustParseAddr("fd03::1")
)

// Backend is one backend namespace and its link to R (in l2 mode, to a port of R's bridge, and
// RIP4/RIP6 are the bridge's addresses).
type Backend struct {
	Index     int
	Netns     string
	If, RIf   string // "eth0" in the backend, "b<j>" in R
	IP4, RIP4 netip.Addr
	IP6, RIP6 netip.Addr
}

// Lab is a running fleet lab; Close removes every namespace it made.
type Lab struct {
	Router    string
	Client    string
	Paths     []Path
	Balancers []Balancer
	Backends  []Backend
	VIP4      netip.Addr
	VIP6      netip.Addr
	Config    Config

	mu      sync.Mutex
	closed  bool
	made    []string
	cleanup []func() error // run by Close before the namespaces go, last first
}

// tools runs ip/ss and reads counters; its methods need no lab state.
var tools = &lab.Lab{}

// New builds the lab and installs R's route to the VIPs, removing what it made on error.
func New(cfg Config) (_ *Lab, err error) {
	if cfg.Balancers == 0 {
		cfg.Balancers = 3
	}
	if cfg.Backends == 0 {
		cfg.Backends = 3
	}
	if cfg.Balancers < 1 || cfg.Balancers > 8 || cfg.Backends < 1 || cfg.Backends > 16 {
		return nil, fmt.Errorf("labfleet: %d balancers, %d backends: want 1-8 and 1-16", cfg.Balancers, cfg.Backends)
	}
	if cfg.Binary == "" {
		return nil, errors.New("labfleet: Config.Binary (the mptcp-xdp binary) is required")
	}
	if cfg.Routes == nil {
		cfg.Routes = Static{}
	}
	switch cfg.Forward {
	case "":
		cfg.Forward = "ipip"
	case "ipip", "l2":
	default:
		return nil, fmt.Errorf("labfleet: forward %q: want ipip or l2", cfg.Forward)
	}
	if cfg.Prefix == "" {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("labfleet: random prefix: %w", err)
		}
		cfg.Prefix = "fl" + hex.EncodeToString(b[:])
	}
	if len(cfg.Prefix) < 2 || cfg.Prefix[:2] != "fl" || len(cfg.Prefix) > 8 {
		return nil, fmt.Errorf("labfleet: prefix %q: want \"fl\" and at most 6 more characters", cfg.Prefix)
	}
	l := &Lab{Router: cfg.Prefix + "-r", Client: cfg.Prefix + "-c", VIP4: DefaultVIP4, VIP6: DefaultVIP6, Config: cfg}
	names := []string{l.Router, l.Client}
	for k := range cfg.Balancers {
		names = append(names, cfg.Prefix+"-lb"+strconv.Itoa(k))
	}
	for j := range cfg.Backends {
		names = append(names, cfg.Prefix+"-be"+strconv.Itoa(j))
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	for _, ns := range names {
		if err := netns.Validate(ns); err != nil {
			return nil, fmt.Errorf("labfleet: %w", err)
		}
		if netns.Exists(ns) {
			return nil, fmt.Errorf("labfleet: network namespace %q already exists", ns)
		}
		if err := netns.Create(ns); err != nil {
			return nil, fmt.Errorf("labfleet: %w", err)
		}
		l.made = append(l.made, ns)
	}
	if err := l.setup(); err != nil {
		return nil, fmt.Errorf("labfleet %s: %w", cfg.Prefix, err)
	}
	if err := cfg.Routes.Install(l); err != nil {
		return nil, fmt.Errorf("labfleet %s: routes: %w", cfg.Prefix, err)
	}
	return l, nil
}

func (l *Lab) setup() error {
	cfg := l.Config
	for _, ns := range l.made {
		if err := lab.WriteSysctls(ns, map[string]string{
			"net/mptcp/enabled":               "1",
			"net/ipv4/conf/all/rp_filter":     "0",
			"net/ipv4/conf/default/rp_filter": "0",
		}); err != nil {
			return err
		}
		if _, err := l.IP(ns, "link", "set", "lo", "up"); err != nil {
			return err
		}
	}
	// R: a router that hashes the 5-tuple over equal-cost next hops and leaves out a next hop
	// whose link is down. The IPv6 setting is per device: "default" covers the links made below,
	// "all" those already there.
	if err := lab.WriteSysctls(l.Router, map[string]string{
		"net/ipv4/ip_forward":                               "1",
		"net/ipv6/conf/all/forwarding":                      "1",
		"net/ipv6/conf/default/forwarding":                  "1",
		"net/ipv4/fib_multipath_hash_policy":                "1",
		"net/ipv6/fib_multipath_hash_policy":                "1",
		"net/ipv4/conf/all/ignore_routes_with_linkdown":     "1",
		"net/ipv4/conf/default/ignore_routes_with_linkdown": "1",
		"net/ipv6/conf/all/ignore_routes_with_linkdown":     "1",
		"net/ipv6/conf/default/ignore_routes_with_linkdown": "1",
	}); err != nil {
		return err
	}

	// R hashes a forwarded packet by its L4 hash when the skb has one (fib_multipath_hash,
	// policy 1), and veth hands R the hash the client's socket put on the skb (sk_txhash): random
	// per socket, and drawn again at every retransmission timeout. A router fed by a wire hashes
	// the headers, so a flow keeps its instance; with rehashing on, a join SYN dropped by an
	// instance without its token would find another one on its next try. The client keeps its
	// sockets' hashes (net.core.txrehash=0): each flow keeps one random instance, as behind a
	// real router.
	if err := lab.WriteSysctls(l.Client, map[string]string{"net/core/txrehash": "0"}); err != nil {
		return err
	}
	for i := range 2 {
		p := Path{
			Index: i, ClientIf: "p" + strconv.Itoa(i), RIf: "c" + strconv.Itoa(i), ClientNetns: l.Client,
			ClientIP4: netip.AddrFrom4([4]byte{10, 1, byte(i), 1}),
			RIP4:      netip.AddrFrom4([4]byte{10, 1, byte(i), 2}),
			ClientIP6: netip.MustParseAddr(fmt.Sprintf("fd01:%d::1", i)),
			RIP6:      netip.MustParseAddr(fmt.Sprintf("fd01:%d::2", i)),
			Table:     strconv.Itoa(100 + i),
		}
		if err := l.link(l.Client, p.ClientIf, p.ClientIP4, p.ClientIP6, l.Router, p.RIf, p.RIP4, p.RIP6, 0); err != nil {
			return fmt.Errorf("path %d: %w", i, err)
		}
		// Path i's address leaves by path i (policy routing); everything else by path 0.
		rs := [][]string{
			{"route", "add", "default", "via", p.RIP4.String(), "dev", p.ClientIf, "table", p.Table},
			{"rule", "add", "from", p.ClientIP4.String(), "table", p.Table, "pref", p.Table},
			{"-6", "route", "add", "default", "via", p.RIP6.String(), "dev", p.ClientIf, "table", p.Table},
			{"-6", "rule", "add", "from", p.ClientIP6.String(), "table", p.Table, "pref", p.Table},
		}
		if i == 0 {
			rs = append(rs, []string{"route", "add", "default", "via", p.RIP4.String(), "dev", p.ClientIf},
				[]string{"-6", "route", "add", "default", "via", p.RIP6.String(), "dev", p.ClientIf})
		}
		for _, r := range rs {
			if _, err := l.IP(l.Client, r...); err != nil {
				return fmt.Errorf("path %d: %w", i, err)
			}
		}
		l.Paths = append(l.Paths, p)
	}
	// The client opens one subflow beyond the first, from its second path: to the VIP itself, or,
	// when the server forbids that (the C flag), to the first address it announces. A plain
	// `subflow` endpoint serves only the former: Linux 6.18 joins an announced address from the
	// first subflow's source address (over path 0), unless the endpoint is also `fullmesh`.
	if _, err := l.IP(l.Client, "mptcp", "limits", "set", "subflows", "1", "add_addr_accepted", "1"); err != nil {
		return err
	}
	for _, a := range []netip.Addr{l.Paths[1].ClientIP4, l.Paths[1].ClientIP6} {
		if _, err := l.IP(l.Client, "mptcp", "endpoint", "add", a.String(), "dev", l.Paths[1].ClientIf, "subflow", "fullmesh"); err != nil {
			return err
		}
	}

	l2 := cfg.Forward == "l2"
	if l2 {
		for _, r := range [][]string{
			{"link", "add", Bridge, "type", "bridge"},
			{"addr", "add", bridgeIP4.String() + "/24", "dev", Bridge},
			{"addr", "add", bridgeIP6.String() + "/64", "dev", Bridge, "nodad"},
			{"link", "set", Bridge, "up"},
		} {
			if _, err := l.IP(l.Router, r...); err != nil {
				return err
			}
		}
	}
	for k := range cfg.Balancers {
		b := Balancer{
			Index: k, Netns: l.made[2+k], If: "eth0", RIf: "l" + strconv.Itoa(k),
			IP4:  netip.AddrFrom4([4]byte{10, 4, byte(k), 2}),
			RIP4: netip.AddrFrom4([4]byte{10, 4, byte(k), 1}),
			IP6:  netip.MustParseAddr(fmt.Sprintf("fd04:%d::2", k)),
			RIP6: netip.MustParseAddr(fmt.Sprintf("fd04:%d::1", k)),
		}
		if err := l.link(b.Netns, b.If, b.IP4, b.IP6, l.Router, b.RIf, b.RIP4, b.RIP6, LinkMTU); err != nil {
			return fmt.Errorf("balancer %d: %w", k, err)
		}
		// No forwarding: a VIP packet the datapath passes up is dropped, never sent back to R
		// (which would route it to a balancer again).
		for _, r := range [][]string{
			{"route", "add", "default", "via", b.RIP4.String(), "dev", b.If},
			{"-6", "route", "add", "default", "via", b.RIP6.String(), "dev", b.If},
		} {
			if _, err := l.IP(b.Netns, r...); err != nil {
				return fmt.Errorf("balancer %d: %w", k, err)
			}
		}
		// A frame the balancer sends back with XDP_TX arrives on R's end only if that end runs
		// XDP (or has GRO): the counting datapath, which passes everything.
		if _, err := l.Exec("", l.Config.Binary, "--netns", l.Router, "attach", b.RIf, "--no-egress", "--mode", "native"); err != nil {
			return fmt.Errorf("balancer %d: xdp on R's %s: %w", k, b.RIf, err)
		}
		l.detachLater(b.RIf)
		if l2 {
			b.SegIf, b.SegRIf = "eth1", "s"+strconv.Itoa(k)
			b.SegIP4 = netip.AddrFrom4([4]byte{10, 3, 0, byte(20 + k)})
			b.SegIP6 = netip.MustParseAddr(fmt.Sprintf("fd03::%d", 20+k))
			if err := l.link(b.Netns, b.SegIf, b.SegIP4, b.SegIP6, l.Router, b.SegRIf, netip.Addr{}, netip.Addr{}, LinkMTU); err != nil {
				return fmt.Errorf("balancer %d: %w", k, err)
			}
			// The balancer redirects frames into eth1: R's end needs NAPI, as above.
			if _, err := l.Exec("", l.Config.Binary, "--netns", l.Router, "attach", b.SegRIf, "--no-egress", "--mode", "native"); err != nil {
				return fmt.Errorf("balancer %d: xdp on R's %s: %w", k, b.SegRIf, err)
			}
			l.detachLater(b.SegRIf)
		}
		l.Balancers = append(l.Balancers, b)
	}

	for j := range cfg.Backends {
		b := Backend{
			Index: j, Netns: l.made[2+cfg.Balancers+j], If: "eth0", RIf: "b" + strconv.Itoa(j),
			IP4:  netip.AddrFrom4([4]byte{10, 2, byte(j), 2}),
			RIP4: netip.AddrFrom4([4]byte{10, 2, byte(j), 1}),
			IP6:  netip.MustParseAddr(fmt.Sprintf("fd02:%d::2", j)),
			RIP6: netip.MustParseAddr(fmt.Sprintf("fd02:%d::1", j)),
		}
		rip4, rip6 := b.RIP4, b.RIP6
		if l2 {
			b.IP4 = netip.AddrFrom4([4]byte{10, 3, 0, byte(10 + j)})
			b.IP6 = netip.MustParseAddr(fmt.Sprintf("fd03::%d", 10+j))
			b.RIP4, b.RIP6 = bridgeIP4, bridgeIP6
			rip4, rip6 = netip.Addr{}, netip.Addr{}
		}
		if err := l.link(b.Netns, b.If, b.IP4, b.IP6, l.Router, b.RIf, rip4, rip6, LinkMTU); err != nil {
			return fmt.Errorf("backend %d: %w", j, err)
		}
		if err := lab.WriteSysctls(b.Netns, map[string]string{
			"net/ipv4/conf/all/arp_ignore":   "1",
			"net/ipv4/conf/all/arp_announce": "2",
		}); err != nil {
			return err
		}
		for _, r := range [][]string{
			{"addr", "add", l.VIP4.String() + "/32", "dev", "lo"},
			{"addr", "add", l.VIP6.String() + "/128", "dev", "lo"},
			{"addr", "add", JoinAddr6(j).String() + "/128", "dev", "lo"},
			{"route", "add", "default", "via", b.RIP4.String(), "dev", b.If},
			{"-6", "route", "add", "default", "via", b.RIP6.String(), "dev", b.If},
			{"mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "0"},
		} {
			if _, err := l.IP(b.Netns, r...); err != nil {
				return fmt.Errorf("backend %d: %w", j, err)
			}
		}
		if l2 {
			l.Backends = append(l.Backends, b)
			continue
		}
		args := []string{"--netns", b.Netns, "lb", "decap", b.If}
		for _, lb := range l.Balancers {
			args = append(args, "--balancer", lb.IP4.String(), "--balancer", lb.IP6.String())
		}
		for _, v := range []netip.Addr{l.VIP4, l.VIP6, JoinAddr6(j)} {
			args = append(args, "--vip", v.String())
		}
		if _, err := l.Exec("", l.Config.Binary, args...); err != nil {
			return fmt.Errorf("backend %d: lb decap: %w", j, err)
		}
		ns, dev := b.Netns, b.If
		l.cleanup = append(l.cleanup, func() error {
			_, err := l.Exec("", l.Config.Binary, "--netns", ns, "lb", "decap", "--detach", dev)
			return err
		})
		l.Backends = append(l.Backends, b)
	}
	return nil
}

// detachLater detaches the counting datapath from R's interface dev when the lab closes.
func (l *Lab) detachLater(dev string) {
	l.cleanup = append(l.cleanup, func() error {
		_, err := l.Exec("", l.Config.Binary, "--netns", l.Router, "detach", dev)
		return err
	})
}

// link makes a veth pair from (ns1, if1) to (ns2, if2) with addresses (and MTU mtu unless 0), TX
// checksum offload off and GRO on at both ends, and brings it up. An end in R without addresses
// is a port of R's bridge.
func (l *Lab) link(ns1, if1 string, a4, a6 netip.Addr, ns2, if2 string, b4, b6 netip.Addr, mtu int) error {
	if _, err := l.IP(ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2); err != nil {
		return err
	}
	for _, e := range []struct {
		ns, dev  string
		ip4, ip6 netip.Addr
	}{{ns1, if1, a4, a6}, {ns2, if2, b4, b6}} {
		if err := lab.WriteSysctls(e.ns, map[string]string{"net/ipv4/conf/" + e.dev + "/rp_filter": "0"}); err != nil {
			return err
		}
		if mtu != 0 {
			if _, err := l.IP(e.ns, "link", "set", e.dev, "mtu", strconv.Itoa(mtu)); err != nil {
				return err
			}
		}
		if !e.ip4.IsValid() {
			if _, err := l.IP(e.ns, "link", "set", e.dev, "master", Bridge); err != nil {
				return err
			}
		} else {
			if _, err := l.IP(e.ns, "addr", "add", e.ip4.String()+"/24", "dev", e.dev); err != nil {
				return err
			}
			if _, err := l.IP(e.ns, "addr", "add", e.ip6.String()+"/64", "dev", e.dev, "nodad"); err != nil {
				return err
			}
		}
		if _, err := l.IP(e.ns, "link", "set", e.dev, "up"); err != nil {
			return err
		}
		// TX checksum offload off: frames that leave through XDP lose the partial-checksum
		// state. GRO on after up (veth sets up its NAPI only when GRO changes on an up device),
		// but off in R, which then forwards packets as it received them; R's balancer-facing
		// ends get their NAPI from XDP instead.
		gro := "on"
		if e.ns == l.Router {
			gro = "off"
		}
		if _, err := l.Exec(e.ns, "ethtool", "-K", e.dev, "tx", "off", "gro", gro); err != nil {
			return err
		}
	}
	return nil
}

// SetBalancerLink brings balancer k's links up or down at both ends: down, R sees no carrier and
// leaves it out of the ECMP set (ignore_routes_with_linkdown).
func (l *Lab) SetBalancerLink(k int, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	b := l.Balancers[k]
	for _, dev := range []string{b.If, b.SegIf} {
		if dev == "" {
			continue
		}
		if _, err := l.IP(b.Netns, "link", "set", dev, state); err != nil {
			return err
		}
		if up {
			if _, err := l.Exec(b.Netns, "ethtool", "-K", dev, "gro", "off"); err != nil {
				return err
			}
			if _, err := l.Exec(b.Netns, "ethtool", "-K", dev, "gro", "on"); err != nil {
				return err
			}
		}
	}
	return nil
}

// Namespaces lists every namespace of the lab: R, client, balancers, backends.
func (l *Lab) Namespaces() []string { return append([]string(nil), l.made...) }

// Close stops the route source, detaches the XDP programs the lab attached and deletes every
// namespace it made. It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	if l.Config.Routes != nil {
		errs = append(errs, l.Config.Routes.Close())
	}
	for i := len(l.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, l.cleanup[i]())
	}
	for _, ns := range l.made {
		if err := netns.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IP runs `ip -n ns args...`.
func (l *Lab) IP(ns string, args ...string) (string, error) { return tools.IP(ns, args...) }

// Exec runs a command in ns (see lab.Lab.Exec).
func (l *Lab) Exec(ns, name string, args ...string) (string, error) {
	return tools.Exec(ns, name, args...)
}

// MIB reads the SNMP counters of ns.
func (l *Lab) MIB(ns string) (lab.MIB, error) { return lab.ReadMIB(ns) }
