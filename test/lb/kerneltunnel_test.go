package lb

import (
	"context"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
)

// TestKernelTunnelDecap: --forward ipip against the kernel's own tunnel devices on the backends
// (tunl0, ip6tnl0) instead of mptcp-xdp's decapsulator: every connection and its join reach one
// backend, which answers the client directly, and the transfers arrive intact. It runs where the
// kernel has the ipip and ip6_tunnel drivers (the kernel matrix's 6.1 loads them as modules); this
// machine's 6.18 is built without them, and the test says so.
func TestKernelTunnelDecap(t *testing.T) {
	probe := newLab(t, lablb.Config{Backends: 1})
	if !haveKernelTunnels(t, probe) {
		t.Skip("this kernel has no ipip/ip6_tunnel driver (CONFIG_NET_IPIP, CONFIG_IPV6_TUNNEL): no tunl0/ip6tnl0 to decapsulate with")
	}
	for _, o := range []options{{forward: "ipip", kernelTunnel: true}, {forward: "ipip", v6: true, kernelTunnel: true}} {
		t.Run(o.String(), func(t *testing.T) {
			const n = 20
			s := newSetup(t, o)
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			base := s.mibs(t)
			conns := s.dial(ctx, t, n, 10)
			defer closeAll(conns)
			wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
			j := s.waitJoins(wctx, t, base, n)
			wcancel()
			v := s.view(t)
			okN, errs := transfer(ctx, conns, transferBytes)
			t.Logf("%d connections landed %v; backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v; ss -M: client %d with 2 subflows; transfers intact %d",
				n, perBackend(conns, len(s.Backends)), j.SynRx, j.AckRx, j.NoToken, v.ClientTwo, okN)
			if v.ClientTwo != n || lablb.Sum(v.BackendTwo) != n {
				t.Errorf("client: %d connections with 2 subflows, backends %v of %v, want %d", v.ClientTwo, v.BackendTwo, v.BackendAll, n)
			}
			if lablb.Sum(j.AckRx) != n || lablb.Sum(j.NoToken) != 0 {
				t.Errorf("MPJoinAckRx %v MPJoinNoTokenFound %v, want %d joins accepted and none refused", j.AckRx, j.NoToken, n)
			}
			if okN != n {
				t.Errorf("%d of %d transfers intact; first errors: %v", okN, n, firstErrs(errs, 3))
			}
		})
	}
}
