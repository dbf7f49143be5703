package stats

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// Token is the local token of an MPTCP connection, the number `ss -M` shows as "token:". It
// prints as 8 lowercase hex digits (ss prints it without leading zeros).
type Token uint32

func (t Token) String() string { return fmt.Sprintf("%08x", uint32(t)) }

// MarshalText writes the 8 hex digits, so JSON carries tokens as strings.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText reads what ParseToken accepts.
func (t *Token) UnmarshalText(b []byte) error {
	v, err := ParseToken(string(b))
	*t = v
	return err
}

// ParseToken reads a token as ss or this package prints it: 1 to 8 hex digits, with or without
// leading zeros or a 0x prefix.
func ParseToken(s string) (Token, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	if h == "" || len(h) > 8 {
		return 0, fmt.Errorf("token %q: want 1 to 8 hex digits", s)
	}
	v, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("token %q: want 1 to 8 hex digits", s)
	}
	return Token(v), nil
}

// State is a TCP state (include/net/tcp_states.h); an MPTCP socket uses the same values.
type State uint8

// States that matter here: the UAPI's BPF_TCP_* (equal to the kernel's TCP_*, which the
// programs take from vmlinux.h).
const (
	StateEstablished State = unix.BPF_TCP_ESTABLISHED
	StateClose       State = unix.BPF_TCP_CLOSE
	StateListen      State = unix.BPF_TCP_LISTEN
)

// String names the state as ss does ("ESTAB", "FIN-WAIT-1", ...).
func (s State) String() string { return sockopt.StateName(uint8(s)) }

// MarshalText writes the name.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a name that String writes.
func (s *State) UnmarshalText(b []byte) error {
	for v := range 256 {
		if State(v).String() == string(b) {
			*s = State(v)
			return nil
		}
	}
	return fmt.Errorf("unknown TCP state %q", b)
}

// Flags are a subflow's MPTCP flags, the bits the kernel's MPTCP diag reports
// (MPTCP_SUBFLOW_FLAG_*) and `ss -ti` prints as letters after "tcp-ulp-mptcp flags:".
type Flags uint32

// Subflow flags (enum mx_sf_flags in bpf/include/mx_types.h, equal to MPTCP_SUBFLOW_FLAG_*),
// generated from the iterator object.
const (
	FlagMPCapable        = Flags(datapath.IterTcpMxSfFlagsMX_SF_MCAP_REM)          // 'M' the initial subflow: MP_CAPABLE agreed
	FlagMPCapableLocal   = Flags(datapath.IterTcpMxSfFlagsMX_SF_MCAP_LOC)          // 'm' we sent MP_CAPABLE (the client's initial subflow)
	FlagJoin             = Flags(datapath.IterTcpMxSfFlagsMX_SF_JOIN_REM)          // 'J' an additional subflow (MP_JOIN)
	FlagJoinLocal        = Flags(datapath.IterTcpMxSfFlagsMX_SF_JOIN_LOC)          // 'j' we sent the MP_JOIN SYN
	FlagBackupRemote     = Flags(datapath.IterTcpMxSfFlagsMX_SF_BKUP_REM)          // 'B' the peer asked for this subflow as backup
	FlagBackupLocal      = Flags(datapath.IterTcpMxSfFlagsMX_SF_BKUP_LOC)          // 'b' we asked for it as backup
	FlagFullyEstablished = Flags(datapath.IterTcpMxSfFlagsMX_SF_FULLY_ESTABLISHED) // 'e' fully established
	FlagConnected        = Flags(datapath.IterTcpMxSfFlagsMX_SF_CONNECTED)         // 'c' connection finished (handshake done)
)

var flagLetters = [...]struct {
	f Flags
	c byte
}{{FlagMPCapable, 'M'}, {FlagMPCapableLocal, 'm'}, {FlagJoin, 'J'}, {FlagJoinLocal, 'j'},
	{FlagBackupRemote, 'B'}, {FlagBackupLocal, 'b'}, {FlagFullyEstablished, 'e'}, {FlagConnected, 'c'}}

// String writes the flags as ss's letters, in ss's order ("Mmec", "Jjec", ...).
func (f Flags) String() string {
	var b []byte
	for _, l := range flagLetters {
		if f&l.f != 0 {
			b = append(b, l.c)
		}
	}
	return string(b)
}

// MarshalText writes the letters.
func (f Flags) MarshalText() ([]byte, error) { return []byte(f.String()), nil }

// UnmarshalText reads the letters.
func (f *Flags) UnmarshalText(b []byte) error {
	var v Flags
outer:
	for _, c := range b {
		for _, l := range flagLetters {
			if l.c == c {
				v |= l.f
				continue outer
			}
		}
		return fmt.Errorf("unknown subflow flag %q", c)
	}
	*f = v
	return nil
}

// Subflow is one MPTCP subflow and its tcp_info figures, as tcp_get_info() computes them. Its JSON
// form is SubflowJSON.
type Subflow struct {
	Token     Token
	Cookie    uint64 // socket cookie of the subflow (ss -e "sk:")
	ID        uint32 // the kernel's subflow id (1 for the first; 0 before Linux 6.8)
	LocalID   uint8  // local address id
	RemoteID  uint8  // remote address id
	Flags     Flags
	State     State // TCP state of the subflow
	ConnState State // state of the MPTCP socket
	// Local and Remote are as the kernel (and ss) has them: an IPv4 peer of an IPv6 socket is
	// v4-mapped.
	Local  netip.AddrPort
	Remote netip.AddrPort

	SRTT   time.Duration // smoothed RTT (tcpi_rtt), microsecond resolution
	RTTVar time.Duration // tcpi_rttvar
	MinRTT time.Duration // tcpi_min_rtt; 0 before the first sample

	Cwnd     uint32 // segments
	Ssthresh uint32 // segments; 2147483647 (TCP_INFINITE_SSTHRESH) before the first loss
	MSS      uint32 // sender MSS (tcpi_snd_mss)

	BytesSent     uint64 // retransmissions included
	BytesAcked    uint64
	BytesReceived uint64
	BytesRetrans  uint64
	TotalRetrans  uint32 // segments retransmitted over the subflow's life
	Retrans       uint32 // segments retransmitted and not yet acknowledged
	Lost          uint32 // segments currently presumed lost
	SegsIn        uint32
	SegsOut       uint32
	DataSegsIn    uint32
	DataSegsOut   uint32
	DeliveryRate  uint64 // bytes/s, 0 before the first sample
	PacingRate    uint64 // bytes/s, math.MaxUint64 when unlimited

	// Closed marks a subflow that is no longer in the kernel, whose figures are its final ones
	// (supplied by another source, such as a sock_ops program; the iterator sees live ones only).
	Closed bool
	// Established is when the subflow reached ESTABLISHED and ClosedAt when it closed, both from
	// the subflow history (zero when it is not enabled, or did not see the event).
	Established time.Time
	ClosedAt    time.Time
}

// Role is "initial" for the connection's MP_CAPABLE subflow, "join" for an MP_JOIN one, "" when the
// flags do not say.
func (s *Subflow) Role() string {
	switch {
	case s.Flags&(FlagJoin|FlagJoinLocal) != 0:
		return "join"
	case s.Flags&(FlagMPCapable|FlagMPCapableLocal) != 0:
		return "initial"
	}
	return ""
}

// Backup reports whether either end asked for the subflow to be a backup.
func (s *Subflow) Backup() bool { return s.Flags&(FlagBackupLocal|FlagBackupRemote) != 0 }

// FullyEstablished reports the subflow's fully_established flag.
func (s *Subflow) FullyEstablished() bool { return s.Flags&FlagFullyEstablished != 0 }

// Initial reports whether this is the connection's initial (MP_CAPABLE) subflow.
func (s *Subflow) Initial() bool { return s.Flags&FlagMPCapable != 0 }

// PacingUnlimited reports whether no pacing rate is set.
func (s *Subflow) PacingUnlimited() bool { return s.PacingRate == math.MaxUint64 }

// Figures are a subflow's tcp_info figures in JSON. Both `subflow list` (SubflowJSON) and
// `mptcp-xdp tcpinfo` embed them, so that one quantity has one name in every JSON form
// (docs/conn.md, Figures). Names follow struct tcp_info and ss; times are in microseconds, rates
// in bytes per second.
type Figures struct {
	SRTTUs        int64  `json:"srtt_us"`    // tcpi_rtt
	RTTVarUs      int64  `json:"rttvar_us"`  // tcpi_rttvar
	MinRTTUs      int64  `json:"min_rtt_us"` // tcpi_min_rtt; 0 before the first sample
	Cwnd          uint32 `json:"cwnd"`       // tcpi_snd_cwnd, segments
	Ssthresh      uint32 `json:"ssthresh"`   // tcpi_snd_ssthresh; 2147483647 before the first loss
	MSS           uint32 `json:"mss"`        // tcpi_snd_mss
	BytesSent     uint64 `json:"bytes_sent"` // retransmissions included
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesRetrans  uint64 `json:"bytes_retrans"`
	TotalRetrans  uint32 `json:"total_retrans"` // segments retransmitted over the subflow's life
	Retrans       uint32 `json:"retrans"`       // segments retransmitted, not yet acknowledged
	Lost          uint32 `json:"lost"`
	SegsIn        uint32 `json:"segs_in"`
	SegsOut       uint32 `json:"segs_out"`
	DataSegsIn    uint32 `json:"data_segs_in"`
	DataSegsOut   uint32 `json:"data_segs_out"`
	DeliveryRate  uint64 `json:"delivery_rate"` // 0 before the first sample
	PacingRate    uint64 `json:"pacing_rate"`   // math.MaxUint64 when unlimited
}

// Figures returns the subflow's tcp_info figures in their JSON form.
func (s *Subflow) Figures() Figures {
	return Figures{
		SRTTUs: s.SRTT.Microseconds(), RTTVarUs: s.RTTVar.Microseconds(), MinRTTUs: s.MinRTT.Microseconds(),
		Cwnd: s.Cwnd, Ssthresh: s.Ssthresh, MSS: s.MSS,
		BytesSent: s.BytesSent, BytesAcked: s.BytesAcked, BytesReceived: s.BytesReceived,
		BytesRetrans: s.BytesRetrans, TotalRetrans: s.TotalRetrans, Retrans: s.Retrans, Lost: s.Lost,
		SegsIn: s.SegsIn, SegsOut: s.SegsOut, DataSegsIn: s.DataSegsIn, DataSegsOut: s.DataSegsOut,
		DeliveryRate: s.DeliveryRate, PacingRate: s.PacingRate,
	}
}

// FiguresOf returns the figures of a tcp_info the kernel returned through getsockopt
// (sockopt.FullInfo, TCP_INFO), converted as the iterator's are: a tcpi_min_rtt of 4294967295 (no
// sample yet) becomes 0.
func FiguresOf(t *sockopt.SubflowTCPInfo) Figures {
	f := Figures{
		SRTTUs: int64(t.RTT), RTTVarUs: int64(t.RTTVar),
		Cwnd: t.SndCwnd, Ssthresh: t.SndSsthresh, MSS: t.SndMSS,
		BytesSent: t.BytesSent, BytesAcked: t.BytesAcked, BytesReceived: t.BytesReceived,
		BytesRetrans: t.BytesRetrans, TotalRetrans: t.TotalRetrans, Retrans: t.Retrans, Lost: t.Lost,
		SegsIn: t.SegsIn, SegsOut: t.SegsOut, DataSegsIn: t.DataSegsIn, DataSegsOut: t.DataSegsOut,
		DeliveryRate: t.DeliveryRate, PacingRate: t.PacingRate,
	}
	if t.MinRTT != ^uint32(0) {
		f.MinRTTUs = int64(t.MinRTT)
	}
	return f
}

// SubflowJSON is the JSON form of a Subflow (docs/conn.md). Its fields are plain values, so that
// encoding thousands of them calls no marshaler per value.
type SubflowJSON struct {
	Token            string `json:"token"` // 8 hex digits
	Cookie           uint64 `json:"cookie"`
	ID               uint32 `json:"id"`
	LocalID          uint8  `json:"local_id"`
	RemoteID         uint8  `json:"remote_id"`
	Flags            string `json:"flags"` // ss's letters
	Backup           bool   `json:"backup"`
	FullyEstablished bool   `json:"fully_established"`
	State            string `json:"state"`
	ConnState        string `json:"conn_state"`
	Local            string `json:"local"`
	Remote           string `json:"remote"`
	Figures                 // srtt_us ... pacing_rate, inline
	Closed           bool   `json:"closed,omitempty"`
	Role             string `json:"role,omitempty"`        // initial or join
	Established      string `json:"established,omitempty"` // RFC 3339, from the subflow history
	ClosedAt         string `json:"closed_at,omitempty"`   // RFC 3339, from the subflow history
}

func jsonTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339Nano)
}

func parseJSONTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// JSON converts the subflow to its JSON form.
func (s *Subflow) JSON() SubflowJSON {
	return SubflowJSON{
		Token: s.Token.String(), Cookie: s.Cookie, ID: s.ID, LocalID: s.LocalID, RemoteID: s.RemoteID,
		Flags: s.Flags.String(), Backup: s.Backup(), FullyEstablished: s.FullyEstablished(),
		State: s.State.String(), ConnState: s.ConnState.String(),
		Local: s.Local.String(), Remote: s.Remote.String(), Figures: s.Figures(), Closed: s.Closed,
		Role: s.Role(), Established: jsonTime(s.Established), ClosedAt: jsonTime(s.ClosedAt),
	}
}

// Subflow converts the JSON form back.
func (j *SubflowJSON) Subflow() (Subflow, error) {
	s := Subflow{
		Cookie: j.Cookie, ID: j.ID, LocalID: j.LocalID, RemoteID: j.RemoteID,
		SRTT: time.Duration(j.SRTTUs) * time.Microsecond, RTTVar: time.Duration(j.RTTVarUs) * time.Microsecond,
		MinRTT: time.Duration(j.MinRTTUs) * time.Microsecond,
		Cwnd:   j.Cwnd, Ssthresh: j.Ssthresh, MSS: j.MSS,
		BytesSent: j.BytesSent, BytesAcked: j.BytesAcked, BytesReceived: j.BytesReceived,
		BytesRetrans: j.BytesRetrans, TotalRetrans: j.TotalRetrans, Retrans: j.Retrans, Lost: j.Lost,
		SegsIn: j.SegsIn, SegsOut: j.SegsOut, DataSegsIn: j.DataSegsIn, DataSegsOut: j.DataSegsOut,
		DeliveryRate: j.DeliveryRate, PacingRate: j.PacingRate, Closed: j.Closed,
	}
	var err error
	if s.Token, err = ParseToken(j.Token); err != nil {
		return s, err
	}
	if err = s.Flags.UnmarshalText([]byte(j.Flags)); err != nil {
		return s, err
	}
	if err = s.State.UnmarshalText([]byte(j.State)); err != nil {
		return s, err
	}
	if err = s.ConnState.UnmarshalText([]byte(j.ConnState)); err != nil {
		return s, err
	}
	if s.Local, err = netip.ParseAddrPort(j.Local); err != nil {
		return s, err
	}
	if s.Remote, err = netip.ParseAddrPort(j.Remote); err != nil {
		return s, err
	}
	if s.Established, err = parseJSONTime(j.Established); err != nil {
		return s, err
	}
	if s.ClosedAt, err = parseJSONTime(j.ClosedAt); err != nil {
		return s, err
	}
	return s, nil
}

// MarshalJSON writes the SubflowJSON form.
func (s Subflow) MarshalJSON() ([]byte, error) { return json.Marshal(s.JSON()) }

// UnmarshalJSON reads the SubflowJSON form.
func (s *Subflow) UnmarshalJSON(b []byte) error {
	var j SubflowJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	v, err := j.Subflow()
	if err != nil {
		return fmt.Errorf("subflow: %w", err)
	}
	*s = v
	return nil
}

// Connection is one MPTCP connection: its subflows, live ones first (ordered by subflow id), then
// closed ones.
type Connection struct {
	Token    Token
	State    State // state of the MPTCP socket
	Subflows []Subflow
}

// First is the subflow that names the connection: the initial (MP_CAPABLE) subflow if it is
// still live, else the live subflow with the lowest id, else the first closed one.
func (c *Connection) First() *Subflow {
	for i := range c.Subflows {
		if c.Subflows[i].Initial() && !c.Subflows[i].Closed {
			return &c.Subflows[i]
		}
	}
	if len(c.Subflows) == 0 {
		return nil
	}
	return &c.Subflows[0]
}

// Live counts the subflows the kernel still has.
func (c *Connection) Live() int {
	n := 0
	for i := range c.Subflows {
		if !c.Subflows[i].Closed {
			n++
		}
	}
	return n
}

// Totals are a connection's counters summed over all its subflows, closed ones included, so they
// never go backwards while the connection lives.
type Totals struct {
	BytesSent     uint64 `json:"bytes_sent"`
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesRetrans  uint64 `json:"bytes_retrans"`
	TotalRetrans  uint64 `json:"total_retrans"`
	SegsIn        uint64 `json:"segs_in"`
	SegsOut       uint64 `json:"segs_out"`
}

// Totals sums the counters of every subflow.
func (c *Connection) Totals() Totals {
	var t Totals
	for i := range c.Subflows {
		s := &c.Subflows[i]
		t.BytesSent += s.BytesSent
		t.BytesAcked += s.BytesAcked
		t.BytesReceived += s.BytesReceived
		t.BytesRetrans += s.BytesRetrans
		t.TotalRetrans += uint64(s.TotalRetrans)
		t.SegsIn += uint64(s.SegsIn)
		t.SegsOut += uint64(s.SegsOut)
	}
	return t
}

// SRTTRange is the lowest and highest smoothed RTT of the live subflows (zeros without any).
func (c *Connection) SRTTRange() (lo, hi time.Duration) {
	first := true
	for i := range c.Subflows {
		s := &c.Subflows[i]
		if s.Closed {
			continue
		}
		if first || s.SRTT < lo {
			lo = s.SRTT
		}
		if first || s.SRTT > hi {
			hi = s.SRTT
		}
		first = false
	}
	return lo, hi
}

// Summary is a connection without its subflows' figures: what `conn list` shows.
type Summary struct {
	Token   Token          `json:"token"`
	State   State          `json:"state"`
	Local   netip.AddrPort `json:"local"`         // of the first subflow (see First)
	Remote  netip.AddrPort `json:"remote"`        // of the first subflow
	Live    int            `json:"subflow_count"` // live subflows, the initial one included (ss -M counts only the extra ones)
	Closed  int            `json:"closed_count"`
	Totals  Totals         `json:"totals"`
	SRTTMin int64          `json:"srtt_min_us"` // over live subflows
	SRTTMax int64          `json:"srtt_max_us"`
}

// Summary computes the connection's summary.
func (c *Connection) Summary() Summary {
	s := Summary{Token: c.Token, State: c.State, Live: c.Live(), Totals: c.Totals()}
	s.Closed = len(c.Subflows) - s.Live
	if f := c.First(); f != nil {
		s.Local, s.Remote = f.Local, f.Remote
	}
	lo, hi := c.SRTTRange()
	s.SRTTMin, s.SRTTMax = lo.Microseconds(), hi.Microseconds()
	return s
}

// ConnectionJSON is the JSON form of a Connection (docs/conn.md): its summary and every subflow.
type ConnectionJSON struct {
	Summary
	Subflows []SubflowJSON `json:"subflows"`
}

// JSON converts the connection to its JSON form.
func (c *Connection) JSON() ConnectionJSON {
	j := ConnectionJSON{Summary: c.Summary(), Subflows: make([]SubflowJSON, len(c.Subflows))}
	for i := range c.Subflows {
		j.Subflows[i] = c.Subflows[i].JSON()
	}
	return j
}

// MarshalJSON writes the ConnectionJSON form.
func (c Connection) MarshalJSON() ([]byte, error) { return json.Marshal(c.JSON()) }

// Group gathers subflows into connections by token (a token names one MPTCP connection of a
// network namespace while it lives). A closed subflow whose cookie is also live is dropped: the
// live figures are the newer; a live cookie seen twice is kept once. Connections are ordered by token; within one, live subflows come
// first by (id, local id, remote id, cookie), then closed ones in the same order.
func Group(subflows []Subflow) []Connection {
	live := make(map[uint64]bool, len(subflows))
	for i := range subflows {
		if !subflows[i].Closed {
			live[subflows[i].Cookie] = true
		}
	}
	seen := make(map[uint64]bool, len(subflows))
	idx := make(map[Token]int)
	var conns []Connection
	for _, s := range subflows {
		if s.Closed && live[s.Cookie] {
			continue
		}
		if !s.Closed {
			// A walk of a changing socket table may meet a socket twice: count it once.
			if seen[s.Cookie] {
				continue
			}
			seen[s.Cookie] = true
		}
		i, ok := idx[s.Token]
		if !ok {
			i = len(conns)
			idx[s.Token] = i
			conns = append(conns, Connection{Token: s.Token, State: s.ConnState})
		}
		c := &conns[i]
		if !s.Closed {
			c.State = s.ConnState // the live view of the MPTCP socket wins
		}
		c.Subflows = append(c.Subflows, s)
	}
	for i := range conns {
		slices.SortFunc(conns[i].Subflows, compareSubflows)
	}
	slices.SortFunc(conns, func(a, b Connection) int { return cmp.Compare(a.Token, b.Token) })
	return conns
}

func compareSubflows(a, b Subflow) int {
	closed := func(s Subflow) int {
		if s.Closed {
			return 1
		}
		return 0
	}
	return cmp.Or(cmp.Compare(closed(a), closed(b)), cmp.Compare(a.ID, b.ID),
		cmp.Compare(a.LocalID, b.LocalID), cmp.Compare(a.RemoteID, b.RemoteID), cmp.Compare(a.Cookie, b.Cookie))
}

// Find returns the connection with token t, or nil.
func Find(conns []Connection, t Token) *Connection {
	for i := range conns {
		if conns[i].Token == t {
			return &conns[i]
		}
	}
	return nil
}
