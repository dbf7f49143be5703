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

	"gopkg.in/yaml.v3"

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
	// VIPs are the services, each with its policy.
	VIPs []ConfigVIP `yaml:"vips"`
	// Backends serve every VIP.
	Backends []ConfigBackend `yaml:"backends"`
}

// ConfigVIP is one service and its policy; an omitted policy field takes DefaultPolicy's value.
type ConfigVIP struct {
	Addr         string `yaml:"addr"`                    // ADDR:PORT or [V6]:PORT
	Forward      string `yaml:"forward,omitempty"`       // l2 or ipip
	UnknownJoin  string `yaml:"unknown_join,omitempty"`  // drop, hash or pass
	JoinSteering *bool  `yaml:"join_steering,omitempty"` // default true
}

// ConfigBackend is one backend.
type ConfigBackend struct {
	Addr   string `yaml:"addr"`
	Weight uint32 `yaml:"weight,omitempty"` // default DefaultWeight
	// JoinPort: the port this backend announces on every VIP's address for its joins (lb
	// backend-setup --join-port on it); the balancer sends every packet to VIP-address:JoinPort to
	// it, statelessly. 0: none (joins are steered by token).
	JoinPort uint16 `yaml:"join_port,omitempty"`
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
		d.VIPs = append(d.VIPs, DesiredVIP{Addr: a, Policy: p})
	}
	if len(c.Backends) == 0 {
		return nil, errors.New("backends: give at least one")
	}
	bes := map[netip.Addr]bool{}
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
	}
	// The order of the file changes nothing: the backend set and the tables are built from the
	// addresses (Maglev sorts by name), so instances given the same backends in any order agree.
	sort.Slice(d.Backends, func(i, j int) bool { return d.Backends[i].Addr.Less(d.Backends[j].Addr) })
	return d, nil
}
