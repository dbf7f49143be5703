package control

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
)

// ConfigBGP is the config file's bgp section (docs/lb.md, "BGP"): lb run announces every VIP's
// address to these peers while the balancer serves it.
type ConfigBGP struct {
	LocalASN uint32 `yaml:"local_asn"`
	RouterID string `yaml:"router_id"`
	// ListenPort: the port passive peers connect to (default none: the speaker dials).
	ListenPort int `yaml:"listen_port,omitempty"`
	// NextHop overrides the next hop of the announced routes (default each session's local address).
	NextHop *ConfigNextHop `yaml:"next_hop,omitempty"`
	Peers   []ConfigPeer   `yaml:"peers"`
}

// ConfigNextHop is bgp.next_hop.
type ConfigNextHop struct {
	V4 string `yaml:"v4,omitempty"`
	V6 string `yaml:"v6,omitempty"`
}

// ConfigPeer is one router of bgp.peers.
type ConfigPeer struct {
	Address  string `yaml:"address"`
	ASN      uint32 `yaml:"asn"`
	Port     int    `yaml:"port,omitempty"`      // default 179
	HoldTime string `yaml:"hold_time,omitempty"` // a Go duration, whole seconds; default 90s
	Passive  bool   `yaml:"passive,omitempty"`   // wait for the router to connect (needs listen_port)
}

// check resolves the section into the speaker's configuration.
func (c *ConfigBGP) check() (*bgp.Config, error) {
	out := &bgp.Config{LocalASN: c.LocalASN, ListenPort: c.ListenPort}
	if c.LocalASN == 0 {
		return nil, fmt.Errorf("bgp.local_asn: give this balancer's AS number (1 to 4294967295)")
	}
	rid, err := netip.ParseAddr(c.RouterID)
	if err != nil || !rid.Is4() {
		return nil, fmt.Errorf("bgp.router_id: %q: want an IPv4 address", c.RouterID)
	}
	out.RouterID = rid
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return nil, fmt.Errorf("bgp.listen_port: %d: want 1 to 65535", c.ListenPort)
	}
	if nh := c.NextHop; nh != nil {
		if nh.V4 != "" {
			a, err := netip.ParseAddr(nh.V4)
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("bgp.next_hop.v4: %q: want an IPv4 address", nh.V4)
			}
			out.NextHop4 = a
		}
		if nh.V6 != "" {
			a, err := netip.ParseAddr(nh.V6)
			if err != nil || !a.Is6() || a.Is4In6() {
				return nil, fmt.Errorf("bgp.next_hop.v6: %q: want an IPv6 address", nh.V6)
			}
			out.NextHop6 = a
		}
	}
	if len(c.Peers) == 0 {
		return nil, fmt.Errorf("bgp.peers: give at least one")
	}
	seen := map[netip.Addr]bool{}
	for i, p := range c.Peers {
		f := fmt.Sprintf("bgp.peers[%d]", i)
		a, err := netip.ParseAddr(p.Address)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("%s.address: %q: want an IPv4 or IPv6 address", f, p.Address)
		}
		a = a.Unmap()
		if seen[a] {
			return nil, fmt.Errorf("%s.address: %s is given twice", f, a)
		}
		seen[a] = true
		if p.ASN == 0 {
			return nil, fmt.Errorf("%s.asn: give the router's AS number (1 to 4294967295)", f)
		}
		if p.Port < 0 || p.Port > 65535 {
			return nil, fmt.Errorf("%s.port: %d: want 1 to 65535", f, p.Port)
		}
		bp := bgp.Peer{Addr: a, ASN: p.ASN, Port: uint16(p.Port), Passive: p.Passive}
		if p.HoldTime != "" {
			d, err := time.ParseDuration(p.HoldTime)
			if err != nil || d < bgp.MinHoldTime || d > 65535*time.Second || d%time.Second != 0 {
				return nil, fmt.Errorf("%s.hold_time: %q: want whole seconds from %s to 65535s (e.g. 9s)", f, p.HoldTime, bgp.MinHoldTime)
			}
			bp.HoldTime = d
		}
		if p.Passive && c.ListenPort == 0 {
			return nil, fmt.Errorf("%s.passive: needs bgp.listen_port", f)
		}
		out.Peers = append(out.Peers, bp)
	}
	if err := out.Check(); err != nil {
		return nil, fmt.Errorf("bgp.%w", err)
	}
	return out, nil
}
