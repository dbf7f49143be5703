package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// ErrNotAttached is returned by Detach for an interface mptcp-xdp is not attached to.
var ErrNotAttached = errors.New("not attached")

// Detach removes every link, filter, qdisc and pin mptcp-xdp made for one interface, and nothing
// else. When the interface or its namespace is gone, the stale pins are removed.
func (l *Loader) Detach(netnsName, iface string) error {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return err
	}
	unlock, err := l.Lock()
	if err != nil {
		return err
	}
	defer unlock()

	dir := l.IfaceDir(nsDir, iface)
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("detach %s: %w in network namespace %s", iface, ErrNotAttached, nsDir)
	}
	meta, _ := loadPinnedMeta(dir)
	if netnsName != "" && !netns.Exists(netnsName) {
		removePins(dir)
		l.removeEmptyDirs(dir)
		return nil
	}
	err = netns.Do(netnsName, func() error {
		lnk, err := netlink.LinkByName(iface)
		if err != nil || uint32(lnk.Attrs().Index) != meta.Ifindex {
			return nil // interface gone: its attachments went with it
		}
		if err := detachXDP(dir, lnk, &meta); err != nil {
			return err
		}
		for _, d := range []tcDir{ingress, egress} {
			if err := detachTC(dir, lnk, d, &meta); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("detach %s: %w", iface, err)
	}
	removePins(dir)
	l.removeEmptyDirs(dir)
	return nil
}

// detachXDP removes the counting datapath's XDP program, whichever way it was attached, and puts
// back a program that --force replaced.
func detachXDP(dir string, lnk netlink.Link, meta *Meta) error {
	err := xdpHookIn(dir, lnk).detach()
	meta.Flags &^= metaXDPNetlink
	meta.XdpMode = metaModeNone
	return err
}

// unpinLink detaches and unpins the link pinned at path, if any.
func unpinLink(path string) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		_ = removePin(path)
		return
	}
	_ = l.Detach()
	_ = l.Unpin()
	l.Close()
}

func removePin(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pin %s: %w", path, err)
	}
	return nil
}

// removePins removes every pin in an interface directory (links first, so programs stop before
// their maps go).
func removePins(dir string) {
	for _, p := range []string{pinLinkXDP, pinLinkTCIngress, pinLinkTCEgress} {
		unpinLink(filepath.Join(dir, p))
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		_ = os.Remove(filepath.Join(dir, e.Name()))
	}
}
