package demo

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// TestDemoFleet runs `demo --lb --balancers 3`'s lab: with token steering only, some joins reach
// an instance that never saw their connection and are refused by the backend (MPJoinNoTokenFound,
// read in the backends' kernels); with join ports, every join is accepted and none refused. The
// router's route has the three balancers as next hops (from BGP where BIRD is installed, as CI
// installs it).
func TestDemoFleet(t *testing.T) {
	testutil.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "mptcp-xdp")
	if err := testutil.BuildBinary(bin); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const n = 30
	var live io.Writer
	if testing.Verbose() {
		live = os.Stderr
	}
	res, err := RunFleet(ctx, FleetOptions{Balancers: 3, Conns: n, Binary: bin}, live)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("bird"); err == nil && res.Routes != "bgp" {
		t.Errorf("routes %q with BIRD installed, want bgp", res.Routes)
	}
	if len(res.NextHops) != 3 || len(res.Phases) != 2 {
		t.Fatalf("next hops %v, phases %d", res.NextHops, len(res.Phases))
	}
	p1, p2 := res.Phases[0], res.Phases[1]
	for _, p := range res.Phases {
		if p.JoinsAccepted+p.JoinsRefused != n || p.Intact != n {
			t.Errorf("%s: joins accepted %d + refused %d, transfers intact %d; want %d each", p.Name, p.JoinsAccepted, p.JoinsRefused, p.Intact, n)
		}
	}
	// With three instances hashed independently, all 30 joins on the instance with the token has
	// probability (1/3)^30; refused ones (on the wrong instance and hashed to the wrong backend)
	// about 4/9 of them.
	if p1.JoinsRefused == 0 || p1.JoinUnknown == 0 {
		t.Errorf("token steering alone: %d joins refused, %d unknown to their instance; want the problem to show", p1.JoinsRefused, p1.JoinUnknown)
	}
	if p2.JoinsRefused != 0 || p2.JoinSteered != 0 {
		t.Errorf("join ports: %d joins refused, %d steered by token; want 0 and 0", p2.JoinsRefused, p2.JoinSteered)
	}
	t.Logf("token steering: %d/%d joins refused (%d unknown to their instance); join ports: %d/%d accepted", p1.JoinsRefused, n, p1.JoinUnknown, p2.JoinsAccepted, n)
}
