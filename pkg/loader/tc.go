package loader

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type tcDir int

const (
	ingress tcDir = iota
	egress
)

func (d tcDir) String() string {
	if d == ingress {
		return "ingress"
	}
	return "egress"
}

func (d tcDir) linkPin() string {
	if d == ingress {
		return pinLinkTCIngress
	}
	return pinLinkTCEgress
}

func (d tcDir) progPin() string {
	if d == ingress {
		return pinProgTCIngress
	}
	return pinProgTCEgress
}

func (d tcDir) attachType() ebpf.AttachType {
	if d == ingress {
		return ebpf.AttachTCXIngress
	}
	return ebpf.AttachTCXEgress
}

func (d tcDir) parent() uint32 {
	if d == ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func (d tcDir) filterName() string {
	if d == ingress {
		return ProgPrefix + "tc_in"
	}
	return ProgPrefix + "tc_out"
}

// Our clsact filters sit at this priority and handle, so FilterReplace swaps them in place.
const (
	filterPrio   = 0xc0de
	filterHandle = 1
)

// attachTC attaches prog at TC ingress or egress: update our pinned tcx link → new tcx link →
// clsact qdisc with a direct-action filter (kernels before 6.6, or --tc clsact).
func attachTC(dir string, lnk netlink.Link, prog *ebpf.Program, d tcDir, mech TCMechanism, meta *Meta) error {
	linkPin := filepath.Join(dir, d.linkPin())
	if mech != TCClsact {
		if pinned, err := link.LoadPinnedLink(linkPin, nil); err == nil {
			err := pinned.Update(prog)
			pinned.Close()
			if err == nil {
				return removeClsactFilter(lnk, d, meta)
			}
			unpinLink(linkPin)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: lnk.Attrs().Index, Program: prog, Attach: d.attachType()})
		if err == nil {
			if err := l.Pin(linkPin); err != nil {
				l.Close()
				return fmt.Errorf("pin tcx %s link: %w", d, err)
			}
			l.Close()
			_ = removePin(filepath.Join(dir, d.progPin()))
			return removeClsactFilter(lnk, d, meta)
		}
		if mech == TCX || !(errors.Is(err, link.ErrNotSupported) || errors.Is(err, unix.EINVAL)) {
			if errors.Is(err, link.ErrNotSupported) {
				return &FeatureError{Feature: "tcx", Kernel: "6.6", Err: err}
			}
			return fmt.Errorf("attach tcx %s: %w", d, err)
		}
	} else {
		unpinLink(linkPin)
	}

	// clsact + cls_bpf direct-action.
	if err := ensureClsact(lnk, meta); err != nil {
		return err
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: lnk.Attrs().Index,
			Parent:    d.parent(),
			Handle:    filterHandle,
			Priority:  filterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         d.filterName(),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("add clsact %s filter: %w", d, missingModule(err, "the cls_bpf classifier (CONFIG_NET_CLS_BPF; as a module: modprobe cls_bpf)"))
	}
	meta.Flags |= metaTCNetlink
	return repin(prog, filepath.Join(dir, d.progPin()))
}

// detachTC removes our program from TC ingress or egress, whichever way it was attached.
func detachTC(dir string, lnk netlink.Link, d tcDir, meta *Meta) error {
	unpinLink(filepath.Join(dir, d.linkPin()))
	if err := removeClsactFilter(lnk, d, meta); err != nil {
		return err
	}
	return removePin(filepath.Join(dir, d.progPin()))
}

func ensureClsact(lnk netlink.Link, meta *Meta) error {
	qs, err := netlink.QdiscList(lnk)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", lnk.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return nil
		}
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lnk.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil {
		return fmt.Errorf("add clsact qdisc to %s: %w", lnk.Attrs().Name, missingModule(err, "the clsact qdisc (CONFIG_NET_SCH_INGRESS; as a module: modprobe sch_ingress)"))
	}
	meta.Flags |= metaClsactAdded
	return nil
}

// missingModule names what is missing when the kernel answers ENOENT to a qdisc or filter of a
// kind it does not know: one that was not built, or whose module is not loaded (the kernel's own
// message, "Specified qdisc kind is unknown", does not reach netlink's errno).
func missingModule(err error, what string) error {
	if errors.Is(err, unix.ENOENT) {
		return &FeatureError{Feature: what, Kernel: "4.5", Err: err}
	}
	return err
}

// ourFilters lists the cls_bpf filters of ours at one clsact hook.
func ourFilters(lnk netlink.Link, d tcDir) ([]*netlink.BpfFilter, error) {
	fs, err := netlink.FilterList(lnk, d.parent())
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil, nil // no clsact qdisc
		}
		return nil, fmt.Errorf("list %s filters of %s: %w", d, lnk.Attrs().Name, err)
	}
	var ours []*netlink.BpfFilter
	for _, f := range fs {
		if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, ProgPrefix) {
			ours = append(ours, bf)
		}
	}
	return ours, nil
}

// removeClsactFilter deletes our filter at one hook, and the clsact qdisc once it is ours and empty.
func removeClsactFilter(lnk netlink.Link, d tcDir, meta *Meta) error {
	if meta.Flags&(metaTCNetlink|metaClsactAdded) == 0 {
		return nil
	}
	fs, err := ourFilters(lnk, d)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete %s filter of %s: %w", d, lnk.Attrs().Name, err)
		}
	}
	return maybeRemoveClsact(lnk, meta)
}

// maybeRemoveClsact deletes the clsact qdisc we added once neither hook holds a filter.
func maybeRemoveClsact(lnk netlink.Link, meta *Meta) error {
	remaining := 0
	for _, d := range []tcDir{ingress, egress} {
		fs, err := netlink.FilterList(lnk, d.parent())
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("list %s filters of %s: %w", d, lnk.Attrs().Name, err)
		}
		remaining += len(fs)
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, ProgPrefix) {
				return nil // one of ours is still in use
			}
		}
	}
	if remaining == 0 {
		meta.Flags &^= metaTCNetlink
	}
	if meta.Flags&metaClsactAdded == 0 || remaining > 0 {
		return nil
	}
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lnk.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete clsact qdisc of %s: %w", lnk.Attrs().Name, err)
	}
	meta.Flags &^= metaClsactAdded | metaTCNetlink
	return nil
}
