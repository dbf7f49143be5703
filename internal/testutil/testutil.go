// Package testutil holds helpers for tests that run against the real kernel: root checks, labs
// that clean up after themselves, and a TestMain that fails on leaked file descriptors.
package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// TempBPFFS returns a new directory of the host's bpffs, removed when tb ends, so that the test's
// pins never meet another test's. It mounts bpffs where the CLI's pins live (the parent of
// loader.DefaultRoot, /sys/fs/bpf) first when nothing is mounted there, as on a machine that has
// just booted.
func TempBPFFS(tb testing.TB, pattern string) string {
	tb.Helper()
	RequireRoot(tb)
	bpffs := filepath.Dir(loader.DefaultRoot)
	if err := loader.EnsureBPFFS(bpffs); err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(bpffs, pattern)
	if err != nil {
		tb.Fatalf("private bpffs directory: %v", err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RequireRoot fails the test (it does not skip it) when not running as root: these tests are the
// ground truth and must not silently pass by not running.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("this test needs root (network namespaces, BPF, MPTCP endpoints)")
	}
}

// NewLab builds a lab for the test and closes it in t.Cleanup. A lab that cannot be built fails
// the test.
func NewLab(tb testing.TB, cfg lab.Config) *lab.Lab {
	tb.Helper()
	RequireRoot(tb)
	l, err := lab.New(cfg)
	if err != nil {
		tb.Fatalf("new lab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("close lab: %v", err)
		}
	})
	return l
}

// Main runs the package's tests and then fails the run when file descriptors opened during the
// tests are still open (after a short grace period for goroutines that close late). Use it as
//
//	func TestMain(m *testing.M) { testutil.Main(m) }
func Main(m *testing.M) {
	before, err := OpenFDs()
	if err != nil {
		fmt.Fprintf(os.Stderr, "testutil: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		var leaked []string
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			after, err := OpenFDs()
			if err != nil {
				fmt.Fprintf(os.Stderr, "testutil: %v\n", err)
				os.Exit(1)
			}
			leaked = leakedFDs(before, after)
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "testutil: %d file descriptors leaked by the tests:\n  %s\n",
				len(leaked), strings.Join(leaked, "\n  "))
			code = 1
		}
	}
	os.Exit(code)
}

// OpenFDs maps each open file descriptor of this process to what it points at.
func OpenFDs() (map[string]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("list open fds: %w", err)
	}
	m := make(map[string]string, len(ents))
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the fd ReadDir itself used, closed by now
		}
		m[e.Name()] = target
	}
	return m, nil
}

// runtimeFDs are opened once, lazily, by the Go runtime's network poller: not leaks.
var runtimeFDs = map[string]bool{"anon_inode:[eventpoll]": true, "anon_inode:[eventfd]": true}

func leakedFDs(before, after map[string]string) []string {
	var out []string
	for fd, target := range after {
		if before[fd] != target && !runtimeFDs[target] {
			out = append(out, fd+" -> "+target)
		}
	}
	sort.Strings(out)
	return out
}
