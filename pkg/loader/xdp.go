package loader

// The XDP attach ladder, one for every program mptcp-xdp attaches to an XDP hook: the counting
// datapath (attach.go), the balancer and the backends' decapsulator (lb.go).
//
//  1. A hook we hold already gets the new program in place: the pinned bpf_link is updated, or our
//     netlink attachment is replaced, as long as the mode asked for is the one it runs in.
//  2. Otherwise a new bpf_link (Linux 5.9), in the first mode of the list that the driver takes,
//     pinned at once.
//  3. No bpf_link for XDP: netlink with XDP_FLAGS_UPDATE_IF_NOEXIST, so that another program is
//     never clobbered, and the program pinned so that detach can tell it is ours.
//  4. Another program on the hook: an error naming it, unless --force, which replaces a netlink
//     attachment (in its own mode: the kernel keeps one mode per interface) but never a program held
//     by another owner's bpf_link. The replaced program is pinned, and detach puts it back.

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// XDPMode selects how the XDP program is attached.
type XDPMode string

// XDP modes.
const (
	ModeAuto    XDPMode = "auto"    // native, else generic (the balancer: native only)
	ModeNative  XDPMode = "native"  // in the driver
	ModeGeneric XDPMode = "generic" // on the skb, any interface
)

func validMode(m XDPMode) error {
	switch m {
	case ModeAuto, ModeNative, ModeGeneric:
		return nil
	}
	return fmt.Errorf("unknown XDP mode %q: use auto, native or generic", m)
}

// The pins of one XDP hook (loader.go: pinLinkXDP, pinProgXDP, pinReplacedXDP): the counting
// datapath's sit in the interface's directory under these names; the balancer's and the
// decapsulator's, shared by a namespace's interfaces, in the balancer's (decapsulator's) directory
// with "@<iface>" appended.

// xdpHook is one interface's XDP hook and where mptcp-xdp pins what it holds there.
type xdpHook struct {
	lnk                           netlink.Link
	linkPin, progPin, replacedPin string
}

// xdpHeld is how we hold a hook.
type xdpHeld struct {
	mode    uint32 // metaModeNative or metaModeGeneric; metaModeNone when we hold nothing
	netlink bool   // a netlink attachment rather than a bpf_link
}

// current is what the kernel has on the hook now (nil for nothing).
func (h xdpHook) current() (*netlink.LinkXdp, error) {
	fresh, err := netlink.LinkByIndex(h.lnk.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", h.lnk.Attrs().Name, err)
	}
	if x := fresh.Attrs().Xdp; x != nil && x.ProgId != 0 {
		return x, nil
	}
	return nil, nil
}

// held reports how we hold the hook: a pinned link that runs on this interface, or a pinned
// program that is the one the interface runs.
func (h xdpHook) held() xdpHeld {
	cur, _ := h.current()
	mode := metaModeNone
	if cur != nil {
		mode = modeOfAttached(cur.AttachMode)
	}
	if lk, err := link.LoadPinnedLink(h.linkPin, nil); err == nil {
		defer lk.Close()
		if info, err := lk.Info(); err == nil {
			if x := info.XDP(); x != nil && x.Ifindex == uint32(h.lnk.Attrs().Index) && cur != nil {
				return xdpHeld{mode: mode}
			}
		}
		return xdpHeld{}
	}
	if cur != nil && pinnedProgID(h.progPin) == cur.ProgId {
		return xdpHeld{mode: mode, netlink: true}
	}
	return xdpHeld{}
}

// pinnedProgID is the id of the program pinned at path; 0 when there is none.
func pinnedProgID(path string) uint32 {
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		return 0
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return 0
	}
	id, _ := info.ID()
	return uint32(id)
}

// attach puts prog on the hook, following the ladder. want is the mode asked for (a hook we hold
// in another mode is detached and attached anew), modes the modes to try for a new attachment,
// best first.
func (h xdpHook) attach(prog *ebpf.Program, want XDPMode, modes []uint32, force bool) (xdpHeld, error) {
	held := h.held()
	if held.mode != metaModeNone && modeMatches(want, held.mode) {
		if !held.netlink {
			lk, err := link.LoadPinnedLink(h.linkPin, nil)
			if err == nil {
				err = lk.Update(prog)
				lk.Close()
			}
			if err == nil {
				return held, nil
			}
			// The link cannot take the program: attach anew below.
		} else {
			_, nlFlag := modeFlags(held.mode)
			if err := netlink.LinkSetXdpFdWithFlags(h.lnk, prog.FD(), nlFlag); err != nil {
				return xdpHeld{}, fmt.Errorf("replace XDP program via netlink: %w", err)
			}
			return held, repin(prog, h.progPin)
		}
	}
	// Another mode was asked for, or what is pinned is defunct or not on the hook any more.
	if err := h.release(); err != nil {
		return xdpHeld{}, err
	}

	var lastErr error
	for _, mode := range modes {
		flag, nlFlag := modeFlags(mode)
		lk, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: h.lnk.Attrs().Index, Flags: flag})
		if err == nil {
			err := lk.Pin(h.linkPin)
			lk.Close() // an unpinned link detaches on close
			if err != nil {
				return xdpHeld{}, fmt.Errorf("pin XDP link: %w", err)
			}
			return xdpHeld{mode: mode}, nil
		}
		switch {
		case errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST):
			return h.conflict(prog, mode, force)
		case errors.Is(err, link.ErrNotSupported):
			// No bpf_link for XDP (Linux < 5.9): netlink, never clobbering another program.
			if err := netlink.LinkSetXdpFdWithFlags(h.lnk, prog.FD(), nlFlag|nlXDPFlagsUpdateIfNoExist); err != nil {
				if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
					return h.conflict(prog, mode, force)
				}
				lastErr = fmt.Errorf("attach XDP (%s mode) via netlink: %w", modeName(mode), err)
				continue
			}
			return xdpHeld{mode: mode, netlink: true}, repin(prog, h.progPin)
		default:
			lastErr = fmt.Errorf("attach XDP in %s mode: %w", modeName(mode), err)
		}
	}
	if lastErr != nil && len(modes) == 1 && modes[0] == metaModeNative {
		return xdpHeld{}, fmt.Errorf("%w (the driver of %s may lack native XDP: try --mode generic)", lastErr, h.lnk.Attrs().Name)
	}
	return xdpHeld{}, lastErr
}

// conflict handles a hook that holds a program that is not ours.
func (h xdpHook) conflict(prog *ebpf.Program, mode uint32, force bool) (xdpHeld, error) {
	name := h.lnk.Attrs().Name
	cur, err := h.current()
	if err != nil {
		return xdpHeld{}, err
	}
	desc := "another XDP program"
	if cur != nil {
		desc = fmt.Sprintf("XDP program %d", cur.ProgId)
		if n := progName(cur.ProgId); n != "" {
			desc = fmt.Sprintf("XDP program %d (%s)", cur.ProgId, n)
		}
		desc += " in " + attachModeName(cur.AttachMode) + " mode"
	}
	if !force {
		return xdpHeld{}, fmt.Errorf("%s already has %s attached by another tool: use --force to replace it", name, desc)
	}
	if cur != nil {
		if m := modeOfAttached(cur.AttachMode); m != metaModeNone {
			mode = m
		}
	}
	// Keep the program we replace, so that detach can put it back; a program replaced by an
	// earlier --force is kept as it was.
	var kept *ebpf.Program
	if cur != nil {
		if _, err := os.Lstat(h.replacedPin); err != nil {
			if p, err := ebpf.NewProgramFromID(ebpf.ProgramID(cur.ProgId)); err == nil {
				if err := p.Pin(h.replacedPin); err == nil {
					kept = p
				} else {
					p.Close()
				}
			}
		}
	}
	_, nlFlag := modeFlags(mode)
	if err := netlink.LinkSetXdpFdWithFlags(h.lnk, prog.FD(), nlFlag); err != nil {
		if kept != nil {
			_ = kept.Unpin()
			kept.Close()
		}
		if errors.Is(err, unix.EBUSY) {
			return xdpHeld{}, fmt.Errorf("%s has %s held by a bpf_link: its owner must detach it (--force replaces only netlink attachments)", name, desc)
		}
		return xdpHeld{}, fmt.Errorf("replace %s on %s: %w", desc, name, err)
	}
	if kept != nil {
		kept.Close()
	}
	return xdpHeld{mode: mode, netlink: true}, repin(prog, h.progPin)
}

// release takes our program off the hook and removes its pins, leaving a replaced program pinned
// (attach is about to put ours back).
func (h xdpHook) release() error {
	unpinLink(h.linkPin)
	if id := pinnedProgID(h.progPin); id != 0 && h.lnk != nil {
		cur, err := h.current()
		if err == nil && cur != nil && cur.ProgId == id {
			_, nlFlag := modeFlags(modeOfAttached(cur.AttachMode))
			if err := netlink.LinkSetXdpFdWithFlags(h.lnk, -1, nlFlag); err != nil {
				return fmt.Errorf("remove XDP program from %s: %w", h.lnk.Attrs().Name, err)
			}
		}
	}
	return removePin(h.progPin)
}

// detach takes our program off the hook, removes its pins, and puts back a program that --force
// replaced, in the mode ours ran in. The replaced program is not put back over a program that
// another tool attached since, nor on an interface that is not the one ours ran on (lnk nil: the
// interface is gone); the former is an error, after everything else is done.
func (h xdpHook) detach() error {
	held := xdpHeld{}
	if h.lnk != nil {
		held = h.held()
	}
	if err := h.release(); err != nil {
		return err
	}
	p, err := ebpf.LoadPinnedProgram(h.replacedPin, nil)
	if err != nil {
		return removePin(h.replacedPin)
	}
	defer p.Close()
	desc := fmt.Sprintf("XDP program %d", pinnedProgID(h.replacedPin))
	if err := removePin(h.replacedPin); err != nil || held.mode == metaModeNone {
		return err // ours was not on the hook: nothing of the interface's to put back
	}
	_, nlFlag := modeFlags(held.mode)
	if err := netlink.LinkSetXdpFdWithFlags(h.lnk, p.FD(), nlFlag|nlXDPFlagsUpdateIfNoExist); err != nil {
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("detached, but did not restore %s (replaced by --force) on %s: another XDP program is attached now", desc, h.lnk.Attrs().Name)
		}
		return fmt.Errorf("detached, but could not restore %s (replaced by --force) on %s: %w", desc, h.lnk.Attrs().Name, err)
	}
	return nil
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

// wantedModes lists the XDP modes the counting datapath tries, best first. auto prefers native,
// except on veth: there native XDP takes GRO from the receiving end and TSO from its peer, which
// makes MPTCP over veth several times slower than generic XDP, and on Linux 6.18 it exposes a
// kernel fault that corrupts MPTCP byte streams (docs/benchmarks.md "Throughput",
// docs/veth-lab.md).
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

// balancerModes lists the XDP modes the balancer tries: native only unless generic is asked for.
// Generic XDP runs after GRO, so the balancer would see aggregates larger than the MTU, which it
// cannot forward as they are (docs/lb.md "Generic XDP").
func balancerModes(m XDPMode) []uint32 {
	if m == ModeGeneric {
		return []uint32{metaModeGeneric}
	}
	return []uint32{metaModeNative}
}

// decapModes lists the XDP modes the decapsulator tries, best first: native, else generic.
func decapModes(m XDPMode) []uint32 { return wantedModes(m, nil) }

func modeMatches(want XDPMode, have uint32) bool {
	switch want {
	case ModeNative:
		return have == metaModeNative
	case ModeGeneric:
		return have == metaModeGeneric
	}
	return have != metaModeNone
}

// XDP attach modes as netlink reports them (XDP_ATTACHED_*).
const (
	nlAttachedDrv = 1
	nlAttachedSKB = 2
	nlAttachedHW  = 3
)

func modeOfAttached(m uint32) uint32 {
	switch m {
	case nlAttachedDrv:
		return metaModeNative
	case nlAttachedSKB:
		return metaModeGeneric
	}
	return metaModeNone
}

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
