package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// The child protocol: the parent writes one JSON request a line on the child's stdin, the child
// answers each with one JSON line on its stdout. The first request is "start". When its stdin
// closes (the parent stopped, or was killed) the child stops its speaker (withdraw, close the
// sessions) and exits, so no speaker outlives its balancer.
type request struct {
	Op     string       `json:"op"` // start, announce, withdraw, peers, state, stop
	Config *Config      `json:"config,omitempty"`
	Prefix netip.Prefix `json:"prefix,omitzero"`
	Peers  []Peer       `json:"peers,omitempty"`
}

type response struct {
	Error     string         `json:"error,omitempty"`
	Peers     []PeerState    `json:"peers,omitempty"`
	Announced []netip.Prefix `json:"announced,omitempty"`
}

// Serve runs the child side of the protocol on r and w until r ends or a stop request, logging
// to log; it is what the parent's Child talks to (`mptcp-xdp lb bgp-speaker`).
func Serve(r io.Reader, w io.Writer, log *slog.Logger) error {
	var s *Speaker
	defer func() {
		if s != nil {
			_ = s.Stop()
		}
	}()
	enc := json.NewEncoder(w)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var req request
		var resp response
		err := json.Unmarshal(sc.Bytes(), &req)
		switch {
		case err != nil:
		case req.Op == "start" && s == nil && req.Config != nil:
			s, err = Start(context.Background(), *req.Config, log)
		case s == nil:
			err = fmt.Errorf("%q before start", req.Op)
		case req.Op == "announce":
			err = s.Announce(req.Prefix)
		case req.Op == "withdraw":
			err = s.Withdraw(req.Prefix)
		case req.Op == "peers":
			err = s.SetPeers(req.Peers)
		case req.Op == "state":
			resp.Peers, err = s.Peers()
		case req.Op == "stop":
			err = s.Stop()
		default:
			err = fmt.Errorf("unknown request %q", req.Op)
		}
		if s != nil {
			resp.Announced = s.Announced()
		}
		if err != nil {
			resp.Error = err.Error()
		}
		if err := enc.Encode(resp); err != nil {
			return err
		}
		if req.Op == "stop" && err == nil {
			return nil
		}
	}
	return sc.Err()
}

// Child is a speaker in a child process (Serve), started inside a network namespace so that every
// socket it makes is that namespace's.
type Child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan struct{}

	mu        sync.Mutex
	announced []netip.Prefix
	err       error // the child is gone
}

var _ Announcer = (*Child)(nil)

// StartChild starts argv (a program that runs Serve on its stdin and stdout, e.g. `mptcp-xdp lb
// bgp-speaker`) inside the named network namespace ("" is the caller's), its stderr going to
// stderr, and starts its speaker with cfg.
func StartChild(argv []string, ns string, cfg Config, stderr io.Writer) (*Child, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// The child is forked from this locked thread, in ns, and so are all of its threads.
	if err := netns.Do(ns, cmd.Start); err != nil {
		return nil, fmt.Errorf("start bgp speaker: %w", err)
	}
	c := &Child{cmd: cmd, in: in, out: bufio.NewScanner(out), done: make(chan struct{})}
	c.out.Buffer(make([]byte, 64<<10), 4<<20)
	go func() { _ = cmd.Wait(); close(c.done) }()
	if _, err := c.call(request{Op: "start", Config: &cfg}); err != nil {
		c.kill()
		return nil, err
	}
	return c, nil
}

// Exited reports whether the child process has ended (killed, crashed, or stopped).
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Pid is the child's process id.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

func (c *Child) call(req request) (response, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return response{}, c.err
	}
	b, _ := json.Marshal(req)
	var resp response
	if _, err := c.in.Write(append(b, '\n')); err != nil {
		c.err = fmt.Errorf("bgp speaker process: %w", err)
		return resp, c.err
	}
	if !c.out.Scan() {
		c.err = errors.New("bgp speaker process: exited")
		if err := c.out.Err(); err != nil {
			c.err = fmt.Errorf("bgp speaker process: %w", err)
		}
		return resp, c.err
	}
	if err := json.Unmarshal(c.out.Bytes(), &resp); err != nil {
		return resp, fmt.Errorf("bgp speaker process: %w", err)
	}
	c.announced = resp.Announced
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// Announce announces prefix (Speaker.Announce).
func (c *Child) Announce(p netip.Prefix) error {
	_, err := c.call(request{Op: "announce", Prefix: p})
	return err
}

// Withdraw withdraws prefix (Speaker.Withdraw).
func (c *Child) Withdraw(p netip.Prefix) error {
	_, err := c.call(request{Op: "withdraw", Prefix: p})
	return err
}

// SetPeers changes the peers (Speaker.SetPeers).
func (c *Child) SetPeers(peers []Peer) error {
	_, err := c.call(request{Op: "peers", Peers: peers}) // none (omitted) deletes every peer
	return err
}

// Peers reports the sessions (Speaker.Peers).
func (c *Child) Peers() ([]PeerState, error) {
	r, err := c.call(request{Op: "state"})
	return r.Peers, err
}

// Announced lists the prefixes announced at the last answer.
func (c *Child) Announced() []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]netip.Prefix(nil), c.announced...)
}

// Stop withdraws everything, closes the sessions and waits for the child to exit (killing it
// after 5 s).
func (c *Child) Stop() error {
	_, err := c.call(request{Op: "stop"})
	c.in.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.kill()
	}
	return err
}

// Kill ends the child at once with SIGKILL (its sessions close without withdrawals).
func (c *Child) Kill() { c.kill() }

func (c *Child) kill() {
	_ = c.cmd.Process.Signal(os.Kill)
	c.in.Close()
	<-c.done
}
