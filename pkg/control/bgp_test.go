package control

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
)

// fakeSpeaker records what the announcer asks of it.
type fakeSpeaker struct {
	announced map[netip.Prefix]bool
	peers     []bgp.Peer
	stopped   bool
	exited    bool
	ops       []string
}

func (f *fakeSpeaker) Exited() bool { return f.exited }

func (f *fakeSpeaker) Announce(p netip.Prefix) error {
	f.announced[p] = true
	f.ops = append(f.ops, "announce "+p.String())
	return nil
}
func (f *fakeSpeaker) Withdraw(p netip.Prefix) error {
	delete(f.announced, p)
	f.ops = append(f.ops, "withdraw "+p.String())
	return nil
}
func (f *fakeSpeaker) SetPeers(p []bgp.Peer) error {
	f.peers = p
	f.ops = append(f.ops, fmt.Sprintf("peers %d", len(p)))
	return nil
}
func (f *fakeSpeaker) Peers() ([]bgp.PeerState, error) { return nil, nil }
func (f *fakeSpeaker) Announced() []netip.Prefix {
	var out []netip.Prefix
	for p := range f.announced {
		out = append(out, p)
	}
	return out
}
func (f *fakeSpeaker) Stop() error {
	f.stopped = true
	f.ops = append(f.ops, "stop")
	return nil
}

func TestVIPAnnouncer(t *testing.T) {
	var started []*fakeSpeaker
	start := func(*bgp.Config) (bgp.Announcer, error) {
		f := &fakeSpeaker{announced: map[netip.Prefix]bool{}}
		started = append(started, f)
		return f, nil
	}
	cfg := &bgp.Config{LocalASN: 1, RouterID: netip.MustParseAddr("10.0.0.1"),
		Peers: []bgp.Peer{{Addr: netip.MustParseAddr("10.9.0.1"), ASN: 2}}}
	state := filepath.Join(t.TempDir(), "bgp.json")
	a, err := NewVIPAnnouncer(cfg, start, state)
	if err != nil {
		t.Fatal(err)
	}
	sp := started[0]
	if len(sp.announced) != 0 {
		t.Fatal("announced before any serving report")
	}
	v80 := netip.MustParseAddrPort("10.0.0.10:80")
	v443 := netip.MustParseAddrPort("10.0.0.10:443")
	v6 := netip.MustParseAddrPort("[fd00::10]:80")
	p4 := netip.MustParsePrefix("10.0.0.10/32")
	p6 := netip.MustParsePrefix("fd00::10/128")
	a.Serving(map[netip.AddrPort]int{v80: 2, v443: 0, v6: 0})
	if !sp.announced[p4] || sp.announced[p6] {
		t.Fatalf("announced %v: want 10.0.0.10 only (one of its ports serves)", sp.Announced())
	}
	st, err := ReadBGPStatus(state)
	if err != nil || len(st.VIPs) != 2 || !st.VIPs[0].Announced || st.VIPs[1].Announced || st.VIPs[1].Reason != "no backend serves" {
		t.Fatalf("state %+v %v", st, err)
	}
	a.Serving(map[netip.AddrPort]int{v80: 0, v443: 0, v6: 1})
	if sp.announced[p4] || !sp.announced[p6] {
		t.Fatalf("announced %v after the drain of 10.0.0.10's backends", sp.Announced())
	}
	// A peer added keeps the speaker and its routes.
	cfg2 := *cfg
	cfg2.Peers = append(slices.Clone(cfg.Peers), bgp.Peer{Addr: netip.MustParseAddr("10.9.0.2"), ASN: 2})
	if err := a.Reconfigure(&cfg2); err != nil {
		t.Fatal(err)
	}
	if len(started) != 1 || len(sp.peers) != 2 || !sp.announced[p6] || slices.Contains(sp.ops, "withdraw "+p6.String()) {
		t.Fatalf("peer added: %d speakers, ops %v", len(started), sp.ops)
	}
	// A new AS restarts it, announcing again what serves.
	cfg3 := cfg2
	cfg3.LocalASN = 3
	if err := a.Reconfigure(&cfg3); err != nil {
		t.Fatal(err)
	}
	if len(started) != 2 || !sp.stopped || !started[1].announced[p6] {
		t.Fatalf("asn changed: %d speakers, old stopped %v, new announced %v", len(started), sp.stopped, started[1].Announced())
	}
	sp = started[1]
	// A speaker process that died is started again and announces again.
	sp.exited = true
	a.Refresh()
	if len(started) != 3 || !started[2].announced[p6] {
		t.Fatalf("after the speaker's death: %d speakers, announced %v", len(started), started[len(started)-1].Announced())
	}
	sp = started[2]
	// A hold (lb detach on its way) withdraws; once it expires, still attached, it announces again.
	a.Hold(50 * time.Millisecond)
	if len(sp.announced) != 0 {
		t.Fatalf("announced %v during a hold", sp.Announced())
	}
	time.Sleep(60 * time.Millisecond)
	a.Refresh()
	if !sp.announced[p6] {
		t.Fatalf("announced %v after the hold expired", sp.Announced())
	}
	a.Detached()
	if len(sp.announced) != 0 {
		t.Fatalf("announced %v after the detach", sp.Announced())
	}
	if err := a.Stop(); err != nil || !sp.stopped {
		t.Fatalf("stop: %v %v", err, sp.ops)
	}
	if _, err := ReadBGPStatus(state); err == nil {
		t.Fatal("state file left after Stop")
	}
	failing := func(*bgp.Config) (bgp.Announcer, error) { return nil, errors.New("no") }
	if _, err := NewVIPAnnouncer(cfg, failing, ""); err == nil {
		t.Fatal("a speaker that fails to start was accepted")
	}
}
