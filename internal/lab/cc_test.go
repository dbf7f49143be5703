package lab_test

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// ssCongestion lists the congestion control algorithm of every established TCP socket (MPTCP
// subflows included) that `ss -ti` shows in ns.
func ssCongestion(t *testing.T, ns string) []string {
	t.Helper()
	out, err := exec.Command("ss", "-N", ns, "-Htni", "state", "established").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	re := regexp.MustCompile(`^\s+(?:ts |sack |ecn |ecnseen |fastopen |)*([a-z0-9_]+) wscale:`)
	var ccs []string
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			continue
		}
		if m := re.FindStringSubmatch(line); m != nil {
			ccs = append(ccs, m[1])
		}
	}
	return ccs
}

// TestTransferCongestionControl: TransferConfig.CongestionControl reaches every subflow on both
// ends, including the joined one, and an unknown algorithm is a clear error.
func TestTransferCongestionControl(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Subflows: true})
	def, err := lab.ReadSysctl(l.Client, "net/ipv4/tcp_congestion_control")
	if err != nil {
		t.Fatal(err)
	}
	// An algorithm other than the namespace's default, so that the test shows the setting.
	want := "reno"
	if strings.TrimSpace(def) == want {
		want = "cubic"
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var seen map[string][]string
	res, err := l.Transfer(ctx, lab.TransferConfig{Duration: 3 * time.Second, Interval: 500 * time.Millisecond, CongestionControl: want,
		OnTick: func(lab.TransferTick) {
			// The reading with the most subflows: a tick may come before the join is established
			// on both ends.
			now := map[string][]string{"client": ssCongestion(t, l.Client), "server": ssCongestion(t, l.Server)}
			if len(now["client"])+len(now["server"]) > len(seen["client"])+len(seen["server"]) {
				seen = now
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.MPTCP || !res.ChecksumOK {
		t.Fatalf("transfer: %+v", res)
	}
	if seen == nil {
		t.Fatal("no tick saw an established subflow on either end")
	}
	for side, ccs := range seen {
		// Two subflows (two paths) on each side.
		if len(ccs) != 2 {
			t.Errorf("%s: ss -ti shows %d established subflows with an algorithm, want 2: %v", side, len(ccs), ccs)
		}
		for _, cc := range ccs {
			if cc != want {
				t.Errorf("%s: subflow congestion control %q, want %q (namespace default %q)", side, cc, want, strings.TrimSpace(def))
			}
		}
	}

	_, err = l.Transfer(ctx, lab.TransferConfig{Duration: 100 * time.Millisecond, CongestionControl: "no-such-cc"})
	if err == nil || !strings.Contains(err.Error(), `"no-such-cc"`) {
		t.Errorf("unknown algorithm: %v, want an error naming it", err)
	}
}
