package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// useTempRoot points the CLI at a root in a fresh directory of the host's bpffs for the test.
func useTempRoot(t *testing.T, pattern string) string {
	t.Helper()
	root := filepath.Join(testutil.TempBPFFS(t, pattern), "mptcp-xdp")
	saved := bpffsRoot
	bpffsRoot = root
	t.Cleanup(func() { bpffsRoot = saved })
	return root
}

// pinMap pins a small map of ours at path (making its directory), for a test to see whether a
// command removes it.
func pinMap(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(path); err != nil {
		t.Fatal(err)
	}
}

// TestPathTraversal gives every argument and flag that becomes a pin path a name that climbs out
// of the pin root (or onto the root or a namespace directory itself): each command must refuse it
// with a one-line error naming the bad name, and the victims — a directory and file outside
// bpffs, pins in the root and in a namespace directory — must all survive. (`detach
// ../../../tmp/victim` used to print "detached" and remove the victim directory and its file.)
func TestPathTraversal(t *testing.T) {
	testutil.RequireRoot(t)
	root := useTempRoot(t, "mxh1trav-")
	victimDir := t.TempDir() // outside bpffs
	victim := filepath.Join(victimDir, "victim")
	// Pins a bad name would reach: in the root ("..") and in the namespace directory (".").
	rootPin := filepath.Join(root, loader.ProgPrefix+"counters")
	nsPin := filepath.Join(root, loader.HostNetns, loader.ProgPrefix+"counters")
	plant := func() {
		if err := os.MkdirAll(victimDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(victim, []byte("keep me\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{rootPin, nsPin} {
			if _, err := os.Stat(p); err != nil {
				pinMap(t, p)
			}
		}
	}
	plant()

	// climb is the path from dir to the victim directory, as an interface name joined to dir.
	climb := func(dir string) string {
		rel, err := filepath.Rel(dir, victimDir)
		if err != nil {
			t.Fatal(err)
		}
		return rel
	}
	ifaceDir := filepath.Join(root, loader.HostNetns)
	lbDir := filepath.Join(root+"-lb", loader.HostNetns, "decap")
	for _, c := range []struct {
		args []string
		want string // in the error
	}{
		{[]string{"detach", climb(ifaceDir)}, "invalid interface name"},
		{[]string{"detach", "."}, "invalid interface name"},
		{[]string{"detach", ".."}, "invalid interface name"},
		{[]string{"detach", ""}, "invalid interface name"},
		{[]string{"detach", "a b"}, "invalid interface name"},
		{[]string{"attach", climb(ifaceDir)}, "invalid interface name"},
		{[]string{"attach", ".."}, "invalid interface name"},
		{[]string{"--netns", climb(root), "detach", "eth0"}, "invalid network namespace name"},
		{[]string{"--netns", "/", "detach", "eth0"}, "invalid network namespace name"},
		{[]string{"--netns", "..", "detach", "eth0"}, "invalid network namespace name"},
		{[]string{"--netns", climb(root + "-lb"), "lb", "detach"}, "invalid network namespace name"},
		{[]string{"--netns", "/", "lb", "detach"}, "invalid network namespace name"},
		{[]string{"lb", "decap", "--detach", "x/" + climb(lbDir)}, "invalid interface name"},
		{[]string{"lb", "decap", "x/" + climb(lbDir)}, "invalid interface name"},
		{[]string{"lb", "attach", "x/" + climb(lbDir), "--vip", "10.0.0.10:80", "--backend", "10.2.0.2"}, "invalid interface name"},
	} {
		_, err := cliRun(c.args...)
		switch {
		case err == nil:
			t.Errorf("mptcp-xdp %q succeeded, want it refused", c.args)
		case strings.ContainsAny(strings.TrimRight(err.Error(), "\n"), "\n") || !strings.Contains(err.Error(), c.want):
			t.Errorf("mptcp-xdp %q: %q, want one line saying %q", c.args, err, c.want)
		}
		if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me\n" {
			t.Errorf("after mptcp-xdp %q the victim outside bpffs is gone or changed: %v", c.args, err)
		}
		for _, p := range []string{rootPin, nsPin} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("after mptcp-xdp %q the pin %s is gone: %v", c.args, p, err)
			}
		}
		plant() // for the next case, whatever this one removed
	}
}
