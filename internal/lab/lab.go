// Package lab builds a two-namespace network lab for MPTCP: a client and a server network namespace
// joined by N veth paths, each optionally shaped with tbf, with the in-kernel MPTCP path manager set up
// so the client opens one subflow per path. Every integration test and `mptcp-xdp demo` runs on it.
//
// It needs root, named network namespaces (/run/netns), veth, tbf and MPTCP (kernel 5.6+; the
// endpoint `dev` keyword and the limits used here need 5.15+). It enters namespaces with setns on a
// locked OS thread (internal/netns), never with `ip netns exec`, so the host's bpffs stays visible.
package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Config describes a lab. The zero value is a lab with two unshaped IPv4 paths and no extra subflows.
type Config struct {
	// Prefix names the namespaces "<Prefix>-cli" and "<Prefix>-srv". Empty means "mx" and 6 random
	// hex digits, so parallel tests never clash.
	Prefix string
	// Paths is the number of veth paths between client and server; 0 means 2.
	Paths int
	// RatesMbit is the tbf rate of each path in Mbit/s, applied on the egress of both ends so both
	// directions are shaped; a missing entry or 0 leaves that path unshaped.
	RatesMbit []int
	// Subflows configures the in-kernel path manager so the client opens one extra subflow per extra
	// path: limits `subflows N add_addr_accepted N` (N = Paths-1) on both sides and, on the client, a
	// `subflow` endpoint for the client address of every path i >= 1 (IPv4, and IPv6 too when IPv6
	// is set and the connection is IPv6).
	Subflows bool
	// IPv6 also gives every path ULA addresses fd00:<100+i>::1/64 (client) and ::2 (server), added
	// with nodad so they are usable at once.
	IPv6 bool
	// TxChecksumOff turns TX checksum offload off on every veth (`ethtool -K IF tx off`), which labs
	// that redirect frames with XDP need (see DESIGN.md, pitfalls of veth labs).
	TxChecksumOff bool
	// GRO turns GRO on on every veth, giving the ends NAPI so XDP_REDIRECT into them is not dropped.
	GRO bool
}

// Path is one veth pair between the namespaces. IPv6 addresses are invalid unless Config.IPv6.
type Path struct {
	Index              int
	ClientIf, ServerIf string
	ClientIP4          netip.Addr
	ServerIP4          netip.Addr
	ClientIP6          netip.Addr
	ServerIP6          netip.Addr
	RateMbit           int // 0: unshaped
}

// Lab is a running lab. Close it to remove both namespaces and everything in them.
type Lab struct {
	Client string // client network namespace name
	Server string // server network namespace name
	Paths  []Path
	Config Config // with defaults filled in

	mu     sync.Mutex
	closed bool
}

// New builds a lab. On any error it removes what it made.
func New(cfg Config) (_ *Lab, err error) {
	if cfg.Paths == 0 {
		cfg.Paths = 2
	}
	if cfg.Paths < 1 || cfg.Paths > 100 {
		return nil, fmt.Errorf("lab: %d paths: want 1 to 100", cfg.Paths)
	}
	if len(cfg.RatesMbit) > cfg.Paths {
		return nil, fmt.Errorf("lab: %d rates for %d paths", len(cfg.RatesMbit), cfg.Paths)
	}
	if cfg.Prefix == "" {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("lab: random prefix: %w", err)
		}
		cfg.Prefix = "mx" + hex.EncodeToString(b[:])
	}
	l := &Lab{Client: cfg.Prefix + "-cli", Server: cfg.Prefix + "-srv", Config: cfg}
	for _, ns := range []string{l.Client, l.Server} {
		if err := netns.Validate(ns); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
	}

	// Create only namespaces that do not exist yet, and remove on failure only those we created.
	var made []string
	defer func() {
		if err != nil {
			for _, ns := range made {
				_ = netns.Delete(ns)
			}
		}
	}()
	for _, ns := range []string{l.Client, l.Server} {
		if netns.Exists(ns) {
			return nil, fmt.Errorf("lab: network namespace %q already exists", ns)
		}
		if err := netns.Create(ns); err != nil {
			return nil, fmt.Errorf("lab: %w", err)
		}
		made = append(made, ns)
	}
	if err := l.setup(); err != nil {
		return nil, fmt.Errorf("lab %s: %w", cfg.Prefix, err)
	}
	return l, nil
}

func (l *Lab) setup() error {
	cfg := l.Config
	for _, ns := range []string{l.Client, l.Server} {
		if err := WriteSysctls(ns, map[string]string{
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
	for i := 0; i < cfg.Paths; i++ {
		p := Path{
			Index:     i,
			ClientIf:  "cli" + strconv.Itoa(i),
			ServerIf:  "srv" + strconv.Itoa(i),
			ClientIP4: netip.AddrFrom4([4]byte{10, byte(100 + i), 0, 1}),
			ServerIP4: netip.AddrFrom4([4]byte{10, byte(100 + i), 0, 2}),
		}
		if i < len(cfg.RatesMbit) {
			p.RateMbit = cfg.RatesMbit[i]
		}
		if cfg.IPv6 {
			p.ClientIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::1", 100+i))
			p.ServerIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:%d::2", 100+i))
		}
		if err := l.setupPath(p); err != nil {
			return fmt.Errorf("path %d: %w", i, err)
		}
		l.Paths = append(l.Paths, p)
	}
	if err := setupHook("paths"); err != nil {
		return err
	}
	if cfg.Subflows {
		n := strconv.Itoa(cfg.Paths - 1)
		for _, ns := range []string{l.Client, l.Server} {
			if _, err := l.IP(ns, "mptcp", "limits", "set", "subflows", n, "add_addr_accepted", n); err != nil {
				return err
			}
		}
		for _, p := range l.Paths[1:] {
			if _, err := l.AddEndpoint(l.Client, p.ClientIP4.String(), "dev", p.ClientIf, "subflow"); err != nil {
				return err
			}
			if cfg.IPv6 {
				if _, err := l.AddEndpoint(l.Client, p.ClientIP6.String(), "dev", p.ClientIf, "subflow"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// setupHook lets tests make setup fail at a named step.
var setupHook = func(step string) error { return nil }

func (l *Lab) setupPath(p Path) error {
	cfg := l.Config
	if _, err := l.IP(l.Client, "link", "add", p.ClientIf, "type", "veth", "peer", "name", p.ServerIf, "netns", l.Server); err != nil {
		return err
	}
	table := strconv.Itoa(100 + p.Index)
	ends := []struct {
		ns, dev   string
		ip4, ip6  netip.Addr
		peer4     netip.Addr
		peer6     netip.Addr
		policyRtg bool
	}{
		{l.Client, p.ClientIf, p.ClientIP4, p.ClientIP6, p.ServerIP4, p.ServerIP6, true},
		// The server needs no policy routing: it answers each subflow on the path of the client
		// address it came from, which the connected routes already give.
		{l.Server, p.ServerIf, p.ServerIP4, p.ServerIP6, p.ClientIP4, p.ClientIP6, false},
	}
	for _, e := range ends {
		if err := WriteSysctls(e.ns, map[string]string{"net/ipv4/conf/" + e.dev + "/rp_filter": "0"}); err != nil {
			return err
		}
		if _, err := l.IP(e.ns, "addr", "add", e.ip4.String()+"/24", "dev", e.dev); err != nil {
			return err
		}
		if cfg.IPv6 {
			if _, err := l.IP(e.ns, "addr", "add", e.ip6.String()+"/64", "dev", e.dev, "nodad"); err != nil {
				return err
			}
		}
		if cfg.TxChecksumOff {
			if _, err := l.Exec(e.ns, "ethtool", "-K", e.dev, "tx", "off"); err != nil {
				return err
			}
		}
		if cfg.GRO {
			if _, err := l.Exec(e.ns, "ethtool", "-K", e.dev, "gro", "on"); err != nil {
				return err
			}
		}
		if _, err := l.IP(e.ns, "link", "set", e.dev, "up"); err != nil {
			return err
		}
		if p.RateMbit > 0 {
			if err := l.shape(e.ns, e.dev, p.RateMbit); err != nil {
				return err
			}
		}
		// Policy routing: traffic from this path's address leaves by this path's interface, whatever
		// the destination (another path's address of the peer, as subflows to the initial address do).
		if e.policyRtg {
			if _, err := l.IP(e.ns, "route", "add", "default", "via", e.peer4.String(), "dev", e.dev, "table", table); err != nil {
				return err
			}
			if _, err := l.IP(e.ns, "rule", "add", "from", e.ip4.String(), "table", table, "pref", table); err != nil {
				return err
			}
			if cfg.IPv6 {
				if _, err := l.IP(e.ns, "-6", "route", "add", "default", "via", e.peer6.String(), "dev", e.dev, "table", table); err != nil {
					return err
				}
				if _, err := l.IP(e.ns, "-6", "rule", "add", "from", e.ip6.String(), "table", table, "pref", table); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// shape puts a tbf qdisc at the root of dev. The bucket holds 5 ms of traffic (at least 32 KiB, so a
// GSO burst is not split into needless pieces) and the queue 100 ms.
func (l *Lab) shape(ns, dev string, mbit int) error {
	burst := mbit * 1_000_000 / 8 / 200
	if burst < 32<<10 {
		burst = 32 << 10
	}
	_, err := l.TC(ns, "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.Itoa(mbit)+"mbit", "burst", strconv.Itoa(burst), "latency", "100ms")
	return err
}

// SetRate reshapes path i on both ends; 0 removes shaping.
func (l *Lab) SetRate(i, mbit int) error {
	if i < 0 || i >= len(l.Paths) {
		return fmt.Errorf("lab: no path %d", i)
	}
	p := l.Paths[i]
	for _, e := range [][2]string{{l.Client, p.ClientIf}, {l.Server, p.ServerIf}} {
		if mbit > 0 {
			if err := l.shape(e[0], e[1], mbit); err != nil {
				return err
			}
			continue
		}
		if _, err := l.TC(e[0], "qdisc", "del", "dev", e[1], "root"); err != nil && !strings.Contains(err.Error(), "No such file") {
			return err
		}
	}
	l.Paths[i].RateMbit = mbit
	return nil
}

// Close deletes both namespaces, and with them the veths. It is idempotent and touches nothing the
// lab did not make.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, ns := range []string{l.Client, l.Server} {
		if err := netns.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IP runs `ip -n ns args...` and returns its stdout; the error carries stderr.
func (l *Lab) IP(ns string, args ...string) (string, error) {
	return run(context.Background(), "ip", append([]string{"-n", ns}, args...)...)
}

// TC runs `tc -n ns args...`.
func (l *Lab) TC(ns string, args ...string) (string, error) {
	return run(context.Background(), "tc", append([]string{"-n", ns}, args...)...)
}

// Exec runs a command with its network namespace set to ns (the child inherits the namespace of the
// locked thread that forks it); the mount namespace is the caller's, so /sys shows the host's
// devices: use it for tools that talk netlink or ioctl (ethtool, ss, nstat), not for ones reading
// /sys/class/net.
func (l *Lab) Exec(ns, name string, args ...string) (string, error) {
	var out string
	err := netns.Do(ns, func() error {
		var err error
		out, err = run(context.Background(), name, args...)
		return err
	})
	return out, err
}

// runTimeout bounds a tool run whose context has no deadline: ip, tc, ss and ethtool take
// milliseconds, so one still running after this long is stuck and fails instead of hanging its
// caller (generous for a loaded CI machine).
const runTimeout = 60 * time.Second

func run(ctx context.Context, name string, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, runTimeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// Once killed, stop waiting for output a leftover holder of its pipes may keep open.
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.String(), nil
}

// WriteSysctls writes sysctls (paths relative to /proc/sys, e.g. "net/mptcp/enabled") inside ns.
// /proc/sys/net follows the network namespace of the thread that opens it.
func WriteSysctls(ns string, kv map[string]string) error {
	return netns.Do(ns, func() error {
		for k, v := range kv {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0); err != nil {
				return fmt.Errorf("sysctl %s=%s in %s: %w", strings.ReplaceAll(k, "/", "."), v, ns, err)
			}
		}
		return nil
	})
}

// ReadSysctl reads one sysctl (path relative to /proc/sys) inside ns.
func ReadSysctl(ns, key string) (string, error) {
	var out string
	err := netns.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		out = strings.TrimSpace(string(b))
		return err
	})
	return out, err
}
