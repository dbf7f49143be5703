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
	ClientTwo  int        `json:"client_two_subflows"` // client connections with one extra subflow
	ClientOne  int        `json:"client_one_subflow"`  // ... still on their first subflow only
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
