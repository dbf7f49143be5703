package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// ErrNotAttached is returned by Detach for an interface mptcp-xdp is not attached to.
var ErrNotAttached = errors.New("not attached")

// Detach removes every link, filter, qdisc and pin mptcp-xdp made for one interface, and nothing
// else. When the interface or its named namespace is gone, the stale pins are removed (the
// namespace's interfaces, and so their attachments, went with it). Names that are not an
// interface's (ValidIfaceName) or a namespace's (NetnsDir) are refused before anything is touched.
// A file in the pin directory that mptcp-xdp did not make is left, with the directory, and
// reported as a *ForeignFilesError once mptcp-xdp's own pins are gone.
func (l *Loader) Detach(netnsName, iface string) error {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return err
	}
	dir, err := l.ifaceDir(nsDir, iface)
	if err != nil {
		return err
	}
	gone := netnsName != "" && !netns.Exists(netnsName)
	if gone && !staleNetnsDir(nsDir) {
		return fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", netnsName)
	}
	unlock, err := l.Lock()
	if err != nil {
		return err
	}
	defer unlock()

	if _, err := os.Stat(dir); err != nil {
		if gone {
			return fmt.Errorf("detach %s: %w: network namespace %q does not exist (see `ip netns list`) and left no pins", iface, ErrNotAttached, netnsName)
		}
		return fmt.Errorf("detach %s: %w in network namespace %s", iface, ErrNotAttached, nsDir)
	}
	if !gone {
		meta, _ := loadPinnedMeta(dir)
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
	}
	left := removePins(dir)
	l.removeEmptyDirs(dir)
	if len(left) > 0 {
		return fmt.Errorf("detach %s: removed mptcp-xdp's pins, but %w", iface, &ForeignFilesError{Dir: dir, Names: left})
	}
	return nil
}

// staleNetnsDir reports whether the pins of a named namespace that no longer exists may be removed
// as stale: not those of the "host" or "ns-<inode>" directories, which a gone namespace of that
// name shares with the initial namespace or an unnamed one (status never calls them stale).
func staleNetnsDir(nsDir string) bool {
	return nsDir != HostNetns && !strings.HasPrefix(nsDir, "ns-")
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

// removePins removes the pins mptcp-xdp makes (ownPinName) in one of its pin directories, links
// first so that programs stop before their maps go. Anything else — another name, a directory, a
// symbolic link — is left and returned; nothing is removed below dir.
func removePins(dir string) (left []string) {
	ents, _ := os.ReadDir(dir)
	var ours []string
	for _, e := range ents {
		if ownPin(e) {
			ours = append(ours, e.Name())
		} else {
			left = append(left, e.Name())
		}
	}
	sort.SliceStable(ours, func(i, j int) bool { return isLinkPin(ours[i]) && !isLinkPin(ours[j]) })
	for _, name := range ours {
		if isLinkPin(name) {
			unpinLink(filepath.Join(dir, name)) // detaches it too, should its pin not be the last reference
		} else {
			_ = os.Remove(filepath.Join(dir, name))
		}
	}
	return left
}

// isLinkPin reports whether a pin name is a bpf_link's (link_xdp, link_tc_egress, link_xdp@eth0).
func isLinkPin(name string) bool { return strings.HasPrefix(name, "link_") }
