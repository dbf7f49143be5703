// Package lablb builds the load-balancer lab: a client namespace with two paths to a balancer
// namespace, and backend namespaces each on its own link from the balancer, with the service address
// (VIP, IPv4 and IPv6) on every backend's loopback, so that backends answer clients directly (direct
// server return) while the balancer routes that return path. The client's path manager has a
// `subflow` endpoint on its second path, so every MPTCP connection to the VIP opens a second subflow
// (an MP_JOIN SYN with a new 5-tuple) that the balancer must steer to the right backend.
//
//	client ──c0/l0── balancer ──b0/eth0── backend 0 (VIP on lo)
//	       ──c1/l1──          ──b1/eth0── backend 1
//	                          ──b2/eth0── backend 2
//
// Every veth has TX checksum offload off and GRO on: frames the balancer redirects with XDP need
// both (DESIGN.md, pitfalls of veth labs). It needs root, veth and MPTCP; it enters namespaces with
// setns (internal/netns), never `ip netns exec`, so the host's bpffs stays visible.
package lablb

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

// BackendMTU is the MTU of the balancer–backend links: 1500 plus room for an outer IPv6 header.
const BackendMTU = 1600

// Default service addresses.
var (
	DefaultVIP4 = netip.MustParseAddr("10.0.0.10")
	DefaultVIP6 = netip.MustParseAddr("fd00::10")
)

// Config describes a balancer lab. The zero value has 2 client paths, 3 backends, IPv4 and IPv6.
type Config struct {
	// Prefix names the namespaces "<Prefix>-cli", "<Prefix>-lb", "<Prefix>-be<N>"; empty means "xl"
	// and 6 random hex digits.
	Prefix string
	// Paths between client and balancer; 0 means 2.
	Paths int
	// Backends; 0 means 3.
	Backends int
	// NoEndpoints leaves the client without its `subflow` endpoints: connections stay on one path
	// until AddSubflowEndpoints, which makes the path manager join every existing connection.
	NoEndpoints bool
}

// Path is one client–balancer link.
type Path struct {
	Index            int
	ClientIf, LBIf   string // "c<i>" in the client, "l<i>" in the balancer
	ClientIP4, LBIP4 netip.Addr
	ClientIP6, LBIP6 netip.Addr
}

// Backend is one backend namespace and its link from the balancer.
type Backend struct {
	Index      int
	Netns      string
	LBIf       string // "b<j>" in the balancer
	If         string // "eth0" in the backend
	IP4, LBIP4 netip.Addr
	IP6, LBIP6 netip.Addr
}

// Lab is a running balancer lab; Close removes every namespace it made.
type Lab struct {
	Client   string
	LB       string
	Paths    []Path
	Backends []Backend
	VIP4     netip.Addr
	VIP6     netip.Addr
	Config   Config

	mu     sync.Mutex
	closed bool
	made   []string
}

// tools runs ip/tc/ss and reads counters; its methods need no lab state.
var tools = &lab.Lab{}

// New builds the lab, removing what it made on error.
func New(cfg Config) (_ *Lab, err error) {
	if cfg.Paths == 0 {
		cfg.Paths = 2
	}
	if cfg.Backends == 0 {
		cfg.Backends = 3
	}
	if cfg.Paths < 1 || cfg.Paths > 8 || cfg.Backends < 1 || cfg.Backends > 32 {
		return nil, fmt.Errorf("lablb: %d paths, %d backends: want 1-8 and 1-32", cfg.Paths, cfg.Backends)
	}
	if cfg.Prefix == "" {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("lablb: random prefix: %w", err)
		}
		cfg.Prefix = "xl" + hex.EncodeToString(b[:])
	}
	l := &Lab{Client: cfg.Prefix + "-cli", LB: cfg.Prefix + "-lb", VIP4: DefaultVIP4, VIP6: DefaultVIP6, Config: cfg}
	names := []string{l.Client, l.LB}
	for j := 0; j < cfg.Backends; j++ {
		names = append(names, cfg.Prefix+"-be"+strconv.Itoa(j))
	}
	defer func() {
		if err != nil {
			_ = l.Close()
		}
	}()
	for _, ns := range names {
		if err := netns.Validate(ns); err != nil {
			return nil, fmt.Errorf("lablb: %w", err)
		}
		if netns.Exists(ns) {
			return nil, fmt.Errorf("lablb: network namespace %q already exists", ns)
		}
		if err := netns.Create(ns); err != nil {
			return nil, fmt.Errorf("lablb: %w", err)
		}
		l.made = append(l.made, ns)
	}
	if err := l.setup(); err != nil {
		return nil, fmt.Errorf("lablb %s: %w", cfg.Prefix, err)
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
	if err := lab.WriteSysctls(l.LB, map[string]string{
		"net/ipv4/ip_forward":              "1",
		"net/ipv6/conf/all/forwarding":     "1",
		"net/ipv6/conf/default/forwarding": "1",
	}); err != nil {
		return err
	}

	for i := 0; i < cfg.Paths; i++ {
		p := Path{
			Index: i, ClientIf: "c" + strconv.Itoa(i), LBIf: "l" + strconv.Itoa(i),
			ClientIP4: netip.AddrFrom4([4]byte{10, 1, byte(i), 1}),
			LBIP4:     netip.AddrFrom4([4]byte{10, 1, byte(i), 2}),
			ClientIP6: netip.MustParseAddr(fmt.Sprintf("fd01:%d::1", i)),
			LBIP6:     netip.MustParseAddr(fmt.Sprintf("fd01:%d::2", i)),
		}
		if err := l.link(l.Client, p.ClientIf, p.ClientIP4, p.ClientIP6, l.LB, p.LBIf, p.LBIP4, p.LBIP6); err != nil {
			return fmt.Errorf("path %d: %w", i, err)
		}
		// The client reaches the VIP through path 0 by default, and from path i's address through
		// path i (policy routing), so the second subflow leaves by the second path.
		table := strconv.Itoa(100 + i)
		for _, r := range [][]string{
			{"route", "add", "default", "via", p.LBIP4.String(), "dev", p.ClientIf, "table", table},
			{"rule", "add", "from", p.ClientIP4.String(), "table", table, "pref", table},
			{"-6", "route", "add", "default", "via", p.LBIP6.String(), "dev", p.ClientIf, "table", table},
			{"-6", "rule", "add", "from", p.ClientIP6.String(), "table", table, "pref", table},
		} {
			if _, err := l.IP(l.Client, r...); err != nil {
				return fmt.Errorf("path %d: %w", i, err)
			}
		}
		if i == 0 {
			for _, r := range [][]string{
				{"route", "add", "default", "via", p.LBIP4.String(), "dev", p.ClientIf},
				{"-6", "route", "add", "default", "via", p.LBIP6.String(), "dev", p.ClientIf},
			} {
				if _, err := l.IP(l.Client, r...); err != nil {
					return err
				}
			}
		}
		l.Paths = append(l.Paths, p)
	}

	for j := 0; j < cfg.Backends; j++ {
		b := Backend{
			Index: j, Netns: l.made[2+j], LBIf: "b" + strconv.Itoa(j), If: "eth0",
			IP4:   netip.AddrFrom4([4]byte{10, 2, byte(j), 2}),
			LBIP4: netip.AddrFrom4([4]byte{10, 2, byte(j), 1}),
			IP6:   netip.MustParseAddr(fmt.Sprintf("fd02:%d::2", j)),
			LBIP6: netip.MustParseAddr(fmt.Sprintf("fd02:%d::1", j)),
		}
		if err := l.link(l.LB, b.LBIf, b.LBIP4, b.LBIP6, b.Netns, b.If, b.IP4, b.IP6); err != nil {
			return fmt.Errorf("backend %d: %w", j, err)
		}
		// Room for ipip's outer header: a full-size client segment (1500 bytes of IP) plus 20 (IPv4)
		// or 40 (IPv6) bytes would exceed a 1500-byte MTU, and veth drops a redirected frame longer
		// than its peer's MTU. Real balancers need the same headroom on their backend network.
		for _, e := range [][2]string{{l.LB, b.LBIf}, {b.Netns, b.If}} {
			if _, err := l.IP(e[0], "link", "set", e[1], "mtu", strconv.Itoa(BackendMTU)); err != nil {
				return fmt.Errorf("backend %d: %w", j, err)
			}
		}
		// The VIP on loopback, never announced on the link (ARP/ND answers only for the link's own
		// address): the balancer delivers to the backend's MAC or tunnels to its address.
		if err := lab.WriteSysctls(b.Netns, map[string]string{
			"net/ipv4/conf/all/arp_ignore":   "1",
			"net/ipv4/conf/all/arp_announce": "2",
		}); err != nil {
			return err
		}
		for _, r := range [][]string{
			{"addr", "add", l.VIP4.String() + "/32", "dev", "lo"},
			{"addr", "add", l.VIP6.String() + "/128", "dev", "lo"},
			{"route", "add", "default", "via", b.LBIP4.String(), "dev", b.If},
			{"-6", "route", "add", "default", "via", b.LBIP6.String(), "dev", b.If},
			// Accept joins (subflows) from clients; announce nothing.
			{"mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "0"},
		} {
			if _, err := l.IP(b.Netns, r...); err != nil {
				return fmt.Errorf("backend %d: %w", j, err)
			}
		}
		l.Backends = append(l.Backends, b)
	}

	n := strconv.Itoa(cfg.Paths - 1)
	if _, err := l.IP(l.Client, "mptcp", "limits", "set", "subflows", n, "add_addr_accepted", "0"); err != nil {
		return err
	}
	if cfg.NoEndpoints {
		return nil
	}
	return l.AddSubflowEndpoints()
}

// AddSubflowEndpoints gives the client's path manager a `subflow` endpoint on every path but the
// first (IPv4 and IPv6): new connections open one subflow per extra path, and so do existing ones
// at once.
func (l *Lab) AddSubflowEndpoints() error {
	for _, p := range l.Paths[1:] {
		for _, a := range []netip.Addr{p.ClientIP4, p.ClientIP6} {
			if _, err := l.IP(l.Client, "mptcp", "endpoint", "add", a.String(), "dev", p.ClientIf, "subflow"); err != nil {
				return err
			}
		}
	}
	return nil
}

// link makes a veth pair from (ns1, if1) to (ns2, if2) with addresses, TX checksum offload off and
// GRO on at both ends, and brings it up.
func (l *Lab) link(ns1, if1 string, a4, a6 netip.Addr, ns2, if2 string, b4, b6 netip.Addr) error {
	if _, err := l.IP(ns1, "link", "add", if1, "type", "veth", "peer", "name", if2, "netns", ns2); err != nil {
		return err
	}
	for _, e := range []struct {
		ns, dev string
		ip4     netip.Addr
		ip6     netip.Addr
	}{{ns1, if1, a4, a6}, {ns2, if2, b4, b6}} {
		if err := lab.WriteSysctls(e.ns, map[string]string{"net/ipv4/conf/" + e.dev + "/rp_filter": "0"}); err != nil {
			return err
		}
		if _, err := l.IP(e.ns, "addr", "add", e.ip4.String()+"/24", "dev", e.dev); err != nil {
			return err
		}
		if _, err := l.IP(e.ns, "addr", "add", e.ip6.String()+"/64", "dev", e.dev, "nodad"); err != nil {
			return err
		}
		if _, err := l.IP(e.ns, "link", "set", e.dev, "up"); err != nil {
			return err
		}
		// GRO after up: veth makes its peer a redirect target (NDO_XMIT) only when GRO is turned on
		// while the device is up (6.18 veth_set_features returns early on a down device), so
		// turned on before, XDP_REDIRECT into the peer fails with EOPNOTSUPP.
		if _, err := l.Exec(e.ns, "ethtool", "-K", e.dev, "tx", "off", "gro", "on"); err != nil {
			return err
		}
	}
	return nil
}

// RouteVIP makes the balancer's kernel route the VIPs to backend j (plain routing, no XDP): the
// baseline the smoke test uses, and what packets the datapath passes up meet.
func (l *Lab) RouteVIP(j int) error {
	b := l.Backends[j]
	for _, r := range [][]string{
		{"route", "replace", l.VIP4.String() + "/32", "via", b.IP4.String(), "dev", b.LBIf},
		{"-6", "route", "replace", l.VIP6.String() + "/128", "via", b.IP6.String(), "dev", b.LBIf},
	} {
		if _, err := l.IP(l.LB, r...); err != nil {
			return err
		}
	}
	return nil
}

// Namespaces lists every namespace of the lab: client, balancer, backends.
func (l *Lab) Namespaces() []string { return append([]string(nil), l.made...) }

// Close deletes every namespace the lab made. It is idempotent.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
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

// Conns lists the MPTCP sockets of ns as `ss -M` shows them.
func (l *Lab) Conns(ns string) ([]lab.Conn, error) { return tools.Subflows(ns) }
