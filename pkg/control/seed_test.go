package control_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The hash seed across attaches of one balancer: a first attach without a seed runs the default
// (and warns); an attach without a seed keeps the running one; a seed other than the running one
// is refused unless Rehash asks for the change, and the refused attach changes nothing; the seed
// of a seed file is what the program runs; a detached balancer starts afresh.
func TestAttachHashSeed(t *testing.T) {
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	ld, err := loader.New(filepath.Join(testutil.TempBPFFS(t, "mxh4-seed-"), "mptcp-xdp"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := lablb.New(lablb.Config{Prefix: fmt.Sprintf("mxh4s%04x", os.Getpid()&0xffff), Paths: 1, Backends: 1, NoEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	dir := t.TempDir()
	seedFile := func(name, text string) uint32 {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := lb.ReadHashSeedFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return s.Datapath()
	}
	seedA := seedFile("a", "8f1c2a9d4b7e6035a1d2c3b4e5f60718")
	seedB := seedFile("b", "0b5e3c7a91f2d846e0a1b2c3d4e5f6a7")

	var logs bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})))

	attach := func(seed uint32, rehash bool) error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b, err := control.Attach(ctx, ld, control.Spec{Netns: l.LB, Ifaces: []string{l.Paths[0].LBIf},
			Config: lb.Config{HashSeed: seed}, Rehash: rehash})
		if err == nil {
			b.Close()
		}
		return err
	}
	running := func() uint32 {
		t.Helper()
		s, ok, err := control.RunningHashSeed(ld, l.LB)
		if err != nil || !ok {
			t.Fatalf("running hash seed: ok %v, %v", ok, err)
		}
		return s
	}
	step := func(what string, seed uint32, rehash bool, wantErr error, want uint32) {
		t.Helper()
		logs.Reset()
		err := attach(seed, rehash)
		if !errors.Is(err, wantErr) || (wantErr == nil) != (err == nil) {
			t.Fatalf("%s: %v, want %v", what, err, wantErr)
		}
		if got := running(); got != want {
			t.Fatalf("%s: the program runs seed %08x, want %08x", what, got, want)
		}
		for _, s := range []uint32{seedA, seedB} {
			for _, form := range []string{"%08x", "%d"} {
				if v := fmt.Sprintf(form, s); (err != nil && strings.Contains(err.Error(), v)) || strings.Contains(logs.String(), v) {
					t.Errorf("%s: the error or the log shows a seed (%s): %v\n%s", what, v, err, logs.String())
				}
			}
		}
	}

	step("first attach without a seed", 0, false, nil, lb.DefaultHashSeed)
	if !strings.Contains(logs.String(), "no hash seed given") {
		t.Errorf("first attach without a seed: no warning logged:\n%s", logs.String())
	}
	step("again without a seed", 0, false, nil, lb.DefaultHashSeed)
	if !strings.Contains(logs.String(), "no hash seed given") {
		t.Errorf("attach without a seed to a balancer of the default seed: no warning logged:\n%s", logs.String())
	}
	step("a seed file on a balancer of the default seed", seedA, false, control.ErrHashSeedChange, lb.DefaultHashSeed)
	step("the same with --rehash", seedA, true, nil, seedA)
	step("again without a seed", 0, false, nil, seedA)
	if logs.Len() != 0 {
		t.Errorf("an attach that keeps the seed logged:\n%s", logs.String())
	}
	step("again with the same seed file", seedA, false, nil, seedA)
	step("another seed file", seedB, false, control.ErrHashSeedChange, seedA)
	if err := ld.DetachLB(l.LB); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := control.RunningHashSeed(ld, l.LB); ok || err != nil {
		t.Fatalf("after detach: a running seed (ok %v, %v)", ok, err)
	}
	step("a fresh balancer with another seed file", seedB, false, nil, seedB)
	if err := ld.DetachLB(l.LB); err != nil {
		t.Fatal(err)
	}
}
