package replay

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// Connection is one MPTCP connection seen in a capture: the tokens its two keys give (RFC 8684
// 3.2: the first 32 bits of the SHA-256 of the key, as `ss -M` shows them), its subflows and its
// path-management and failure events in capture order.
type Connection struct {
	ClientToken stats.Token `json:"client_token"` // the token of the key the SYN's sender chose
	ServerToken stats.Token `json:"server_token"` // the token of the listener's key
	Subflows    []*Subflow  `json:"subflows"`
	Events      []Event     `json:"events"`
	Fallback    bool        `json:"fallback"` // some subflow fell back to plain TCP, or an MP_FAIL was seen
}

// Subflow is one TCP connection of a capture, named by the 5-tuple of its first frame's sender
// (the SYN's, when the capture holds it).
type Subflow struct {
	Src    netip.AddrPort `json:"src"`
	Dst    netip.AddrPort `json:"dst"`
	Kind   string         `json:"kind"`            // initial (MP_CAPABLE), join (MP_JOIN), fallback (an MP_CAPABLE SYN answered without it), tcp (no MPTCP option in its SYN) or unknown (no SYN captured)
	Token  *stats.Token   `json:"token,omitempty"` // join: the token its MP_JOIN SYN names
	AddrID *uint8         `json:"addr_id,omitempty"`
	Backup bool           `json:"backup"` // the join asked for a backup subflow, or an MP_PRIO set it
	First  time.Time      `json:"first"`
	Last   time.Time      `json:"last"`
	Frames uint64         `json:"frames"`
	// Events are the subflow's signals while no connection of the capture holds it; a subflow
	// that joins one hands them over (unmatched subflows keep theirs).
	Events []Event `json:"events,omitempty"`
	// LB is what the balancer did with the subflow's frames to a VIP (replay --lb).
	LB     *Decision `json:"lb,omitempty"`
	conn   *Connection
	synMPC bool // its SYN carried MP_CAPABLE
}

// Event is a path-management or failure signal in time order.
type Event struct {
	Time    time.Time      `json:"time"`
	Type    string         `json:"type"` // add_addr, add_addr_echo, remove_addr, mp_prio, mp_fail, mp_fastclose, mp_tcprst, fallback
	From    netip.AddrPort `json:"from"`
	To      netip.AddrPort `json:"to"`
	AddrID  *uint8         `json:"addr_id,omitempty"`  // add_addr, add_addr_echo
	IDs     []uint8        `json:"addr_ids,omitempty"` // remove_addr
	Addr    string         `json:"addr,omitempty"`     // add_addr: the address (with :port when it has one)
	Backup  *bool          `json:"backup,omitempty"`   // mp_prio
	Reason  *uint8         `json:"reason,omitempty"`   // mp_tcprst
	Message string         `json:"message,omitempty"`  // fallback: what was seen
}

type flowKey struct{ a, b netip.AddrPort }

// tracker groups frames by subflow and subflows by connection.
type tracker struct {
	parser  *gopacket.DecodingLayerParser
	eth     layers.Ethernet
	dot1q   layers.Dot1Q
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	decoded []gopacket.LayerType
	flows   map[flowKey]*Subflow
	order   []*Subflow
	byToken map[uint32]*Connection // both tokens of every connection
	conns   []*Connection
	pending []pendingJoin
}

// pendingJoin is a join seen before its connection's keys (a capture that starts mid-connection
// learns them from a later MP_CAPABLE ACK only if the connection's first subflow is in it).
type pendingJoin struct {
	sf    *Subflow
	token uint32
}

func newTracker() *tracker {
	t := &tracker{flows: map[flowKey]*Subflow{}, byToken: map[uint32]*Connection{}}
	t.parser = gopacket.NewDecodingLayerParser(layers.LayerTypeEthernet, &t.eth, &t.dot1q, &t.ip4, &t.ip6, &t.tcp)
	t.parser.IgnoreUnsupported = true
	return t
}

// frame adds f to its subflow and returns the subflow (nil for a frame that is not TCP over IP).
func (t *tracker) frame(f Frame) *Subflow {
	_ = t.parser.DecodeLayers(f.Data, &t.decoded) // errors leave the layers decoded so far
	var src, dst netip.Addr
	var haveIP, haveTCP bool
	for _, l := range t.decoded {
		switch l {
		case layers.LayerTypeIPv4:
			src, _ = netip.AddrFromSlice(t.ip4.SrcIP.To4())
			dst, _ = netip.AddrFromSlice(t.ip4.DstIP.To4())
			haveIP = true
		case layers.LayerTypeIPv6:
			src, _ = netip.AddrFromSlice(t.ip6.SrcIP)
			dst, _ = netip.AddrFromSlice(t.ip6.DstIP)
			haveIP = true
		case layers.LayerTypeTCP:
			haveTCP = true
		}
	}
	if !haveIP || !haveTCP {
		return nil
	}
	from := netip.AddrPortFrom(src, uint16(t.tcp.SrcPort))
	to := netip.AddrPortFrom(dst, uint16(t.tcp.DstPort))
	sf := t.flows[flowKey{from, to}]
	if sf == nil {
		sf = t.flows[flowKey{to, from}]
	}
	syn, ack := t.tcp.SYN, t.tcp.ACK
	if sf == nil {
		kind := "unknown"
		if syn && !ack {
			kind = "tcp"
		}
		sf = &Subflow{Src: from, Dst: to, Kind: kind, First: f.Info.Timestamp}
		t.flows[flowKey{from, to}] = sf
		t.order = append(t.order, sf)
	}
	sf.Frames++
	sf.Last = f.Info.Timestamp
	sawMPC := false
	for _, o := range t.tcp.Options {
		if o.OptionType != 30 || len(o.OptionData) < 1 {
			continue
		}
		d := o.OptionData // after kind and length
		n := len(d) + 2
		ev := Event{Time: f.Info.Timestamp, From: from, To: to}
		switch d[0] >> 4 {
		case 0: // MP_CAPABLE
			sawMPC = true
			switch {
			case syn && !ack:
				sf.Kind, sf.synMPC = "initial", true
			case !syn && n >= 20:
				// The ACK (and the first data) carry the sender's key then the receiver's.
				k0, k1 := binary.BigEndian.Uint64(d[2:10]), binary.BigEndian.Uint64(d[10:18])
				if from != sf.Src { // sent by the listener (seen only in odd captures)
					k0, k1 = k1, k0
				}
				t.learn(sf, k0, k1)
			}
		case 1: // MP_JOIN
			if syn && !ack && n == 12 {
				sf.Kind = "join"
				tok := stats.Token(binary.BigEndian.Uint32(d[2:6]))
				id := d[1]
				sf.Token, sf.AddrID, sf.Backup = &tok, &id, d[0]&0x01 != 0
				t.join(sf, uint32(tok))
			}
		case 3: // ADD_ADDR
			echo := d[0]&0x01 != 0
			ev.Type = "add_addr"
			body := n
			if echo {
				ev.Type = "add_addr_echo"
			} else {
				body -= 8 // HMAC
			}
			if len(d) >= 2 {
				id := d[1]
				ev.AddrID = &id
			}
			// body: kind, length, subtype, id (4) + address (4 or 16) [+ port (2)]
			var a netip.Addr
			port := -1
			switch body {
			case 8, 10:
				a = netip.AddrFrom4([4]byte(d[2:6]))
				if body == 10 {
					port = int(binary.BigEndian.Uint16(d[6:8]))
				}
			case 20, 22:
				a = netip.AddrFrom16([16]byte(d[2:18]))
				if body == 22 {
					port = int(binary.BigEndian.Uint16(d[18:20]))
				}
			}
			if a.IsValid() {
				ev.Addr = a.String()
				if port >= 0 {
					ev.Addr = netip.AddrPortFrom(a, uint16(port)).String()
				}
			}
			t.event(sf, ev)
		case 4: // REMOVE_ADDR
			ev.Type = "remove_addr"
			if len(d) > 1 {
				ev.IDs = append([]uint8(nil), d[1:]...)
			}
			t.event(sf, ev)
		case 5: // MP_PRIO
			ev.Type = "mp_prio"
			b := d[0]&0x01 != 0
			ev.Backup = &b
			sf.Backup = b
			t.event(sf, ev)
		case 6:
			ev.Type = "mp_fail"
			t.event(sf, ev)
		case 7:
			ev.Type = "mp_fastclose"
			t.event(sf, ev)
		case 8:
			ev.Type = "mp_tcprst"
			if len(d) >= 2 {
				r := d[1]
				ev.Reason = &r
			}
			t.event(sf, ev)
		}
	}
	// An MP_CAPABLE SYN answered by a SYN-ACK without one: the subflow fell back to TCP.
	if syn && ack && sf.synMPC && !sawMPC {
		sf.Kind = "fallback"
		sf.synMPC = false
		t.event(sf, Event{Time: f.Info.Timestamp, Type: "fallback", From: from, To: to,
			Message: "MP_CAPABLE SYN answered by a SYN-ACK without MP_CAPABLE"})
	}
	return sf
}

// learn records the connection of an initial subflow from its two keys.
func (t *tracker) learn(sf *Subflow, clientKey, serverKey uint64) {
	if sf.conn != nil {
		return
	}
	ct, _ := lb.ServerToken(clientKey)
	st, _ := lb.ServerToken(serverKey)
	c := t.byToken[st]
	if c == nil {
		c = &Connection{ClientToken: stats.Token(ct), ServerToken: stats.Token(st)}
		t.byToken[ct], t.byToken[st] = c, c
		t.conns = append(t.conns, c)
	}
	if sf.Kind == "unknown" {
		sf.Kind = "initial"
	}
	t.attach(sf, c)
	// Joins seen before the keys.
	rest := t.pending[:0]
	for _, p := range t.pending {
		if t.byToken[p.token] == c {
			t.attach(p.sf, c)
		} else {
			rest = append(rest, p)
		}
	}
	t.pending = rest
}

func (t *tracker) join(sf *Subflow, token uint32) {
	if sf.conn != nil {
		return
	}
	if c := t.byToken[token]; c != nil {
		t.attach(sf, c)
		return
	}
	t.pending = append(t.pending, pendingJoin{sf, token})
}

func (t *tracker) event(sf *Subflow, ev Event) {
	if sf.conn == nil {
		sf.Events = append(sf.Events, ev)
		return
	}
	sf.conn.Events = append(sf.conn.Events, ev)
	if ev.Type == "fallback" || ev.Type == "mp_fail" {
		sf.conn.Fallback = true
	}
}

// attach makes sf a subflow of c, handing over the events it gathered alone.
func (t *tracker) attach(sf *Subflow, c *Connection) {
	sf.conn = c
	c.Subflows = append(c.Subflows, sf)
	for _, ev := range sf.Events {
		t.event(sf, ev)
	}
	sf.Events = nil
}

// result returns the connections in order of their first frame, and the subflows of none.
func (t *tracker) result() ([]*Connection, []*Subflow) {
	for _, c := range t.conns {
		sort.SliceStable(c.Subflows, func(i, j int) bool { return c.Subflows[i].First.Before(c.Subflows[j].First) })
		// Events handed over by a subflow that joined late: back into capture (time) order.
		sort.SliceStable(c.Events, func(i, j int) bool { return c.Events[i].Time.Before(c.Events[j].Time) })
		if len(c.Events) == 0 {
			c.Events = []Event{}
		}
	}
	var orphans []*Subflow
	for _, sf := range t.order {
		if sf.conn == nil {
			orphans = append(orphans, sf)
		}
	}
	return t.conns, orphans
}

// String names a subflow by its 5-tuple.
func (s *Subflow) String() string { return fmt.Sprintf("%s -> %s", s.Src, s.Dst) }
