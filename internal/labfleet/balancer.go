package labfleet

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Service is what every balancer of the fleet is configured with: one config file's content,
// written once per instance with the backends in a different order.
type Service struct {
	Port         int    // the VIPs' port
	Forward      string // ipip or l2; "" is the lab's (Config.Forward)
	JoinSteering bool   // join_steering
	UnknownJoin  string // unknown_join; "" is the default (drop)
	// JoinPortBase: backend j gets join_port JoinPortBase+j (0: no join ports).
	JoinPortBase int
	// JoinAddrs: backend j gets join_addr JoinAddr6(j).
	JoinAddrs bool
	// SeedFile is the fleet's hash_seed_file; empty: New's.
	SeedFile string
	// BGP: every instance announces the VIPs to R over BGP (a bgp section: AS BalancerASN, one
	// session to R's address on its link, hold time BGPHoldTime, next hops its own addresses);
	// R runs the BGP route source.
	BGP bool
}

// The fleet's BGP: R's AS, the balancers' (one AS for the fleet, so their routes are equal), and
// the sessions' hold time in seconds.
const (
	RouterASN   = 65000
	BalancerASN = 65001
	BGPHoldTime = 9
)

// JoinPort is backend j's join port, 0 without join ports.
func (s Service) JoinPort(j int) int {
	if s.JoinPortBase == 0 {
		return 0
	}
	return s.JoinPortBase + j
}

// SeedFile writes a fresh hash seed file (32 hex digits, mode 0600) into dir.
func SeedFile(dir string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "lb-seed")
	return p, os.WriteFile(p, []byte(hex.EncodeToString(b[:])+"\n"), 0o600)
}

// ConfigFile is balancer k's config file for s: the same file for every instance but for the
// order of the backends, rotated by k (and reversed for odd k), which must change nothing.
func (l *Lab) ConfigFile(k int, s Service) string {
	fwd := s.Forward
	if fwd == "" {
		fwd = l.Config.Forward
	}
	var b strings.Builder
	fmt.Fprintf(&b, "interfaces: [%s]\nmode: native\n", l.Balancers[k].If)
	if s.SeedFile != "" {
		fmt.Fprintf(&b, "hash_seed_file: %s\n", s.SeedFile)
	}
	b.WriteString("vips:\n")
	for _, v := range []string{fmt.Sprintf("%s:%d", l.VIP4, s.Port), fmt.Sprintf("\"[%s]:%d\"", l.VIP6, s.Port)} {
		fmt.Fprintf(&b, "  - addr: %s\n    forward: %s\n    join_steering: %t\n", v, fwd, s.JoinSteering)
		if s.UnknownJoin != "" {
			fmt.Fprintf(&b, "    unknown_join: %s\n", s.UnknownJoin)
		}
	}
	if s.BGP {
		lb := l.Balancers[k]
		fmt.Fprintf(&b, "bgp:\n  local_asn: %d\n  router_id: %s\n  next_hop:\n    v4: %s\n    v6: %s\n  peers:\n"+
			"    - address: %s\n      asn: %d\n      hold_time: %ds\n", BalancerASN, lb.IP4, lb.IP4, lb.IP6, lb.RIP4, RouterASN, BGPHoldTime)
	}
	b.WriteString("backends:\n")
	n := len(l.Backends)
	for i := range n {
		j := (i + k) % n
		if k%2 == 1 {
			j = (n - 1 - i + k) % n
		}
		fmt.Fprintf(&b, "  - addr: %s\n", l.Backends[j].IP4)
		if p := s.JoinPort(j); p != 0 {
			fmt.Fprintf(&b, "    join_port: %d\n", p)
		}
		if s.JoinAddrs {
			fmt.Fprintf(&b, "    join_addr: %s\n", JoinAddr6(j))
		}
	}
	return b.String()
}

// Process is a running `mptcp-xdp lb run` of one balancer.
type Process struct {
	Balancer int
	Cmd      *exec.Cmd
	logs     *lockedBuffer
	done     chan struct{}
	err      error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Logs is what the process wrote to stderr so far.
func (p *Process) Logs() string { return p.logs.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// StartBalancer writes balancer k's config file for s into dir and starts `lb run --config` for
// it, returning once its loop runs (it has attached the balancer). Close the lab, or Stop it, to
// end it; the lab's Close also detaches the balancer.
func (l *Lab) StartBalancer(k int, s Service, dir string) (*Process, error) {
	b := l.Balancers[k]
	file := filepath.Join(dir, fmt.Sprintf("lb%d.yaml", k))
	if err := os.WriteFile(file, []byte(l.ConfigFile(k, s)), 0o644); err != nil {
		return nil, err
	}
	p := &Process{Balancer: k, logs: &lockedBuffer{}, done: make(chan struct{})}
	p.Cmd = exec.Command(l.Config.Binary, "--netns", b.Netns, "lb", "run", "--config", file,
		"--summary-interval", "5s", "--gc-interval", "5s")
	p.Cmd.Stderr = p.logs
	p.Cmd.WaitDelay = 5 * time.Second
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	go func() { p.err = p.Cmd.Wait(); close(p.done) }()
	l.mu.Lock()
	l.cleanup = append(l.cleanup, func() error {
		p.Kill()
		_, err := l.Exec("", l.Config.Binary, "--netns", b.Netns, "lb", "detach")
		return err
	})
	l.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.logs.String(), "balancer loop running") {
		select {
		case <-p.done:
			return nil, fmt.Errorf("balancer %d: lb run exited: %v\n%s", k, p.err, p.logs)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("balancer %d: lb run not running after 60 s:\n%s", k, p.logs)
		}
	}
	return p, nil
}

// Term stops the process with SIGTERM, as an operator's graceful stop does (lb run withdraws its
// BGP announcements first; the datapath stays), and waits for it to exit.
func (p *Process) Term() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("balancer %d: lb run still running 30 s after SIGTERM", p.Balancer)
	}
}

// Kill ends the process with SIGKILL, as a crash would, and waits for it (the datapath stays).
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
	}
}
