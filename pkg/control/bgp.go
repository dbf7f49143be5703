package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
)

// BGPStatus is the BGP part of `lb status` (Status.BGP; docs/lb.md, "BGP"): what the running
// `lb run --config` announces, from the state file it keeps under /run/mptcp-xdp.
type BGPStatus struct {
	Pid      int             `json:"pid"`     // the lb run
	Updated  time.Time       `json:"updated"` // when it last wrote the state
	LocalASN uint32          `json:"local_asn"`
	RouterID string          `json:"router_id"`
	Peers    []bgp.PeerState `json:"peers"`
	VIPs     []BGPVIP        `json:"vips"`
}

// BGPVIP is one VIP address and whether it is announced.
type BGPVIP struct {
	Addr      string `json:"addr"` // the address (every VIP port on it shares the route)
	Announced bool   `json:"announced"`
	// Reason says why: "serving" (at least one VIP on the address has a backend in its table),
	// "no backend serves", "datapath detached", "detaching" (lb detach asked), "stopping", or the
	// speaker's error.
	Reason   string `json:"reason"`
	Backends int    `json:"backends"` // the most backends any VIP on the address has in its table
}

// CheckAttached reports whether the balancer's pins are still the ones it works on (ErrDetached
// when `lb detach` removed them).
func (b *Balancer) CheckAttached() error { return b.checkPins() }

// VIPAnnouncer announces each VIP address over BGP while the datapath is attached and at least one
// VIP on that address has a backend in its table (Balancer.Serving: health and drain aware), and
// withdraws it otherwise. Its methods are safe from any goroutine.
type VIPAnnouncer struct {
	mu       sync.Mutex
	start    func(*bgp.Config) (bgp.Announcer, error)
	cfg      *bgp.Config
	sp       bgp.Announcer
	serving  map[netip.AddrPort]int // nil until the first report
	detached bool
	held     time.Time // withdrawn until then (Hold)
	stopping bool
	spErr    string
	vips     map[netip.Addr]BGPVIP
	state    string // the state file; "" writes none
}

// NewVIPAnnouncer starts a speaker for cfg with start and announces nothing until Serving reports.
// state, if not empty, is the file the announcer keeps its BGPStatus in (removed by Stop).
func NewVIPAnnouncer(cfg *bgp.Config, start func(*bgp.Config) (bgp.Announcer, error), state string) (*VIPAnnouncer, error) {
	a := &VIPAnnouncer{start: start, state: state, vips: map[netip.Addr]BGPVIP{}}
	if err := a.Reconfigure(cfg); err != nil {
		return nil, err
	}
	return a, nil
}

// Serving takes the balancer's serving counts (RunConfig.OnServing) and announces or withdraws.
func (a *VIPAnnouncer) Serving(n map[netip.AddrPort]int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.serving = n
	a.sync()
}

// Detached withdraws everything: the datapath is gone.
func (a *VIPAnnouncer) Detached() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.detached {
		slog.Warn("bgp: the balancer is detached: withdrawing every VIP")
	}
	a.detached = true
	a.sync()
}

// Hold withdraws everything for d (an `lb detach` on its way: the router should stop sending
// before the datapath goes); if the balancer is still attached after d, its VIPs are announced
// again.
func (a *VIPAnnouncer) Hold(d time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	slog.Info("bgp: withdrawing every VIP before a detach", "for", d)
	a.held = time.Now().Add(d)
	a.sync()
}

// sameSpeaker: a and b differ at most in their peers (a change SetPeers applies).
func sameSpeaker(a, b *bgp.Config) bool {
	return a.LocalASN == b.LocalASN && a.RouterID == b.RouterID && a.ListenPort == b.ListenPort &&
		a.NextHop4 == b.NextHop4 && a.NextHop6 == b.NextHop6
}

// Reconfigure applies a new bgp section: peers added or removed without touching the
// announcements; a new AS, router id, listen port or next hop restarts the speaker (its routes are
// withdrawn and announced again); nil stops it.
func (a *VIPAnnouncer) Reconfigure(cfg *bgp.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.sp != nil && cfg != nil && sameSpeaker(a.cfg, cfg):
		if !slices.Equal(a.cfg.Peers, cfg.Peers) {
			if err := a.sp.SetPeers(cfg.Peers); err != nil {
				return fmt.Errorf("bgp peers: %w", err)
			}
			slog.Info("bgp: peers changed", "peers", len(cfg.Peers))
		}
		a.cfg = cfg
		a.write()
		return nil
	case a.sp != nil:
		slog.Info("bgp: stopping the speaker (its section changed or is gone)")
		if err := a.sp.Stop(); err != nil {
			slog.Warn("bgp: stop", "err", err)
		}
		a.sp, a.cfg = nil, nil
	}
	a.spErr = "no bgp section"
	if cfg != nil {
		sp, err := a.start(cfg)
		if err != nil {
			a.spErr = err.Error()
			a.sync()
			return fmt.Errorf("bgp: start the speaker: %w", err)
		}
		slog.Info("bgp: speaker started", "local_asn", cfg.LocalASN, "router_id", cfg.RouterID, "peers", len(cfg.Peers))
		a.sp, a.cfg = sp, cfg
	}
	a.sync()
	return nil
}

// sync announces and withdraws what differs from what should be; callers hold mu.
func (a *VIPAnnouncer) sync() {
	backends := map[netip.Addr]int{}
	for v, n := range a.serving {
		backends[v.Addr()] = max(backends[v.Addr()], n)
	}
	announced := map[netip.Prefix]bool{}
	if a.sp != nil {
		for _, p := range a.sp.Announced() {
			announced[p] = true
		}
	}
	vips := map[netip.Addr]BGPVIP{}
	for addr, n := range backends {
		vips[addr] = BGPVIP{Addr: addr.String(), Backends: n}
	}
	for p := range announced {
		if _, ok := vips[p.Addr()]; !ok {
			vips[p.Addr()] = BGPVIP{Addr: p.Addr().String()}
		}
	}
	for addr, v := range vips {
		p := netip.PrefixFrom(addr, addr.BitLen())
		want := false
		switch {
		case a.stopping:
			v.Reason = "stopping"
		case a.detached:
			v.Reason = "datapath detached"
		case time.Now().Before(a.held):
			v.Reason = "detaching"
		case v.Backends == 0:
			v.Reason = "no backend serves"
			if _, ok := backends[addr]; !ok {
				v.Reason = "not a VIP"
			}
		default:
			want, v.Reason = true, "serving"
		}
		if a.sp == nil {
			v.Reason = "no speaker: " + a.spErr
			vips[addr] = v
			continue
		}
		v.Announced = announced[p]
		var err error
		switch {
		case want && !v.Announced:
			if err = a.sp.Announce(p); err == nil {
				slog.Info("bgp: vip announced", "vip", addr, "backends", v.Backends)
			}
		case !want && v.Announced:
			if err = a.sp.Withdraw(p); err == nil {
				slog.Info("bgp: vip withdrawn", "vip", addr, "reason", v.Reason)
			}
		}
		if err != nil {
			slog.Error("bgp", "vip", addr, "err", err)
			v.Reason = err.Error()
		} else {
			v.Announced = want
		}
		if v.Reason == "not a VIP" && !v.Announced {
			continue
		}
		vips[addr] = v
	}
	a.vips = vips
	a.write()
}

// Refresh announces again what a Hold that expired withdrew, and rewrites the state file with
// the sessions' current state.
func (a *VIPAnnouncer) Refresh() {
	a.mu.Lock()
	defer a.mu.Unlock()
	// A speaker process that died (killed, crashed) is started again, and announces again.
	e, ok := a.sp.(interface{ Exited() bool })
	if !a.stopping && a.cfg != nil && (a.sp == nil || ok && e.Exited()) {
		if a.sp != nil {
			slog.Error("bgp: the speaker process exited: starting it again")
		}
		a.sp = nil
		sp, err := a.start(a.cfg)
		if err != nil {
			a.spErr = err.Error()
			slog.Error("bgp: start the speaker", "err", err)
		} else {
			a.sp = sp
		}
		a.sync()
		return
	}
	if !a.held.IsZero() && !time.Now().Before(a.held) {
		a.held = time.Time{}
		slog.Info("bgp: still attached after the hold: announcing again")
		a.sync()
		return
	}
	a.write()
}

// Status is the announcer's BGPStatus now.
func (a *VIPAnnouncer) Status() BGPStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status()
}

func (a *VIPAnnouncer) status() BGPStatus {
	st := BGPStatus{Pid: os.Getpid(), Updated: time.Now().UTC(), Peers: []bgp.PeerState{}, VIPs: []BGPVIP{}}
	if a.cfg != nil {
		st.LocalASN, st.RouterID = a.cfg.LocalASN, a.cfg.RouterID.String()
	}
	if a.sp != nil {
		if p, err := a.sp.Peers(); err == nil {
			st.Peers = p
		} else {
			slog.Warn("bgp: peer state", "err", err)
		}
	}
	for _, v := range a.vips {
		st.VIPs = append(st.VIPs, v)
	}
	sort.Slice(st.VIPs, func(i, j int) bool {
		x, _ := netip.ParseAddr(st.VIPs[i].Addr)
		y, _ := netip.ParseAddr(st.VIPs[j].Addr)
		return x.Less(y)
	})
	return st
}

func (a *VIPAnnouncer) write() {
	if a.state == "" {
		return
	}
	b, _ := json.MarshalIndent(a.status(), "", "  ")
	tmp := a.state + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		err = os.Rename(tmp, a.state)
		if err != nil {
			slog.Warn("bgp: state file", "err", err)
		}
	} else {
		slog.Warn("bgp: state file", "err", err)
	}
}

// Stop withdraws every VIP, closes the sessions and removes the state file.
func (a *VIPAnnouncer) Stop() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		return nil
	}
	a.stopping = true
	var err error
	if a.sp != nil {
		err = a.sp.Stop() // withdraws, then closes the sessions
		a.sp = nil
	}
	for addr, v := range a.vips {
		if v.Announced {
			slog.Info("bgp: vip withdrawn", "vip", addr, "reason", "stopping")
		}
		v.Announced, v.Reason = false, "stopping"
		a.vips[addr] = v
	}
	if a.state != "" {
		if rerr := os.Remove(a.state); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	slog.Info("bgp: stopped")
	return err
}

// ReadBGPStatus reads a state file written by a VIPAnnouncer.
func ReadBGPStatus(path string) (*BGPStatus, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st BGPStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return &st, nil
}
