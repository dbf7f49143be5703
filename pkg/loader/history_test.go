package loader_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// TestHistoryEnableDisable: enable attaches the sock_ops program to the cgroup v2 root (the link's
// cgroup id is the root directory's inode), enable again replaces the program in the same link and
// keeps the map, disable detaches it (the link is gone from the kernel) and leaves no pin.
func TestHistoryEnableDisable(t *testing.T) {
	l := tempLoader(t)
	st, err := l.EnableHistory(loader.HistoryOptions{MaxEntries: 1024, MaxAge: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	root, _, err := loader.Cgroup2Root(false)
	if err != nil {
		t.Fatal(err)
	}
	var fi unix.Stat_t
	if err := unix.Stat(root, &fi); err != nil {
		t.Fatal(err)
	}
	if !st.Enabled || st.CgroupID != fi.Ino || st.Program.Name != "mptcpx_sockops" || st.Map.MaxEntries != 1024 ||
		st.Map.Type != ebpf.LRUHash.String() || st.MaxAgeNs != uint64(time.Minute) {
		t.Fatalf("status after enable: %+v (cgroup %s inode %d)", st, root, fi.Ino)
	}
	st2, err := l.EnableHistory(loader.HistoryOptions{MaxEntries: 99, MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if st2.LinkID != st.LinkID || st2.Program.ID == st.Program.ID || st2.Map.ID != st.Map.ID ||
		st2.Map.MaxEntries != 1024 || st2.MaxAgeNs != uint64(time.Hour) {
		t.Fatalf("enable again: %+v, want the same link and map with a new program, from %+v", st2, st)
	}
	if err := l.DisableHistory(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.HistoryRoot()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("disable left %s (%v)", l.HistoryRoot(), err)
	}
	if lk, err := link.NewFromID(link.ID(st.LinkID)); err == nil {
		lk.Close()
		t.Fatalf("link %d still in the kernel after disable", st.LinkID)
	}
	if st3, err := l.HistoryStatus(); err != nil || st3.Enabled {
		t.Fatalf("status after disable: %+v, %v", st3, err)
	}
	if err := l.DisableHistory(); err != nil {
		t.Fatalf("disable twice: %v", err)
	}
}
