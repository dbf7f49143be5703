package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Attachment describes what mptcp-xdp has attached to one interface. Field names are the
// `status -o json` contract (docs/cli.md).
type Attachment struct {
	Netns      string    `json:"netns"`
	Interface  string    `json:"interface"`
	Ifindex    int       `json:"ifindex"`
	PinDir     string    `json:"pin_dir"`
	Ingress    string    `json:"ingress"`            // xdp or tc
	XDPMode    string    `json:"xdp_mode,omitempty"` // native or generic, with ingress xdp
	Egress     bool      `json:"egress"`
	AttachedAt time.Time `json:"attached_at"`
	Programs   []Program `json:"programs"`
	Maps       []MapInfo `json:"maps"`
	Problems   []string  `json:"problems,omitempty"`
}

// Program is one attached program.
type Program struct {
	Hook      string `json:"hook"`      // xdp, tc_ingress or tc_egress
	Mechanism string `json:"mechanism"` // bpf_link or netlink (xdp); tcx or clsact (tc)
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

// List describes every attachment under the root; with netnsDir set, only those of that namespace.
func (l *Loader) List(netnsDir string) ([]Attachment, error) {
	nss, err := os.ReadDir(l.Root)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", l.Root, err)
	}
	var out []Attachment
	for _, ns := range nss {
		if !ns.IsDir() || (netnsDir != "" && ns.Name() != netnsDir) {
			continue
		}
		ifs, err := os.ReadDir(filepath.Join(l.Root, ns.Name()))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filepath.Join(l.Root, ns.Name()), err)
		}
		for _, i := range ifs {
			if !i.IsDir() {
				continue
			}
			a, err := l.describe(ns.Name(), i.Name())
			if err != nil {
				return nil, err
			}
			out = append(out, *a)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Netns != out[j].Netns {
			return out[i].Netns < out[j].Netns
		}
		return out[i].Interface < out[j].Interface
	})
	return out, nil
}

// describe reads the pins of one interface directory.
func (l *Loader) describe(nsDir, iface string) (*Attachment, error) {
	dir := l.IfaceDir(nsDir, iface)
	a := &Attachment{Netns: nsDir, Interface: iface, PinDir: dir, Programs: []Program{}, Maps: []MapInfo{}}
	meta, ok := loadPinnedMeta(dir)
	if !ok {
		a.Problems = append(a.Problems, "no attach state pinned (interrupted attach?): run detach")
	}
	a.Ifindex = int(meta.Ifindex)
	a.Ingress = map[uint32]string{0: "xdp", 1: "tc"}[meta.Ingress]
	a.XDPMode = modeName(meta.XdpMode)
	a.Egress = meta.Egress != 0
	if meta.AttachedNs != 0 {
		a.AttachedAt = time.Unix(0, int64(meta.AttachedNs)).UTC()
	}

	hooks := []struct{ hook, linkPin, progPin, linkMech, nlMech string }{
		{"xdp", pinLinkXDP, pinProgXDP, "bpf_link", "netlink"},
		{"tc_ingress", pinLinkTCIngress, pinProgTCIngress, "tcx", "clsact"},
		{"tc_egress", pinLinkTCEgress, pinProgTCEgress, "tcx", "clsact"},
	}
	for _, h := range hooks {
		if lk, err := link.LoadPinnedLink(filepath.Join(dir, h.linkPin), nil); err == nil {
			p := Program{Hook: h.hook, Mechanism: h.linkMech}
			if info, err := lk.Info(); err == nil {
				p.LinkID = uint32(info.ID)
				p.ID = uint32(info.Program)
				if x := info.XDP(); x != nil && x.Ifindex == 0 {
					a.Problems = append(a.Problems, h.hook+" link is defunct: its interface is gone")
				}
				if t := info.TCX(); t != nil && t.Ifindex == 0 {
					a.Problems = append(a.Problems, h.hook+" link is defunct: its interface is gone")
				}
			}
			p.Name = progName(p.ID)
			lk.Close()
			a.Programs = append(a.Programs, p)
			continue
		}
		if pr, err := ebpf.LoadPinnedProgram(filepath.Join(dir, h.progPin), nil); err == nil {
			p := Program{Hook: h.hook, Mechanism: h.nlMech}
			if info, err := pr.Info(); err == nil {
				id, _ := info.ID()
				p.ID, p.Name = uint32(id), info.Name
			}
			pr.Close()
			a.Programs = append(a.Programs, p)
		}
	}

	for _, name := range []string{pinCounters, pinMeta} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			continue
		}
		a.Maps = append(a.Maps, DescribeMap(m, filepath.Join(dir, name)))
		m.Close()
	}
	if a.Ifindex != 0 && !strings.HasPrefix(nsDir, "ns-") {
		if p := checkInterface(nsDir, iface, a.Ifindex); p != "" {
			a.Problems = append(a.Problems, p)
		}
	}
	return a, nil
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
		return "network namespace " + nsDir + " is gone: run detach to remove the stale pins"
	}
	problem := ""
	_ = netns.Do(name, func() error {
		lnk, err := netlink.LinkByIndex(ifindex)
		if err != nil || lnk.Attrs().Name != iface {
			problem = fmt.Sprintf("interface %s (index %d) is gone: run detach to remove the stale pins", iface, ifindex)
		}
		return nil
	})
	return problem
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
func DescribeMap(m *ebpf.Map, pin string) MapInfo {
	mi := MapInfo{Type: m.Type().String(), KeySize: m.KeySize(), ValueSize: m.ValueSize(), MaxEntries: m.MaxEntries(), Pin: pin}
	if info, err := m.Info(); err == nil {
		mi.Name = info.Name
		if id, ok := info.ID(); ok {
			mi.ID = uint32(id)
		}
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
