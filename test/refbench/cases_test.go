package refbench

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// The cases. Every frame of new_syn, join_syn and mpc_ack is of a flow never seen before.
var cases = []kase{
	{name: "flow_hit", target: 1.05, prepare: func(tb testing.TB, e *env, m mode, n int) func() round {
		// A plain TCP ACK (timestamps) of one of trackedFlows placed flows.
		fr, be := tracked(tb, e, m, optsACK, false)
		frames, b := cycle(fr, be, n)
		return func() round {
			return round{frames: frames, want: [2]map[RefRbSinkKey]uint64{counts(m, b), counts(m, b)}}
		}
	}},
	{name: "mptcp_dss", target: 1.1, prepare: func(tb testing.TB, e *env, m mode, n int) func() round {
		// A DSS data ACK of one of trackedFlows MPTCP connections whose token was learned.
		fr, be := tracked(tb, e, m, optsDSS, true)
		frames, b := cycle(fr, be, n)
		return func() round {
			return round{frames: frames, want: [2]map[RefRbSinkKey]uint64{counts(m, b), counts(m, b)}}
		}
	}},
	{name: "new_syn", target: 1.1, prepare: func(tb testing.TB, e *env, m mode, n int) func() round {
		return func() round {
			srcs := e.clients(m, n)
			frames := make([][]byte, n)
			be := make([]uint32, n)
			for i, s := range srcs {
				frames[i] = seg{src: s, dst: m.vip, syn: true, opts: optsSYN}.frame(tb)
				be[i] = e.hashBackend(m, s)
			}
			w := counts(m, be)
			return round{frames: frames, want: [2]map[RefRbSinkKey]uint64{w, w},
				check: func(d lb.Stats) error {
					if err := want(d, lb.StatGuarded, 0); err != nil {
						return err
					}
					return want(d, lb.StatNewFlow, n)
				},
				teardown: func() error {
					if e.full {
						return nil
					}
					for _, s := range srcs {
						if err := e.mx.DeleteFlow(lb.FlowKey{Src: s, Dst: m.vip}); err != nil {
							return err
						}
					}
					return e.deleteRefFlows(m, srcs)
				}}
		}
	}},
	{name: "join_syn", target: 1.2, prepare: prepareJoin},
	{name: "join_syn_events", consume: true, target: 1.2, prepare: prepareJoin},
	{name: "mpc_ack", consume: true, prepare: func(tb testing.TB, e *env, m mode, n int) func() round {
		// The MP_CAPABLE third ACK of a connection whose SYN was placed (the flow is in both
		// tables, at its ring backend), with the server's key: mptcp-xdp learns its token.
		return func() round {
			srcs := e.clients(m, n)
			frames := make([][]byte, n)
			be := make([]uint32, n)
			flows := make([]lb.Flow, n)
			toks := make([]uint32, n)
			now := lb.Monotonic()
			for i, s := range srcs {
				var rkey uint64
				rkey, toks[i], _ = e.serverKey()
				frames[i] = seg{src: s, dst: m.vip, ack: true, opts: optsMPCACK(e.rng.Uint64(), rkey)}.frame(tb)
				be[i] = e.hashBackend(m, s)
				flows[i] = lb.Flow{FlowKey: lb.FlowKey{Src: s, Dst: m.vip}, Backend: be[i], LastSeen: now, Opened: true}
			}
			w := counts(m, be)
			return round{frames: frames, want: [2]map[RefRbSinkKey]uint64{w, w},
				setup: func() error {
					if err := e.mx.PutFlows(flows); err != nil {
						return err
					}
					return e.putRefFlows(m, srcs, be)
				},
				check: func(d lb.Stats) error {
					if err := want(d, lb.StatTokenLearned, n); err != nil {
						return err
					}
					t, ok, err := e.mx.LookupToken(m.id, toks[n-1])
					if err != nil {
						return err
					}
					if !ok || t.Backend != be[n-1] {
						return fmt.Errorf("token %08x: %+v (found %v), want backend %d", toks[n-1], t, ok, be[n-1])
					}
					return nil
				},
				teardown: func() error {
					for i, s := range srcs {
						if err := e.mx.DeleteFlow(lb.FlowKey{Src: s, Dst: m.vip}); err != nil {
							return err
						}
						if err := e.mx.DeleteToken(m.id, toks[i]); err != nil {
							return err
						}
					}
					return e.deleteRefFlows(m, srcs)
				}}
		}
	}},
}

// prepareJoin: an MP_JOIN SYN (new 5-tuple) to a connection whose token mptcp-xdp learned; the
// reference takes it as the plain SYN it is to an L4 balancer. mptcp-xdp sends every join to
// the token's backend (and keeps the subflow in its protected table, emptied after each round so
// that it never fills), the reference to the ring's.
func prepareJoin(tb testing.TB, e *env, m mode, n int) func() round {
	_, tok, kh := e.serverKey()
	owner := m.backends[1]
	if err := e.mx.PutToken(lb.Token{VIPID: m.id, Token: tok, Backend: owner, KeyHash: kh, LastSeen: lb.Monotonic()}); err != nil {
		tb.Fatal(err)
	}
	return func() round {
		srcs := e.clients(m, n)
		frames := make([][]byte, n)
		be := make([]uint32, n)
		own := make([]uint32, n)
		for i, s := range srcs {
			frames[i] = seg{src: s, dst: m.vip, syn: true, opts: optsJoin(tok)}.frame(tb)
			be[i] = e.hashBackend(m, s)
			own[i] = owner
		}
		return round{frames: frames, want: [2]map[RefRbSinkKey]uint64{counts(m, be), counts(m, own)},
			check: func(d lb.Stats) error { return want(d, lb.StatJoinSteered, n) },
			teardown: func() error {
				for _, s := range srcs {
					if err := e.mx.DeleteFlow(lb.FlowKey{Src: s, Dst: m.vip}); err != nil {
						return err
					}
				}
				// The hint slots of the joins' protected flows age out after two GC cycles
				// of lb run (a minute at its default interval): as if they had passed.
				for range 2 {
					if err := e.mx.Maps.RefreshProtectHint(); err != nil {
						return err
					}
				}
				if e.full {
					return nil
				}
				return e.deleteRefFlows(m, srcs)
			}}
	}
}

func want(d lb.Stats, s lb.Stat, n int) error {
	if d[s] != uint64(n) {
		return fmt.Errorf("mptcp-xdp counted %s %d times, want %d", s, d[s], n)
	}
	return nil
}

// pairResult is one round's time per packet of each program.
type pairResult [2]float64

// runRounds runs rounds rounds of case c in mode m, each program in turn on the same frames (the
// order alternating), and returns each round's ns/pkt.
func runRounds(tb testing.TB, e *env, m mode, c kase, rounds, n int) []pairResult {
	tb.Helper()
	next := c.prepare(tb, e, m, n)
	var evCounts interface{ Snapshot() map[string]uint64 }
	if c.consume {
		counts, stop := consumeEvents(tb, e)
		evCounts = counts
		defer func() {
			if err := stop(); err != nil {
				tb.Errorf("event consumer: %v", err)
			}
		}()
	}
	caseStart := readStats(tb, e)
	progs := [2]*ebpf.Program{e.ref.RbRefLb, e.mx.Program}
	out := make([]pairResult, 0, rounds)
	for r := 0; r < rounds; r++ {
		rd := next()
		if rd.setup != nil {
			if err := rd.setup(); err != nil {
				tb.Fatal(err)
			}
		}
		var res pairResult
		for j := 0; j < 2; j++ {
			p := (r + j) % 2
			var s0 lb.Stats
			if p == progMx {
				s0 = readStats(tb, e)
			}
			d, err := e.measure(progs[p], rd.frames, rd.want[p])
			if err != nil {
				tb.Fatalf("%s %s round %d, %s: %v", m.name, c.name, r, progNames[p], err)
			}
			if p == progMx && rd.check != nil {
				if err := rd.check(readStats(tb, e).Sub(s0)); err != nil {
					tb.Fatalf("%s %s round %d: %v", m.name, c.name, r, err)
				}
			}
			res[p] = float64(d.Nanoseconds())
		}
		if rd.teardown != nil {
			if err := rd.teardown(); err != nil {
				tb.Fatal(err)
			}
		}
		out = append(out, res)
	}
	if evCounts != nil {
		// Every steered join and learned token queued one event: the consumer read it, or the
		// ring was full and the datapath counted it lost.
		wantEv := uint64(rounds * n)
		var read, lost uint64
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			snap := evCounts.Snapshot()
			read = snap[lb.EventJoinSteered.String()] + snap[lb.EventConnLearned.String()]
			lost = readStats(tb, e).Sub(caseStart)[lb.StatEventLost]
			if read+lost >= wantEv || time.Now().After(deadline) {
				break
			}
		}
		if read == 0 || read+lost != wantEv {
			tb.Errorf("%s %s: the event consumer read %d events, %d were lost, want %d in all", m.name, c.name, read, lost, wantEv)
		}
	}
	return out
}

// runFloor measures rb_floor for rounds rounds of n tracked-flow ACKs, all of which it must send
// to backend 1.
func runFloor(tb testing.TB, e *env, rounds, n int) []float64 {
	tb.Helper()
	m := modes[0]
	fr, _ := tracked(tb, e, m, optsACK, false)
	frames, _ := cycle(fr, []uint32{1}, n)
	w := counts(m, []uint32{1})
	w[sinkKey(m, 1)] = uint64(n)
	var out []float64
	for r := 0; r < rounds; r++ {
		d, err := e.measure(e.ref.RbFloor, frames, w)
		if err != nil {
			tb.Fatalf("floor round %d: %v", r, err)
		}
		out = append(out, float64(d.Nanoseconds()))
	}
	return out
}

func readStats(tb testing.TB, e *env) lb.Stats {
	tb.Helper()
	s, err := e.mx.ReadStats()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestForwarding checks the harness on every case and mode with both programs: each frame reaches
// the sink from the backend it must go to (the sink's counts per backend equal the expected ones,
// nothing unattributed), the program ran once per frame, and mptcp-xdp counted what it did.
func TestForwarding(t *testing.T) {
	e := newEnv(t, envConfig{maxFlows: 1 << 16})
	t.Run("floor", func(t *testing.T) { runFloor(t, e, 2, 256) })
	for _, m := range modes {
		for _, c := range cases {
			t.Run(m.name+"/"+c.name, func(t *testing.T) {
				res := runRounds(t, e, m, c, 2, 256)
				for _, r := range res {
					if r[0] <= 0 || r[1] <= 0 {
						t.Errorf("ns/pkt %v: want > 0", r)
					}
				}
			})
		}
	}
}

// TestMeasureCatchesMisforwarding: measure fails a round whose frame reaches another backend than
// the expected one, and one whose frame never comes back (a frame to no VIP, passed to the stack).
func TestMeasureCatchesMisforwarding(t *testing.T) {
	e := newEnv(t, envConfig{maxFlows: 1 << 16})
	e.wait = 500 * time.Millisecond // a lost frame is what this test expects
	m := modes[0]
	src := e.clients(m, 1)[0]
	fr := [][]byte{seg{src: src, dst: m.vip, syn: true, opts: optsSYN}.frame(t)}
	right := e.hashBackend(m, src)
	wrong := m.backends[0]
	if wrong == right {
		wrong = m.backends[1]
	}
	if _, err := e.measure(e.ref.RbRefLb, fr, counts(m, []uint32{right})); err != nil {
		t.Fatalf("right backend: %v", err)
	}
	if _, err := e.measure(e.ref.RbRefLb, fr, counts(m, []uint32{wrong})); err == nil {
		t.Fatal("a frame counted at the wrong backend passed the check")
	}
	// A VIP frame to a port no VIP has: passed to the stack, never reaching the sink.
	other := netip.AddrPortFrom(m.vip.Addr(), 444)
	stray := [][]byte{seg{src: src, dst: other, syn: true, opts: optsSYN}.frame(t)}
	if _, err := e.measure(e.ref.RbRefLb, stray, counts(m, []uint32{right})); err == nil {
		t.Fatal("a frame that never came back passed the check")
	}
}
