package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Endpoint is one in-kernel path manager endpoint (`ip mptcp endpoint show`).
type Endpoint struct {
	ID       int    `json:"id"`
	Address  string `json:"address"`
	Port     int    `json:"port,omitempty"`
	Dev      string `json:"dev,omitempty"`
	Signal   bool   `json:"signal,omitempty"`
	Subflow  bool   `json:"subflow,omitempty"`
	Backup   bool   `json:"backup,omitempty"`
	Fullmesh bool   `json:"fullmesh,omitempty"`
}

// AddEndpoint runs `ip mptcp endpoint add addr flags...` in ns (flags as ip takes them: "signal",
// "subflow", "backup", "fullmesh", "dev", "cli1", "id", "5", "port", "N") and returns the id the
// kernel gave it. A "signal" endpoint makes the kernel announce addr (ADD_ADDR) on every connection
// of ns, current and future; a "subflow" endpoint makes it open a subflow from addr.
func (l *Lab) AddEndpoint(ns, addr string, flags ...string) (int, error) {
	if _, err := l.IP(ns, append([]string{"mptcp", "endpoint", "add", addr}, flags...)...); err != nil {
		return 0, err
	}
	eps, err := l.Endpoints(ns)
	if err != nil {
		return 0, err
	}
	for _, e := range eps {
		if e.Address == addr {
			return e.ID, nil
		}
	}
	return 0, fmt.Errorf("endpoint %s added in %s but not listed", addr, ns)
}

// DelEndpoint removes endpoint id in ns; the kernel then removes its subflows and, for a signal
// endpoint, sends REMOVE_ADDR.
func (l *Lab) DelEndpoint(ns string, id int) error {
	_, err := l.IP(ns, "mptcp", "endpoint", "delete", "id", strconv.Itoa(id))
	return err
}

// ChangeEndpoint runs `ip mptcp endpoint change id ID flags...` ("backup" or "nobackup", also
// "fullmesh"/"nofullmesh"); a backup change sends MP_PRIO on that endpoint's subflows.
func (l *Lab) ChangeEndpoint(ns string, id int, flags ...string) error {
	_, err := l.IP(ns, append([]string{"mptcp", "endpoint", "change", "id", strconv.Itoa(id)}, flags...)...)
	return err
}

// FlushEndpoints removes every endpoint in ns.
func (l *Lab) FlushEndpoints(ns string) error {
	_, err := l.IP(ns, "mptcp", "endpoint", "flush")
	return err
}

// Endpoints lists the endpoints of ns.
func (l *Lab) Endpoints(ns string) ([]Endpoint, error) {
	out, err := l.IP(ns, "-j", "mptcp", "endpoint", "show")
	if err != nil {
		return nil, err
	}
	var eps []Endpoint
	if strings.TrimSpace(out) == "" {
		return nil, nil
	}
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		return nil, fmt.Errorf("parse `ip -j mptcp endpoint show` in %s: %w", ns, err)
	}
	return eps, nil
}

// SetLimits sets the path manager limits of ns: subflows per connection and ADD_ADDRs accepted.
func (l *Lab) SetLimits(ns string, subflows, addAddrAccepted int) error {
	_, err := l.IP(ns, "mptcp", "limits", "set", "subflows", strconv.Itoa(subflows),
		"add_addr_accepted", strconv.Itoa(addAddrAccepted))
	return err
}

// Conn is one MPTCP connection (socket) as `ss -M` shows it. Counters the kernel did not print
// are 0.
type Conn struct {
	State    string
	Local    string
	Peer     string
	Token    uint32            // the local token
	Subflows int               // additional subflows (the initial one is not counted, as in mptcp_info)
	Fields   map[string]string // every key:value of the info line
}

// Subflows lists the MPTCP sockets of ns (`ss -N ns -HnaMi`, listeners included with State
// "LISTEN"). Subflows is the kernel's count of subflows beyond the first: a connection running on two
// paths shows 1.
func (l *Lab) Subflows(ns string) ([]Conn, error) {
	if err := netns.Validate(ns); err != nil {
		return nil, err
	}
	out, err := run(context.Background(), "ss", "-N", ns, "-HnaMi")
	if err != nil {
		return nil, err
	}
	return parseSS(out)
}

// parseSS reads `ss -HnMi` output: a socket line (state, recv-q, send-q, local, peer) followed by
// an indented line of key:value info.
func parseSS(out string) ([]Conn, error) {
	var conns []Conn
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if line[0] != ' ' && line[0] != '\t' {
			if len(f) < 5 {
				return nil, fmt.Errorf("ss: unexpected line %q", line)
			}
			conns = append(conns, Conn{State: f[0], Local: f[3], Peer: f[4], Fields: map[string]string{}})
			continue
		}
		if len(conns) == 0 {
			return nil, fmt.Errorf("ss: info line before socket: %q", line)
		}
		c := &conns[len(conns)-1]
		for _, kv := range f {
			k, v, ok := strings.Cut(kv, ":")
			if !ok {
				c.Fields[kv] = ""
				continue
			}
			c.Fields[k] = v
			switch k {
			case "token":
				t, err := strconv.ParseUint(v, 16, 32)
				if err != nil {
					return nil, fmt.Errorf("ss: token %q: %w", v, err)
				}
				c.Token = uint32(t)
			case "subflows":
				n, err := strconv.Atoi(v)
				if err != nil {
					return nil, fmt.Errorf("ss: subflows %q: %w", v, err)
				}
				c.Subflows = n
			}
		}
	}
	return conns, nil
}

// LinkStats are one interface's counters.
type LinkStats struct {
	Name                 string
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxDropped, TxDropped uint64
}

// LinkStats reads the counters of every interface in ns over netlink (a setns'd thread does not see
// the namespace in /sys/class/net, so netlink is the way), keyed by name.
func (l *Lab) LinkStats(ns string) (map[string]LinkStats, error) { return ReadLinkStats(ns) }

// ReadLinkStats reads the interface counters of ns ("" is the caller's) over netlink.
func ReadLinkStats(ns string) (map[string]LinkStats, error) {
	h, err := handle(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", ns, err)
	}
	m := make(map[string]LinkStats, len(links))
	for _, lk := range links {
		a := lk.Attrs()
		s := LinkStats{Name: a.Name}
		if st := a.Statistics; st != nil {
			s.RxBytes, s.TxBytes = st.RxBytes, st.TxBytes
			s.RxPackets, s.TxPackets = st.RxPackets, st.TxPackets
			s.RxDropped, s.TxDropped = st.RxDropped, st.TxDropped
		}
		m[a.Name] = s
	}
	return m, nil
}

// Handle opens a netlink handle bound to network namespace ns; close it when done.
func (l *Lab) Handle(ns string) (*netlink.Handle, error) { return handle(ns) }

func handle(ns string) (*netlink.Handle, error) {
	// Route netlink only: netlink.NewHandle() with no families also opens XFRM and netfilter
	// sockets, which fail (EPROTONOSUPPORT) on a kernel whose xfrm_user is a module not loaded.
	if ns == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	var h *netlink.Handle
	err := netns.Do(ns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", ns, err)
	}
	return h, nil
}
