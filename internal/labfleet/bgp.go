package labfleet

import (
	"fmt"
	"net/netip"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labbgp"
)

// BGP is the route source of a routing daemon: BIRD 2 in R (internal/labbgp) peering over IPv4
// with every balancer's lb run (Service.BGP: its config file's bgp section), its routes merged
// into ECMP routes in R's FIB. Only the VIPs are announced (lb run announces VIP addresses), so
// the backends' IPv6 join addresses have no route: use join ports with it.
type BGP struct {
	// JoinAddrs: the instances also announce the backends' IPv6 join addresses (their config has
	// join_addr), each a /128 that R must route over every instance.
	JoinAddrs bool
	r         *labbgp.Router
}

// Install starts BIRD in R with one session per balancer (AS RouterASN to BalancerASN, hold
// time BGPHoldTime). The routes appear once the balancers' lb run announce them.
func (b *BGP) Install(l *Lab) error {
	var peers []labbgp.Peer
	for _, x := range l.Balancers {
		peers = append(peers, labbgp.Peer{Addr: x.IP4, ASN: BalancerASN, HoldTime: BGPHoldTime})
	}
	r, err := labbgp.New(l.Router, labbgp.Config{RouterID: l.Paths[0].RIP4, ASN: RouterASN, Peers: peers})
	if err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	b.r = r
	return nil
}

// Routed is the VIPs.
func (b *BGP) Routed(l *Lab) []netip.Prefix {
	out := []netip.Prefix{netip.PrefixFrom(l.VIP4, 32), netip.PrefixFrom(l.VIP6, 128)}
	if b.JoinAddrs {
		for j := range l.Backends {
			out = append(out, netip.PrefixFrom(JoinAddr6(j), 128))
		}
	}
	return out
}

// Router is the running BIRD (nil before Install).
func (b *BGP) Router() *labbgp.Router { return b.r }

// Close stops BIRD.
func (b *BGP) Close() error {
	if b.r == nil {
		return nil
	}
	return b.r.Close()
}
