package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

const privateWarning = "is on a bpffs private to this mount namespace"

// cliProcess runs the CLI (args) as its own process through the test binary, after wrap (a command
// that ends by executing the rest of its arguments: ip netns exec, unshare), with pin root root.
func cliProcess(t *testing.T, wrap []string, root string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	argv := append(append([]string{}, wrap...), os.Args[0], "-test.run=^TestServeHelperProcess$", "-test.count=1")
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), serveRootEnv+"="+root, serveEnv+"="+strings.Join(args, "\x1f"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// TestAttachWarnsPrivateBPFFS checks the warning of attach and lb attach when their pins land on a
// bpffs private to their mount namespace. Under `ip netns exec` (a fresh /sys, where the loader
// mounts a bpffs of its own) both warn, and the warning is true: once the command exits its pins
// are nowhere on the host and the interface has no XDP program left. Under `unshare -m` with a
// fresh bpffs mounted on the pin root's parent, attach warns too. Attached normally (--netns),
// neither warns and the program stays.
func TestAttachWarnsPrivateBPFFS(t *testing.T) {
	testutil.RequireRoot(t)
	ns := fmt.Sprintf("mxh2pv%04x", os.Getpid()&0xffff)
	ip := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "add", "mxh2v0", "type", "veth", "peer", "name", "mxh2v1")
	ip("-n", ns, "link", "set", "mxh2v0", "up")
	ip("-n", ns, "link", "set", "mxh2v1", "up")
	hasXDP := func(iface string) bool { return strings.Contains(ip("-n", ns, "link", "show", "dev", iface), " xdp") }

	t.Run("ip netns exec", func(t *testing.T) {
		// Under ip netns exec the loader mounts a bpffs on the fresh /sys/fs/bpf: the pin root must
		// be right under it, as the default is. The host's /sys/fs/bpf is never touched.
		root := fmt.Sprintf("/sys/fs/bpf/mxh2-test-%d", os.Getpid())
		wrap := []string{"ip", "netns", "exec", ns}
		for _, c := range []struct {
			args  []string
			iface string
			dir   string
		}{
			{[]string{"attach", "mxh2v0", "--ingress", "xdp"}, "mxh2v0", root},
			{[]string{"lb", "attach", "mxh2v1"}, "mxh2v1", root + "-lb"},
		} {
			_, stderr, err := cliProcess(t, wrap, root, c.args...)
			if err != nil {
				t.Fatalf("ip netns exec %s mptcp-xdp %v: %v\n%s", ns, c.args, err, stderr)
			}
			if want := c.dir + " " + privateWarning; !strings.Contains(stderr, want) || strings.Count(stderr, privateWarning) != 1 {
				t.Errorf("mptcp-xdp %v: stderr %q, want one line with %q", c.args, stderr, want)
			}
			for _, d := range []string{root, root + "-lb"} {
				if _, err := os.Stat(d); !os.IsNotExist(err) {
					t.Errorf("%s on the host after ip netns exec: %v", d, err)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for hasXDP(c.iface) && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			if hasXDP(c.iface) {
				t.Errorf("%s still has an XDP program after mptcp-xdp %v exited: the warning was not true", c.iface, c.args)
			}
		}
	})

	t.Run("fresh bpffs under unshare -m", func(t *testing.T) {
		root := filepath.Join(testutil.TempBPFFS(t, "mxh2-pv-"), "mptcp-xdp")
		wrap := []string{"unshare", "--mount", "--propagation", "private",
			"sh", "-c", `mount -t bpf bpf "$1" && shift && exec "$@"`, "sh", filepath.Dir(root)}
		_, stderr, err := cliProcess(t, wrap, root, "--netns", ns, "attach", "mxh2v0")
		if err != nil {
			t.Fatalf("attach: %v\n%s", err, stderr)
		}
		if !strings.Contains(stderr, root+" "+privateWarning) {
			t.Errorf("stderr %q, want the warning", stderr)
		}
	})

	t.Run("host bpffs", func(t *testing.T) {
		root := filepath.Join(testutil.TempBPFFS(t, "mxh2-pv-"), "mptcp-xdp")
		for _, c := range []struct{ attach, detach []string }{
			{[]string{"--netns", ns, "attach", "--ingress", "xdp", "mxh2v0"}, []string{"--netns", ns, "detach", "mxh2v0"}},
			{[]string{"--netns", ns, "lb", "attach", "mxh2v1"}, []string{"--netns", ns, "lb", "detach"}},
		} {
			_, stderr, err := cliProcess(t, nil, root, c.attach...)
			if err != nil {
				t.Fatalf("mptcp-xdp %v: %v\n%s", c.attach, err, stderr)
			}
			t.Cleanup(func() {
				if _, stderr, err := cliProcess(t, nil, root, c.detach...); err != nil {
					t.Errorf("mptcp-xdp %v: %v\n%s", c.detach, err, stderr)
				}
			})
			if strings.Contains(stderr, privateWarning) {
				t.Errorf("mptcp-xdp %v: stderr %q, want no private bpffs warning", c.attach, stderr)
			}
			if iface := c.attach[len(c.attach)-1]; !hasXDP(iface) {
				t.Errorf("%s has no XDP program after mptcp-xdp %v", iface, c.attach)
			}
		}
	})
}
