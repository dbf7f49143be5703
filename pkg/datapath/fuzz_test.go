package datapath

import (
	"encoding/hex"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// maxFuzzFrame keeps frames inside what BPF_PROG_TEST_RUN takes for XDP without fragments (a page
// less headroom and skb_shared_info).
const maxFuzzFrame = 3000

// FuzzParserAgreement feeds the same bytes to the XDP program and to the Go reference parser and
// requires the same counters from both. Run it with `make fuzz`.
func FuzzParserAgreement(f *testing.F) {
	for _, tc := range packetCases(f) {
		f.Add(tc.frame)
	}
	xdp := loadXDP(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < ethHLen || len(frame) > maxFuzzFrame {
			t.Skip("outside what BPF_PROG_TEST_RUN accepts")
		}
		got := xdp.run(t, frame, 0)
		want := fromResult(mptcp.Parse(frame))
		if got != want {
			t.Errorf("XDP and mptcp.Parse disagree\n  xdp %v\n   go %v\n%s", got, want, hex.Dump(frame))
		}
	})
}
