package testutil

import (
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Tcpdump is a running tcpdump.
type Tcpdump struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr strings.Builder // what tcpdump says after "listening on": its drop report at exit
	done   chan struct{}
	once   sync.Once
}

// StartTcpdump runs `ip netns exec ns tcpdump args...` (ns empty: here) and returns once tcpdump
// captures (it says "listening on"). The test's cleanup stops it.
func StartTcpdump(tb testing.TB, ns string, args ...string) *Tcpdump {
	tb.Helper()
	argv := append([]string{"tcpdump"}, args...)
	if ns != "" {
		argv = append([]string{"ip", "netns", "exec", ns}, argv...)
	}
	d := &Tcpdump{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Stop() })
	buf := make([]byte, 512)
	var got strings.Builder
	for !strings.Contains(got.String(), "listening on") {
		k, err := stderr.Read(buf)
		got.Write(buf[:k])
		if err != nil {
			tb.Fatalf("tcpdump in %q: %v: %s", ns, err, got.String())
		}
	}
	go func() {
		b, _ := io.ReadAll(stderr)
		d.mu.Lock()
		d.stderr.Write(b)
		d.mu.Unlock()
		close(d.done)
	}()
	return d
}

// Stop ends tcpdump (SIGINT: it flushes its file) and returns what it said at exit.
func (d *Tcpdump) Stop() string {
	d.once.Do(func() {
		_ = d.cmd.Process.Signal(os.Interrupt)
		<-d.done
		_ = d.cmd.Wait()
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

var droppedRE = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// Dropped stops tcpdump and returns how many frames it says the kernel dropped before it could
// read them (-1 when it does not say).
func (d *Tcpdump) Dropped() int64 {
	m := droppedRE.FindStringSubmatch(d.Stop())
	if m == nil {
		return -1
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}
