package stats_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// BenchmarkSubflows measures reading 1,000 and 10,000 MPTCP subflows of one network namespace
// (the client end of a two-path lab: N/2 connections with two subflows each) with the iterator,
// against `ss -tiM` listing the same sockets (every TCP socket with its tcp_info, and the MPTCP
// sockets) in the same run:
//
//   - reader: Reader.Subflows in this process, the reader loaded once (what the exporter pays);
//
//   - connections: the same plus grouping (Reader.Connections);
//
//   - cli: the mptcp-xdp binary, `subflow list --netns NS -o json` (load, read, render), as a process;
//
//   - ss: `ss -N NS -tiMH` as a process, output discarded;
//
//   - interleaved: ss, cli and reader in turn within each iteration, so that the load of a shared
//     machine weighs on all alike; reports reader/ss and cli/ss time ratios and the peak RSS of
//     both processes (maxrss of the child, from rusage).
//
//     go test -run '^$' -bench BenchmarkSubflows -benchtime 20x ./pkg/stats/
func BenchmarkSubflows(b *testing.B) {
	r := newReader(b)
	l := testutil.NewLab(b, lab.Config{Paths: 2, Subflows: true})
	bin := filepath.Join(b.TempDir(), "mptcp-xdp")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/mptcp-xdp").CombinedOutput(); err != nil {
		b.Fatalf("build the CLI: %v\n%s", err, out)
	}
	f := newFarm(b, l)
	for _, n := range []int{1000, 10000} {
		f.grow(b, r, n)
		ns := l.Client
		b.Run(fmt.Sprintf("%d/reader", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				sfs, err := r.Subflows(ns)
				if err != nil || len(sfs) != n {
					b.Fatalf("%d subflows, %v", len(sfs), err)
				}
			}
		})
		b.Run(fmt.Sprintf("%d/connections", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				conns, err := r.Connections(ns)
				if err != nil || len(conns) != n/2 {
					b.Fatalf("%d connections, %v", len(conns), err)
				}
			}
		})
		procs := []struct {
			name string
			argv []string
		}{
			{"ss", []string{"ss", "-N", ns, "-tiMH"}},
			{"cli-json", []string{bin, "subflow", "list", "--netns", ns, "-o", "json"}},
			{"cli-table", []string{bin, "subflow", "list", "--netns", ns}},
		}
		b.Run(fmt.Sprintf("%d/interleaved", n), func(b *testing.B) {
			took := make([]time.Duration, len(procs)+1)
			rss := make([]int64, len(procs))
			for b.Loop() {
				for i, p := range procs {
					t0 := time.Now()
					rss[i] = max(rss[i], runProc(b, p.argv))
					took[i] += time.Since(t0)
				}
				t0 := time.Now()
				if _, err := r.Subflows(ns); err != nil {
					b.Fatal(err)
				}
				took[len(procs)] += time.Since(t0)
			}
			ss := float64(took[0])
			b.ReportMetric(float64(took[len(procs)])/ss, "reader/ss")
			b.ReportMetric(float64(took[len(procs)].Microseconds())/1000/float64(b.N), "reader-ms/op")
			b.ReportMetric(ss/1e6/float64(b.N), "ss-ms/op")
			for i, p := range procs {
				if i > 0 {
					b.ReportMetric(float64(took[i])/ss, p.name+"/ss")
				}
				b.ReportMetric(float64(rss[i]), p.name+"-maxrss-KiB")
			}
		})
	}
}

// runProc runs argv with its output discarded and returns its peak resident set in KiB, as GNU
// time measures it. (The rusage of a child this process starts itself would not do: Go starts
// children with vfork, and the kernel counts the parent's resident set, shared until exec, in
// the child's peak.)
func runProc(b *testing.B, argv []string) int64 {
	f := filepath.Join(b.TempDir(), "maxrss")
	cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", f}, argv...)...)
	cmd.Stdout = io.Discard
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("%v: %v: %s (the benchmark needs GNU time: apt-get install time)", argv, err, stderr.String())
	}
	out, err := os.ReadFile(f)
	if err != nil {
		b.Fatal(err)
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		b.Fatalf("GNU time wrote %q: %v", out, err)
	}
	return kib
}

// farm holds MPTCP connections between the lab's namespaces, each with one subflow per path.
type farm struct {
	l     *lab.Lab
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	acc   chan net.Conn
}

func newFarm(b *testing.B, l *lab.Lab) *farm {
	ln, err := l.Listen(context.Background(), ":0")
	if err != nil {
		b.Fatal(err)
	}
	f := &farm{l: l, ln: ln, acc: make(chan net.Conn, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(f.acc)
				return
			}
			f.acc <- c
		}
	}()
	b.Cleanup(func() {
		ln.Close()
		for range f.acc {
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.conns {
			c.Close()
		}
	})
	return f
}

// grow opens connections until the client namespace holds n subflows (n/2 connections of two),
// and checks the count with ss.
func (f *farm) grow(b *testing.B, r *stats.Reader, n int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	addr := net.JoinHostPort(f.l.Paths[0].ServerIP4.String(), strconv.Itoa(f.ln.Addr().(*net.TCPAddr).Port))
	f.mu.Lock()
	todo := n/2 - len(f.conns)/2
	f.mu.Unlock()
	work := make(chan struct{}, todo)
	for range todo {
		work <- struct{}{}
	}
	close(work)
	errc := make(chan error, 8)
	for range cap(errc) {
		go func() {
			for range work {
				if err := f.one(ctx, addr); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
	}
	for range cap(errc) {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	for {
		sfs, err := r.Subflows(f.l.Client)
		if err != nil {
			b.Fatal(err)
		}
		if len(sfs) == n {
			break
		}
		if ctx.Err() != nil {
			b.Fatalf("%d subflows in %s, want %d", len(sfs), f.l.Client, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ss, err := ssSubflows(f.l.Client)
	if err != nil {
		b.Fatal(err)
	}
	if len(ss) != n {
		b.Fatalf("ss lists %d MPTCP subflows in %s, the iterator %d", len(ss), f.l.Client, n)
	}
}

// one opens a connection and exchanges a byte each way, so that the path manager adds the subflow.
func (f *farm) one(ctx context.Context, addr string) error {
	c, err := f.l.Dial(ctx, addr)
	if err != nil {
		return err
	}
	s, ok := <-f.acc
	if !ok {
		c.Close()
		return fmt.Errorf("listener closed")
	}
	f.mu.Lock()
	f.conns = append(f.conns, c, s)
	f.mu.Unlock()
	// The accepted end may belong to another worker's dial: exchange on c with whichever peer
	// answers; every server end echoes one byte after reading one.
	go func() {
		var one [1]byte
		if _, err := io.ReadFull(s, one[:]); err == nil {
			s.Write(one[:])
		}
	}()
	var one [1]byte
	if _, err := c.Write(one[:]); err != nil {
		return err
	}
	_, err = io.ReadFull(c, one[:])
	return err
}

// BenchmarkNewReader measures loading the iterator: the fixed cost of a one-shot reader such as
// the CLI (decoding the kernel's BTF for the CO-RE relocations is most of it).
//
//	go test -run '^$' -bench BenchmarkNewReader -benchmem ./pkg/stats/
func BenchmarkNewReader(b *testing.B) {
	testutil.RequireRoot(b)
	b.ReportAllocs()
	for b.Loop() {
		r, err := stats.NewReader()
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
