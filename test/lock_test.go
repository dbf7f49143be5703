package test

import (
	"strings"
	"sync"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// TestConcurrentInvocations runs many attach and detach invocations at once on the same and on
// different interfaces (in two namespaces), with status and stats reading alongside; every one
// must succeed or fail cleanly, and every interface must end either fully attached or fully
// detached. It does not run in parallel with the other tests: its readers hold the lock shared
// almost without a break, and flock is not fair, so a parallel test's attach could wait out its
// 30 s and fail.
func TestConcurrentInvocations(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Paths: 2})
	type target struct{ ns, iface string }
	targets := []target{
		{l.Server, l.Paths[0].ServerIf}, {l.Server, l.Paths[1].ServerIf},
		{l.Client, l.Paths[0].ClientIf}, {l.Client, l.Paths[1].ClientIf},
	}
	for _, tg := range targets {
		t.Cleanup(func() { detachCleanup(t, tg.ns, tg.iface) })
	}
	variants := [][]string{
		{"attach"},
		{"attach", "--ingress", "tc", "--tc", "clsact"},
		{"detach"},
		{"attach", "--mode", "generic", "--no-egress"},
		{"attach", "--ingress", "tc"},
		{"detach"},
	}

	// run starts every invocation at once and waits for all of them.
	run := func(invs [][]string) []result {
		res := make([]result, len(invs))
		var wg sync.WaitGroup
		for i, args := range invs {
			wg.Go(func() { res[i] = mx(t, args...) })
		}
		wg.Wait()
		return res
	}
	var invs [][]string
	for i := range 8 {
		tg := targets[i%len(targets)]
		v := variants[(i+i/len(targets))%len(variants)]
		invs = append(invs, append([]string{"--netns", tg.ns, v[0], tg.iface}, v[1:]...))
	}
	// Readers keep listing while the writers change things under them.
	done := make(chan struct{})
	var readers sync.WaitGroup
	var reads []result
	var mu sync.Mutex
	for _, args := range [][]string{{"-o", "json", "status"}, {"-o", "json", "stats"}} {
		readers.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				r := mx(t, args...)
				mu.Lock()
				reads = append(reads, r)
				mu.Unlock()
			}
		})
	}
	writes := run(invs)
	close(done)
	readers.Wait()
	t.Logf("%d reads during %d writes", len(reads), len(writes))
	// Every invocation shares the lock with every other mptcp-xdp on the machine (other test
	// packages too) and gives up cleanly after waiting 30 s; on a loaded machine some may.
	timedOut := func(r result) bool { return r.code != 0 && strings.Contains(r.stderr, "holds the lock") }
	waited := 0
	for _, r := range reads {
		switch {
		case r.code == 0 && r.stderr == "":
		case timedOut(r):
			requireCleanError(t, r, "holds the lock")
			waited++
		default:
			t.Errorf("concurrent reader failed: %v", r)
		}
	}
	ok := 0
	for _, r := range writes {
		switch {
		case r.code == 0 && r.stderr == "":
			ok++
		case r.code != 0 && r.args[2] == "detach" && strings.Contains(r.stderr, "not attached"):
			requireCleanError(t, r, "not attached")
			ok++
		case timedOut(r):
			requireCleanError(t, r, "holds the lock")
			waited++
		default:
			t.Errorf("concurrent invocation failed: %v", r)
		}
	}
	t.Logf("%d of %d writes done, %d invocations gave up waiting for the lock", ok, len(writes), waited)
	if ok < len(writes)/2 {
		t.Errorf("only %d of %d writes done", ok, len(writes))
	}
	for _, tg := range targets {
		requireConsistent(t, tg.ns, tg.iface)
	}

	// A second round whose end state is known: the first two attached, the others detached.
	invs = invs[:0]
	for i, tg := range targets {
		op := "attach"
		if i >= 2 {
			op = "detach"
		}
		invs = append(invs, []string{"--netns", tg.ns, op, tg.iface})
	}
	for _, r := range run(invs) {
		if r.code != 0 && !(r.args[2] == "detach" && strings.Contains(r.stderr, "not attached")) {
			t.Errorf("%v", r)
		}
	}
	for i, tg := range targets {
		a := requireConsistent(t, tg.ns, tg.iface)
		if attached := a != nil; attached != (i < 2) {
			t.Errorf("%s/%s attached %v, want %v", tg.ns, tg.iface, attached, i < 2)
		}
	}
}

// requireConsistent checks that ns/iface is either fully attached, exactly as status describes it
// (kernel hooks and pins included), or fully detached. It returns the attachment, or nil.
func requireConsistent(t *testing.T, ns, iface string) *attachment {
	t.Helper()
	a, ok := status(t, ns)[iface]
	if !ok {
		requireDetached(t, ns, iface, attachment{}, false)
		return nil
	}
	var w want
	w.xdp = a.XDPMode
	for _, p := range a.Programs {
		switch p.Hook {
		case "xdp":
			w.xdpMech = p.Mechanism
		case "tc_ingress":
			w.in = p.Mechanism
		case "tc_egress":
			w.out = p.Mechanism
		default:
			t.Errorf("status of %s lists a %s program", iface, p.Hook)
		}
	}
	if (w.xdp == "") == (w.in == "") {
		t.Errorf("%s/%s: status shows XDP %q and TC ingress %q: want exactly one ingress hook", ns, iface, w.xdp, w.in)
	}
	requireAttached(t, ns, iface, w)
	return &a
}
