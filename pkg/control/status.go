package control

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// Status is a balancer as `lb status -o json` shows it (docs/lb.md): its interfaces, VIPs,
// backends with their next hops and share of the tables, and the datapath's counters.
type Status struct {
	Netns      string            `json:"netns"`
	PinDir     string            `json:"pin_dir"`
	Interfaces []loader.LBLink   `json:"interfaces"`
	VIPs       []VIPStatus       `json:"vips"`
	Backends   []BackendStatus   `json:"backends"`
	Flows      int               `json:"flows"`
	Tokens     int               `json:"tokens"`
	Stats      map[string]uint64 `json:"stats"`
	// NewFlowRate is the new-flow rate guard's limit the attached program runs with: new flows
	// stored per second per CPU, 0 for no guard (docs/lb.md, "New-flow rate guard"); absent when no
	// program is attached or it predates the guard.
	NewFlowRate *uint32 `json:"new_flow_rate,omitempty"`
	// BGP is what the running lb run --config announces (bgp.go); absent without one or without
	// a bgp section.
	BGP *BGPStatus `json:"bgp,omitempty"`
}

// VIPStatus is one VIP of a Status.
type VIPStatus struct {
	Addr         string `json:"addr"`
	ID           uint32 `json:"id"`
	Forward      string `json:"forward"`
	UnknownJoin  string `json:"unknown_join"`
	JoinSteering bool   `json:"join_steering"`
	Tokens       int    `json:"tokens"`
	// BackendsInTable: the backends its Maglev table holds (slots of its pinned ring): for a
	// service, the active ones not down for it; for a join port, its owner.
	BackendsInTable int `json:"backends_in_table"`
	// JoinPortOf: for a backend's join port (lb backend-setup), the backend every packet to it
	// goes to; empty for a service.
	JoinPortOf string `json:"join_port_of,omitempty"`
}

// BackendStatus is one backend of a Status.
type BackendStatus struct {
	ID        uint32 `json:"id"`
	Addr      string `json:"addr"`
	Weight    uint32 `json:"weight"`
	State     string `json:"state"`
	Ifindex   int    `json:"ifindex"`
	Iface     string `json:"iface"`
	MAC       string `json:"mac"`
	SrcMAC    string `json:"src_mac"`
	SrcAddr   string `json:"src_addr,omitempty"`
	MTU       int    `json:"mtu"`        // the egress interface's MTU the datapath holds (0: not known)
	RingSlots int    `json:"ring_slots"` // slots of the first service VIP's Maglev table
	Flows     int    `json:"flows"`
	Tokens    int    `json:"tokens"`
	// Health: the backend's health for each VIP that checks it (health.go); absent when none does.
	Health []BackendHealth `json:"health,omitempty"`
}

// BackendHealth is a backend's health for one VIP, as the pinned health map holds it.
type BackendHealth struct {
	VIP       string    `json:"vip"`
	State     string    `json:"state"`      // up or down
	Since     time.Time `json:"since"`      // of the state
	Reason    string    `json:"reason"`     // of the check that made it so ("" for the first success)
	RingSlots int       `json:"ring_slots"` // of that VIP's table
}

// Status reads the balancer: the interfaces from its pinned links, everything else from its maps.
func (b *Balancer) Status() (*Status, error) {
	st := &Status{Netns: b.nsDir, PinDir: b.PinDir(), Interfaces: []loader.LBLink{}, VIPs: []VIPStatus{}, Backends: []BackendStatus{}}
	if b.loader != nil {
		links, err := b.loader.LBLinks(b.netns, false)
		if err != nil {
			return nil, err
		}
		st.Interfaces = append(st.Interfaces, links...)
		for _, ln := range links {
			if ln.ProgID == 0 {
				continue
			}
			prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(ln.ProgID))
			if err != nil {
				continue // gone since the listing
			}
			rate, err := lb.ProgramNewFlowRate(prog)
			prog.Close()
			if err == nil {
				st.NewFlowRate = &rate
				break
			}
		}
	}
	vips, err := b.Maps.ListVIPs()
	if err != nil {
		return nil, err
	}
	sort.Slice(vips, func(i, j int) bool { return vips[i].ID < vips[j].ID })
	flows, err := b.Maps.ListFlows()
	if err != nil {
		return nil, err
	}
	tokens, err := b.Maps.ListTokens()
	if err != nil {
		return nil, err
	}
	st.Flows, st.Tokens = len(flows), len(tokens)
	perVIP := map[uint32]int{}
	tokPerBE, flowPerBE := map[uint32]int{}, map[uint32]int{}
	for _, t := range tokens {
		perVIP[t.VIPID]++
		tokPerBE[t.Backend]++
	}
	for _, f := range flows {
		flowPerBE[f.Backend]++
	}
	slots := map[uint32]map[uint32]int{} // VIP id → backend id → slots of its ring
	for _, v := range vips {
		if _, ok := slots[v.ID]; ok {
			continue
		}
		ring, err := b.Maps.ReadRing(v.ID)
		if err != nil {
			return nil, err
		}
		slots[v.ID] = map[uint32]int{}
		for _, id := range ring {
			if id != NoBackend {
				slots[v.ID][id]++
			}
		}
	}
	first := map[uint32]int{} // the first service's
	for _, v := range vips {
		if !v.JoinPort {
			first = slots[v.ID]
			break
		}
	}
	for _, v := range vips {
		vs := VIPStatus{BackendsInTable: len(slots[v.ID]), Addr: v.Addr.String(), ID: v.ID, Forward: v.Forward.String(),
			UnknownJoin: v.UnknownJoin.String(), JoinSteering: v.JoinSteering, Tokens: perVIP[v.ID]}
		if v.JoinPort {
			owner, err := b.JoinPortOwner(v)
			if err != nil {
				return nil, err
			}
			vs.JoinPortOf = fmt.Sprintf("backend %d", owner)
			for _, be := range b.List() {
				if be.ID == owner {
					vs.JoinPortOf = be.Addr.String()
				}
			}
		}
		st.VIPs = append(st.VIPs, vs)
	}
	vipAddr := map[uint32]string{}
	for _, v := range vips {
		vipAddr[v.ID] = v.Addr.String()
	}
	for _, be := range b.List() {
		e, _, err := b.Maps.Backend(be.ID)
		if err != nil {
			return nil, err
		}
		row := BackendStatus{ID: be.ID, Addr: be.Addr.String(), Weight: be.Weight, State: string(be.State),
			Ifindex: e.Ifindex, MAC: e.MAC.String(), SrcMAC: e.SrcMAC.String(), MTU: e.MTU, RingSlots: first[be.ID],
			Flows: flowPerBE[be.ID], Tokens: tokPerBE[be.ID]}
		for k, h := range b.health {
			if k.Backend != be.ID || vipAddr[k.VIP] == "" {
				continue
			}
			row.Health = append(row.Health, BackendHealth{VIP: vipAddr[k.VIP], State: healthStateName(h.State),
				Since: time.Unix(0, h.Since).UTC(), Reason: h.ReasonString(), RingSlots: slots[k.VIP][be.ID]})
		}
		sort.Slice(row.Health, func(i, j int) bool { return row.Health[i].VIP < row.Health[j].VIP })
		if e.SrcAddr.IsValid() && !e.SrcAddr.IsUnspecified() {
			row.SrcAddr = e.SrcAddr.String()
		}
		if b.Resolver != nil {
			if nh, err := b.Resolver.Route(be.Addr, false); err == nil {
				row.Iface = nh.Iface
			}
		}
		st.Backends = append(st.Backends, row)
	}
	s, err := b.Maps.ReadStats()
	if err != nil {
		return nil, err
	}
	st.Stats = s.Map()
	return st, nil
}

// Connections is the balancer's view of MPTCP connections, as `conn list --lb -o json` shows it
// (docs/lb.md): one entry per learned server token.
type Connections struct {
	Netns       string       `json:"netns"`
	PinDir      string       `json:"pin_dir"`
	Connections []Connection `json:"connections"`
}

// Connection is one token of the balancer's token table and the flows that carry it.
type Connection struct {
	Token     stats.Token `json:"token"`
	VIP       string      `json:"vip"`
	VIPID     uint32      `json:"vip_id"`
	Backend   string      `json:"backend"`
	BackendID uint32      `json:"backend_id"`
	Subflows  int         `json:"subflows"`
	Flows     []FlowAddrs `json:"flows"`
}

// FlowAddrs is one 5-tuple (TCP) as the client sent it to the VIP.
type FlowAddrs struct {
	Src string `json:"src"`
	Dst string `json:"dst"`
}

// Connections joins the token table with the flow table (a flow carries the token once learned)
// and the VIP and backend tables.
func (b *Balancer) Connections() (*Connections, error) {
	m := b.Maps
	vips, err := m.ListVIPs()
	if err != nil {
		return nil, err
	}
	backends, err := m.ListBackends()
	if err != nil {
		return nil, err
	}
	tokens, err := m.ListTokens()
	if err != nil {
		return nil, err
	}
	flows, err := m.ListFlows()
	if err != nil {
		return nil, err
	}
	vipByID := map[uint32][]netip.AddrPort{}
	for _, v := range vips {
		vipByID[v.ID] = append(vipByID[v.ID], v.Addr)
	}
	beAddr := map[uint32]string{}
	for _, be := range backends {
		beAddr[be.ID] = be.Addr.String()
	}
	type tk struct{ vip, token uint32 }
	// A flow's VIP ID is its destination's (VIPs that share an ID share the token space).
	idOf := map[netip.AddrPort]uint32{}
	for _, v := range vips {
		idOf[v.Addr] = v.ID
	}
	byTok := map[tk][]lb.Flow{}
	for _, f := range flows {
		id, ok := idOf[f.Dst]
		if f.Token == 0 || !ok {
			continue
		}
		byTok[tk{id, f.Token}] = append(byTok[tk{id, f.Token}], f)
	}
	rep := &Connections{Netns: b.nsDir, PinDir: b.PinDir(), Connections: make([]Connection, 0, len(tokens))}
	for _, t := range tokens {
		fs := byTok[tk{t.VIPID, t.Token}]
		sort.Slice(fs, func(i, j int) bool {
			if c := fs[i].Src.Addr().Compare(fs[j].Src.Addr()); c != 0 {
				return c < 0
			}
			return fs[i].Src.Port() < fs[j].Src.Port()
		})
		c := Connection{Token: stats.Token(t.Token), VIPID: t.VIPID, BackendID: t.Backend, Backend: "-",
			Subflows: len(fs), Flows: make([]FlowAddrs, 0, len(fs))}
		if a, ok := beAddr[t.Backend]; ok {
			c.Backend = a
		}
		switch {
		case len(fs) > 0:
			c.VIP = fs[0].Dst.String()
		case len(vipByID[t.VIPID]) > 0:
			c.VIP = vipByID[t.VIPID][0].String()
		default:
			c.VIP = "-"
		}
		for _, f := range fs {
			c.Flows = append(c.Flows, FlowAddrs{Src: f.Src.String(), Dst: f.Dst.String()})
		}
		rep.Connections = append(rep.Connections, c)
	}
	sort.Slice(rep.Connections, func(i, j int) bool {
		a, c := rep.Connections[i], rep.Connections[j]
		if a.VIPID != c.VIPID {
			return a.VIPID < c.VIPID
		}
		return a.Token < c.Token
	})
	return rep, nil
}
