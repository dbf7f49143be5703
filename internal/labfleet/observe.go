package labfleet

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
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

// Deltas are per-backend counter changes since a reading (BackendMIBs).
type Deltas []lab.Delta

// Deltas reads the backends' counters and subtracts base.
func (l *Lab) Deltas(base []lab.MIB) (Deltas, error) {
	now, err := l.BackendMIBs()
	if err != nil {
		return nil, err
	}
	d := make(Deltas, len(now))
	for i, m := range now {
		d[i] = m.Sub(base[i])
	}
	return d, nil
}

// MPTCP is the per-backend change of MPTcpExt counter name.
func (d Deltas) MPTCP(name string) []int64 {
	out := make([]int64, len(d))
	for i, x := range d {
		out[i] = x.MPTCP(name)
	}
	return out
}

// Get is the per-backend change of any counter ("TcpExt.TCPAbortOnData", "Tcp.EstabResets").
func (d Deltas) Get(name string) []int64 {
	out := make([]int64, len(d))
	for i, x := range d {
		out[i] = x[name]
	}
	return out
}

// Sum adds up a per-backend (or per-balancer) figure.
func Sum[T int | int64 | uint64](v []T) (s T) {
	for _, x := range v {
		s += x
	}
	return s
}

// Subflows counts the established MPTCP connections of ns on port (local, or peer for the client)
// as `ss -M` shows them: by the number of subflows beyond the first.
type Subflows struct {
	One, Two, More int
}

// All is every connection counted.
func (s Subflows) All() int { return s.One + s.Two + s.More }

func (l *Lab) subflows(ns string, port int, peer bool) (Subflows, error) {
	cs, err := tools.Subflows(ns)
	if err != nil {
		return Subflows{}, err
	}
	var s Subflows
	suffix := ":" + strconv.Itoa(port)
	for _, c := range cs {
		a := c.Local
		if peer {
			a = c.Peer
		}
		if c.State != "ESTAB" || !strings.HasSuffix(a, suffix) {
			continue
		}
		switch c.Subflows {
		case 0:
			s.One++
		case 1:
			s.Two++
		default:
			s.More++
		}
	}
	return s, nil
}

// ClientSubflows counts the client's connections to port. The client's path manager counts a join
// from the moment it sends its SYN: whether the join completed is the backends' business
// (BackendSubflows, MPJoinAckRx).
func (l *Lab) ClientSubflows(port int) (Subflows, error) { return l.subflows(l.Client, port, true) }

// BackendSubflows counts every backend's connections on port (any local address).
func (l *Lab) BackendSubflows(port int) ([]Subflows, error) {
	out := make([]Subflows, len(l.Backends))
	for i, b := range l.Backends {
		s, err := l.subflows(b.Netns, port, false)
		if err != nil {
			return nil, fmt.Errorf("backend %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}

// OpenBalancer opens balancer k's pinned maps (close them when done).
func (l *Lab) OpenBalancer(k int) (*loader.LBMaps, error) {
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		return nil, err
	}
	return ld.OpenLB(l.Balancers[k].Netns)
}

// BalancerStats reads the datapath counters of every balancer.
func (l *Lab) BalancerStats() ([]lb.Stats, error) {
	out := make([]lb.Stats, len(l.Balancers))
	for k := range l.Balancers {
		m, err := l.OpenBalancer(k)
		if err != nil {
			return nil, fmt.Errorf("balancer %d: %w", k, err)
		}
		out[k], err = m.ReadStats()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("balancer %d: %w", k, err)
		}
	}
	return out, nil
}

// Stat is one counter of every balancer since base (BalancerStats).
func Stat(now, base []lb.Stats, s lb.Stat) []uint64 {
	out := make([]uint64, len(now))
	for k := range now {
		out[k] = now[k][s] - base[k][s]
	}
	return out
}

// Table is one VIP entry of a balancer and its ring, with each slot's backend by address.
type Table struct {
	VIP   lb.VIP
	Ring  []uint32     // backend ids, as pinned
	Named []netip.Addr // the slots' backends by address
}

// Tables reads every VIP entry of balancer k (join ports included) with its pinned ring.
func (l *Lab) Tables(k int) (map[netip.AddrPort]Table, error) {
	m, err := l.OpenBalancer(k)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	bes, err := m.ListBackends()
	if err != nil {
		return nil, err
	}
	addr := map[uint32]netip.Addr{}
	for _, b := range bes {
		addr[b.ID] = b.Addr
	}
	vs, err := m.ListVIPs()
	if err != nil {
		return nil, err
	}
	out := map[netip.AddrPort]Table{}
	for _, v := range vs {
		r, err := m.ReadRing(v.ID)
		if err != nil {
			return nil, fmt.Errorf("balancer %d: ring of %s: %w", k, v.Addr, err)
		}
		t := Table{VIP: v, Ring: r}
		for _, id := range r {
			t.Named = append(t.Named, addr[id])
		}
		out[v.Addr] = t
	}
	return out, nil
}

// Flows lists the flows balancer k's tables hold.
func (l *Lab) Flows(k int) ([]lb.Flow, error) {
	m, err := l.OpenBalancer(k)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return m.ListFlows()
}
