package control

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// FileConfig is the balancer's declarative configuration (`lb run --config FILE`, `replay --lb
// --config FILE`): what `lb attach` and `lb backend` say in flags, in one YAML file. The field
// names are the file's (docs/lb.md, "Config file"); unknown fields are errors.
type FileConfig struct {
	// Interfaces the balancer is attached to (the client-facing ones).
	Interfaces []string `yaml:"interfaces"`
	// Mode: auto (native), native or generic, as lb attach --mode.
	Mode string `yaml:"mode,omitempty"`
	// HashSeedFile: the fleet's secret seed of the 5-tuple hash (lb attach --hash-seed-file).
	HashSeedFile string `yaml:"hash_seed_file,omitempty"`
	// NewFlowRate is the new-flow rate guard (docs/lb.md, "New-flow rate guard"): at most this many
	// new flows per second per CPU are stored in the flow table, the rest forwarded by Maglev
	// unstored. Omitted: lb.DefaultNewFlowRate (125,000, Katran's); 0: no guard.
	NewFlowRate *int64 `yaml:"new_flow_rate,omitempty"`
	// VIPs are the services, each with its policy.
	VIPs []ConfigVIP `yaml:"vips"`
	// Backends serve every VIP.
	Backends []ConfigBackend `yaml:"backends"`
	// HealthCheck, if given, checks every VIP's backends (a VIP's own section overrides its
	// fields); without it and without a VIP's own, nothing is checked.
	HealthCheck *ConfigHealthCheck `yaml:"health_check,omitempty"`
	// BGP, if given, announces the VIPs' addresses to routers (bgpconfig.go; docs/lb.md, "BGP").
	BGP *ConfigBGP `yaml:"bgp,omitempty"`
}

// ConfigHealthCheck is a health_check section (docs/lb.md, "Health checks"): a TCP connect to
// each backend's address at Port, every Interval, failing after Timeout; Rise successes in a row
// bring a down backend up, Fall failures in a row take an up one down. An omitted field takes the
// global section's value, else its default.
type ConfigHealthCheck struct {
	// Enabled false in a VIP's section: that VIP is not checked (default true).
	Enabled  *bool   `yaml:"enabled,omitempty"`
	Port     *int    `yaml:"port,omitempty"`     // default the VIP's port
	Interval *string `yaml:"interval,omitempty"` // a Go duration; default DefaultHealthInterval
	Timeout  *string `yaml:"timeout,omitempty"`  // default half the interval, at most DefaultHealthTimeout
	Rise     *int    `yaml:"rise,omitempty"`     // default DefaultHealthRise
	Fall     *int    `yaml:"fall,omitempty"`     // default DefaultHealthFall
}

// ConfigVIP is one service and its policy; an omitted policy field takes DefaultPolicy's value.
type ConfigVIP struct {
	Addr         string `yaml:"addr"`                    // ADDR:PORT or [V6]:PORT
	Forward      string `yaml:"forward,omitempty"`       // l2 or ipip
	UnknownJoin  string `yaml:"unknown_join,omitempty"`  // drop, hash or pass
	JoinSteering *bool  `yaml:"join_steering,omitempty"` // default true
	// HealthCheck overrides the global section's fields for this VIP (or, without one, checks
	// this VIP alone).
	HealthCheck *ConfigHealthCheck `yaml:"health_check,omitempty"`
}

// ConfigBackend is one backend.
type ConfigBackend struct {
	Addr   string `yaml:"addr"`
	Weight uint32 `yaml:"weight,omitempty"` // default DefaultWeight
	// JoinPort: the port this backend announces on every VIP's address for its joins (lb
	// backend-setup --join-port on it); the balancer sends every packet to VIP-address:JoinPort to
	// it, statelessly. 0: none (joins are steered by token).
	JoinPort uint16 `yaml:"join_port,omitempty"`
	// JoinAddr: an address of this backend's own that it announces (a signal endpoint without a
	// port) for the joins of every VIP of its family; the balancer sends every packet to
	// JoinAddr at a VIP's port to it, statelessly, as for a join port. For IPv6, where an ADD_ADDR
	// with a port does not fit beside TCP timestamps. Empty: none.
	JoinAddr string `yaml:"join_addr,omitempty"`
}

// Desired is a FileConfig checked and resolved into what the balancer is made of.
type Desired struct {
	Ifaces    []string
	Mode      loader.XDPMode
	Config    lb.Config // HashSeed read from SeedFile by LoadConfig (0 without one)
	SeedFile  string    // hash_seed_file
	VIPs      []DesiredVIP
	Backends  []BackendSpec
	JoinPorts []DesiredJoinPort
	BGP       *bgp.Config // nil: no bgp section, nothing announced
}

// DesiredJoinPort is one backend's join port on one VIP's address.
type DesiredJoinPort struct {
	Addr    netip.AddrPort // the VIP's address, the backend's port
	Owner   netip.Addr
	Forward lb.Forward // the VIP's
}

// DesiredVIP is one VIP with its whole policy.
type DesiredVIP struct {
	Addr   netip.AddrPort
	Policy Policy
	Health *HealthCheck // nil: its backends are not checked
}

// Desired is what s describes: its VIPs each with s.Policy applied to DefaultPolicy (what a new
// VIP gets from lb attach's flags).
func (s Spec) Desired() *Desired {
	d := &Desired{Ifaces: s.Ifaces, Mode: s.Mode, Config: s.Config, Backends: s.Backends}
	for _, v := range s.VIPs {
		d.VIPs = append(d.VIPs, DesiredVIP{Addr: v, Policy: s.Policy.apply(DefaultPolicy)})
	}
	return d
}

var unknownField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// LoadConfig reads and checks the config file at path, and the hash seed file it names. Every
// error is one line naming the file and the field (with its line for a YAML error).
func LoadConfig(path string) (*Desired, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	d, err := ParseConfig(b)
	if err == nil && d.SeedFile != "" {
		var seed lb.HashSeed
		if seed, err = lb.ReadHashSeedFile(d.SeedFile); err != nil {
			err = fmt.Errorf("hash_seed_file: %w", err)
		} else {
			d.Config.HashSeed = seed.Datapath()
		}
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return d, nil
}

// ParseConfig checks a config file's content; LoadConfig also reads its hash_seed_file.
func ParseConfig(b []byte) (*Desired, error) {
	var c FileConfig
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msgs := make([]string, len(te.Errors))
			for i, m := range te.Errors {
				msgs[i] = unknownField.ReplaceAllString(m, "unknown field $1")
			}
			return nil, errors.New(strings.Join(msgs, "; "))
		}
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty: want interfaces, vips and backends")
		}
		return nil, errors.New(strings.ReplaceAll(err.Error(), "\n", " "))
	}
	return c.check()
}

func (c *FileConfig) check() (*Desired, error) {
	d := &Desired{Ifaces: c.Interfaces, Mode: loader.XDPMode(c.Mode)}
	if len(c.Interfaces) == 0 {
		return nil, errors.New("interfaces: give at least one")
	}
	seen := map[string]bool{}
	for i, n := range c.Interfaces {
		if n == "" || seen[n] {
			return nil, fmt.Errorf("interfaces[%d]: %q is empty or repeated", i, n)
		}
		seen[n] = true
	}
	switch c.Mode {
	case "":
		d.Mode = loader.XDPMode("auto")
	case "auto", "native", "generic":
	default:
		return nil, fmt.Errorf("mode: %q: want auto, native or generic", c.Mode)
	}
	d.SeedFile = c.HashSeedFile
	// Omitted: the default, given as such (Config 0 would keep what the running program has).
	d.Config.NewFlowRate = lb.DefaultNewFlowRate
	if r := c.NewFlowRate; r != nil {
		if *r < 0 || *r >= int64(lb.NewFlowRateUnlimited) {
			return nil, fmt.Errorf("new_flow_rate: %d: want 0 (no guard) to %d new flows per second per CPU", *r, int64(lb.NewFlowRateUnlimited)-1)
		}
		d.Config.NewFlowRate = uint32(*r)
		if *r == 0 {
			d.Config.NewFlowRate = lb.NewFlowRateUnlimited
		}
	}
	if len(c.VIPs) == 0 {
		return nil, errors.New("vips: give at least one")
	}
	vips := map[netip.AddrPort]bool{}
	for i, v := range c.VIPs {
		a, err := netip.ParseAddrPort(v.Addr)
		if err != nil {
			return nil, fmt.Errorf("vips[%d].addr: %q: want ADDR:PORT or [V6]:PORT", i, v.Addr)
		}
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		if vips[a] {
			return nil, fmt.Errorf("vips[%d].addr: %s is given twice", i, a)
		}
		vips[a] = true
		p := DefaultPolicy
		if v.Forward != "" {
			if p.Forward, err = lb.ParseForward(v.Forward); err != nil {
				return nil, fmt.Errorf("vips[%d].forward: %w", i, err)
			}
		}
		if v.UnknownJoin != "" {
			if p.UnknownJoin, err = lb.ParseUnknownJoin(v.UnknownJoin); err != nil {
				return nil, fmt.Errorf("vips[%d].unknown_join: %w", i, err)
			}
		}
		if v.JoinSteering != nil {
			p.JoinSteering = *v.JoinSteering
		}
		hc, err := healthCheck(c.HealthCheck, v.HealthCheck, a.Port(), fmt.Sprintf("vips[%d].health_check", i))
		if err != nil {
			return nil, err
		}
		d.VIPs = append(d.VIPs, DesiredVIP{Addr: a, Policy: p, Health: hc})
	}
	if len(c.Backends) == 0 {
		return nil, errors.New("backends: give at least one")
	}
	bes := map[netip.Addr]bool{}
	joinAddrs := map[netip.Addr]bool{}
	for i, b := range c.Backends {
		a, err := netip.ParseAddr(b.Addr)
		if err != nil {
			return nil, fmt.Errorf("backends[%d].addr: %q: want an IPv4 or IPv6 address", i, b.Addr)
		}
		a = a.Unmap()
		if bes[a] {
			return nil, fmt.Errorf("backends[%d].addr: %s is given twice", i, a)
		}
		bes[a] = true
		w := b.Weight
		if w == 0 {
			w = DefaultWeight
		}
		if w > MaxWeight {
			return nil, fmt.Errorf("backends[%d].weight: %d: want 1 to %d", i, w, MaxWeight)
		}
		for v := range vips {
			if v.Addr() == a {
				return nil, fmt.Errorf("backends[%d].addr: %s is a VIP's address", i, a)
			}
		}
		d.Backends = append(d.Backends, BackendSpec{Addr: a, Weight: w})
		if b.JoinPort != 0 {
			for _, v := range d.VIPs {
				jp := netip.AddrPortFrom(v.Addr.Addr(), b.JoinPort)
				if vips[jp] {
					return nil, fmt.Errorf("backends[%d].join_port: %d is a VIP's port on %s", i, b.JoinPort, v.Addr.Addr())
				}
				for _, o := range d.JoinPorts {
					if o.Addr == jp {
						return nil, fmt.Errorf("backends[%d].join_port: %d is %s's too", i, b.JoinPort, o.Owner)
					}
				}
				d.JoinPorts = append(d.JoinPorts, DesiredJoinPort{Addr: jp, Owner: a, Forward: v.Policy.Forward})
			}
		}
		if b.JoinAddr != "" {
			ja, err := netip.ParseAddr(b.JoinAddr)
			if err != nil {
				return nil, fmt.Errorf("backends[%d].join_addr: %q: want an IPv4 or IPv6 address", i, b.JoinAddr)
			}
			ja = ja.Unmap()
			if joinAddrs[ja] || bes[ja] {
				return nil, fmt.Errorf("backends[%d].join_addr: %s is given twice", i, ja)
			}
			joinAddrs[ja] = true
			n := 0
			for _, v := range d.VIPs {
				if v.Addr.Addr() == ja {
					return nil, fmt.Errorf("backends[%d].join_addr: %s is a VIP's address", i, ja)
				}
				if v.Addr.Addr().Is4() != ja.Is4() {
					continue
				}
				n++
				d.JoinPorts = append(d.JoinPorts, DesiredJoinPort{Addr: netip.AddrPortFrom(ja, v.Addr.Port()), Owner: a, Forward: v.Policy.Forward})
			}
			if n == 0 {
				return nil, fmt.Errorf("backends[%d].join_addr: %s: no VIP of its family", i, ja)
			}
		}
	}
	for i, b := range c.Backends {
		if a, err := netip.ParseAddr(b.Addr); err == nil && joinAddrs[a.Unmap()] {
			return nil, fmt.Errorf("backends[%d].addr: %s is a join_addr", i, a.Unmap())
		}
	}
	if c.BGP != nil {
		var err error
		if d.BGP, err = c.BGP.check(); err != nil {
			return nil, err
		}
	}
	// The order of the file changes nothing: the backend set and the tables are built from the
	// addresses (Maglev sorts by name), so instances given the same backends in any order agree.
	sort.Slice(d.Backends, func(i, j int) bool { return d.Backends[i].Addr.Less(d.Backends[j].Addr) })
	// Join entries likewise, so that they get the same VIP ids on every instance.
	sort.Slice(d.JoinPorts, func(i, j int) bool {
		a, b := d.JoinPorts[i].Addr, d.JoinPorts[j].Addr
		return a.Addr().Less(b.Addr()) || a.Addr() == b.Addr() && a.Port() < b.Port()
	})
	return d, nil
}

// Health check defaults (docs/lb.md, "Health checks").
const (
	DefaultHealthInterval = 2 * time.Second
	DefaultHealthTimeout  = time.Second
	DefaultHealthRise     = 2
	DefaultHealthFall     = 3
	// MinHealthInterval bounds how often a backend is connected to.
	MinHealthInterval = 100 * time.Millisecond
	// MaxHealthCount bounds rise and fall.
	MaxHealthCount = 100
)

// healthCheck resolves a VIP's health check from the global section and the VIP's own (path names
// the latter in errors); nil when neither is given.
func healthCheck(global, own *ConfigHealthCheck, vipPort uint16, path string) (*HealthCheck, error) {
	if global == nil && own == nil {
		return nil, nil
	}
	for _, sec := range []struct {
		c    *ConfigHealthCheck
		path string
	}{{global, "health_check"}, {own, path}} {
		if c := sec.c; c != nil && c.Enabled != nil && !*c.Enabled {
			if *c != (ConfigHealthCheck{Enabled: c.Enabled}) {
				return nil, fmt.Errorf("%s.enabled: false with other fields: give one or the other", sec.path)
			}
			if sec.c == global {
				return nil, fmt.Errorf("health_check.enabled: false: omit the section instead (enabled: false is for a VIP's own)")
			}
			return nil, nil
		}
	}
	hc := &HealthCheck{Port: vipPort, Interval: DefaultHealthInterval, Rise: DefaultHealthRise, Fall: DefaultHealthFall}
	var timeout *time.Duration
	for _, sec := range []struct {
		c    *ConfigHealthCheck
		path string
	}{{global, "health_check"}, {own, path}} {
		c := sec.c
		if c == nil {
			continue
		}
		if c.Port != nil {
			if *c.Port < 1 || *c.Port > 65535 {
				return nil, fmt.Errorf("%s.port: %d: want 1 to 65535", sec.path, *c.Port)
			}
			hc.Port = uint16(*c.Port)
		}
		if c.Interval != nil {
			d, err := time.ParseDuration(*c.Interval)
			if err != nil || d < MinHealthInterval {
				return nil, fmt.Errorf("%s.interval: %q: want a duration of at least %s (e.g. 2s)", sec.path, *c.Interval, MinHealthInterval)
			}
			hc.Interval = d
		}
		if c.Timeout != nil {
			d, err := time.ParseDuration(*c.Timeout)
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%s.timeout: %q: want a positive duration (e.g. 1s)", sec.path, *c.Timeout)
			}
			timeout = &d
		}
		for _, n := range []struct {
			name string
			v    *int
			out  *int
		}{{"rise", c.Rise, &hc.Rise}, {"fall", c.Fall, &hc.Fall}} {
			if n.v == nil {
				continue
			}
			if *n.v < 1 || *n.v > MaxHealthCount {
				return nil, fmt.Errorf("%s.%s: %d: want 1 to %d", sec.path, n.name, *n.v, MaxHealthCount)
			}
			*n.out = *n.v
		}
	}
	hc.Timeout = min(DefaultHealthTimeout, hc.Interval/2)
	if timeout != nil {
		hc.Timeout = *timeout
		if hc.Timeout >= hc.Interval {
			field := "health_check.timeout"
			if own != nil && own.Timeout != nil {
				field = path + ".timeout"
			}
			return nil, fmt.Errorf("%s: %s: want less than the interval (%s)", field, hc.Timeout, hc.Interval)
		}
	}
	return hc, nil
}
