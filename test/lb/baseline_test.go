package lb

import (
	"context"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
)

// Without join steering (plain 5-tuple Maglev, what balancers do today), the same run shows the
// problem: a join lands on whichever backend its new 5-tuple hashes to, that backend has no
// connection with its token (MPJoinNoTokenFound), resets it, and the connection stays on one
// subflow. Data still arrives intact over the first subflow.
func TestWithoutJoinSteering(t *testing.T) {
	for _, o := range []options{{forward: "l2", noSteering: true}, {forward: "ipip", noSteering: true}} {
		t.Run(o.String(), func(t *testing.T) {
			s := newSetup(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			base := s.mibs(t)
			st0 := lbStatus(t, s.LB).Stats
			cs := s.dial(ctx, t, conns, 25)
			defer closeAll(cs)
			wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
			j := s.waitJoins(wctx, t, base, conns)
			wcancel()
			wrong := lablb.Sum(j.NoToken)
			// Every refused join leaves the client with one subflow, but ss -M shows it only once the
			// backend's reset has crossed the balancer and the client's MPTCP worker has closed the
			// subflow: read it again until it agrees or 10 s have passed.
			settled := func(v lablb.View) bool { return int64(v.ClientOne) == wrong && v.ClientTwo+v.ClientOne == conns }
			v := s.view(t)
			for deadline := time.Now().Add(10 * time.Second); !settled(v) && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
				v = s.view(t)
			}
			st1 := lbStatus(t, s.LB)
			okN, errs := transfer(ctx, cs, transferBytes)

			t.Logf("%d connections landed %v", len(cs), perBackend(cs, len(s.Backends)))
			t.Logf("backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v", j.SynRx, j.AckRx, j.NoToken)
			t.Logf("ss -M: client %d with 2 subflows, %d left with 1 (%.0f%%); backends with 2 subflows %v of %v",
				v.ClientTwo, v.ClientOne, 100*float64(v.ClientOne)/conns, v.BackendTwo, v.BackendAll)
			t.Logf("balancer: join_steered %+d new_flow %+d token_learned %+d; transfers intact %d of %d",
				delta(st1.Stats, st0, "join_steered"), delta(st1.Stats, st0, "new_flow"), delta(st1.Stats, st0, "token_learned"), okN, len(cs))

			if wrong == 0 || v.ClientOne == 0 {
				t.Errorf("no join landed on the wrong backend (MPJoinNoTokenFound %v, %d connections with one subflow): the baseline shows nothing", j.NoToken, v.ClientOne)
			}
			if !settled(v) {
				t.Errorf("client: %d connections with 1 subflow, %d with 2; backends refused %d joins", v.ClientOne, v.ClientTwo, wrong)
			}
			if d := delta(st1.Stats, st0, "join_steered"); d != 0 {
				t.Errorf("join_steered %+d with steering off", d)
			}
			if okN != conns {
				t.Errorf("%d of %d transfers intact; first errors: %v", okN, conns, firstErrs(errs, 3))
			}
		})
	}
}

// A backend drained mid-run gets no new connection, while the joins of its existing connections
// still reach it: the client opens its second subflows only after the drain (its subflow endpoint
// is added then), so every join of the drained backend's connections arrives while it drains.
func TestDrainKeepsJoins(t *testing.T) {
	for _, o := range []options{{forward: "l2", noEndpoints: true}, {forward: "ipip", noEndpoints: true}} {
		t.Run(o.String(), func(t *testing.T) {
			s := newSetup(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
			defer cancel()
			const n = conns / 2
			base := s.mibs(t)
			before := s.dial(ctx, t, n, 25)
			defer closeAll(before)
			landed := perBackend(before, len(s.Backends))
			drained := 0
			for i, c := range landed {
				if c > landed[drained] {
					drained = i
				}
			}
			addr := s.Backends[drained].IP4
			if o.v6 {
				addr = s.Backends[drained].IP6
			}
			mx(t, "--netns", s.LB, "lb", "backend", "drain", addr.String())
			st := lbStatus(t, s.LB)
			for _, b := range st.Backends {
				if b.Addr == addr.String() && (b.State != "draining" || b.RingSlots != 0) {
					t.Fatalf("drained backend in status: %+v", b)
				}
			}

			if err := s.AddSubflowEndpoints(); err != nil {
				t.Fatal(err)
			}
			wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
			j := s.waitJoins(wctx, t, base, n)
			wcancel()
			v := s.view(t)

			after := s.dial(ctx, t, n, 25)
			defer closeAll(after)
			landedAfter := perBackend(after, len(s.Backends))
			wctx, wcancel = context.WithTimeout(ctx, 60*time.Second)
			j2 := s.waitJoins(wctx, t, base, 2*n)
			wcancel()
			okN, errs := transfer(ctx, append(append(before[:0:0], before...), after...), transferBytes)

			t.Logf("before the drain %v; backend %d (%s) drained; after %v", landed, drained, addr, landedAfter)
			t.Logf("joins after the drain: MPJoinAckRx %v MPJoinNoTokenFound %v; ss -M backends with 2 subflows %v of %v",
				j.AckRx, j.NoToken, v.BackendTwo, v.BackendAll)
			t.Logf("all joins: MPJoinAckRx %v MPJoinNoTokenFound %v; transfers intact %d of %d", j2.AckRx, j2.NoToken, okN, 2*n)
			if landedAfter[drained] != 0 {
				t.Errorf("drained backend %d got %d new connections", drained, landedAfter[drained])
			}
			if v.BackendTwo[drained] != landed[drained] || j.AckRx[drained] != int64(landed[drained]) {
				t.Errorf("drained backend: %d of its %d connections have their second subflow (MPJoinAckRx %d)",
					v.BackendTwo[drained], landed[drained], j.AckRx[drained])
			}
			if lablb.Sum(j2.NoToken) != 0 || lablb.Sum(j2.AckRx) != 2*n {
				t.Errorf("joins: MPJoinAckRx %v MPJoinNoTokenFound %v, want %d and none", j2.AckRx, j2.NoToken, 2*n)
			}
			if okN != 2*n {
				t.Errorf("%d of %d transfers intact; first errors: %v", okN, 2*n, firstErrs(errs, 3))
			}
		})
	}
}
