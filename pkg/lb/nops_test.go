package lb

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// joinLayouts are option blocks that carry an MP_JOIN SYN (12 bytes) at every offset the 40 option
// bytes allow: behind 0 to 28 NOPs, behind an MSS option and 0 to 24 NOPs, behind the options a
// Linux client sends (MSS, SACK permitted, timestamps, window scale) and NOPs, and between NOPs.
func joinLayouts(join layers.TCPOption) []joinLayout {
	nops := func(n int) []layers.TCPOption {
		out := make([]layers.TCPOption, n)
		for i := range out {
			out[i] = nop
		}
		return out
	}
	mss := layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}
	sack := layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	ts := layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}
	ws := layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}
	var out []joinLayout
	add := func(opts []layers.TCPOption, format string, args ...any) {
		n := 0
		for _, o := range opts {
			n += max(1, int(o.OptionLength)) // NOPs: one byte
		}
		if n > 40 {
			panic(fmt.Sprintf("option layout %q: %d bytes, more than a TCP header holds", fmt.Sprintf(format, args...), n))
		}
		out = append(out, joinLayout{fmt.Sprintf(format, args...), opts})
	}
	for n := 0; n <= 28; n++ {
		add(append(nops(n), join), "%d NOPs", n)
	}
	for n := 0; n <= 24; n++ {
		add(append(append([]layers.TCPOption{mss}, nops(n)...), join), "MSS and %d NOPs", n)
	}
	for n := 0; n <= 9; n++ {
		add(append(append([]layers.TCPOption{mss, sack, ts, ws}, nops(n)...), join), "MSS, SACK, TS, WS and %d NOPs", n)
	}
	for n := 0; n <= 28; n += 4 {
		add(append(append(nops(n), join), nops(28-n)...), "%d NOPs, the join, %d NOPs", n, 28-n)
	}
	return out
}

type joinLayout struct {
	name string
	opts []layers.TCPOption
}

// A forged MP_JOIN SYN (a token no connection has) is an unknown join wherever it sits in the 40
// option bytes, however many NOPs come before it: dropped under unknown-join=drop, counted, no flow
// stored. A join of a known token in the same place is steered to the token's backend, not to
// Maglev's.
func TestForgedJoinBehindPadding(t *testing.T) {
	for _, vip := range []netip.AddrPort{vip4, vip6} {
		t.Run(vip.String(), func(t *testing.T) {
			b := balancer(t)
			setup(t, b.Maps, vip, 1, true, ForwardL2, JoinDrop, 2)
			fillRing(t, b.Maps, 1, 1) // Maglev places every flow on backend 1
			const token = 0x5eed0001
			if err := b.PutToken(Token{VIPID: 1, Token: token, Backend: 2, KeyHash: 1, LastSeen: Monotonic()}); err != nil {
				t.Fatal(err)
			}
			r := rand.New(rand.NewPCG(131, 132))
			forged, known := joinLayouts(optJoinSYN(0xbad0bad1, 1)), joinLayouts(optJoinSYN(token, 2))
			for i := range forged {
				t.Run(forged[i].name, func(t *testing.T) {
					s := segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: forged[i].opts}
					before := stats(t, b.Maps)
					if ret, _ := run(t, b.Program, s.frame(t)); ret != xdpDrop {
						t.Errorf("forged join: verdict %d, want XDP_DROP", ret)
					}
					if d := stats(t, b.Maps).Sub(before); d[StatJoinDropped] != 1 || d[StatNewFlow] != 0 || d[StatFwdL2] != 0 {
						t.Errorf("forged join: stats moved by %v", d.Map())
					}
					if f, ok, err := b.LookupFlow(s.key()); err != nil || ok {
						t.Errorf("forged join: flow %+v stored (%v)", f, err)
					}
					// The same place with the connection's token: steered to its backend.
					expectL2(t, b, segment{src: clientAddr(r, vip), dst: vip, syn: true, opts: known[i].opts}, 2)
				})
			}
			drainEvents(t)
		})
	}
}
