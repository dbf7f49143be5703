// Package lb holds the balancer's integration tests: the mptcp-xdp binary, built once, attaches the
// balancer in the lab of internal/lablb (a client with two paths, the balancer, three backends) and
// real MPTCP connections from Go run through it; the checks are the kernel's own view in every
// namespace (MPTcpExt counters, `ss -M` subflow counts and tokens) and checksummed data.
package lb

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
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
)

// bin is the mptcp-xdp binary built by TestMain.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mptcp-xdp-lbtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "mptcp-xdp")
	if err := testutil.BuildBinary(bin); err != nil {
		fmt.Fprintf(os.Stderr, "build mptcp-xdp: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mx runs the binary with args and fails the test unless it exits 0; it returns stdout.
func mx(t testing.TB, args ...string) string {
	t.Helper()
	out, err := mxErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func mxErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.WaitDelay = 5 * time.Second // killed at the deadline: stop waiting for its pipes soon after
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (not done after 60 s: %w)", err, ctx.Err())
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return stdout.String(), fmt.Errorf("mptcp-xdp %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
		}
		return "", fmt.Errorf("mptcp-xdp %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// status is `lb status -o json`, decoded into the package's own type (its JSON names are held by
// pkg/control's contract test).
type status = control.Status

func lbStatus(t testing.TB, ns string) status {
	t.Helper()
	out := mx(t, "--netns", ns, "lb", "status", "-o", "json")
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("lb status -o json: %v\n%s", err, out)
	}
	return st
}

var _ = testutil.RequireRoot
