package lb

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// TestReplayLB: `replay --lb` of the frames the live balancer received, with the balancer's own
// lb attach flags, sends every subflow to the backend that holds it (the backends' ss), each
// initial subflow by its Maglev slot and each join by the token of its connection (the token the
// backend's ss -M shows), and drops the joins whose token no connection holds as the live
// balancer did (its join_dropped counter, and no backend saw them).
func TestReplayLB(t *testing.T) {
	for _, o := range []options{{forward: "l2"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) { replayLBRun(t, o) })
	}
}

func replayLBRun(t *testing.T, o options) {
	const n, forgedJoins = 16, 5
	s := newSetup(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// What the client sends on its links is what the balancer receives (a veth pair); the
	// balancer's own namespace would not show it (native XDP runs before tcpdump). Whole frames.
	file := filepath.Join(t.TempDir(), "client-out.pcap")
	dump := testutil.StartTcpdump(t, s.Client, "-i", "any", "-Q", "out", "-n", "-s", "0", "-U", "--immediate-mode", "-B", "131072", "-w", file, "tcp")

	st0 := lbStatus(t, s.LB).Stats
	base := s.mibs(t)
	conns := s.dial(ctx, t, n, 8)
	defer closeAll(conns)
	j := s.waitJoins(ctx, t, base, n)
	if got := j.Answered(); got != n {
		t.Fatalf("%d joins answered, want %d", got, n)
	}
	// The ground truth, while every connection is open (a transfer ends with the server closing):
	// which backend holds each subflow, and its connection's token there.
	type held struct {
		backend string
		token   uint32
	}
	truth := map[string]held{} // "client addr:port -> VIP addr:port"
	for _, b := range s.Backends {
		addr := b.IP4
		if o.v6 {
			addr = b.IP6
		}
		sfs, err := s.Subflows(b.Netns)
		if err != nil {
			t.Fatal(err)
		}
		for _, sf := range sfs {
			if sf.Local != s.vip.String() || sf.State == "LISTEN" {
				continue
			}
			truth[sf.Peer+" -> "+sf.Local] = held{addr.String(), sf.Token}
		}
	}
	if len(truth) != 2*n {
		t.Fatalf("the backends hold %d subflows of the VIP, want %d", len(truth), 2*n)
	}
	// Data on every subflow (flow-table hits), then the forged joins.
	if ok, errs := transfer(ctx, conns, 8<<10); ok != n {
		t.Fatalf("%d of %d transfers: %v", ok, n, firstErrs(errs, 3))
	}
	f, err := newForger(s)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range forgedJoins {
		if err := f.send(ctx, f.rng.Uint32()); err != nil {
			t.Fatal(err)
		}
	}

	// The forged joins reached the balancer before the capture stops.
	deadline := time.Now().Add(5 * time.Second)
	st1 := lbStatus(t, s.LB).Stats
	for st1["join_dropped"]-st0["join_dropped"] < forgedJoins && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		st1 = lbStatus(t, s.LB).Stats
	}
	time.Sleep(200 * time.Millisecond) // tcpdump -U writes each frame as it comes; let it
	if n := dump.Dropped(); n != 0 {
		t.Fatalf("tcpdump lost %d frames", n)
	}

	args := []string{"replay", file, "--lb", "-o", "json"}
	at := slices.Index(s.attach, "--vip")
	args = append(args, s.attach[at:]...)
	out := mx(t, args...)
	var doc struct {
		Frames    uint64            `json:"frames"`
		VIPFrames uint64            `json:"vip_frames"`
		Stats     map[string]uint64 `json:"stats"`
		Conns     []struct {
			ServerToken string       `json:"server_token"`
			Subflows    []lbReplayed `json:"subflows"`
		} `json:"connections"`
		Orphan []lbReplayed `json:"unmatched_subflows"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("replay --lb -o json: %v\n%s", err, out)
	}
	if len(doc.Conns) != n {
		t.Errorf("%d connections replayed, want %d", len(doc.Conns), n)
	}
	seen := map[string]bool{}
	reasons := map[string]int{}
	for _, c := range doc.Conns {
		for _, sf := range c.Subflows {
			key := sf.Src + " -> " + sf.Dst
			h, ok := truth[key]
			if sf.LB == nil {
				t.Errorf("%s: no balancer decision", key)
				continue
			}
			d := sf.LB
			reasons[sf.Kind+"/"+d.Reason]++
			switch {
			case !ok:
				t.Errorf("%s (%s): replayed to %s, but no backend holds it", key, sf.Kind, d.Backend)
			case d.Backend != h.backend || d.Action != "forward":
				t.Errorf("%s (%s): replay says %s %s (%s), the backends' ss says %s", key, sf.Kind, d.Action, d.Backend, d.Reason, h.backend)
			case d.Elsewhere != 0:
				t.Errorf("%s: %d of %d frames elsewhere", key, d.Elsewhere, d.Frames)
			case sf.Kind == "initial" && (d.Reason != "maglev" || d.Slot == nil):
				t.Errorf("%s: initial subflow placed by %q (slot %v), want maglev", key, d.Reason, d.Slot)
			case sf.Kind == "join" && (d.Reason != "token" || d.Token != fmt.Sprintf("%08x", h.token)):
				t.Errorf("%s: join placed by %q token %s, want token %08x (ss -M on %s)", key, d.Reason, d.Token, h.token, h.backend)
			case sf.Kind == "initial" && d.Token != fmt.Sprintf("%08x", h.token):
				t.Errorf("%s: the balancer learned token %s, ss -M on %s shows %08x", key, d.Token, h.backend, h.token)
			}
			seen[key] = true
		}
	}
	for k := range truth {
		if !seen[k] {
			t.Errorf("%s, held by %s, is in no replayed connection", k, truth[k].backend)
		}
	}
	dropped := 0
	for _, sf := range doc.Orphan {
		if sf.Kind == "join" && sf.LB != nil && sf.LB.Action == "drop" && sf.LB.Reason == "unknown_token_drop" && sf.LB.Backend == "" {
			dropped++
		} else if sf.LB != nil {
			t.Errorf("a subflow of no connection: %+v %+v", sf, *sf.LB)
		}
	}
	if live := st1["join_dropped"] - st0["join_dropped"]; uint64(dropped) != live || dropped != forgedJoins {
		t.Errorf("replay dropped %d forged joins, the live balancer %d, sent %d", dropped, live, forgedJoins)
	}
	// The replayed balancer counted what the live one did over the same frames.
	for _, k := range []string{"vip", "new_flow", "join_steered", "token_learned", "join_dropped", "flow_hit", "nonsyn_miss", "no_backend"} {
		if live := st1[k] - st0[k]; doc.Stats[k] != live {
			t.Errorf("%s: replay %d, live balancer %d", k, doc.Stats[k], live)
		}
	}
	if doc.Stats["vip"] != doc.VIPFrames || doc.VIPFrames == 0 {
		t.Errorf("vip counter %d, vip_frames %d", doc.Stats["vip"], doc.VIPFrames)
	}
	t.Logf("replay --lb: %d frames, %d to the VIP; %d connections, %d subflows matched the backends' ss; decisions %v; %d forged joins dropped (live %d)",
		doc.Frames, doc.VIPFrames, len(doc.Conns), len(seen), reasons, dropped, st1["join_dropped"]-st0["join_dropped"])
}

// lbReplayed is one subflow of replay --lb -o json.
type lbReplayed struct {
	Src  string `json:"src"`
	Dst  string `json:"dst"`
	Kind string `json:"kind"`
	LB   *struct {
		Backend   string  `json:"backend"`
		Action    string  `json:"action"`
		Reason    string  `json:"reason"`
		Slot      *uint32 `json:"maglev_slot"`
		Token     string  `json:"token"`
		Frames    uint64  `json:"frames"`
		Elsewhere uint64  `json:"frames_elsewhere"`
	} `json:"lb"`
}
