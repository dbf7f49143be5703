package loader

import (
	"fmt"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Attachment describes what mptcp-xdp has attached to one interface. Field names are the
// `status -o json` contract (docs/cli.md).
type Attachment struct {
	Netns     string `json:"netns"`
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	PinDir    string `json:"pin_dir"`
	Ingress   string `json:"ingress"` // xdp or tc
	// IngressReason says why ingress is on that hook: "asked" (--ingress xdp or tc, or an XDP
	// mode asked for), or "auto: ..." with the rule that chose it (IngressAuto).
	IngressReason string    `json:"ingress_reason"`
	XDPMode       string    `json:"xdp_mode,omitempty"` // native or generic, with ingress xdp
	Egress        bool      `json:"egress"`
	AttachedAt    time.Time `json:"attached_at"`
	Programs      []Program `json:"programs"`
	Maps          []MapInfo `json:"maps"`
	Problems      []string  `json:"problems,omitempty"`
}

// Program is one attached program.
type Program struct {
	Hook      string `json:"hook"`      // xdp, tc_ingress or tc_egress
	Mechanism string `json:"mechanism"` // bpf_link or netlink (xdp); tcx or clsact (tc); replaced (pins.go)
	ID        uint32 `json:"id"`
	Name      string `json:"name"`
	LinkID    uint32 `json:"link_id,omitempty"`
}

// MapInfo is one pinned map and how full it is.
type MapInfo struct {
	Name       string `json:"name"`
	ID         uint32 `json:"id"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	Entries    uint32 `json:"entries"`
	Pin        string `json:"pin"`
}

// List describes every attachment of the datapath under the root; with netnsDir set, only those of
// that namespace. The caller holds RLock.
func (l *Loader) List(netnsDir string) ([]Attachment, error) {
	dirs, err := l.ifaceDirs(netnsDir)
	if err != nil {
		return nil, err
	}
	pins, err := l.datapathPins(netnsDir)
	if err != nil {
		return nil, err
	}
	for i := range pins {
		pins[i].resolve(true)
	}
	out := l.attachments(dirs, pins)
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// describe reads the pins of one interface directory.
func (l *Loader) describe(nsDir, iface string) (*Attachment, error) {
	pins := l.dirPins(KindDatapath, nsDir, iface, l.IfaceDir(nsDir, iface), datapathPins())
	for i := range pins {
		pins[i].resolve(true)
	}
	a := l.describePins(nsDir, iface, pins)
	return &a, nil
}

// describePins makes the attachment of one interface directory from its pins (resolved).
func (l *Loader) describePins(nsDir, iface string, pins []Pin) Attachment {
	dir := l.IfaceDir(nsDir, iface)
	a := Attachment{Netns: nsDir, Interface: iface, PinDir: dir, Programs: []Program{}, Maps: []MapInfo{}}
	meta, ok := loadPinnedMeta(dir)
	foreign := foreignFiles(dir)
	if !ok && (len(pins) > 0 || len(foreign) == 0) {
		a.Problems = append(a.Problems, "no attach state pinned (interrupted attach?): run "+detachAdvice(nsDir, iface))
	}
	if len(foreign) > 0 {
		a.Problems = append(a.Problems, fmt.Sprintf("the pin directory holds files mptcp-xdp did not make (%s): detach leaves them and the directory",
			strings.Join(foreign, ", ")))
	}
	a.Ifindex = int(meta.Ifindex)
	a.Ingress = map[uint32]string{metaIngressXDP: "xdp", metaIngressTC: "tc"}[meta.Ingress]
	if ok {
		a.IngressReason = ingressReason(meta)
	}
	a.XDPMode = modeName(meta.XdpMode)
	a.Egress = meta.Egress != 0
	if meta.AttachedNs != 0 {
		a.AttachedAt = time.Unix(0, int64(meta.AttachedNs)).UTC()
	}

	// One program per hook: its link, else its netlink or clsact program pin.
	for _, h := range datapathHooks {
		var use *Pin
		for i := range pins {
			p := &pins[i]
			if p.Hook == h.hook && p.Mechanism != mechReplaced && (p.Object == ObjectLink || (use == nil && p.Object == ObjectProg)) {
				use = p
			}
		}
		if use == nil {
			continue
		}
		if use.Problem != "" {
			a.Problems = append(a.Problems, use.Problem)
		}
		a.Programs = append(a.Programs, Program{Hook: h.hook, Mechanism: use.Mechanism, ID: use.ProgID, Name: use.Name, LinkID: linkID(*use)})
	}
	for _, p := range pins {
		if p.Object == ObjectMap && p.Problem == "" {
			a.Maps = append(a.Maps, p.mapInfo)
		}
	}
	if a.Ifindex != 0 && !strings.HasPrefix(nsDir, "ns-") {
		if p := checkInterface(nsDir, iface, a.Ifindex); p != "" {
			a.Problems = append(a.Problems, p)
		}
	}
	return a
}

// checkInterface reports a problem when the interface no longer exists with the pinned index.
func checkInterface(nsDir, iface string, ifindex int) string {
	name := nsDir
	if nsDir == HostNetns {
		name = ""
		if cur, err := NetnsDir(""); err != nil || cur != HostNetns {
			return "" // cannot look into the host namespace from here
		}
	} else if !netns.Exists(name) {
		return "network namespace " + nsDir + " is gone: run " + detachAdvice(nsDir, iface) + " to remove the stale pins"
	}
	problem := ""
	_ = netns.Do(name, func() error {
		lnk, err := netlink.LinkByIndex(ifindex)
		if err != nil || lnk.Attrs().Name != iface {
			problem = fmt.Sprintf("interface %s (index %d) is gone: run %s to remove the stale pins", iface, ifindex, detachAdvice(nsDir, iface))
		}
		return nil
	})
	return problem
}

// detachAdvice is the command that detaches iface of the namespace directory nsDir, in backquotes:
// the one the CLI takes (a named namespace's, gone or not, with --netns).
func detachAdvice(nsDir, iface string) string {
	switch {
	case nsDir == HostNetns:
		return "`mptcp-xdp detach " + iface + "`"
	case strings.HasPrefix(nsDir, "ns-"): // an unnamed namespace, which only its own processes can name
		return "`mptcp-xdp detach " + iface + "` inside that network namespace"
	}
	return "`mptcp-xdp --netns " + nsDir + " detach " + iface + "`"
}

func progName(id uint32) string {
	if id == 0 {
		return ""
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return ""
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return ""
	}
	return info.Name
}

// DescribeMap describes a map, counting the entries of hash-like maps.
func DescribeMap(m *ebpf.Map, pin string) MapInfo { return describeMap(m, pin, true) }

// describeMap describes a map, counting the entries of hash-like maps when count is set (which
// walks the whole map: a million syscalls for the balancer's flow table).
func describeMap(m *ebpf.Map, pin string, count bool) MapInfo {
	mi := MapInfo{Type: m.Type().String(), KeySize: m.KeySize(), ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Pin: pin}
	if info, err := m.Info(); err == nil {
		mi.Name = info.Name
		if id, ok := info.ID(); ok {
			mi.ID = uint32(id)
		}
	}
	if !count {
		return mi
	}
	switch m.Type() {
	case ebpf.Array, ebpf.PerCPUArray:
		mi.Entries = m.MaxEntries()
	default:
		var n uint32
		key := make([]byte, m.KeySize())
		it := m.Iterate()
		for it.Next(&key, new([]byte)) {
			n++
		}
		if it.Err() == nil {
			mi.Entries = n
		}
	}
	return mi
}

// ingressReason explains the ingress hook meta records.
func ingressReason(meta Meta) string {
	switch {
	case meta.Flags&metaIngressAuto == 0:
		return "asked"
	case meta.Flags&metaAutoVeth != 0:
		return "auto: a veth runs even native XDP on skbs already built, at the cost of GRO; tc ingress costs least"
	case meta.Flags&metaAutoNoNativ != 0:
		return "auto: the driver has no native XDP, and generic XDP costs more than the parser; tc ingress costs least"
	}
	return "auto: native XDP, which the driver runs before it builds an skb"
}
