// Package bgp announces a balancer's VIPs to routers over BGP: a speaker embedding GoBGP v4 that
// peers with a set of routers, announces IPv4 /32 and IPv6 /128 prefixes (IPv6 over MP-BGP) and
// withdraws them, and reports its sessions' state. It needs no kernel feature beyond TCP.
//
// A speaker belongs to the network namespace of the threads its sockets are made on. Go's setns is
// per thread and GoBGP dials and accepts from goroutines of its own, so a speaker for another
// namespace runs in a child process started inside it (child.go); in-process, a Speaker uses the
// process's namespace.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	pkt "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Defaults of a Peer's zero fields.
const (
	DefaultPort     = 179
	DefaultHoldTime = 90 * time.Second
	// MinHoldTime is RFC 4271's smallest hold time other than 0.
	MinHoldTime = 3 * time.Second
	// ConnectRetry is how often a peer that is not up is dialled again.
	ConnectRetry = 2 * time.Second
)

// Config is what a speaker is.
type Config struct {
	LocalASN uint32     `json:"local_asn"`
	RouterID netip.Addr `json:"router_id"` // an IPv4 address
	// ListenPort is the port passive peers connect to; 0 means none (the speaker only dials).
	ListenPort int `json:"listen_port,omitempty"`
	// NextHop4 and NextHop6 are the next hops of the announced IPv4 and IPv6 prefixes; unset, the
	// next hop is the local address of each session. A session over IPv4 carries IPv6 prefixes
	// only when NextHop6 is set (and the other way round), since its own address cannot be their
	// next hop.
	NextHop4 netip.Addr `json:"next_hop4,omitzero"`
	NextHop6 netip.Addr `json:"next_hop6,omitzero"`
	Peers    []Peer     `json:"peers"`
}

// Peer is one router the speaker has a session with.
type Peer struct {
	Addr     netip.Addr    `json:"addr"`
	ASN      uint32        `json:"asn"`
	Port     uint16        `json:"port,omitempty"`      // 0 means DefaultPort
	HoldTime time.Duration `json:"hold_time,omitempty"` // 0 means DefaultHoldTime; keepalives every third of it
	Passive  bool          `json:"passive,omitempty"`   // wait for the router to connect (needs ListenPort)
}

func (p Peer) withDefaults() Peer {
	if p.Port == 0 {
		p.Port = DefaultPort
	}
	if p.HoldTime == 0 {
		p.HoldTime = DefaultHoldTime
	}
	return p
}

// Check reports the first thing wrong with c, naming its field.
func (c Config) Check() error {
	if c.LocalASN == 0 {
		return errors.New("local_asn: give the speaker's AS number (1 to 4294967295)")
	}
	if !c.RouterID.Is4() {
		return errors.New("router_id: want an IPv4 address")
	}
	if c.NextHop4.IsValid() && !c.NextHop4.Is4() {
		return fmt.Errorf("next_hop.v4: %s is not an IPv4 address", c.NextHop4)
	}
	if c.NextHop6.IsValid() && !c.NextHop6.Is6() {
		return fmt.Errorf("next_hop.v6: %s is not an IPv6 address", c.NextHop6)
	}
	if c.ListenPort < 0 || c.ListenPort > 65535 {
		return fmt.Errorf("listen_port: %d: want 0 (none) to 65535", c.ListenPort)
	}
	seen := map[netip.Addr]bool{}
	for i, p := range c.Peers {
		if !p.Addr.IsValid() {
			return fmt.Errorf("peers[%d].address: want an IPv4 or IPv6 address", i)
		}
		if seen[p.Addr] {
			return fmt.Errorf("peers[%d].address: %s is given twice", i, p.Addr)
		}
		seen[p.Addr] = true
		if p.ASN == 0 {
			return fmt.Errorf("peers[%d].asn: give the router's AS number (1 to 4294967295)", i)
		}
		if p.HoldTime != 0 && (p.HoldTime < MinHoldTime || p.HoldTime > 65535*time.Second || p.HoldTime%time.Second != 0) {
			return fmt.Errorf("peers[%d].hold_time: %s: want whole seconds from %s to 65535s", i, p.HoldTime, MinHoldTime)
		}
		if p.Passive && c.ListenPort == 0 {
			return fmt.Errorf("peers[%d].passive: needs listen_port", i)
		}
	}
	return nil
}

// PeerState is one session as the speaker sees it.
type PeerState struct {
	Addr  netip.Addr `json:"address"`
	ASN   uint32     `json:"asn"`
	State string     `json:"state"` // idle, connect, active, opensent, openconfirm, established
	// Local is the session's local address (when connected).
	Local netip.Addr `json:"local_address,omitzero"`
	// Since is when the session last became established (zero when it is not).
	Since time.Time `json:"established_since,omitzero"`
}

// Announcer is what the balancer needs of a speaker, in process (Speaker) or in a child (Child).
type Announcer interface {
	Announce(netip.Prefix) error
	Withdraw(netip.Prefix) error
	SetPeers([]Peer) error
	Peers() ([]PeerState, error)
	Announced() []netip.Prefix
	// Stop withdraws every prefix, then closes every session.
	Stop() error
}

// Speaker is an in-process BGP speaker, in the namespace of the process's threads.
type Speaker struct {
	cfg Config
	srv *server.BgpServer
	log *slog.Logger

	mu        sync.Mutex
	peers     map[netip.Addr]Peer
	announced map[netip.Prefix]bool
	stopped   bool
}

var _ Announcer = (*Speaker)(nil)

// Start starts a speaker and adds cfg's peers; log (nil: slog's default) receives session events.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Speaker, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	srv := server.NewBgpServer(server.LoggerOption(slog.New(slog.NewTextHandler(io.Discard, nil)), nil))
	go srv.Serve()
	port := int32(-1)
	if cfg.ListenPort != 0 {
		port = int32(cfg.ListenPort)
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.LocalASN, RouterId: cfg.RouterID.String(), ListenPort: port,
	}}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("start bgp: %w", err)
	}
	s := &Speaker{cfg: cfg, srv: srv, log: log, peers: map[netip.Addr]Peer{}, announced: map[netip.Prefix]bool{}}
	err := srv.WatchEvent(context.Background(), server.WatchEventMessageCallbacks{
		OnPeerUpdate: func(e *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
			if e.Type == apiutil.PEER_EVENT_STATE {
				s.log.Info("bgp peer", "peer", e.Peer.Conf.NeighborAddress, "state", strings.ToLower(strings.TrimPrefix(e.Peer.State.SessionState.String(), "BGP_FSM_")))
			}
		},
	}, server.WatchPeer())
	if err != nil {
		srv.Stop()
		return nil, fmt.Errorf("watch bgp peers: %w", err)
	}
	if err := s.SetPeers(cfg.Peers); err != nil {
		srv.Stop()
		return nil, err
	}
	return s, nil
}

// families are the address families a session with addr carries.
func (s *Speaker) families(addr netip.Addr) []*api.AfiSafi {
	fam := func(afi api.Family_Afi) *api.AfiSafi {
		return &api.AfiSafi{Config: &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true}}
	}
	var out []*api.AfiSafi
	if addr.Is4() || s.cfg.NextHop4.IsValid() {
		out = append(out, fam(api.Family_AFI_IP))
	}
	if addr.Is6() || s.cfg.NextHop6.IsValid() {
		out = append(out, fam(api.Family_AFI_IP6))
	}
	return out
}

// SetPeers makes the speaker's peers peers: it adds the new ones, deletes the ones gone and
// replaces the ones whose settings changed. Sessions that stay are not touched, nor the prefixes.
func (s *Speaker) SetPeers(peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Addr] = p.withDefaults()
	}
	ctx := context.Background()
	for a, old := range s.peers {
		if p, ok := want[a]; ok && p == old {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			return fmt.Errorf("delete bgp peer %s: %w", a, err)
		}
		delete(s.peers, a)
		s.log.Info("bgp peer removed", "peer", a)
	}
	for a, p := range want {
		if _, ok := s.peers[a]; ok {
			continue
		}
		hold := uint64(p.HoldTime / time.Second)
		err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
			Conf: &api.PeerConf{NeighborAddress: a.String(), PeerAsn: p.ASN},
			Timers: &api.Timers{Config: &api.TimersConfig{
				HoldTime: hold, KeepaliveInterval: max(hold/3, 1), ConnectRetry: uint64(ConnectRetry / time.Second),
				IdleHoldTimeAfterReset: 1,
			}},
			Transport: &api.Transport{RemotePort: uint32(p.Port), PassiveMode: p.Passive},
			AfiSafis:  s.families(a),
		}})
		if err != nil {
			return fmt.Errorf("add bgp peer %s: %w", a, err)
		}
		s.peers[a] = p
		s.log.Info("bgp peer added", "peer", a, "asn", p.ASN, "port", p.Port, "hold_time", p.HoldTime)
	}
	return nil
}

// path is the route to prefix this speaker announces.
func (s *Speaker) path(prefix netip.Prefix, withdraw bool) (*apiutil.Path, error) {
	nlri, err := pkt.NewIPAddrPrefix(prefix)
	if err != nil {
		return nil, fmt.Errorf("prefix %s: %w", prefix, err)
	}
	attrs := []pkt.PathAttributeInterface{pkt.NewPathAttributeOrigin(pkt.BGP_ORIGIN_ATTR_TYPE_IGP)}
	fam := pkt.RF_IPv4_UC
	if prefix.Addr().Is4() {
		nh := s.cfg.NextHop4
		if !nh.IsValid() {
			nh = netip.IPv4Unspecified() // each session's local address
		}
		a, err := pkt.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	} else {
		fam = pkt.RF_IPv6_UC
		nh := s.cfg.NextHop6
		if !nh.IsValid() {
			nh = netip.IPv6Unspecified()
		}
		a, err := pkt.NewPathAttributeMpReachNLRI(fam, []pkt.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs, Withdrawal: withdraw}, nil
}

// hostPrefix checks that prefix is one address (/32 or /128).
func hostPrefix(prefix netip.Prefix) (netip.Prefix, error) {
	if !prefix.IsValid() || !prefix.IsSingleIP() {
		return prefix, fmt.Errorf("prefix %s: want one address (/32 or /128)", prefix)
	}
	return netip.PrefixFrom(prefix.Addr().Unmap(), prefix.Addr().Unmap().BitLen()), nil
}

// Announce announces prefix to every peer (now, and to every peer whose session comes up later).
func (s *Speaker) Announce(prefix netip.Prefix) error {
	prefix, err := hostPrefix(prefix)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("bgp speaker stopped")
	}
	if s.announced[prefix] {
		return nil
	}
	p, err := s.path(prefix, false)
	if err != nil {
		return err
	}
	if _, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("announce %s: %w", prefix, err)
	}
	s.announced[prefix] = true
	s.log.Info("bgp announce", "prefix", prefix)
	return nil
}

// Withdraw withdraws prefix from every peer.
func (s *Speaker) Withdraw(prefix netip.Prefix) error {
	prefix, err := hostPrefix(prefix)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.withdraw(prefix)
}

func (s *Speaker) withdraw(prefix netip.Prefix) error {
	if !s.announced[prefix] {
		return nil
	}
	p, err := s.path(prefix, true)
	if err != nil {
		return err
	}
	if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}}); err != nil {
		return fmt.Errorf("withdraw %s: %w", prefix, err)
	}
	delete(s.announced, prefix)
	s.log.Info("bgp withdraw", "prefix", prefix)
	return nil
}

// Announced lists the prefixes announced, sorted.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Prefix, 0, len(s.announced))
	for p := range s.announced {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr().Less(out[j].Addr()) })
	return out
}

// Peers reports every session's state, sorted by address.
func (s *Speaker) Peers() ([]PeerState, error) {
	var out []PeerState
	err := s.srv.ListPeer(context.Background(), &api.ListPeerRequest{}, func(p *api.Peer) {
		st := PeerState{State: "idle"}
		if p.Conf != nil {
			st.Addr, _ = netip.ParseAddr(p.Conf.NeighborAddress)
			st.ASN = p.Conf.PeerAsn
		}
		if p.State != nil {
			st.State = stateName(p.State.SessionState)
		}
		if p.Transport != nil && st.State == "established" {
			st.Local, _ = netip.ParseAddr(p.Transport.LocalAddress)
		}
		if p.Timers != nil && p.Timers.State != nil && p.Timers.State.Uptime != nil && st.State == "established" {
			st.Since = p.Timers.State.Uptime.AsTime()
		}
		out = append(out, st)
	})
	if err != nil {
		return nil, fmt.Errorf("list bgp peers: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out, nil
}

// FlushDelay is how long Stop leaves the withdrawals to be sent before it closes the sessions
// (the router drops every route of a closed session anyway; the withdrawals make it explicit).
const FlushDelay = 100 * time.Millisecond

// Stop withdraws every prefix, then closes every session (a Cease notification) and stops.
func (s *Speaker) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	n := len(s.announced)
	for p := range s.announced {
		errs = append(errs, s.withdraw(p))
	}
	if n > 0 {
		time.Sleep(FlushDelay)
	}
	s.srv.Stop()
	s.log.Info("bgp speaker stopped", "withdrawn", n)
	return errors.Join(errs...)
}

func stateName(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_SESSION_STATE_IDLE:
		return "idle"
	case api.PeerState_SESSION_STATE_CONNECT:
		return "connect"
	case api.PeerState_SESSION_STATE_ACTIVE:
		return "active"
	case api.PeerState_SESSION_STATE_OPENSENT:
		return "opensent"
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return "established"
	}
	return "unknown-" + strconv.Itoa(int(st))
}
