package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// vethNetns makes a named namespace (mxh1 and random letters) holding a veth pair s1/s2, both up,
// and deletes it when the test ends unless the test did.
func vethNetns(t *testing.T) string {
	t.Helper()
	ns := fmt.Sprintf("mxh1%s%06x", strings.ToLower(t.Name()[4:7]), rand.IntN(1<<24))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { _ = netns.Delete(ns) })
	ip("-n", ns, "link", "add", "s1", "type", "veth", "peer", "name", "s2")
	ip("-n", ns, "link", "set", "s1", "up")
	ip("-n", ns, "link", "set", "s2", "up")
	return ns
}

// xdpProgIn is the id of the XDP program on iface of ns (0: none).
func xdpProgIn(t *testing.T, ns, iface string) uint32 {
	t.Helper()
	var id uint32
	if err := netns.Do(ns, func() error {
		lnk, err := netlink.LinkByName(iface)
		if err != nil {
			return err
		}
		if x := lnk.Attrs().Xdp; x != nil && x.Attached {
			id = x.ProgId
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestDetachLeavesForeignPins drops into a live attachment's pin directory what mptcp-xdp never
// makes — a pinned map of another name, a directory holding a pin, a symbolic link — and detaches:
// mptcp-xdp's own pins and program are gone, the others and therefore the directory stay, detach
// fails with one line naming them, and status says the directory holds them. (detach used to
// remove every file of the directory.)
func TestDetachLeavesForeignPins(t *testing.T) {
	testutil.RequireRoot(t)
	root := useTempRoot(t, "mxh1frgn-")
	ns := vethNetns(t)
	if _, err := cliRun("--netns", ns, "attach", "s1", "--ingress", "xdp"); err != nil {
		t.Fatal(err)
	}
	if xdpProgIn(t, ns, "s1") == 0 {
		t.Fatal("attach put no XDP program on s1")
	}
	dir := filepath.Join(root, ns, "s1")
	stray, nested, link := filepath.Join(dir, "other_tool_map"), filepath.Join(dir, "sub", "mptcpx_meta"), filepath.Join(dir, "link_xdp@s9")
	pinMap(t, stray)
	pinMap(t, nested)
	if err := os.Symlink(stray, link); err != nil {
		t.Fatal(err)
	}

	_, err := cliRun("--netns", ns, "detach", "s1")
	if err == nil {
		t.Fatal("detach succeeded, want it to report the files it left")
	}
	msg := strings.TrimRight(err.Error(), " :")
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "did not make") {
		t.Errorf("detach: %q, want one line saying what it left", msg)
	}
	for _, name := range []string{"link_xdp@s9", "other_tool_map", "sub"} {
		if !strings.Contains(msg, name) {
			t.Errorf("detach: %q does not name %s", msg, name)
		}
	}
	for _, p := range []string{stray, nested, link} {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("detach removed %s: %v", p, err)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if got := strings.Join(left, " "); got != "link_xdp@s9 other_tool_map sub" {
		t.Errorf("pin directory after detach: %s, want only the foreign files", got)
	}
	if id := xdpProgIn(t, ns, "s1"); id != 0 {
		t.Errorf("s1 still runs XDP program %d after detach", id)
	}
	var st statusJSON
	cliJSON(t, &st, "status")
	if len(st.Attachments) != 1 || !strings.Contains(strings.Join(st.Attachments[0].Problems, "; "), "did not make (link_xdp@s9, other_tool_map, sub)") {
		t.Errorf("status after detach: %+v, want the directory's foreign files as its problem", st.Attachments)
	}
}
