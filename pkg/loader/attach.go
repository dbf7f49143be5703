package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// XDPMode selects how the XDP program is attached.
type XDPMode string

// XDP modes.
const (
	ModeAuto    XDPMode = "auto"    // native, else generic
	ModeNative  XDPMode = "native"  // in the driver
	ModeGeneric XDPMode = "generic" // on the skb, any interface
)

// IngressHook selects the hook that counts received packets.
type IngressHook string

// Ingress hooks.
const (
	IngressXDP IngressHook = "xdp"
	IngressTC  IngressHook = "tc"
)

// TCMechanism selects how TC programs are attached.
type TCMechanism string

// TC mechanisms.
const (
	TCAuto   TCMechanism = "auto"   // tcx, else clsact
	TCX      TCMechanism = "tcx"    // bpf_link on the tcx hook (Linux 6.6)
	TCClsact TCMechanism = "clsact" // clsact qdisc with a direct-action cls_bpf filter
)

// AttachOptions describe one attach.
type AttachOptions struct {
	Iface   string
	Netns   string // `ip netns` name; empty for the caller's namespace
	Mode    XDPMode
	Ingress IngressHook
	TC      TCMechanism
	Egress  bool
	Force   bool // replace another tool's XDP program
}

func (o *AttachOptions) validate() error {
	if o.Mode == "" {
		o.Mode = ModeAuto
	}
	if o.Ingress == "" {
		o.Ingress = IngressXDP
	}
	if o.TC == "" {
		o.TC = TCAuto
	}
	switch o.Mode {
	case ModeAuto, ModeNative, ModeGeneric:
	default:
		return fmt.Errorf("unknown XDP mode %q: use auto, native or generic", o.Mode)
	}
	switch o.Ingress {
	case IngressXDP, IngressTC:
	default:
		return fmt.Errorf("unknown ingress hook %q: use xdp or tc", o.Ingress)
	}
	switch o.TC {
	case TCAuto, TCX, TCClsact:
	default:
		return fmt.Errorf("unknown TC mechanism %q: use auto, tcx or clsact", o.TC)
	}
	if o.Iface == "" {
		return errors.New("no interface given")
	}
	return nil
}

// Attach loads the programs, attaches them to one interface and pins everything. Attaching again
// updates the pinned links in place, keeping the counters.
func (l *Loader) Attach(o AttachOptions) (*Attachment, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if err := ProbeTC(); err != nil && (o.Egress || o.Ingress == IngressTC) {
		return nil, err
	}
	if err := ProbeXDP(); err != nil && o.Ingress == IngressXDP {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	nsDir, err := netnsDirIn(o.Netns)
	if err != nil {
		return nil, err
	}
	unlock, err := l.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()

	var att *Attachment
	err = netns.Do(o.Netns, func() (err error) {
		lnk, err := linkByName(o.Iface, nsDir)
		if err != nil {
			return err
		}
		dir := l.IfaceDir(nsDir, o.Iface)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory %s: %w", dir, err)
		}
		nsIno, err := netns.Inode("")
		if err != nil {
			return err
		}
		// State pinned for an interface that is gone (same name, new index or namespace) is stale.
		old, attached := loadPinnedMeta(dir)
		if attached && old.Ifindex != 0 &&
			(old.Ifindex != uint32(lnk.Attrs().Index) || old.NetnsIno != nsIno) {
			removePins(dir)
			attached = false
		}
		attached = attached && old.Ifindex != 0
		if !attached {
			// A first attach that fails leaves nothing behind.
			defer func() {
				if err != nil {
					m := Meta{}
					m, _ = loadPinnedMeta(dir)
					_ = detachXDP(dir, lnk, &m)
					_ = detachTC(dir, lnk, ingress, &m)
					_ = detachTC(dir, lnk, egress, &m)
					removePins(dir)
					l.removeEmptyDirs(dir)
				}
			}()
		}

		objs, err := loadObjects(dir, o.Ingress == IngressXDP, o.Ingress == IngressTC, o.Egress)
		if err != nil {
			return err
		}
		defer objs.Close()
		meta, err := readMeta(objs.meta)
		if err != nil {
			return err
		}
		if meta.Ifindex == 0 {
			meta.AttachedNs = uint64(time.Now().UnixNano())
		}
		meta.Ifindex = uint32(lnk.Attrs().Index)
		meta.NetnsIno = nsIno
		// Record progress even when a later step fails, so that detach can undo it.
		defer func() { _ = writeMeta(objs.meta, meta) }()

		if o.Ingress == IngressXDP {
			if err := attachXDP(dir, lnk, objs.xdp, o, &meta); err != nil {
				return err
			}
			if err := detachTC(dir, lnk, ingress, &meta); err != nil {
				return err
			}
		} else {
			if err := attachTC(dir, lnk, objs.tcIngress, ingress, o.TC, &meta); err != nil {
				return err
			}
			if err := detachXDP(dir, lnk, &meta); err != nil {
				return err
			}
		}
		meta.Ingress = map[IngressHook]uint32{IngressXDP: metaIngressXDP, IngressTC: metaIngressTC}[o.Ingress]
		if o.Egress {
			if err := attachTC(dir, lnk, objs.tcEgress, egress, o.TC, &meta); err != nil {
				return err
			}
			meta.Egress = 1
		} else {
			if err := detachTC(dir, lnk, egress, &meta); err != nil {
				return err
			}
			meta.Egress = 0
		}
		if err := writeMeta(objs.meta, meta); err != nil {
			return err
		}
		att, err = l.describe(nsDir, o.Iface)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach to %s: %w", o.Iface, err)
	}
	return att, nil
}

// netnsDirIn resolves the pin directory name of a namespace, entering it for an unnamed one.
func netnsDirIn(name string) (string, error) {
	if name != "" {
		if !netns.Exists(name) {
			return "", fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", name)
		}
	}
	return NetnsDir(name)
}

func linkByName(name, nsDir string) (netlink.Link, error) {
	lnk, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("interface %q not found in network namespace %s", name, nsDir)
		}
		return nil, fmt.Errorf("look up interface %q: %w", name, err)
	}
	return lnk, nil
}

func modeFlags(m uint32) (link.XDPAttachFlags, int) {
	if m == metaModeGeneric {
		return link.XDPGenericMode, nlXDPFlagsSKBMode
	}
	return link.XDPDriverMode, nlXDPFlagsDrvMode
}

// netlink XDP flags (linux/if_link.h).
const (
	nlXDPFlagsUpdateIfNoExist = 1 << 0
	nlXDPFlagsSKBMode         = 1 << 1
	nlXDPFlagsDrvMode         = 1 << 2
)

// wantedModes lists the XDP modes to try, best first. auto prefers native, except on veth: there
// native XDP takes GRO from the receiving end and TSO from its peer, which makes MPTCP over veth
// several times slower than generic XDP, and on Linux 6.18 it exposes a kernel fault that corrupts
// MPTCP byte streams (docs/benchmarks.md "Throughput", docs/veth-lab.md). A nil lnk (the balancer,
// which forwards with XDP_TX/XDP_REDIRECT and wants the driver's hook) always prefers native.
func wantedModes(m XDPMode, lnk netlink.Link) []uint32 {
	switch m {
	case ModeNative:
		return []uint32{metaModeNative}
	case ModeGeneric:
		return []uint32{metaModeGeneric}
	}
	if lnk != nil && lnk.Type() == "veth" {
		return []uint32{metaModeGeneric, metaModeNative}
	}
	return []uint32{metaModeNative, metaModeGeneric}
}

func modeMatches(want XDPMode, have uint32) bool {
	switch want {
	case ModeNative:
		return have == metaModeNative
	case ModeGeneric:
		return have == metaModeGeneric
	}
	return have != metaModeNone
}

// attachXDP follows the ladder: update our pinned link → new bpf_link → netlink (old kernels, or
// --force over another tool's program).
func attachXDP(dir string, lnk netlink.Link, prog *ebpf.Program, o AttachOptions, meta *Meta) error {
	ifindex := lnk.Attrs().Index
	linkPin := filepath.Join(dir, pinLinkXDP)
	if pinned, err := link.LoadPinnedLink(linkPin, nil); err == nil {
		if modeMatches(o.Mode, meta.XdpMode) {
			err := pinned.Update(prog)
			pinned.Close()
			if err == nil {
				return nil
			}
		} else {
			pinned.Close()
		}
		// Another mode was asked for, or the link is defunct: detach before attaching anew.
		if err := detachXDP(dir, lnk, meta); err != nil {
			return err
		}
	}
	if meta.Flags&metaXDPNetlink != 0 {
		if modeMatches(o.Mode, meta.XdpMode) {
			_, nlFlag := modeFlags(meta.XdpMode)
			if err := netlink.LinkSetXdpFdWithFlags(lnk, prog.FD(), nlFlag); err != nil {
				return fmt.Errorf("replace XDP program via netlink: %w", err)
			}
			return repin(prog, filepath.Join(dir, pinProgXDP))
		}
		if err := detachXDP(dir, lnk, meta); err != nil {
			return err
		}
	}

	var lastErr error
	for _, mode := range wantedModes(o.Mode, lnk) {
		flag, nlFlag := modeFlags(mode)
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex, Flags: flag})
		if err == nil {
			if err := l.Pin(linkPin); err != nil {
				l.Close()
				return fmt.Errorf("pin XDP link: %w", err)
			}
			l.Close()
			meta.XdpMode = mode
			meta.Flags &^= metaXDPNetlink
			return nil
		}
		switch {
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST):
			return xdpConflict(dir, lnk, prog, mode, o.Force, meta)
		case errors.Is(err, link.ErrNotSupported):
			// No bpf_link for XDP (Linux < 5.9): netlink, never clobbering another program.
			if err := netlink.LinkSetXdpFdWithFlags(lnk, prog.FD(), nlFlag|nlXDPFlagsUpdateIfNoExist); err != nil {
				if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
					return xdpConflict(dir, lnk, prog, mode, o.Force, meta)
				}
				lastErr = fmt.Errorf("attach XDP (%s mode) via netlink: %w", modeName(mode), err)
				continue
			}
			meta.XdpMode = mode
			meta.Flags |= metaXDPNetlink
			return repin(prog, filepath.Join(dir, pinProgXDP))
		default:
			lastErr = fmt.Errorf("attach XDP in %s mode: %w", modeName(mode), err)
		}
	}
	if o.Mode == ModeNative && lastErr != nil {
		return fmt.Errorf("%w (the driver of %s may lack native XDP: try --mode generic)", lastErr, lnk.Attrs().Name)
	}
	return lastErr
}

// xdpConflict handles an interface that already has an XDP program that is not ours.
func xdpConflict(dir string, lnk netlink.Link, prog *ebpf.Program, mode uint32, force bool, meta *Meta) error {
	fresh, err := netlink.LinkByIndex(lnk.Attrs().Index)
	if err != nil {
		return fmt.Errorf("look up %s: %w", lnk.Attrs().Name, err)
	}
	desc := "another XDP program"
	if x := fresh.Attrs().Xdp; x != nil && x.ProgId != 0 {
		desc = fmt.Sprintf("XDP program %d", x.ProgId)
		if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgId)); err == nil {
			if info, err := p.Info(); err == nil && info.Name != "" {
				desc = fmt.Sprintf("XDP program %d (%s)", x.ProgId, info.Name)
			}
			p.Close()
		}
		desc += " in " + attachModeName(x.AttachMode) + " mode"
	}
	if !force {
		return fmt.Errorf("%s already has %s attached by another tool: use --force to replace it", lnk.Attrs().Name, desc)
	}
	// Only a netlink attachment can be replaced; one held by a bpf_link belongs to its owner. It is
	// replaced in its own mode: the kernel keeps one mode per interface.
	var flags int
	if x := fresh.Attrs().Xdp; x != nil {
		switch x.AttachMode {
		case nlAttachedSKB:
			mode = metaModeGeneric
		case nlAttachedDrv:
			mode = metaModeNative
		}
	}
	_, flags = modeFlags(mode)
	if err := netlink.LinkSetXdpFdWithFlags(fresh, prog.FD(), flags); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%s has %s held by a bpf_link: its owner must detach it (--force replaces only netlink attachments)", lnk.Attrs().Name, desc)
		}
		return fmt.Errorf("replace %s on %s: %w", desc, lnk.Attrs().Name, err)
	}
	meta.XdpMode = mode
	meta.Flags |= metaXDPNetlink
	return repin(prog, filepath.Join(dir, pinProgXDP))
}

// XDP attach modes as netlink reports them (XDP_ATTACHED_*).
const (
	nlAttachedDrv = 1
	nlAttachedSKB = 2
	nlAttachedHW  = 3
)

func attachModeName(m uint32) string {
	switch m {
	case nlAttachedDrv:
		return "native"
	case nlAttachedSKB:
		return "generic"
	case nlAttachedHW:
		return "offload"
	}
	return "unknown"
}

func modeName(m uint32) string {
	switch m {
	case metaModeNative:
		return "native"
	case metaModeGeneric:
		return "generic"
	}
	return ""
}

// repin pins prog at path, replacing whatever was pinned there.
func repin(prog *ebpf.Program, path string) error {
	_ = os.Remove(path)
	if err := prog.Pin(path); err != nil {
		return fmt.Errorf("pin program at %s: %w", path, err)
	}
	return nil
}
