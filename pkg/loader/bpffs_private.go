package loader

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// initMountinfo is the mount table of PID 1's mount namespace.
const initMountinfo = "/proc/1/mountinfo"

// PrivateBPFFS reports whether path (or, while it does not exist yet, its nearest existing
// parent) is on a bpffs that PID 1's mount namespace does not have mounted anywhere: a bpffs
// mounted inside a mount namespace of its own, as when mptcp-xdp runs under `ip netns exec`, which
// mounts a fresh /sys (and so no bpffs) for the command, where loader.New mounts one. Pins there
// live only as long as that namespace: they vanish, and the programs held by pinned links
// detach, when the command exits. A path on no bpffs is not private (nothing is pinned there).
// In another PID namespace (a container) PID 1 is the container's own and shares its view.
func PrivateBPFFS(path string) (bool, error) {
	p := filepath.Clean(path)
	var st unix.Stat_t
	for {
		err := unix.Stat(p, &st)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) || p == "/" {
			return false, fmt.Errorf("stat %s: %w", p, err)
		}
		p = filepath.Dir(p)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(p, &sfs); err != nil {
		return false, fmt.Errorf("statfs %s: %w", p, err)
	}
	if uint32(sfs.Type) != unix.BPF_FS_MAGIC {
		return false, nil
	}
	// Field 3 of a mountinfo line is the st_dev of the mount's filesystem, major:minor; every
	// bpffs instance has a device of its own.
	dev := fmt.Sprintf("%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	f, err := os.Open(initMountinfo)
	if err != nil {
		return false, fmt.Errorf("read the initial mount namespace's mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 2 && fields[2] == dev {
			return false, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read %s: %w", initMountinfo, err)
	}
	return true, nil
}
