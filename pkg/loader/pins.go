package loader

// The pin registry: every directory mptcp-xdp pins under, every pin in them and what it is, in one
// place. `status`, `prog list`, `map list`, `map dump` and the exporter all read the pins through
// Pins, so that what one listing shows the others show too.
//
//	<Root>/<netns>/<iface>/      datapath  the counting programs of one interface (loader.go)
//	<Root>-lb/<netns>/balancer/  balancer  the load balancer of one namespace (lb.go)
//	<Root>-lb/<netns>/decap/     decap     the backends' decapsulator of one namespace (lb.go)
//	<Root>-history/              history   the host-wide sock_ops subflow history (history.go)

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Kind is what a pin belongs to. The values are part of the JSON contract (docs/cli.md).
type Kind string

// Kinds of pins.
const (
	KindDatapath Kind = "datapath"
	KindBalancer Kind = "balancer"
	KindDecap    Kind = "decap"
	KindHistory  Kind = "history"
)

// What a pin holds.
const (
	ObjectLink = "link"
	ObjectProg = "prog"
	ObjectMap  = "map"
)

// Pin is one file mptcp-xdp pinned, what it is for, and the kernel object behind it. Field names
// are part of the JSON contract of `prog list` (docs/cli.md).
type Pin struct {
	Kind      Kind   `json:"kind"`
	Netns     string `json:"netns,omitempty"`     // absent for the host-wide history
	Interface string `json:"interface,omitempty"` // absent for maps shared by a namespace or the host
	Hook      string `json:"hook,omitempty"`      // links and programs: xdp, tc_ingress, tc_egress, sock_ops
	Mechanism string `json:"mechanism,omitempty"` // links and programs: bpf_link, tcx, netlink, clsact or replaced
	Object    string `json:"object"`              // link, prog or map
	Path      string `json:"path"`
	ID        uint32 `json:"id"`                // of the link, program or map (0: unreadable)
	ProgID    uint32 `json:"prog_id,omitempty"` // the program a link runs, or that of a prog pin
	Name      string `json:"name"`              // the kernel's name of the program or map
	Problem   string `json:"problem,omitempty"`

	mapInfo MapInfo // map pins: the map's description (entries counted for Status only)
}

// mechReplaced is the Mechanism of a pinned program of another tool that `attach --force`
// replaced: detach puts it back.
const mechReplaced = "replaced"

// pinDef is one pin a directory may hold.
type pinDef struct {
	name, object, hook, mechanism string
}

// datapathHooks are the hooks of an interface's datapath: each is a link pin, or a program pin when
// attached through netlink (XDP) or clsact (TC).
var datapathHooks = []struct{ hook, linkPin, progPin, linkMech, nlMech string }{
	{"xdp", pinLinkXDP, pinProgXDP, "bpf_link", "netlink"},
	{"tc_ingress", pinLinkTCIngress, pinProgTCIngress, "tcx", "clsact"},
	{"tc_egress", pinLinkTCEgress, pinProgTCEgress, "tcx", "clsact"},
}

// datapathPins are the pins an interface directory may hold, in listing order.
func datapathPins() []pinDef {
	var defs []pinDef
	for _, h := range datapathHooks {
		defs = append(defs, pinDef{h.linkPin, ObjectLink, h.hook, h.linkMech}, pinDef{h.progPin, ObjectProg, h.hook, h.nlMech})
	}
	return append(defs, pinDef{pinReplacedXDP, ObjectProg, "xdp", mechReplaced},
		pinDef{pinCounters, ObjectMap, "", ""}, pinDef{pinMeta, ObjectMap, "", ""})
}

// Pins lists every pin under every root of the loader, resolved to its kernel object. With
// netnsDir set, only the pins of that network namespace directory are listed (the host-wide
// history is not). The caller holds RLock for a view that no attach or detach changes midway.
func (l *Loader) Pins(netnsDir string) ([]Pin, error) { return l.pins(netnsDir, false) }

// pins is Pins, counting the entries of every map when count is set (for Status).
func (l *Loader) pins(netnsDir string, count bool) ([]Pin, error) {
	var out []Pin
	dp, err := l.datapathPins(netnsDir)
	if err != nil {
		return nil, err
	}
	out = append(out, dp...)
	lbs, err := l.lbPins(netnsDir)
	if err != nil {
		return nil, err
	}
	out = append(out, lbs...)
	if netnsDir == "" {
		out = append(out, l.dirPins(KindHistory, "", "", l.HistoryRoot(), historyPins())...)
	}
	for i := range out {
		out[i].resolve(count)
	}
	return out, nil
}

// subdirs lists the directories in dir, sorted; none when dir does not exist.
func subdirs(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// ifaceDir is one interface directory of the datapath.
type ifaceDir struct{ netns, iface string }

// ifaceDirs lists the interface directories under Root (of netnsDir only, when set), sorted.
func (l *Loader) ifaceDirs(netnsDir string) ([]ifaceDir, error) {
	nss, err := subdirs(l.Root)
	if err != nil {
		return nil, err
	}
	var out []ifaceDir
	for _, ns := range nss {
		if netnsDir != "" && ns != netnsDir {
			continue
		}
		ifs, err := subdirs(filepath.Join(l.Root, ns))
		if err != nil {
			return nil, err
		}
		for _, iface := range ifs {
			out = append(out, ifaceDir{ns, iface})
		}
	}
	return out, nil
}

// datapathPins lists the pins of every interface directory under Root.
func (l *Loader) datapathPins(netnsDir string) ([]Pin, error) {
	dirs, err := l.ifaceDirs(netnsDir)
	if err != nil {
		return nil, err
	}
	var out []Pin
	for _, d := range dirs {
		out = append(out, l.dirPins(KindDatapath, d.netns, d.iface, l.IfaceDir(d.netns, d.iface), datapathPins())...)
	}
	return out, nil
}

// lbPins lists the pins of every balancer and decapsulator directory under LBRoot: one XDP link per
// interface, and the maps (every other pin).
func (l *Loader) lbPins(netnsDir string) ([]Pin, error) {
	nss, err := subdirs(l.LBRoot())
	if err != nil {
		return nil, err
	}
	var out []Pin
	for _, ns := range nss {
		if netnsDir != "" && ns != netnsDir {
			continue
		}
		for _, k := range []struct {
			kind Kind
			dir  string
		}{{KindBalancer, l.LBDir(ns)}, {KindDecap, l.DecapDir(ns)}} {
			ents, err := os.ReadDir(k.dir)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("read %s: %w", k.dir, err)
			}
			for _, e := range ents {
				p := Pin{Kind: k.kind, Netns: ns, Object: ObjectMap, Path: filepath.Join(k.dir, e.Name())}
				for _, h := range []struct{ prefix, mech, object string }{
					{lbLinkPrefix, "bpf_link", ObjectLink},
					{lbProgPrefix, "netlink", ObjectProg},
					{pinReplacedXDP + lbIfaceSep, mechReplaced, ObjectProg},
				} {
					if iface, ok := strings.CutPrefix(e.Name(), h.prefix); ok {
						p.Interface, p.Hook, p.Mechanism, p.Object = iface, "xdp", h.mech, h.object
					}
				}
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// dirPins lists the pins of defs that exist in dir.
func (l *Loader) dirPins(kind Kind, ns, iface, dir string, defs []pinDef) []Pin {
	var out []Pin
	for _, d := range defs {
		path := filepath.Join(dir, d.name)
		if _, err := os.Lstat(path); err != nil {
			continue
		}
		p := Pin{Kind: kind, Netns: ns, Interface: iface, Hook: d.hook, Mechanism: d.mechanism, Object: d.object, Path: path}
		out = append(out, p)
	}
	return out
}

// resolve opens the pinned object and fills in its ids and name, or the problem; with count set, it
// counts a map's entries.
func (p *Pin) resolve(count bool) {
	switch p.Object {
	case ObjectLink:
		lk, err := link.LoadPinnedLink(p.Path, nil)
		if err != nil {
			p.Problem = fmt.Sprintf("pinned link unreadable: %v", err)
			return
		}
		defer lk.Close()
		info, err := lk.Info()
		if err != nil {
			p.Problem = fmt.Sprintf("pinned link info: %v", err)
			return
		}
		p.ID, p.ProgID = uint32(info.ID), uint32(info.Program)
		p.Name = progName(p.ProgID)
		if x := info.XDP(); x != nil && x.Ifindex == 0 {
			p.Problem = p.Hook + " link is defunct: its interface is gone"
		}
		if t := info.TCX(); t != nil && t.Ifindex == 0 {
			p.Problem = p.Hook + " link is defunct: its interface is gone"
		}
	case ObjectProg:
		pr, err := ebpf.LoadPinnedProgram(p.Path, nil)
		if err != nil {
			p.Problem = fmt.Sprintf("pinned program unreadable: %v", err)
			return
		}
		defer pr.Close()
		info, err := pr.Info()
		if err != nil {
			p.Problem = fmt.Sprintf("pinned program info: %v", err)
			return
		}
		id, _ := info.ID()
		p.ID, p.ProgID, p.Name = uint32(id), uint32(id), info.Name
	case ObjectMap:
		m, err := ebpf.LoadPinnedMap(p.Path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			p.Problem = fmt.Sprintf("pinned map unreadable: %v", err)
			return
		}
		defer m.Close()
		p.mapInfo = describeMap(m, p.Path, count)
		p.ID, p.Name = p.mapInfo.ID, p.mapInfo.Name
	}
}

// PinName is the file name of the pin: the map's full name for a map (the kernel's name is cut at
// 15 characters).
func (p Pin) PinName() string { return filepath.Base(p.Path) }

// Where is "netns/iface/hook" for a program attached to an interface, "" otherwise.
func (p Pin) Where() string {
	if p.Object == ObjectMap || p.Interface == "" {
		return ""
	}
	return p.Netns + "/" + p.Interface + "/" + p.Hook
}

// PinSet is the pins of one balancer, decapsulator or history, for `status`. Field names are part
// of the JSON contract (docs/cli.md).
type PinSet struct {
	Kind     Kind            `json:"kind"`
	Netns    string          `json:"netns,omitempty"` // absent for the history
	PinDir   string          `json:"pin_dir"`
	Programs []PinnedProgram `json:"programs"`
	Maps     []MapInfo       `json:"maps"`
	Problems []string        `json:"problems,omitempty"`
}

// PinnedProgram is one attached program of a PinSet: the interface it is attached to (none for the
// history's cgroup link) and its pin.
type PinnedProgram struct {
	Program
	Interface string `json:"interface,omitempty"`
	Pin       string `json:"pin"`
}

// Status is everything mptcp-xdp has pinned: the output of `status -o json`.
type Status struct {
	Attachments []Attachment `json:"attachments"`
	Balancers   []PinSet     `json:"balancers,omitempty"` // balancers and decapsulators
	History     *PinSet      `json:"history,omitempty"`
}

// Status describes every attachment, balancer, decapsulator and the history; with netnsDir set,
// only that namespace's (and not the host-wide history). The caller holds RLock.
func (l *Loader) Status(netnsDir string) (*Status, error) {
	dirs, err := l.ifaceDirs(netnsDir)
	if err != nil {
		return nil, err
	}
	pins, err := l.pins(netnsDir, true)
	if err != nil {
		return nil, err
	}
	st := &Status{Attachments: l.attachments(dirs, pins)}
	var cur *PinSet // the set the pins of one directory go to
	for _, p := range pins {
		switch {
		case p.Kind == KindDatapath:
			continue
		case p.Kind == KindHistory:
			if st.History == nil {
				st.History = newPinSet(p)
			}
			cur = st.History
		case cur == nil || cur.Kind != p.Kind || cur.Netns != p.Netns:
			st.Balancers = append(st.Balancers, *newPinSet(p))
			cur = &st.Balancers[len(st.Balancers)-1]
		}
		cur.add(p)
	}
	for i := range st.Balancers {
		if p := netnsProblem(st.Balancers[i].Netns); p != "" {
			st.Balancers[i].Problems = append(st.Balancers[i].Problems, p)
		}
	}
	return st, nil
}

func newPinSet(p Pin) *PinSet {
	return &PinSet{Kind: p.Kind, Netns: p.Netns, PinDir: filepath.Dir(p.Path), Programs: []PinnedProgram{}, Maps: []MapInfo{}}
}

// add puts a pin's program or map in the set, or its problem.
func (s *PinSet) add(p Pin) {
	if p.Problem != "" {
		s.Problems = append(s.Problems, p.PinName()+": "+p.Problem)
	}
	switch {
	case p.Object != ObjectMap:
		s.Programs = append(s.Programs, PinnedProgram{
			Program:   Program{Hook: p.Hook, Mechanism: p.Mechanism, ID: p.ProgID, Name: p.Name, LinkID: linkID(p)},
			Interface: p.Interface, Pin: p.Path,
		})
	case p.Problem == "":
		s.Maps = append(s.Maps, p.mapInfo)
	}
}

func linkID(p Pin) uint32 {
	if p.Object == ObjectLink {
		return p.ID
	}
	return 0
}

// attachments describes every interface directory of dirs with its pins: a directory without any
// is listed too (an interrupted attach), with its problem.
func (l *Loader) attachments(dirs []ifaceDir, pins []Pin) []Attachment {
	byDir := map[string][]Pin{}
	for _, p := range pins {
		if p.Kind == KindDatapath {
			byDir[filepath.Dir(p.Path)] = append(byDir[filepath.Dir(p.Path)], p)
		}
	}
	out := []Attachment{}
	for _, d := range dirs {
		out = append(out, l.describePins(d.netns, d.iface, byDir[l.IfaceDir(d.netns, d.iface)]))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Netns != out[j].Netns {
			return out[i].Netns < out[j].Netns
		}
		return out[i].Interface < out[j].Interface
	})
	return out
}

// netnsProblem reports a named network namespace that no longer exists.
func netnsProblem(nsDir string) string {
	if nsDir == "" || nsDir == HostNetns || strings.HasPrefix(nsDir, "ns-") || netns.Exists(nsDir) {
		return ""
	}
	return "network namespace " + nsDir + " is gone"
}

// BalancerDir is a network namespace's balancer pin directory.
type BalancerDir struct {
	Netns string // as the pins name it
	Dir   string
}

// Balancers lists the pinned balancers (namespaces whose balancer directory holds its maps),
// ordered by namespace.
func (l *Loader) Balancers() ([]BalancerDir, error) {
	nss, err := subdirs(l.LBRoot())
	if err != nil {
		return nil, err
	}
	var out []BalancerDir
	for _, ns := range nss {
		dir := l.LBDir(ns)
		if _, err := os.Stat(filepath.Join(dir, lb.MapVIPs)); err == nil {
			out = append(out, BalancerDir{Netns: ns, Dir: dir})
		}
	}
	return out, nil
}
