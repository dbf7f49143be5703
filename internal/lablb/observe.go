package lablb

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
)

// BackendMIBs reads the SNMP counters of every backend.
func (l *Lab) BackendMIBs() ([]lab.MIB, error) {
	out := make([]lab.MIB, len(l.Backends))
	for i, b := range l.Backends {
		m, err := l.MIB(b.Netns)
		if err != nil {
			return nil, err
		}
		out[i] = m
	}
	return out, nil
}

// JoinCounts are the backends' MP_JOIN counters since a reading, one entry per backend.
type JoinCounts struct {
	SynRx   []int64 `json:"mp_join_syn_rx"`
	AckRx   []int64 `json:"mp_join_ack_rx"`
	NoToken []int64 `json:"mp_join_no_token_found"`
}

// Answered is the number of joins the backends accepted or refused for want of a token.
func (j JoinCounts) Answered() int64 { return Sum(j.AckRx) + Sum(j.NoToken) }

// Sum adds up a per-backend figure.
func Sum[T int | int64](v []T) (s T) {
	for _, x := range v {
		s += x
	}
	return s
}

// Joins reads the backends' join counters since base (BackendMIBs).
func (l *Lab) Joins(base []lab.MIB) (JoinCounts, error) {
	now, err := l.BackendMIBs()
	if err != nil {
		return JoinCounts{}, err
	}
	var j JoinCounts
	for i, m := range now {
		d := m.Sub(base[i])
		j.SynRx = append(j.SynRx, d.MPTCP("MPJoinSynRx"))
		j.AckRx = append(j.AckRx, d.MPTCP("MPJoinAckRx"))
		j.NoToken = append(j.NoToken, d.MPTCP("MPJoinNoTokenFound"))
	}
	return j, nil
}

// View is what `ss -M` shows of the established connections to a VIP, in the client and in every
// backend.
type View struct {
	// ClientTwo counts client connections with one extra subflow as ss -M counts it: the path
	// manager counts a join as soon as it opens the subflow, so a join still unanswered
	// (SYN-SENT, e.g. dropped by the balancer and being retransmitted) counts too. Whether joins
	// were answered is in Subflows (state, flag e) and the MIB (MPJoinSynAckRx, MPJoinAckRx).
	ClientTwo  int        `json:"client_two_subflows"`
	ClientOne  int        `json:"client_one_subflow"` // ... still on their first subflow only
	BackendTwo []int      `json:"backend_two_subflows"`
	BackendAll []int      `json:"backend_connections"`
	Tokens     [][]uint32 `json:"-"` // per backend, the local tokens of its connections
}

// Observe reads the View of the connections to vip.
func (l *Lab) Observe(vip netip.AddrPort) (View, error) {
	var v View
	cs, err := l.Conns(l.Client)
	if err != nil {
		return v, err
	}
	for _, c := range cs {
		if c.State != "ESTAB" || !strings.HasSuffix(c.Peer, ":"+strconv.Itoa(int(vip.Port()))) {
			continue
		}
		switch c.Subflows {
		case 1:
			v.ClientTwo++
		case 0:
			v.ClientOne++
		}
	}
	for _, b := range l.Backends {
		cs, err := l.Conns(b.Netns)
		if err != nil {
			return v, fmt.Errorf("backend %d: %w", b.Index, err)
		}
		two, all := 0, 0
		var toks []uint32
		for _, c := range cs {
			if c.State != "ESTAB" || c.Local != vip.String() {
				continue
			}
			all++
			if c.Subflows == 1 {
				two++
			}
			toks = append(toks, c.Token)
		}
		v.BackendTwo = append(v.BackendTwo, two)
		v.BackendAll = append(v.BackendAll, all)
		v.Tokens = append(v.Tokens, toks)
	}
	return v, nil
}

// Subflow is one TCP subflow of an MPTCP connection as `ss -ti` shows it (its tcp-ulp-mptcp info).
type Subflow struct {
	State       string // ESTAB, SYN-SENT, ...
	Local, Peer string // addr:port, without the %dev a bound subflow shows
	Token       uint32 // the local token: the MPTCP connection's, as ss -M shows it
	RemoteToken uint32 // the peer's token (a join's: the one its MP_JOIN SYN carried); 0 if not known
	Join        bool   // opened by this end with MP_JOIN (flag j)
	Established bool   // fully established (flag e): for a join, the peer acknowledged its third ACK
	Retrans     int    // retransmissions in all (tcpi_total_retrans), e.g. of a SYN
}

// Subflows lists the MPTCP subflows of ns (`ss -N ns -Hntai`, TCP sockets that carry tcp-ulp-mptcp).
func (l *Lab) Subflows(ns string) ([]Subflow, error) {
	out, err := l.Exec("", "ss", "-N", ns, "-Hntai")
	if err != nil {
		return nil, err
	}
	return parseSubflows(out)
}

func parseSubflows(out string) ([]Subflow, error) {
	var subs []Subflow
	var cur *Subflow // the socket line before the info line
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if line[0] != ' ' && line[0] != '\t' {
			if len(f) < 5 {
				return nil, fmt.Errorf("ss: unexpected line %q", line)
			}
			cur = &Subflow{State: f[0], Local: stripDev(f[3]), Peer: stripDev(f[4])}
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("ss: info line before socket: %q", line)
		}
		s := *cur
		cur = nil
		mptcp := false
		for _, kv := range f {
			k, v, _ := strings.Cut(kv, ":")
			switch k {
			case "tcp-ulp-mptcp":
				mptcp = true
			case "flags":
				s.Join = strings.Contains(v, "j")
				s.Established = strings.Contains(v, "e")
			case "retrans": // current/total
				if _, tot, ok := strings.Cut(v, "/"); ok {
					s.Retrans, _ = strconv.Atoi(tot)
				}
			case "token": // remote(id:N)/local(id:N)
				rem, loc, ok := strings.Cut(v, "/")
				if !ok {
					return nil, fmt.Errorf("ss: token %q", v)
				}
				var err error
				if s.RemoteToken, err = parseToken(rem); err != nil {
					return nil, err
				}
				if s.Token, err = parseToken(loc); err != nil {
					return nil, err
				}
			}
		}
		if mptcp {
			subs = append(subs, s)
		}
	}
	return subs, nil
}

// parseToken reads "3f925774(id:0)".
func parseToken(s string) (uint32, error) {
	s, _, _ = strings.Cut(s, "(")
	t, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("ss: token %q: %w", s, err)
	}
	return uint32(t), nil
}

// stripDev turns "10.1.1.1%c1:52683" into "10.1.1.1:52683" (an IPv6 "[fd01::1%c1]:80" likewise).
func stripDev(a string) string {
	i := strings.IndexByte(a, '%')
	if i < 0 {
		return a
	}
	j := strings.LastIndexByte(a, ':')
	if k := strings.IndexByte(a[i:], ']'); k >= 0 {
		j = i + k
	}
	if j < i {
		return a[:i]
	}
	return a[:i] + a[j:]
}
