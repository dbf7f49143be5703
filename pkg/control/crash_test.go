package control_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The crash test's commands, as the CLI would run them against one balancer, in order. Backends
// are the client addresses of a three-path lab (b0, b1, b2).
var crashOps = []struct {
	name string
	run  func(ctx context.Context, b *control.Balancer, be []netip.Addr) error
	// want is the backend set after the command; prefixes are the sets a multi-backend command
	// passes through (a crash may leave any of them: each backend is added whole or not at all).
	want     []string
	prefixes [][]string
}{
	{"lb attach --vip", func(_ context.Context, b *control.Balancer, _ []netip.Addr) error {
		_, err := b.PutVIP(crashVIP, control.DefaultPolicy)
		return err
	}, nil, nil},
	{"lb backend add b0 b1,weight=2", func(ctx context.Context, b *control.Balancer, be []netip.Addr) error {
		_, err := b.AddBackends(ctx, control.BackendSpec{Addr: be[0], Weight: 1}, control.BackendSpec{Addr: be[1], Weight: 2})
		return err
	}, []string{"b0/1/active", "b1/2/active"}, [][]string{{"b0/1/active"}}},
	{"lb backend drain b1", func(_ context.Context, b *control.Balancer, be []netip.Addr) error {
		_, err := b.Drain(be[1])
		return err
	}, []string{"b0/1/active", "b1/2/draining"}, nil},
	{"lb backend remove b0", func(_ context.Context, b *control.Balancer, be []netip.Addr) error {
		_, err := b.Remove(be[0])
		return err
	}, []string{"b1/2/draining"}, nil},
	{"lb backend add b2,weight=3", func(ctx context.Context, b *control.Balancer, be []netip.Addr) error {
		_, err := b.AddBackends(ctx, control.BackendSpec{Addr: be[2], Weight: 3})
		return err
	}, []string{"b1/2/draining", "b2/3/active"}, nil},
}

var crashVIP = netip.MustParseAddrPort("10.0.0.10:80")

// crashEnv is what the parent passes to the helper process.
const (
	envDir   = "MX_CRASH_DIR"   // pin directory of the balancer's maps
	envNetns = "MX_CRASH_NETNS" // namespace of the resolver
	envOp    = "MX_CRASH_OP"    // index in crashOps, or "restart"
	envKill  = "MX_CRASH_KILL"  // die (exit 3) at this step (1-based); 0 never
	envAddrs = "MX_CRASH_ADDRS" // the backends' addresses, comma-separated
)

// crashPins creates the balancer's maps, pinned in a private bpffs directory, without a program.
func crashPins(t *testing.T, dir string) {
	t.Helper()
	spec, err := lb.Spec(lb.Config{MaxVIPs: 2, MaxFlows: 1024, MaxTokens: 1024, PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	spec.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		t.Fatal(err)
	}
	coll.Close()
	w, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: loader.PinLBWeights, Type: ebpf.Array, KeySize: 4, ValueSize: 4,
		MaxEntries: lb.MaxBackends, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// openCrash opens a control plane over the pinned maps, as a new process would.
func openCrash(dir, ns string) (*control.Balancer, func(), error) {
	maps, err := lb.OpenPinnedMaps(dir)
	if err != nil {
		return nil, nil, err
	}
	w, err := ebpf.LoadPinnedMap(filepath.Join(dir, loader.PinLBWeights), nil)
	if err != nil {
		maps.Close()
		return nil, nil, err
	}
	res, err := control.NewResolver(ns)
	if err != nil {
		maps.Close()
		w.Close()
		return nil, nil, err
	}
	b, err := control.OpenBalancer(maps, w, res)
	if err != nil {
		res.Close()
		maps.Close()
		w.Close()
		return nil, nil, err
	}
	return b, func() { b.Close(); maps.Close(); w.Close() }, nil
}

// TestCrashHelperProcess is the control plane the crash test kills: it runs one command, dying
// (exit 3, no deferred cleanup) at the step it is told.
func TestCrashHelperProcess(t *testing.T) {
	dir := os.Getenv(envDir)
	if dir == "" {
		t.Skip("helper process of TestCrashConsistency")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var addrs []netip.Addr
	for _, a := range strings.Split(os.Getenv(envAddrs), ",") {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	b, closeAll, err := openCrash(dir, os.Getenv(envNetns))
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	defer closeAll()
	if os.Getenv(envOp) == "restart" {
		if err := b.Restart(); err != nil {
			fmt.Fprintln(os.Stderr, "restart:", err)
			os.Exit(1)
		}
		return
	}
	op, _ := strconv.Atoi(os.Getenv(envOp))
	kill, _ := strconv.Atoi(os.Getenv(envKill))
	n := 0
	defer control.SetStepHook(func(step string) error {
		fmt.Println("step:", step)
		if n++; n == kill {
			os.Exit(3)
		}
		return nil
	})()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := crashOps[op].run(ctx, b, addrs); err != nil {
		fmt.Fprintln(os.Stderr, crashOps[op].name+":", err)
		os.Exit(1)
	}
}

// The control plane killed at every step of every command (its maps written one by one), then
// restarted, leaves the pinned state of the configuration before the command or after it (for a
// command adding several backends, after some of them, each whole); running the command again
// then gives the configuration after it. State is read as a new process would: the backend set
// from the backend and weight tables, every VIP's Maglev table compared with the one the set
// computes, and no backend entry outside the set.
func TestCrashConsistency(t *testing.T) {
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Paths: 3})
	addrs := []netip.Addr{l.Paths[0].ClientIP4, l.Paths[1].ClientIP4, l.Paths[2].ClientIP4}
	var addrList []string
	name := map[netip.Addr]string{}
	for i, a := range addrs {
		addrList = append(addrList, a.String())
		name[a] = "b" + strconv.Itoa(i)
	}
	root := testutil.TempBPFFS(t, "mxcrash-")
	helper := func(dir, op string, kill int) (int, string) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envDir+"="+dir, envNetns+"="+l.Server, envOp+"="+op,
			envKill+"="+strconv.Itoa(kill), envAddrs+"="+strings.Join(addrList, ","))
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	// state is the backend set as a new process reads it, after checking the tables against it.
	state := func(dir, what string) []string {
		t.Helper()
		b, closeAll, err := openCrash(dir, l.Server)
		if err != nil {
			t.Fatal(err)
		}
		defer closeAll()
		var set []string
		for _, be := range b.List() {
			set = append(set, fmt.Sprintf("%s/%d/%s", name[be.Addr], be.Weight, be.State))
		}
		slices.Sort(set)
		bs, err := control.NewBackendSet(int(b.Maps.Backends.MaxEntries()), b.List()...)
		if err != nil {
			t.Fatal(err)
		}
		table, _ := bs.Table(nil)
		vips, err := b.Maps.ListVIPs()
		if err != nil || len(vips) != 1 || vips[0].Addr != crashVIP {
			t.Fatalf("%s: vips %+v %v", what, vips, err)
		}
		if ring, err := b.Maps.ReadRing(vips[0].ID); err != nil || !slices.Equal(ring, table) {
			t.Errorf("%s: the VIP's table is not the set's (%v)", what, err)
		}
		entries, err := b.Maps.ListBackends()
		if err != nil || len(entries) != len(set) {
			t.Errorf("%s: %d backend entries for a set of %d (%v)", what, len(entries), len(set), err)
		}
		return set
	}
	// prepare makes a fresh pin directory holding the state before command i.
	fresh := 0
	prepare := func(i int) string {
		fresh++
		dir := filepath.Join(root, strconv.Itoa(fresh))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		crashPins(t, dir)
		for j := range i {
			if code, out := helper(dir, strconv.Itoa(j), 0); code != 0 {
				t.Fatalf("%s: exit %d\n%s", crashOps[j].name, code, out)
			}
		}
		return dir
	}
	killed := 0
	for i, op := range crashOps {
		before := []string(nil)
		if i > 0 {
			before = crashOps[i-1].want
		}
		allowed := append([][]string{before, op.want}, op.prefixes...)
		if i == 0 {
			allowed = [][]string{nil} // before the VIP exists there is nothing to compare
		}
		for k := 1; ; k++ {
			dir := prepare(i)
			code, out := helper(dir, strconv.Itoa(i), k)
			if code == 0 {
				// The command has fewer than k steps: it ran to its end.
				if got := state(dir, op.name); !slices.Equal(got, op.want) {
					t.Errorf("%s: %v, want %v", op.name, got, op.want)
				}
				t.Logf("%s: killed at each of its %d steps", op.name, k-1)
				break
			}
			if code != 3 {
				t.Fatalf("%s, kill at step %d: exit %d\n%s", op.name, k, code, out)
			}
			killed++
			what := fmt.Sprintf("%s killed at step %d", op.name, k)
			// Once a step the datapath acts on is done (a VIP table rewritten, a backend flagged
			// draining), the restart must not go back to the state before the command: new
			// connections would move and move back.
			ok := allowed
			for _, step := range []string{"step: rebuild: a vip table written", "step: remove: tables rebuilt", "step: drain: entry flagged"} {
				if strings.Contains(out, step) && i > 0 {
					ok = allowed[1:]
				}
			}
			if code, out := helper(dir, "restart", 0); code != 0 {
				t.Fatalf("%s: restart: exit %d\n%s", what, code, out)
			}
			if i > 0 {
				got := state(dir, what+", restarted")
				if !slices.ContainsFunc(ok, func(s []string) bool { return slices.Equal(s, got) }) {
					t.Errorf("%s, restarted: %v, want one of %v", what, got, ok)
				}
			}
			// Running the command again ends where it would have. A removal the restart
			// finished leaves nothing to remove: that is the one error allowed.
			code, out = helper(dir, strconv.Itoa(i), 0)
			if code != 0 && !strings.Contains(out, "not in the set") {
				t.Fatalf("%s: run again: exit %d\n%s", what, code, out)
			}
			if i > 0 {
				if got := state(dir, what+", run again"); !slices.Equal(got, op.want) {
					t.Errorf("%s, run again: %v, want %v", what, got, op.want)
				}
			}
		}
	}
	if killed < 10 {
		t.Errorf("only %d kill points: the step hooks are not reached", killed)
	}
}
