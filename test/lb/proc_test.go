package lb

import (
	"bytes"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer collects a child's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// controlPlane is a running `mptcp-xdp lb run`.
type controlPlane struct {
	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{} // closed when the process has exited; err is then its exit status
	err  error
}

// startControlPlane starts `lb run` (with extra flags) for the balancer of ns; the test's cleanup
// kills it if it is still running.
func startControlPlane(t *testing.T, ns string, extra ...string) *controlPlane {
	t.Helper()
	cp := &controlPlane{logs: &lockedBuffer{}, done: make(chan struct{})}
	cp.cmd = exec.Command(bin, append([]string{"--netns", ns, "lb", "run", "--summary-interval", "5s", "--gc-interval", "5s"}, extra...)...)
	cp.cmd.Stderr = cp.logs
	// Wait returns this long after the process exits even if something still holds its stderr.
	cp.cmd.WaitDelay = 5 * time.Second
	if err := cp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cp.err = cp.cmd.Wait(); close(cp.done) }()
	t.Cleanup(func() {
		select {
		case <-cp.done:
		default:
			_ = cp.cmd.Process.Kill()
			if !cp.waitExit(procExitTimeout) {
				t.Errorf("cleanup: lb run (pid %d) not reaped %v after SIGKILL:\n%s", cp.cmd.Process.Pid, procExitTimeout, cp.logs)
			}
		}
	})
	// Wait for the loop to be up: it logs once it has opened the maps and read the backends.
	deadline := time.Now().Add(30 * time.Second)
	for !bytes.Contains([]byte(cp.logs.String()), []byte("balancer loop running")) {
		select {
		case <-cp.done:
			t.Fatalf("lb run exited: %v\n%s", cp.err, cp.logs)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("lb run not running after 30 s:\n%s", cp.logs)
		}
	}
	return cp
}

// kill ends the process with SIGKILL, as a crash would.
func (cp *controlPlane) kill(t *testing.T) {
	t.Helper()
	if err := cp.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if !cp.waitExit(procExitTimeout) {
		t.Fatalf("kill lb run: not reaped %v after SIGKILL:\n%s", procExitTimeout, cp.logs)
	}
}

// procExitTimeout bounds the wait for `lb run` to be reaped once killed.
const procExitTimeout = 30 * time.Second

// waitExit waits up to d for the process to have exited and been reaped.
func (cp *controlPlane) waitExit(d time.Duration) bool {
	select {
	case <-cp.done:
		return true
	case <-time.After(d):
		return false
	}
}

// stop ends the process with SIGTERM and returns its logs; it must exit cleanly.
func (cp *controlPlane) stop(t *testing.T) string {
	t.Helper()
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cp.done:
		if cp.err != nil {
			t.Errorf("lb run: %v\n%s", cp.err, cp.logs)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("lb run did not stop on SIGTERM:\n%s", cp.logs)
		_ = cp.cmd.Process.Kill()
		if !cp.waitExit(procExitTimeout) {
			t.Errorf("stop lb run: not reaped %v after SIGKILL", procExitTimeout)
		}
	}
	return cp.logs.String()
}
