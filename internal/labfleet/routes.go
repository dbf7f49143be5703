package labfleet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
)

// RouteSource installs R's routes to the service prefixes over the balancers. The lab calls
// Install once R and the balancers' links are up (a routing daemon may install the routes later,
// once the balancers announce them), and Close when it is closed. Routed lists the prefixes it
// routes.
type RouteSource interface {
	Install(l *Lab) error
	Routed(l *Lab) []netip.Prefix
	Close() error
}

// Static is the route source without a routing daemon: one multipath route per service prefix,
// written into R's main table, one next hop per balancer.
type Static struct{}

// Install writes the multipath routes.
func (Static) Install(l *Lab) error {
	for _, p := range l.Prefixes() {
		args := []string{"route", "replace", p.String()}
		if p.Addr().Is6() {
			args = append([]string{"-6"}, args...)
		}
		for _, b := range l.Balancers {
			gw := b.IP4
			if p.Addr().Is6() {
				gw = b.IP6
			}
			args = append(args, "nexthop", "via", gw.String(), "dev", b.RIf)
		}
		if _, err := l.IP(l.Router, args...); err != nil {
			return err
		}
	}
	return nil
}

// Close does nothing: the routes go with R.
func (Static) Close() error { return nil }

// Routed is every service prefix (Lab.Prefixes).
func (Static) Routed(l *Lab) []netip.Prefix { return l.Prefixes() }

// Prefixes are the service prefixes R routes over the balancers: the VIPs and the backends' IPv6
// join addresses (JoinPrefix6).
func (l *Lab) Prefixes() []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(l.VIP4, 32), netip.PrefixFrom(l.VIP6, 128), JoinPrefix6}
}

// NextHop is one next hop of a route in R's FIB.
type NextHop struct {
	Gateway netip.Addr
	Dev     string
	Flags   []string // as ip -j route shows them: "linkdown", "dead", ...
}

// Usable reports whether R forwards over the next hop: neither dead nor (with
// ignore_routes_with_linkdown) on a link without carrier.
func (n NextHop) Usable() bool {
	return !slices.Contains(n.Flags, "dead") && !slices.Contains(n.Flags, "linkdown")
}

// Route reads R's route to prefix p: its next hops (one for a single-path route) and the protocol
// that installed it ("boot" for ip route, "bird" for BIRD, ...). No route is an error.
func (l *Lab) Route(p netip.Prefix) (hops []NextHop, proto string, err error) {
	args := []string{"-j", "route", "show", "exact", p.String()}
	if p.Addr().Is6() {
		args = append([]string{"-6"}, args...)
	}
	out, err := l.IP(l.Router, args...)
	if err != nil {
		return nil, "", err
	}
	hops, proto, err = parseRoute(out)
	if err != nil {
		return nil, "", fmt.Errorf("R's route to %s: %w", p, err)
	}
	return hops, proto, nil
}

// parseRoute reads the one route of `ip -j route show exact PREFIX`.
func parseRoute(out string) (hops []NextHop, proto string, err error) {
	type hop struct {
		Gateway string   `json:"gateway"`
		Dev     string   `json:"dev"`
		Flags   []string `json:"flags"`
	}
	var rs []struct {
		hop
		Protocol string `json:"protocol"`
		Nexthops []hop  `json:"nexthops"`
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		return nil, "", fmt.Errorf("ip -j route: %w: %q", err, out)
	}
	if len(rs) != 1 {
		return nil, "", fmt.Errorf("%d routes, want 1: %q", len(rs), out)
	}
	r := rs[0]
	nh := r.Nexthops
	if len(nh) == 0 {
		nh = []hop{r.hop}
	}
	for _, h := range nh {
		gw, err := netip.ParseAddr(h.Gateway)
		if err != nil {
			return nil, "", fmt.Errorf("gateway %q: %w", h.Gateway, err)
		}
		hops = append(hops, NextHop{Gateway: gw, Dev: h.Dev, Flags: h.Flags})
	}
	return hops, r.Protocol, nil
}

// UsableBalancers lists the balancers R forwards p over, by index, in next-hop order.
func (l *Lab) UsableBalancers(p netip.Prefix) ([]int, error) {
	hops, _, err := l.Route(p)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, h := range hops {
		if !h.Usable() {
			continue
		}
		for _, b := range l.Balancers {
			if h.Gateway == b.IP4 || h.Gateway == b.IP6 {
				out = append(out, b.Index)
			}
		}
	}
	return out, nil
}
