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

// States that matter here.
const (
	StateEstablished State = 1
	StateClose       State = 7
	StateListen      State = 10
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

// Subflow flags (enum mx_sf_flags in bpf/include/mx_types.h, equal to MPTCP_SUBFLOW_FLAG_*).
const (
	FlagMPCapable        Flags = 1 << 0 // 'M' the initial subflow: MP_CAPABLE agreed
	FlagMPCapableLocal   Flags = 1 << 1 // 'm' we sent MP_CAPABLE (the client's initial subflow)
	FlagJoin             Flags = 1 << 2 // 'J' an additional subflow (MP_JOIN)
	FlagJoinLocal        Flags = 1 << 3 // 'j' we sent the MP_JOIN SYN
	FlagBackupRemote     Flags = 1 << 4 // 'B' the peer asked for this subflow as backup
	FlagBackupLocal      Flags = 1 << 5 // 'b' we asked for it as backup
	FlagFullyEstablished Flags = 1 << 6 // 'e' fully established
	FlagConnected        Flags = 1 << 7 // 'c' connection finished (handshake done)
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

// Subflow is one MPTCP subflow and its tcp_info figures, as tcp_get_info() computes them.
type Subflow struct {
	Token     Token          `json:"token"`
	Cookie    uint64         `json:"cookie"`    // socket cookie of the subflow
	ID        uint32         `json:"id"`        // the kernel's subflow id (1 for the first; 0 before Linux 6.8)
	LocalID   uint8          `json:"local_id"`  // local address id
	RemoteID  uint8          `json:"remote_id"` // remote address id
	Flags     Flags          `json:"flags"`
	State     State          `json:"state"`      // TCP state of the subflow
	ConnState State          `json:"conn_state"` // state of the MPTCP socket
	Local     netip.AddrPort `json:"local"`
	Remote    netip.AddrPort `json:"remote"`

	SRTT   time.Duration `json:"-"` // smoothed RTT (tcpi_rtt), microsecond resolution
	RTTVar time.Duration `json:"-"` // tcpi_rttvar
	MinRTT time.Duration `json:"-"` // tcpi_min_rtt; 0 before the first sample

	Cwnd     uint32 `json:"cwnd"`     // segments
	Ssthresh uint32 `json:"ssthresh"` // segments; 2147483647 (TCP_INFINITE_SSTHRESH) before the first loss
	MSS      uint32 `json:"mss"`      // sender MSS (tcpi_snd_mss)

	BytesSent     uint64 `json:"bytes_sent"` // retransmissions included
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesRetrans  uint64 `json:"bytes_retrans"`
	TotalRetrans  uint32 `json:"total_retrans"` // segments retransmitted over the subflow's life
	Retrans       uint32 `json:"retrans"`       // segments retransmitted and not yet acknowledged
	Lost          uint32 `json:"lost"`          // segments currently presumed lost
	SegsIn        uint32 `json:"segs_in"`
	SegsOut       uint32 `json:"segs_out"`
	DataSegsIn    uint32 `json:"data_segs_in"`
	DataSegsOut   uint32 `json:"data_segs_out"`
	DeliveryRate  uint64 `json:"delivery_rate"` // bytes/s, 0 before the first sample
	PacingRate    uint64 `json:"pacing_rate"`   // bytes/s, math.MaxUint64 when unlimited

	// Closed marks a subflow that is no longer in the kernel, whose figures are its final ones
	// (supplied by another source, such as a sock_ops program; the iterator sees live ones only).
	Closed bool `json:"closed,omitempty"`
}

// Backup reports whether either end asked for the subflow to be a backup.
func (s *Subflow) Backup() bool { return s.Flags&(FlagBackupLocal|FlagBackupRemote) != 0 }

// FullyEstablished reports the subflow's fully_established flag.
func (s *Subflow) FullyEstablished() bool { return s.Flags&FlagFullyEstablished != 0 }

// Initial reports whether this is the connection's initial (MP_CAPABLE) subflow.
func (s *Subflow) Initial() bool { return s.Flags&FlagMPCapable != 0 }

// PacingUnlimited reports whether no pacing rate is set.
func (s *Subflow) PacingUnlimited() bool { return s.PacingRate == math.MaxUint64 }

// subflowJSON adds the durations, as integer microseconds, to the tagged fields.
type subflowJSON struct {
	*subflowAlias
	SRTTUs   int64 `json:"srtt_us"`
	RTTVarUs int64 `json:"rttvar_us"`
	MinRTTUs int64 `json:"min_rtt_us"`
	Backup   bool  `json:"backup"`
	FullyEst bool  `json:"fully_established"`
}

type subflowAlias Subflow

// MarshalJSON writes the fields of docs/conn.md.
func (s Subflow) MarshalJSON() ([]byte, error) {
	return json.Marshal(subflowJSON{
		subflowAlias: (*subflowAlias)(&s),
		SRTTUs:       s.SRTT.Microseconds(),
		RTTVarUs:     s.RTTVar.Microseconds(),
		MinRTTUs:     s.MinRTT.Microseconds(),
		Backup:       s.Backup(),
		FullyEst:     s.FullyEstablished(),
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *Subflow) UnmarshalJSON(b []byte) error {
	var j struct {
		subflowAlias
		SRTTUs   int64 `json:"srtt_us"`
		RTTVarUs int64 `json:"rttvar_us"`
		MinRTTUs int64 `json:"min_rtt_us"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Subflow(j.subflowAlias)
	s.SRTT = time.Duration(j.SRTTUs) * time.Microsecond
	s.RTTVar = time.Duration(j.RTTVarUs) * time.Microsecond
	s.MinRTT = time.Duration(j.MinRTTUs) * time.Microsecond
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

// MarshalJSON writes the summary's fields and "subflows", every subflow (docs/conn.md).
func (c Connection) MarshalJSON() ([]byte, error) {
	j := struct {
		Summary
		Subflows []Subflow `json:"subflows"`
	}{c.Summary(), c.Subflows}
	if j.Subflows == nil {
		j.Subflows = []Subflow{}
	}
	return json.Marshal(j)
}

// Group gathers subflows into connections by token (a token names one MPTCP connection of a
// network namespace while it lives). A closed subflow whose cookie is also live is dropped: the
// live figures are the newer. Connections are ordered by token; within one, live subflows come
// first by (id, local id, remote id, cookie), then closed ones in the same order.
func Group(subflows []Subflow) []Connection {
	live := make(map[uint64]bool, len(subflows))
	for i := range subflows {
		if !subflows[i].Closed {
			live[subflows[i].Cookie] = true
		}
	}
	idx := make(map[Token]int)
	var conns []Connection
	for _, s := range subflows {
		if s.Closed && live[s.Cookie] {
			continue
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
