// Package loader loads the mptcp-xdp eBPF programs, attaches them to interfaces (XDP on ingress, TC
// on egress, or TC on ingress where XDP cannot be used), pins them under bpffs so that the datapath
// outlives the process, and detaches them leaving nothing behind.
//
// Layout under the bpffs root (default /sys/fs/bpf/mptcp-xdp):
//
//	<netns>/<iface>/mptcpx_counters   per-CPU counters (map)
//	<netns>/<iface>/mptcpx_meta       attach state (map)
//	<netns>/<iface>/link_xdp          bpf_link of the XDP program      (or prog_xdp with netlink)
//	<netns>/<iface>/link_tc_ingress   tcx link of the TC ingress program (or prog_tc_ingress with clsact)
//	<netns>/<iface>/link_tc_egress    tcx link of the TC egress program  (or prog_tc_egress with clsact)
//
// <netns> is the `ip netns` name the interface was attached through, or "host" for the initial
// network namespace. Minimum kernel: 4.8 (XDP); bpf_link XDP needs 5.9 and tcx 6.6, below which the
// loader falls back to netlink XDP and clsact filters.
package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// DefaultRoot is the tool's bpffs directory.
const DefaultRoot = "/sys/fs/bpf/mptcp-xdp"

// ProgPrefix starts the name of every program and map mptcp-xdp loads, so that its attachments can
// be told from anyone else's.
const ProgPrefix = "mptcpx_"

// HostNetns names the initial network namespace in pin paths.
const HostNetns = "host"

// procNetInitIno is the inode of the initial network namespace on kernels that fix it
// (PROC_NET_INIT_INO); older kernels number it like any other.
const procNetInitIno = 0xEFFFFFF9

// Pin names inside an interface directory: the maps are pinned by their names in the C source.
const (
	pinMeta          = datapath.XdpMapMptcpxMeta
	pinCounters      = datapath.XdpMapMptcpxCounters
	pinLinkXDP       = "link_xdp"
	pinLinkTCIngress = "link_tc_ingress"
	pinLinkTCEgress  = "link_tc_egress"
	pinProgXDP       = "prog_xdp"     // our XDP program, attached through netlink
	pinReplacedXDP   = "replaced_xdp" // another tool's XDP program that --force replaced, restored by detach
	pinProgTCIngress = "prog_tc_ingress"
	pinProgTCEgress  = "prog_tc_egress"
)

// Loader manages the pins under one bpffs directory.
type Loader struct {
	Root string
	// LockTimeout bounds the wait for another invocation's lock.
	LockTimeout time.Duration
}

// New returns a loader for root (DefaultRoot when empty). It mounts bpffs on root's parent when
// nothing is mounted there yet.
func New(root string) (*Loader, error) {
	if root == "" {
		root = DefaultRoot
	}
	if err := EnsureBPFFS(filepath.Dir(root)); err != nil {
		return nil, err
	}
	return &Loader{Root: root, LockTimeout: 30 * time.Second}, nil
}

// EnsureBPFFS makes sure dir is on a bpffs, mounting one there if it is not. A machine that
// has just booted often has nothing mounted on /sys/fs/bpf: the directory is then sysfs's, and
// creating anything in it fails with ENOENT.
func EnsureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && uint32(st.Type) == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point %s: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// NetnsDir is the directory name for a network namespace: its `ip netns` name (checked with
// ValidNetnsName), "host" for the initial namespace, or "ns-<inode>" for an unnamed one the caller
// is in.
func NetnsDir(name string) (string, error) {
	if name != "" {
		if err := ValidNetnsName(name); err != nil {
			return "", err
		}
		return name, nil
	}
	self, err := netns.Inode("")
	if err != nil {
		return "", err
	}
	// Linux 6.x gives the initial network namespace a fixed inode number.
	if self == procNetInitIno {
		return HostNetns, nil
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/1/ns/net", &st); err != nil {
		// init's namespace is hidden from us: name ours by its inode, never guess "host".
		return "ns-" + strconv.FormatUint(self, 10), nil
	}
	if st.Ino == self {
		return HostNetns, nil
	}
	return "ns-" + strconv.FormatUint(self, 10), nil
}

// IfaceDir is the pin directory of one interface. Both names must be valid (NetnsDir,
// ValidIfaceName): IfaceDir joins them as they are, and Detach checks them before it removes anything.
func (l *Loader) IfaceDir(netnsDir, iface string) string {
	return filepath.Join(l.Root, netnsDir, iface)
}

// Lock takes the tool-wide lock exclusively (flock on the root directory), waiting up to
// LockTimeout for other invocations to finish: for anything that changes the pins or the hooks.
// The returned function releases it.
func (l *Loader) Lock() (func(), error) { return l.lock(unix.LOCK_EX) }

// RLock takes the tool-wide lock shared: readers (status, stats) never see an attachment half made
// or half removed, and do not wait for each other. Without a root there is nothing to read, and a
// reader does not create one.
func (l *Loader) RLock() (func(), error) { return l.lock(unix.LOCK_SH) }

func (l *Loader) lock(how int) (func(), error) {
	deadline := time.Now().Add(l.LockTimeout)
	for {
		if how == unix.LOCK_EX {
			if err := os.MkdirAll(l.Root, 0o700); err != nil {
				return nil, fmt.Errorf("create %s: %w", l.Root, err)
			}
		}
		fd, err := unix.Open(l.Root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				if how != unix.LOCK_EX {
					return func() {}, nil
				}
				continue // removed by a detach between MkdirAll and Open
			}
			return nil, fmt.Errorf("open %s: %w", l.Root, err)
		}
		for {
			err = unix.Flock(fd, how|unix.LOCK_NB)
			if err == nil || !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			unix.Close(fd)
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("another mptcp-xdp holds the lock on %s (waited %s)", l.Root, l.LockTimeout)
			}
			return nil, fmt.Errorf("lock %s: %w", l.Root, err)
		}
		// The directory may have been removed (last detach) while we waited: lock the live one.
		var held, now unix.Stat_t
		if unix.Fstat(fd, &held) == nil && unix.Stat(l.Root, &now) == nil && held.Ino == now.Ino {
			return func() {
				// Leave no empty root behind (an invocation that attached nothing, a reader):
				// rmdir fails on a directory that holds anything. Waiters notice the removal.
				_ = unix.Rmdir(l.Root)
				unix.Close(fd)
			}, nil
		}
		unix.Close(fd)
	}
}

// removeEmptyDirs removes dir and then its parents up to and including l.Root while they are empty.
func (l *Loader) removeEmptyDirs(dir string) {
	for {
		if err := os.Remove(dir); err != nil {
			return
		}
		if dir == l.Root {
			return
		}
		dir = filepath.Dir(dir)
		if len(dir) < len(l.Root) {
			return
		}
	}
}
