package loader

// The load balancer's pins. A balancer is one set of maps per network namespace, shared by every
// interface its XDP program is attached to; a backend's decapsulator (ipip mode) is one set of maps
// per namespace too:
//
//	<Root>-lb/<netns>/balancer/mptcpx_*           the datapath's maps (lb.Spec pins them by name)
//	<Root>-lb/<netns>/balancer/mptcpx_lb_weights  backend id → weight (the control plane's, for rebuilds)
//	<Root>-lb/<netns>/balancer/mptcpx_lb_health   (VIP, backend) → health (the control plane's, lbhealth.go)
//	<Root>-lb/<netns>/balancer/link_xdp@<iface>   the bpf_link of one interface, or
//	<Root>-lb/<netns>/balancer/prog_xdp@<iface>   the program of a netlink attachment (xdp.go), and
//	<Root>-lb/<netns>/balancer/replaced_xdp@<iface>  another tool's program --force replaced
//	<Root>-lb/<netns>/decap/mptcpx_dc_*, link_xdp@<iface> ...  the same for the decapsulator
//
// The tree sits beside <Root> rather than inside it, because everything under <Root>/<netns>/ is an
// interface of the counting datapath to `status`, and any directory name could be an interface's.
// Needs the ring buffer (Linux 5.8).

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// LB pin names.
const (
	lbBalancerDir = "balancer"
	lbDecapDir    = "decap"
	lbIfaceSep    = "@" // between a hook's pin name and its interface
	lbLinkPrefix  = pinLinkXDP + lbIfaceSep
	lbProgPrefix  = pinProgXDP + lbIfaceSep
	// PinLBWeights is the control plane's map of backend weights.
	PinLBWeights = "mptcpx_lb_weights"
)

// LBRoot is the directory of the balancer pins: Root with "-lb" appended.
func (l *Loader) LBRoot() string { return l.Root + "-lb" }

// LBDir is the pin directory of the balancer of one network namespace (a NetnsDir name).
func (l *Loader) LBDir(nsDir string) string { return filepath.Join(l.LBRoot(), nsDir, lbBalancerDir) }

// DecapDir is the pin directory of the decapsulator of one network namespace.
func (l *Loader) DecapDir(nsDir string) string { return filepath.Join(l.LBRoot(), nsDir, lbDecapDir) }

// LBAttachOptions describe an attach of the balancer (or of the decapsulator).
type LBAttachOptions struct {
	Netns  string   // `ip netns` name; empty for the caller's namespace
	Ifaces []string // interfaces to attach to (in addition to those already attached)
	Mode   XDPMode  // auto, native or generic (the balancer: auto is native only)
	Force  bool     // replace another tool's netlink-attached XDP program (xdp.go)
	// Config of the balancer's program (hash seed, timeouts, table sizes); ignored by the
	// decapsulator. Its PinPath is the balancer's directory.
	Config lb.Config
	// The decapsulator's allowlist (ignored by the balancer), both required: it decapsulates an
	// outer packet to an address the namespace has at attach time only from one of
	// DecapBalancers (the balancers' source addresses toward it) and only when it carries a TCP
	// segment to one of DecapVIPs (port 0: every port). Each attach replaces the previous lists.
	DecapBalancers []netip.Addr
	DecapVIPs      []netip.AddrPort
}

// LBMaps are the pinned maps of one balancer, opened: the datapath's (pkg/lb) and the control
// plane's weights. Close them when done.
type LBMaps struct {
	*lb.Maps
	Weights *ebpf.Map // backend id → weight (u32), control plane only
	Health  *ebpf.Map // HealthKey → HealthEntry (lbhealth.go); nil for a balancer attached without it
	Dir     string
}

// Close closes every map.
func (m *LBMaps) Close() {
	_ = m.Maps.Close()
	if m.Weights != nil {
		m.Weights.Close()
	}
	if m.Health != nil {
		m.Health.Close()
	}
}

// ErrLBNotAttached is returned for a namespace with no balancer.
var ErrLBNotAttached = errors.New("no balancer attached")

// weightsSpec is the control plane's map of backend weights, as large as the backend table.
func weightsSpec(backends uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name: PinLBWeights, Type: ebpf.Array, KeySize: 4, ValueSize: 4,
		MaxEntries: backends, Pinning: ebpf.PinByName,
	}
}

// OpenLB opens the pinned maps of the balancer of a namespace (no lock: the maps are shared with a
// running datapath anyway).
func (l *Loader) OpenLB(netnsName string) (*LBMaps, error) {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return nil, err
	}
	dir := l.LBDir(nsDir)
	if _, err := os.Stat(filepath.Join(dir, lb.MapVIPs)); err != nil {
		return nil, fmt.Errorf("%w in network namespace %s", ErrLBNotAttached, nsDir)
	}
	maps, err := lb.OpenPinnedMaps(dir)
	if err != nil {
		return nil, err
	}
	w, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinLBWeights), nil)
	if err != nil {
		maps.Close()
		return nil, fmt.Errorf("open pinned map %s: %w", PinLBWeights, err)
	}
	h, err := OpenLBHealth(dir, false)
	if err != nil {
		maps.Close()
		w.Close()
		return nil, err
	}
	m := &LBMaps{Maps: maps, Weights: w, Health: h, Dir: dir}
	return m, nil
}

// AttachLB loads the balancer program with the namespace's pinned maps (creating and pinning them
// on the first attach) and attaches it to every interface given and every interface it was already
// attached to, updating those links in place so that steering never stops. It returns the maps.
func (l *Loader) AttachLB(o LBAttachOptions) (*LBMaps, error) {
	if err := o.validNames(); err != nil {
		return nil, err
	}
	unlock, err := l.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return l.attachLBKind(o, false)
}

// AttachLBLocked is AttachLB for a caller that holds l.Lock() already, so that attaching and
// configuring the balancer (pkg/control.Attach) is one locked operation.
func (l *Loader) AttachLBLocked(o LBAttachOptions) (*LBMaps, error) {
	if err := o.validNames(); err != nil {
		return nil, err
	}
	return l.attachLBKind(o, false)
}

// AttachDecap attaches the backends' decapsulator (ipip mode) to interfaces, accepting outer
// packets to any address the namespace has now, from o.DecapBalancers, carrying TCP to
// o.DecapVIPs (ErrDecapAllowEmpty without either).
func (l *Loader) AttachDecap(o LBAttachOptions) error {
	if err := o.validNames(); err != nil {
		return err
	}
	if len(o.DecapBalancers) == 0 || len(o.DecapVIPs) == 0 {
		return ErrDecapAllowEmpty
	}
	unlock, err := l.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	m, err := l.attachLBKind(o, true)
	if m != nil {
		m.Close()
	}
	return err
}

// attachLBKind does the attach; the caller holds the lock.
func (l *Loader) attachLBKind(o LBAttachOptions, decap bool) (_ *LBMaps, err error) {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	if err := validMode(o.Mode); err != nil {
		return nil, err
	}
	if len(o.Ifaces) == 0 {
		return nil, errors.New("no interface given")
	}
	if err := ProbeXDP(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	nsDir, err := netnsDirIn(o.Netns)
	if err != nil {
		return nil, err
	}
	if err := EnsureBPFFS(filepath.Dir(l.LBRoot())); err != nil {
		return nil, err
	}
	dir := l.LBDir(nsDir)
	what := "balancer"
	if decap {
		dir, what = l.DecapDir(nsDir), "decapsulator"
	}
	_, statErr := os.Stat(dir)
	first := statErr != nil
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	err = netns.Do(o.Netns, func() (err error) {
		var made []xdpHook
		defer func() {
			if err == nil {
				return
			}
			// Undo what this attach added: the attachments it made, and on a first attach
			// everything.
			for _, h := range made {
				_ = h.detach()
			}
			if first {
				removePins(dir)
				l.removeLBDirs(dir)
			}
		}()
		spec, err := lbSpec(decap, o.Config, dir)
		if err != nil {
			return err
		}
		// Maps of another layout are upgraded in place (migrate.go).
		migs, err := planMigrations(spec, dir)
		if err != nil {
			return fmt.Errorf("%w: run lb detach first (it drops every flow and token)", err)
		}
		defer func() {
			for _, m := range migs {
				m.close()
			}
		}()
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}, MapReplacements: replacements(migs)})
		if err != nil {
			if errors.Is(err, ebpf.ErrMapIncompatible) {
				return fmt.Errorf("maps pinned in %s come from an incompatible mptcp-xdp version: run lb detach first: %w", dir, err)
			}
			return fmt.Errorf("load %s: %w", what, err)
		}
		defer coll.Close()
		prog := coll.Programs[lb.ProgName]
		if decap {
			prog = coll.Programs[lb.DecapProg]
			if err := writeDecapAllow(coll, o); err != nil {
				return err
			}
		} else {
			w, err := ebpf.NewMapWithOptions(weightsSpec(spec.Maps[lb.MapBackends].MaxEntries), ebpf.MapOptions{PinPath: dir})
			if err != nil {
				return fmt.Errorf("create the weights map: %w", err)
			}
			w.Close()
			if err := createLBHealth(dir, spec.Maps[lb.MapBackends].MaxEntries); err != nil {
				return err
			}
		}
		// Every interface already attached gets the new program in place; then the new ones.
		ifaces := attachedIfaces(dir)
		for _, i := range o.Ifaces {
			if !contains(ifaces, i) {
				ifaces = append(ifaces, i)
			}
		}
		modes := balancerModes(o.Mode)
		if decap {
			modes = decapModes(o.Mode)
		}
		for _, iface := range ifaces {
			want := contains(o.Ifaces, iface)
			lnk, err := linkByName(iface, nsDir)
			if err != nil && want {
				return fmt.Errorf("attach %s: %w", what, err)
			}
			h := lbHook(dir, iface, lnk)
			before := xdpHeld{}
			if err == nil {
				before = h.held()
			}
			if before.mode == metaModeNone && !want {
				// An interface attached before is gone (or was replaced by another of its name):
				// its attachment went with it.
				_ = lbHook(dir, iface, nil).detach()
				continue
			}
			if _, err := h.attach(prog, o.Mode, modes, o.Force); err != nil {
				return fmt.Errorf("attach %s to %s: %w", what, iface, err)
			}
			if before.mode == metaModeNone {
				made = append(made, h)
			}
		}
		// The links run the new program on the upgraded maps: copy what the old program wrote
		// since the first copy, and pin the new maps in place of the old. A run of the old
		// program that began before its link was updated ends within microseconds (it runs in
		// an RCU read section): wait well past that first.
		if len(migs) > 0 {
			time.Sleep(migrationSettle)
		}
		for _, m := range migs {
			if err := m.finish(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if decap {
		return nil, nil
	}
	return l.OpenLB(o.Netns)
}

func lbSpec(decap bool, cfg lb.Config, dir string) (*ebpf.CollectionSpec, error) {
	if !decap {
		cfg.PinPath = dir
		return lb.Spec(cfg)
	}
	return lb.DecapSpec(true)
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// attachedIfaces lists the interfaces with a pinned link or netlink-attached program in dir.
func attachedIfaces(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		for _, prefix := range []string{lbLinkPrefix, lbProgPrefix} {
			if name, ok := strings.CutPrefix(e.Name(), prefix); ok && !contains(out, name) {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// lbHook is the XDP hook of iface (lnk: nil when it is gone) for the balancer or decapsulator
// pinned in dir.
func lbHook(dir, iface string, lnk netlink.Link) xdpHook {
	return xdpHook{lnk: lnk, linkPin: filepath.Join(dir, lbLinkPrefix+iface),
		progPin: filepath.Join(dir, lbProgPrefix+iface), replacedPin: filepath.Join(dir, pinReplacedXDP+lbIfaceSep+iface)}
}

// DetachLB removes the balancer of a namespace: every link, every pin (maps, flows, tokens), and the
// directories left empty. The balancer's traffic goes back to the kernel's routing. When the named
// namespace is gone, its stale pins are removed. Only pins mptcp-xdp makes are removed: anything
// else is left with its directory and reported as a *ForeignFilesError.
func (l *Loader) DetachLB(netnsName string) error { return l.detachLBKind(netnsName, nil, false) }

// DetachLBIfaces detaches the balancer from ifaces only; the last interface removes its maps too, as
// DetachLB does.
func (l *Loader) DetachLBIfaces(netnsName string, ifaces []string) error {
	if len(ifaces) == 0 {
		return fmt.Errorf("detach balancer: no interface given")
	}
	return l.detachLBKind(netnsName, ifaces, false)
}

// DetachDecap removes the decapsulator from ifaces (all of them when empty); the last one removes its
// maps too. A gone namespace and foreign files are handled as by DetachLB.
func (l *Loader) DetachDecap(netnsName string, ifaces []string) error {
	return l.detachLBKind(netnsName, ifaces, true)
}

func (l *Loader) detachLBKind(netnsName string, ifaces []string, decap bool) error {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return err
	}
	if err := validIfaceNames(ifaces); err != nil {
		return err
	}
	gone := netnsName != "" && !netns.Exists(netnsName)
	if gone && !staleNetnsDir(nsDir) {
		return fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", netnsName)
	}
	dir, what := l.LBDir(nsDir), "balancer"
	if decap {
		dir, what = l.DecapDir(nsDir), "decapsulator"
	}
	if err := under(l.LBRoot(), dir); err != nil {
		return err
	}
	unlock, err := l.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(dir); err != nil {
		if gone {
			return fmt.Errorf("detach %s: %w: network namespace %q does not exist (see `ip netns list`) and left no pins", what, ErrLBNotAttached, netnsName)
		}
		return fmt.Errorf("detach %s: %w in network namespace %s", what, ErrLBNotAttached, nsDir)
	}
	attached := attachedIfaces(dir)
	for _, i := range ifaces {
		if !contains(attached, i) {
			return fmt.Errorf("detach %s: not attached to %s in network namespace %s", what, i, nsDir)
		}
	}
	if len(ifaces) == 0 {
		ifaces = attached
	}
	var errs []error
	if gone {
		// The namespace is gone, and its interfaces with it: only the pins are left.
		for _, i := range ifaces {
			_ = lbHook(dir, i, nil).detach()
		}
	} else if err := netns.Do(netnsName, func() error {
		for _, i := range ifaces {
			lnk, _ := netlink.LinkByName(i) // nil when gone: the attachment went with it
			if err := lbHook(dir, i, lnk).detach(); err != nil {
				errs = append(errs, fmt.Errorf("detach %s from %s: %w", what, i, err))
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("detach %s: %w", what, err)
	}
	if len(attachedIfaces(dir)) == 0 {
		if left := removePins(dir); len(left) > 0 {
			errs = append(errs, fmt.Errorf("detach %s: removed mptcp-xdp's pins, but %w", what, &ForeignFilesError{Dir: dir, Names: left}))
		}
		l.removeLBDirs(dir)
	}
	return errors.Join(errs...)
}

// removeLBDirs removes dir and its parents up to the LB root while they are empty, then the tool's
// root if the lock left it empty.
func (l *Loader) removeLBDirs(dir string) {
	root := l.LBRoot()
	for len(dir) >= len(root) {
		if err := os.Remove(dir); err != nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	l.removeEmptyDirs(l.Root)
}

// LBLink is one interface a balancer or decapsulator is attached to.
type LBLink struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	XDPMode   string `json:"xdp_mode"`  // native or generic
	Mechanism string `json:"mechanism"` // bpf_link, or netlink (Linux < 5.9, or --force)
	LinkID    uint32 `json:"link_id"`   // 0 for a netlink attachment
	ProgID    uint32 `json:"prog_id"`
	Problem   string `json:"problem,omitempty"`
}

// LBLinks describes the interfaces of the balancer (or decapsulator) of a namespace.
func (l *Loader) LBLinks(netnsName string, decap bool) ([]LBLink, error) {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return nil, err
	}
	dir := l.LBDir(nsDir)
	if decap {
		dir = l.DecapDir(nsDir)
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w in network namespace %s", ErrLBNotAttached, nsDir)
	}
	var out []LBLink
	err = netns.Do(netnsName, func() error {
		for _, iface := range attachedIfaces(dir) {
			ll := LBLink{Interface: iface, Mechanism: "bpf_link"}
			if id := pinnedProgID(filepath.Join(dir, lbProgPrefix+iface)); id != 0 {
				// A netlink attachment (xdp.go): ours while the interface runs the pinned program.
				ll.Mechanism, ll.ProgID = "netlink", id
				nl, err := netlink.LinkByName(iface)
				switch {
				case err != nil:
					ll.Problem = "interface is gone"
				case nl.Attrs().Xdp == nil || nl.Attrs().Xdp.ProgId != id:
					ll.Ifindex = nl.Attrs().Index
					ll.Problem = "the interface no longer runs the pinned program"
				default:
					ll.Ifindex = nl.Attrs().Index
					ll.XDPMode = attachModeName(nl.Attrs().Xdp.AttachMode)
				}
				out = append(out, ll)
				continue
			}
			lk, err := link.LoadPinnedLink(filepath.Join(dir, lbLinkPrefix+iface), nil)
			if err != nil {
				ll.Problem = "pinned link unreadable: " + err.Error()
				out = append(out, ll)
				continue
			}
			if info, err := lk.Info(); err == nil {
				ll.LinkID, ll.ProgID = uint32(info.ID), uint32(info.Program)
				if x := info.XDP(); x != nil {
					ll.Ifindex = int(x.Ifindex)
				}
			}
			lk.Close()
			if ll.Ifindex == 0 {
				ll.Problem = "link is defunct: its interface is gone"
			} else if nl, err := netlink.LinkByIndex(ll.Ifindex); err == nil && nl.Attrs().Xdp != nil {
				ll.XDPMode = attachModeName(nl.Attrs().Xdp.AttachMode)
			}
			out = append(out, ll)
		}
		return nil
	})
	return out, err
}
