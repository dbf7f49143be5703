package lb

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// newConfigSetup is a balancer lab with MPTCP servers on the VIP in every backend and nothing
// attached: the tests attach it with lb run --config.
func newConfigSetup(ctx context.Context, t *testing.T, c lablb.Config) *setup {
	t.Helper()
	l := newLab(t, c)
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &setup{Lab: l, opts: options{forward: "l2"}, srv: srv, vip: netip.AddrPortFrom(l.VIP4, uint16(srv.Port))}
}

// configInterfaces is the interfaces line of a config file: the balancer's client-facing links.
func (s *setup) configInterfaces() string {
	var b strings.Builder
	b.WriteString("interfaces: [")
	for i, p := range s.Paths {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(p.LBIf)
	}
	b.WriteString("]\n")
	return b.String()
}

// TestConfigReload: `lb run --config` attaches the balancer as its file says. A reload (`lb
// reload`) that adds a third backend and changes the VIP's policy moves only the Maglev slots the
// new backend takes, about a third of them, while the connections made before
// keep transferring on their backends (a few slots move between the old backends too: Maglev's
// disruption is near-minimal, not zero; the flow table keeps their flows). A file with an error is refused with one line naming the
// field, by `lb reload` before it signals and by `lb run` on a bare SIGHUP, and the balancer is
// left as it was. SIGTERM stops lb run and removes its pid file.
func TestConfigReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	s := newConfigSetup(ctx, t, lablb.Config{})
	l := s.Lab
	file := filepath.Join(t.TempDir(), "lb.yaml")
	write := func(nb int, extra string) {
		t.Helper()
		var b strings.Builder
		b.WriteString(s.configInterfaces())
		fmt.Fprintf(&b, "vips:\n  - addr: %s\n    forward: l2\n%sbackends:\n", s.vip, extra)
		for _, be := range l.Backends[:nb] {
			fmt.Fprintf(&b, "  - addr: %s\n", be.IP4)
		}
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(2, "")
	cp := startControlPlane(t, l.LB, "--config", file)
	t.Cleanup(func() { _, _ = mxErr("--netns", l.LB, "lb", "detach") })

	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	ring := func() []uint32 {
		t.Helper()
		m, err := ld.OpenLB(l.LB)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		vs, err := m.ListVIPs()
		if err != nil || len(vs) != 1 {
			t.Fatalf("vips %v: %v", vs, err)
		}
		r, err := m.ReadRing(vs[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	st := lbStatus(t, l.LB)
	if len(st.Interfaces) != len(l.Paths) || len(st.VIPs) != 1 || len(st.Backends) != 2 || st.VIPs[0].UnknownJoin != "drop" {
		t.Fatalf("status after lb run --config: %+v", st)
	}
	ids := map[string]uint32{}
	for _, be := range st.Backends {
		ids[be.Addr] = be.ID
	}
	ring0 := ring()
	base := s.mibs(t)
	before := s.dial(ctx, t, 20, 10)
	defer closeAll(before)
	if j := s.waitJoins(ctx, t, base, 20); j.Answered() != 20 {
		t.Fatalf("joins before the reload: %+v", j)
	}
	if n := perBackend(before, len(l.Backends)); n[2] != 0 {
		t.Fatalf("connections per backend %v: the third backend is not in the file yet", n)
	}

	// The reload: a third backend, and the VIP's unknown-join policy.
	write(3, "    unknown_join: pass\n")
	out := mx(t, "--netns", l.LB, "lb", "reload", "--config", file)
	if !strings.Contains(out, fmt.Sprint(cp.cmd.Process.Pid)) {
		t.Errorf("lb reload: %q, want it to name lb run's pid %d", out, cp.cmd.Process.Pid)
	}
	deadline := time.Now().Add(20 * time.Second)
	for st = lbStatus(t, l.LB); (len(st.Backends) != 3 || st.VIPs[0].UnknownJoin != "pass") && time.Now().Before(deadline); st = lbStatus(t, l.LB) {
		time.Sleep(100 * time.Millisecond)
	}
	if len(st.Backends) != 3 || st.VIPs[0].UnknownJoin != "pass" || len(st.Interfaces) != len(l.Paths) {
		t.Fatalf("status after the reload: %+v\n%s", st, cp.logs)
	}
	var third uint32
	for _, be := range st.Backends {
		if be.Addr == l.Backends[2].IP4.String() {
			third = be.ID
		} else if ids[be.Addr] != be.ID {
			t.Errorf("backend %s changed id %d -> %d", be.Addr, ids[be.Addr], be.ID)
		}
	}
	ring1 := ring()
	moved, elsewhere := 0, 0
	for i := range ring0 {
		if ring0[i] != ring1[i] {
			moved++
			if ring1[i] != third {
				elsewhere++
			}
		}
	}
	// Maglev's promise: the new backend takes its share (1/3) and the table barely changes
	// otherwise (a few slots between the old backends: its disruption is near-minimal, not zero).
	share := float64(moved) / float64(len(ring0))
	if elsewhere > len(ring0)/1000 || share > 0.34 || share < 0.32 {
		t.Errorf("the reload moved %d of %d slots (%.3f; a new third backend takes 1/3), %d of them not to it", moved, len(ring0), share, elsewhere)
	}
	if ok, errs := transfer(ctx, before, 32<<10); ok != len(before) {
		t.Errorf("%d of %d connections made before the reload transferred: %v", ok, len(before), firstErrs(errs, 3))
	}
	after := s.dial(ctx, t, 30, 10)
	defer closeAll(after)
	if n := perBackend(after, len(l.Backends)); n[2] == 0 {
		t.Errorf("connections per backend after the reload %v: none on the new backend", n)
	}

	// A file with an error: lb reload refuses it and signals nothing; a bare SIGHUP makes lb run
	// refuse it. Nothing changes.
	good, _ := os.ReadFile(file)
	if err := os.WriteFile(file, []byte(strings.Replace(string(good), "    unknown_join: pass\n", "    unknown_joins: pass\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = mxErr("--netns", l.LB, "lb", "reload", "--config", file)
	stderr := ""
	if err != nil {
		_, stderr, _ = strings.Cut(err.Error(), "\nstderr: ")
	}
	if !strings.Contains(stderr, "line 5: unknown field unknown_joins") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
		t.Errorf("lb reload of a bad file: %v, want one line naming line 5 and the field", err)
	}
	logsBefore := cp.logs.String()
	if err := cp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for !strings.Contains(strings.TrimPrefix(cp.logs.String(), logsBefore), "reload refused") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if logs := strings.TrimPrefix(cp.logs.String(), logsBefore); !strings.Contains(logs, "reload refused") || !strings.Contains(logs, "unknown_joins") {
		t.Errorf("lb run on SIGHUP with a bad file logged:\n%s", logs)
	}
	if r := ring(); !slices.Equal(r, ring1) || len(lbStatus(t, l.LB).Backends) != 3 {
		t.Errorf("a refused reload changed the balancer")
	}
	// A second lb run --config for the namespace is refused, naming the first.
	if _, err := mxErr("--netns", l.LB, "lb", "run", "--config", file); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", cp.cmd.Process.Pid)) {
		t.Errorf("a second lb run --config: %v, want a refusal naming pid %d", err, cp.cmd.Process.Pid)
	}
	cp.stop(t)
	pidFile := "/run/mptcp-xdp/lb-run-" + l.LB + ".pid"
	if _, err := os.Stat(pidFile); !os.IsNotExist(err) {
		t.Errorf("pid file after lb run stopped: %v", err)
	}
	// A pid file left by a killed lb run may name a process reused since: it is never signalled.
	other := exec.Command("sleep", "30")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	if err := os.WriteFile(pidFile, []byte(fmt.Sprintln(other.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(pidFile)
	if _, err := mxErr("--netns", l.LB, "lb", "reload"); err == nil || !strings.Contains(err.Error(), "no lb run --config is running") {
		t.Errorf("lb reload with a stale pid file: %v, want a refusal", err)
	}
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process a stale pid file named was signalled: %v", err)
	}
	t.Logf("lb run --config: reload added a backend, moved %d of %d slots (%.4f), %d of them between the old backends; connections before/after on backends %v / %v",
		moved, len(ring0), share, elsewhere, perBackend(before, 3), perBackend(after, 3))
}
