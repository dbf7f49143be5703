package lb

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

const (
	// conns is the number of concurrent MPTCP connections of a run.
	conns = 200
	// forged is the number of MP_JOIN SYNs with random tokens sent at the VIP during a run.
	forged = 100_000
	// transferBytes is what every connection sends, checksummed end to end.
	transferBytes = 128 << 10
)

func delta(after, before map[string]uint64, k string) int64 { return int64(after[k] - before[k]) }

// With join steering, in both forwarding modes and for IPv4 and IPv6 VIPs: 200 concurrent
// connections all end with two subflows on one backend, no backend ever sees a join it has no
// token for, every backend's token is the one the balancer learned, and data arrives intact. During
// the same run, the control plane is killed (SIGKILL) after the first half of the connections and
// restarted after the second half: the datapath steers on from its pinned state. And 100,000 MP_JOIN
// SYNs with random tokens are sent at the VIP: none reaches a backend (every join SYN a backend
// counts is one the balancer steered by a learned token), the legitimate joins all succeed.
func TestJoinSteering(t *testing.T) {
	for _, o := range []options{{forward: "l2"}, {forward: "l2", v6: true}, {forward: "ipip"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) { steeringRun(t, o) })
	}
}

func steeringRun(t *testing.T, o options) {
	s := newSetup(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cp := startControlPlane(t, s.LB)
	base := s.mibs(t)
	st0 := lbStatus(t, s.LB).Stats

	// The flood, concurrent with the whole run. A random token that a live connection happens to
	// hold (odds ~ conns/2^32 per SYN) is skipped: that join would rightly be steered.
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := ld.OpenLB(s.LB)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	f, err := newForger(s)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var floodWG sync.WaitGroup
	var floodSent int
	var floodErr error
	var floodTime time.Duration
	floodWG.Add(1)
	go func() {
		defer floodWG.Done()
		start := time.Now()
		for floodSent < forged && ctx.Err() == nil {
			tok := f.rng.Uint32()
			if _, held, err := maps.LookupToken(s.vid, tok); err != nil || held {
				continue
			}
			if floodErr = f.send(ctx, tok); floodErr != nil {
				return
			}
			floodSent++
		}
		floodTime = time.Since(start)
	}()
	// On an early failure, stop the flood before its socket and the maps close.
	floodDone := false
	defer func() {
		if !floodDone {
			cancel()
			floodWG.Wait()
		}
	}()

	first := s.dial(ctx, t, conns/2, 25)
	defer closeAll(first)
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	s.waitJoins(wctx, t, base, conns/2)
	wcancel()

	cp.kill(t)
	second := s.dial(ctx, t, conns-conns/2, 25)
	defer closeAll(second)
	wctx, wcancel = context.WithTimeout(ctx, 60*time.Second)
	jDown := s.waitJoins(wctx, t, base, conns)
	wcancel()
	cp = startControlPlane(t, s.LB)
	floodWG.Wait() // ends at the latest at ctx's deadline: every send checks it
	floodDone = true
	if floodErr != nil {
		t.Fatalf("flood: %v after %d frames", floodErr, floodSent)
	}

	all := append(append([]*lablb.Conn(nil), first...), second...)
	j := s.joins(t, base)
	v := s.view(t)
	st1 := lbStatus(t, s.LB)
	match, bad := s.tokenMatches(t, v)
	listed, listBad := s.connListLB(t, v)
	okN, errs := transfer(ctx, all, transferBytes)
	logs := cp.stop(t)

	t.Logf("%d connections landed %v; joins answered with the control plane down: %d", len(all), perBackend(all, len(s.Backends)), jDown.Answered())
	t.Logf("backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v", j.SynRx, j.AckRx, j.NoToken)
	t.Logf("ss -M: client %d with 2 subflows, %d with 1; backends with 2 subflows %v of %v", v.ClientTwo, v.ClientOne, v.BackendTwo, v.BackendAll)
	t.Logf("balancer: join_steered %+d join_unknown %+d join_dropped %+d token_learned %+d collision %+d; tokens %d flows %d",
		delta(st1.Stats, st0, "join_steered"), delta(st1.Stats, st0, "join_unknown"), delta(st1.Stats, st0, "join_dropped"),
		delta(st1.Stats, st0, "token_learned"), delta(st1.Stats, st0, "collision"), st1.Tokens, st1.Flows)
	t.Logf("conn list --lb: %d connections with the token, backend and 2 flows ss -M shows", listed)
	t.Logf("flood: %d forged MP_JOIN SYNs in %v; tokens matching ss -M: %d; transfers intact: %d of %d", floodSent, floodTime.Round(time.Millisecond), match, okN, len(all))
	if i := strings.LastIndex(logs, "balancer loop stopped"); i >= 0 {
		t.Logf("restarted control plane: %s", strings.TrimSpace(logs[i:]))
	}

	if v.ClientTwo != conns || v.ClientOne != 0 {
		t.Errorf("client: %d connections with 2 subflows and %d with 1, want %d and 0", v.ClientTwo, v.ClientOne, conns)
	}
	if lablb.Sum(v.BackendTwo) != conns || lablb.Sum(v.BackendAll) != conns {
		t.Errorf("backends: %v connections with 2 subflows of %v, want %d in all", v.BackendTwo, v.BackendAll, conns)
	}
	if lablb.Sum(j.NoToken) != 0 {
		t.Errorf("MPJoinNoTokenFound %v, want 0 everywhere", j.NoToken)
	}
	if lablb.Sum(j.AckRx) != conns {
		t.Errorf("MPJoinAckRx %v, want %d in all", j.AckRx, conns)
	}
	if steered := delta(st1.Stats, st0, "join_steered"); lablb.Sum(j.SynRx) != steered {
		t.Errorf("backends received %d join SYNs, the balancer steered %d: a join reached a backend without a learned token", lablb.Sum(j.SynRx), steered)
	}
	if floodSent != forged {
		t.Errorf("flood sent %d of %d", floodSent, forged)
	}
	if d := delta(st1.Stats, st0, "join_dropped"); d < int64(floodSent) {
		t.Errorf("balancer dropped %d unknown-token joins, %d were forged", d, floodSent)
	}
	if match != conns || len(bad) > 0 {
		t.Errorf("%d of %d backend tokens (ss -M) are the balancer's; mismatches: %v", match, conns, bad)
	}
	if listed != conns || len(listBad) > 0 {
		t.Errorf("conn list --lb: %d of %d connections listed as ss -M shows them on the backends, with 2 flows; problems: %v", listed, conns, firstStrs(listBad, 5))
	}
	if okN != conns {
		t.Errorf("%d of %d transfers intact; first errors: %v", okN, conns, firstErrs(errs, 3))
	}
}

// connListLB compares `conn list --lb -o json` with what ss -M shows on the backends: every backend
// token listed once, on that backend, with two flows (the first subflow and its join) to the VIP,
// and nothing else listed. It returns how many tokens matched and the problems found.
func (s *setup) connListLB(t testing.TB, v lablb.View) (match int, bad []string) {
	t.Helper()
	out := mx(t, "--netns", s.LB, "conn", "list", "--lb", "-o", "json")
	var rep control.Connections
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("conn list --lb -o json: %v\n%s", err, out)
	}
	want := map[string]int{} // token -> backend index, from ss -M
	for j, toks := range v.Tokens {
		for _, tok := range toks {
			want[fmt.Sprintf("%08x", tok)] = j
		}
	}
	seen := map[string]bool{}
	for _, c := range rep.Connections {
		tok := c.Token.String()
		j, ok := want[tok]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("token %s listed, on no backend", c.Token))
			continue
		case seen[tok]:
			bad = append(bad, fmt.Sprintf("token %s listed twice", c.Token))
			continue
		}
		seen[tok] = true
		b := s.Backends[j]
		addr := b.IP4
		if s.opts.v6 {
			addr = b.IP6
		}
		problem := ""
		switch {
		case c.Backend != addr.String() || c.BackendID != s.ids[j]:
			problem = fmt.Sprintf("backend %s (id %d), ss -M shows it on %s (id %d)", c.Backend, c.BackendID, addr, s.ids[j])
		case c.VIP != s.vip.String():
			problem = fmt.Sprintf("vip %s, want %s", c.VIP, s.vip)
		case c.Subflows != 2 || len(c.Flows) != 2:
			problem = fmt.Sprintf("%d subflows, %d flows listed, want 2", c.Subflows, len(c.Flows))
		case c.Flows[0].Src == c.Flows[1].Src:
			problem = fmt.Sprintf("flows %+v: one 5-tuple twice", c.Flows)
		}
		for _, f := range c.Flows {
			if _, err := netip.ParseAddrPort(f.Src); err != nil || f.Dst != s.vip.String() {
				problem = fmt.Sprintf("flow %+v", f)
			}
		}
		if problem != "" {
			bad = append(bad, "token "+tok+": "+problem)
			continue
		}
		match++
	}
	for tok := range want {
		if !seen[tok] {
			bad = append(bad, fmt.Sprintf("token %s (ss -M on backend %d) not listed", tok, want[tok]))
		}
	}
	return match, bad
}

func firstStrs(s []string, n int) []string { return s[:min(n, len(s))] }
