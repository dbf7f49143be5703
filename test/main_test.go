// Package test holds the integration tests of mptcp-xdp: the CLI binary, built once, run as a
// separate process against the real kernel in network namespaces with real MPTCP traffic, checked
// against the kernel's own view (MPTcpExt counters, bpftool, ip, tc). They need root.
package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// bin is the mptcp-xdp binary built by TestMain.
var bin string

// bpffsRoot is where the binary pins (loader.DefaultRoot; spelled out so that a change to the
// default is a visible change to users, and to this test).
const bpffsRoot = "/sys/fs/bpf/mptcp-xdp"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mptcp-xdp-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(1)
	}
	// Others may run it too (TestPrivileges runs it as nobody).
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "mptcp-xdp")
	if err := testutil.BuildBinary(bin); err != nil {
		fmt.Fprintf(os.Stderr, "build mptcp-xdp: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := runAndCheckFDs(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// runAndCheckFDs runs the tests and fails the run when file descriptors opened during them are
// still open, as testutil.Main does (which exits before the build directory could be removed).
func runAndCheckFDs(m *testing.M) int {
	before, err := testutil.OpenFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		return code
	}
	var leaked []string
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after, err := testutil.OpenFDs()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		leaked = leaked[:0]
		for fd, target := range after {
			if before[fd] != target && !strings.HasPrefix(target, "anon_inode:[event") {
				leaked = append(leaked, fd+" -> "+target)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "%d file descriptors leaked by the tests:\n  %s\n", len(leaked), strings.Join(leaked, "\n  "))
		return 1
	}
	return 0
}

// result is one run of the binary.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("mptcp-xdp %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runCmd runs the binary with args and returns what it printed and its exit code.
func runCmd(t testing.TB, cmd *exec.Cmd) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: cmd.Args[1:], stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run mptcp-xdp %s: %v (stderr %q)", strings.Join(r.args, " "), err, r.stderr)
	}
	return r
}

// mx runs the binary.
func mx(t testing.TB, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return runCmd(t, exec.CommandContext(ctx, bin, args...))
}

// mxOK runs the binary and fails the test unless it exits 0 with nothing on stderr.
func mxOK(t testing.TB, args ...string) string {
	t.Helper()
	r := mx(t, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// attach runs `mptcp-xdp --netns ns attach iface flags...` and detaches in t.Cleanup (which must
// then succeed, or find it already detached).
func attach(t *testing.T, ns, iface string, flags ...string) {
	t.Helper()
	mxOK(t, append([]string{"--netns", ns, "attach", iface}, flags...)...)
	t.Cleanup(func() { detachCleanup(t, ns, iface) })
}

func detachCleanup(t *testing.T, ns, iface string) {
	t.Helper()
	r := mx(t, "--netns", ns, "detach", iface)
	if r.code != 0 && !strings.Contains(r.stderr, "not attached") {
		t.Errorf("cleanup: %v", r)
	}
}

// counters is one direction of `stats -o json`, decoded without the package's own types so that
// the JSON contract is what is tested.
type counters struct {
	Packets map[string]uint64 `json:"packets"`
	Options map[string]uint64 `json:"options"`
}

type statsRow struct {
	Netns   string   `json:"netns"`
	Name    string   `json:"name"`
	Ifindex int      `json:"ifindex"`
	Ingress counters `json:"ingress"`
	Egress  counters `json:"egress"`
}

// stats returns `stats -o json` for one namespace, keyed by interface name.
func stats(t testing.TB, ns string) map[string]statsRow {
	t.Helper()
	out := mxOK(t, "--netns", ns, "stats", "-o", "json")
	var doc struct {
		Interfaces []statsRow `json:"interfaces"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("stats -o json: %v\n%s", err, out)
	}
	m := map[string]statsRow{}
	for _, r := range doc.Interfaces {
		m[r.Name] = r
	}
	return m
}

// attachment is one entry of `status -o json`.
type attachment struct {
	Netns         string `json:"netns"`
	Interface     string `json:"interface"`
	Ifindex       int    `json:"ifindex"`
	PinDir        string `json:"pin_dir"`
	Ingress       string `json:"ingress"`
	IngressReason string `json:"ingress_reason"`
	XDPMode       string `json:"xdp_mode"`
	Egress        bool   `json:"egress"`
	AttachedAt    string `json:"attached_at"`
	Programs      []struct {
		Hook      string `json:"hook"`
		Mechanism string `json:"mechanism"`
		ID        uint32 `json:"id"`
		Name      string `json:"name"`
		LinkID    uint32 `json:"link_id"`
	} `json:"programs"`
	Maps []struct {
		Name string `json:"name"`
		ID   uint32 `json:"id"`
	} `json:"maps"`
	Problems []string `json:"problems"`
}

// status returns `status -o json` for one namespace, keyed by interface name.
func status(t testing.TB, ns string) map[string]attachment {
	t.Helper()
	out := mxOK(t, "--netns", ns, "status", "-o", "json")
	var doc struct {
		Attachments []attachment `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	m := map[string]attachment{}
	for _, a := range doc.Attachments {
		m[a.Interface] = a
	}
	return m
}

// sh runs a command and returns its stdout, failing the test on error.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}
