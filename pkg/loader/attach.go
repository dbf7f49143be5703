package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// IngressHook selects the hook that counts received packets.
type IngressHook string

// Ingress hooks.
const (
	IngressXDP IngressHook = "xdp"
	IngressTC  IngressHook = "tc"
	// IngressAuto (the default) takes the hook that costs least for counting on this interface:
	// TC ingress on a veth, whose XDP, even native, runs on skbs already built and costs GRO
	// (docs/benchmarks.md, "What attach does by default"); native XDP where the driver has it (it runs
	// before the skb is built); TC ingress where the driver refuses native XDP, rather than
	// generic XDP, which costs more than the parser. An XDP mode asked for (--mode native or
	// generic) means XDP.
	IngressAuto IngressHook = "auto"
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
		o.Ingress = IngressAuto
	}
	if o.TC == "" {
		o.TC = TCAuto
	}
	if err := validMode(o.Mode); err != nil {
		return err
	}
	switch o.Ingress {
	case IngressXDP, IngressTC, IngressAuto:
	default:
		return fmt.Errorf("unknown ingress hook %q: use auto, xdp or tc", o.Ingress)
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
	if o.Ingress == IngressAuto && o.Mode != ModeAuto {
		o.Ingress = IngressXDP // an XDP mode was asked for; meta records no choice
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

		// auto: TC on a veth; elsewhere native XDP, with TC ingress loaded too in case the driver
		// refuses it (one more program verified, only on devices that are not veths).
		ingressHook, why := o.Ingress, Meta{}.Flags
		if o.Ingress == IngressAuto {
			why = metaIngressAuto
			ingressHook = IngressXDP
			if lnk.Type() == "veth" {
				ingressHook, why = IngressTC, why|metaAutoVeth
			}
		}
		objs, err := loadObjects(dir, ingressHook == IngressXDP, ingressHook == IngressTC || o.Ingress == IngressAuto, o.Egress)
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

		if ingressHook == IngressXDP {
			xo := o
			if o.Ingress == IngressAuto {
				xo.Mode = ModeNative
			}
			err := attachXDP(dir, lnk, objs.xdp, xo, &meta)
			if err != nil && o.Ingress == IngressAuto && errors.Is(err, unix.EOPNOTSUPP) {
				ingressHook, why = IngressTC, why|metaAutoNoNativ
			} else if err != nil {
				return err
			} else if err := detachTC(dir, lnk, ingress, &meta); err != nil {
				return err
			}
		}
		if ingressHook == IngressTC {
			if err := attachTC(dir, lnk, objs.tcIngress, ingress, o.TC, &meta); err != nil {
				return err
			}
			if err := detachXDP(dir, lnk, &meta); err != nil {
				return err
			}
		}
		meta.Ingress = map[IngressHook]uint32{IngressXDP: metaIngressXDP, IngressTC: metaIngressTC}[ingressHook]
		meta.Flags = meta.Flags&^(metaIngressAuto|metaAutoVeth|metaAutoNoNativ) | why
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

// xdpHookIn is the counting datapath's XDP hook on lnk, pinned in the interface directory dir.
func xdpHookIn(dir string, lnk netlink.Link) xdpHook {
	return xdpHook{lnk: lnk, linkPin: filepath.Join(dir, pinLinkXDP), progPin: filepath.Join(dir, pinProgXDP),
		replacedPin: filepath.Join(dir, pinReplacedXDP)}
}

// attachXDP puts the counting datapath's XDP program on lnk (xdp.go's ladder) and records how in
// meta.
func attachXDP(dir string, lnk netlink.Link, prog *ebpf.Program, o AttachOptions, meta *Meta) error {
	held, err := xdpHookIn(dir, lnk).attach(prog, o.Mode, wantedModes(o.Mode, lnk), o.Force)
	meta.XdpMode = held.mode
	if held.netlink {
		meta.Flags |= metaXDPNetlink
	} else {
		meta.Flags &^= metaXDPNetlink
	}
	return err
}
