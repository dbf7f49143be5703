package demo

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// `demo --lb` end to end, shorter, on a private bpffs root: with join steering off the backends'
// kernels refuse joins for want of a token (MPJoinNoTokenFound) and connections stay on one
// subflow; with it on no join is refused and ss -M shows every client connection on two subflows.
// Nothing is left pinned.
func TestDemoLB(t *testing.T) {
	testutil.RequireRoot(t)
	dir := testutil.TempBPFFS(t, "mxdemolb-test-")
	root := dir + "/mptcp-xdp"
	var out strings.Builder
	const n = 24
	res, err := RunLB(context.Background(), LBOptions{Conns: n, Root: root}, &out)
	if err != nil {
		t.Fatalf("demo --lb: %v\n%s", err, out.String())
	}
	if len(res.Phases) != 2 || res.Phases[0].JoinSteering || !res.Phases[1].JoinSteering {
		t.Fatalf("phases %+v", res.Phases)
	}
	off, on := res.Phases[0], res.Phases[1]
	// Three backends: about 2 joins in 3 reach another backend than their connection's.
	if lablb.Sum(off.Joins.NoToken) == 0 || off.View.ClientTwo == n {
		t.Errorf("steering off: %d joins refused, %d of %d connections on 2 subflows: want refusals", lablb.Sum(off.Joins.NoToken), off.View.ClientTwo, n)
	}
	if lablb.Sum(on.Joins.NoToken) != 0 || on.View.ClientTwo != n || on.Intact != n {
		t.Errorf("steering on: %d joins refused, %d of %d connections on 2 subflows, %d intact\n%s",
			lablb.Sum(on.Joins.NoToken), on.View.ClientTwo, n, on.Intact, out.String())
	}
	if on.Stats["join_steered"] < n {
		t.Errorf("steering on: the datapath steered %d joins, want %d", on.Stats["join_steered"], n)
	}
	t.Logf("demo --lb:\n%s", out.String())
	for _, d := range []string{root + "-lb", root} {
		if ents, err := os.ReadDir(d); err == nil && len(ents) > 0 {
			t.Errorf("%s left behind: %v", d, ents)
		}
	}
}
