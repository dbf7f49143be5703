// Package labbgp runs a real router for BGP tests: BIRD 2 (/usr/sbin/bird) in a given network
// namespace, with one eBGP (or iBGP) session per peer importing every route, and a kernel protocol
// that installs them in the namespace's FIB with `merge paths on`, so that equal routes from
// several peers become one ECMP route; the namespace hashes ECMP on layer 4
// (fib_multipath_hash_policy=1, IPv4 and IPv6), as a balancer fleet's router must. The FIB, read
// with netlink, is the ground truth of what the router forwards. It needs root and bird2.
//
//	r, _ := labbgp.New("bg-1-rtr", labbgp.Config{RouterID: rid, ASN: 65000, Peers: peers})
//	defer r.Close()
//	hops, _ := r.WaitNextHops(ctx, netip.MustParsePrefix("10.0.0.10/32"), 3)
package labbgp

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Bird and Birdc are the BIRD 2 binaries.
var (
	Bird  = "/usr/sbin/bird"
	Birdc = "/usr/sbin/birdc"
)

// Config is the router.
type Config struct {
	RouterID netip.Addr // IPv4
	ASN      uint32
	Peers    []Peer
}

// Peer is one BGP neighbour of the router (a speaker under test). Both IPv4 and IPv6 unicast are
// offered on every session; what is carried is what the speaker negotiates.
type Peer struct {
	Addr netip.Addr
	ASN  uint32
	// HoldTime in seconds; 0 means 9 (short, so that tests of a silent peer end quickly). The
	// session uses the smaller of the two sides' hold times.
	HoldTime int
}

// Router is a running BIRD; Close kills it.
type Router struct {
	Netns string
	Dir   string // config, control socket, pid file and log
	cfg   Config
	cmd   *exec.Cmd
	done  chan struct{}

	mu     sync.Mutex
	closed bool
}

// New starts BIRD in ns (which must exist) with cfg; its files go to a new temporary directory.
func New(ns string, cfg Config) (*Router, error) {
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("labbgp: router id %s: want an IPv4 address", cfg.RouterID)
	}
	if _, err := os.Stat(Bird); err != nil {
		return nil, fmt.Errorf("labbgp: %w (apt-get install bird2)", err)
	}
	dir, err := os.MkdirTemp("", "labbgp-")
	if err != nil {
		return nil, err
	}
	r := &Router{Netns: ns, Dir: dir, cfg: cfg, done: make(chan struct{})}
	if err := writeSysctls(ns, map[string]string{
		"net/ipv4/fib_multipath_hash_policy": "1",
		"net/ipv6/fib_multipath_hash_policy": "1",
		"net/ipv4/ip_forward":                "1",
		"net/ipv6/conf/all/forwarding":       "1",
	}); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(r.path("bird.conf"), []byte(r.config()), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	r.cmd = exec.Command(Bird, "-f", "-c", r.path("bird.conf"), "-s", r.path("bird.ctl"), "-P", r.path("bird.pid"))
	var out bytes.Buffer
	r.cmd.Stdout, r.cmd.Stderr = &out, &out
	// Forked from a thread in ns: BIRD and its sockets are ns's.
	if err := netns.Do(ns, r.cmd.Start); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("labbgp: start bird in %s: %w", ns, err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	// Ready once its control socket answers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.Birdc("show", "status"); err == nil {
			return r, nil
		}
		select {
		case <-r.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("labbgp: bird exited: %s", strings.TrimSpace(out.String()))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.Close()
			return nil, fmt.Errorf("labbgp: bird's control socket did not answer in 10s: %s", strings.TrimSpace(out.String()))
		}
	}
}

func (r *Router) path(name string) string { return filepath.Join(r.Dir, name) }

// ProtocolName is the BIRD protocol of peer i ("peer0", ...).
func ProtocolName(i int) string { return fmt.Sprintf("peer%d", i) }

func (r *Router) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "log %q all;\nrouter id %s;\n", r.path("bird.log"), r.cfg.RouterID)
	b.WriteString("protocol device { scan time 10; }\n")
	b.WriteString("protocol kernel kernel4 { merge paths on; ipv4 { import none; export all; }; }\n")
	b.WriteString("protocol kernel kernel6 { merge paths on; ipv6 { import none; export all; }; }\n")
	for i, p := range r.cfg.Peers {
		hold := p.HoldTime
		if hold == 0 {
			hold = 9
		}
		fmt.Fprintf(&b, `protocol bgp %s {
	local as %d;
	neighbor %s as %d;
	hold time %d;
	connect delay time 1;
	connect retry time 1;
	error wait time 1, 4;
	ipv4 { import all; export none; };
	ipv6 { import all; export none; };
}
`, ProtocolName(i), r.cfg.ASN, p.Addr, p.ASN, hold)
	}
	return b.String()
}

// Birdc runs birdc on the router's control socket.
func (r *Router) Birdc(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, Birdc, append([]string{"-s", r.path("bird.ctl")}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ProtocolState is the state of peer i's session as birdc says ("Established", "Active",
// "Connect", "Idle", ...).
func (r *Router) ProtocolState(i int) (string, error) {
	out, err := r.Birdc("show", "protocols", ProtocolName(i))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		// name proto table state since info
		if len(f) >= 4 && f[0] == ProtocolName(i) {
			if len(f) >= 6 {
				return f[5], nil // BGP's own state (Established, Active, ...)
			}
			return f[3], nil
		}
	}
	return "", fmt.Errorf("birdc: no protocol %s in %q", ProtocolName(i), out)
}

// Log is BIRD's log so far.
func (r *Router) Log() string {
	b, _ := os.ReadFile(r.path("bird.log"))
	return string(b)
}

// Routes returns the next hops of the router's FIB route to prefix (table main), sorted; none
// when there is no route.
func (r *Router) Routes(prefix netip.Prefix) ([]netip.Addr, error) {
	h, err := vns.GetFromPath(netns.Path(r.Netns))
	if err != nil {
		return nil, fmt.Errorf("labbgp: open %s: %w", r.Netns, err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("labbgp: netlink in %s: %w", r.Netns, err)
	}
	defer nl.Close()
	fam := netlink.FAMILY_V4
	if prefix.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	routes, err := nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("labbgp: list routes in %s: %w", r.Netns, err)
	}
	var hops []netip.Addr
	for _, rt := range routes {
		if rt.Dst == nil {
			continue
		}
		ones, _ := rt.Dst.Mask.Size()
		a, ok := netip.AddrFromSlice(rt.Dst.IP)
		if !ok || netip.PrefixFrom(a.Unmap(), ones) != prefix {
			continue
		}
		if rt.Gw != nil {
			g, _ := netip.AddrFromSlice(rt.Gw)
			hops = append(hops, g.Unmap())
		}
		for _, nh := range rt.MultiPath {
			g, _ := netip.AddrFromSlice(nh.Gw)
			hops = append(hops, g.Unmap())
		}
	}
	sort.Slice(hops, func(i, j int) bool { return hops[i].Less(hops[j]) })
	return hops, nil
}

// Wait polls cond every 20 ms until it is true (nil), ctx ends, or it returns an error.
func Wait(ctx context.Context, cond func() (bool, error)) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// WaitNextHops waits until the FIB route to prefix has exactly n next hops (0: no route) and
// returns them.
func (r *Router) WaitNextHops(ctx context.Context, prefix netip.Prefix, n int) ([]netip.Addr, error) {
	var hops []netip.Addr
	err := Wait(ctx, func() (bool, error) {
		var err error
		hops, err = r.Routes(prefix)
		return len(hops) == n, err
	})
	if err != nil {
		return hops, fmt.Errorf("labbgp: %s: want %d next hops, have %v: %w", prefix, n, hops, err)
	}
	return hops, nil
}

// Close kills BIRD (its routes stay in the namespace's FIB, which goes with the namespace) and
// removes its files. It is idempotent.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	return os.RemoveAll(r.Dir)
}

func writeSysctls(ns string, kv map[string]string) error {
	return netns.Do(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("labbgp: sysctl %s=%s in %s: %w", strings.ReplaceAll(k, "/", "."), v, ns, err)
			}
		}
		return nil
	})
}
