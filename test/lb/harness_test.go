package lb

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// options of one balancer setup.
type options struct {
	forward     string // l2 or ipip
	v6          bool   // IPv6 VIP and backend addresses (else IPv4)
	noSteering  bool   // --join-steering=false
	unknown     string // --unknown-join; "" is the default (drop)
	noEndpoints bool   // the client opens no second subflow until AddSubflowEndpoints
	// kernelTunnel (ipip): the backends decapsulate with the kernel's own fallback tunnel device
	// (tunl0 of the ipip module, ip6tnl0 of ip6_tunnel) instead of mptcp-xdp's decapsulator.
	kernelTunnel bool
}

func (o options) String() string {
	fam := "ipv4"
	if o.v6 {
		fam = "ipv6"
	}
	return o.forward + "/" + fam
}

// setup is a balancer lab with the balancer attached to the client-facing links, MPTCP servers on
// the VIP in every backend, and (ipip) the decapsulator on every backend's link.
type setup struct {
	*lablb.Lab
	opts options
	srv  *lablb.Servers
	vip  netip.AddrPort
	ids  []uint32 // balancer backend id of each backend index
	vid  uint32   // VIP id
	// attach is the `lb attach` command line that made the balancer.
	attach []string
}

func newSetup(t *testing.T, o options) *setup {
	t.Helper()
	return attachSetup(t, o, newLab(t, lablb.Config{NoEndpoints: o.noEndpoints}))
}

// newLab builds a balancer lab, closed when the test ends.
func newLab(t *testing.T, c lablb.Config) *lablb.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := lablb.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
	})
	return l
}

// attachSetup starts MPTCP servers on the VIP in l's backends and attaches the balancer to the
// client-facing links as o says (extra: further lb attach flags), with the decapsulator on every
// backend's link for ipip; everything is undone when the test ends.
func attachSetup(t *testing.T, o options, l *lablb.Lab, extra ...string) *setup {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv, err := l.Serve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	s := &setup{Lab: l, opts: o, srv: srv}
	vipAddr := l.VIP4
	if o.v6 {
		vipAddr = l.VIP6
	}
	s.vip = netip.AddrPortFrom(vipAddr, uint16(srv.Port))

	args := []string{"--netns", l.LB, "lb", "attach"}
	for _, p := range l.Paths {
		args = append(args, p.LBIf)
	}
	args = append(args, "--vip", s.vip.String(), "--forward", o.forward,
		"--join-steering="+strconv.FormatBool(!o.noSteering))
	if o.unknown != "" {
		args = append(args, "--unknown-join", o.unknown)
	}
	args = append(args, extra...)
	for _, b := range l.Backends {
		a := b.IP4
		if o.v6 {
			a = b.IP6
		}
		args = append(args, "--backend", a.String())
	}
	if o.forward == "ipip" && o.kernelTunnel {
		for _, b := range l.Backends {
			kernelTunnelUp(t, l, b.Netns, o.v6)
		}
	} else if o.forward == "ipip" {
		for _, b := range l.Backends {
			mx(t, "--netns", b.Netns, "lb", "decap", b.If, "--balancer", b.LBIP4.String(), "--balancer", b.LBIP6.String(),
				"--vip", s.vip.String())
			t.Cleanup(func() { mx(t, "--netns", b.Netns, "lb", "decap", "--detach", b.If) })
		}
	}
	mx(t, args...)
	s.attach = args
	t.Cleanup(func() { mx(t, "--netns", l.LB, "lb", "detach") })

	st := lbStatus(t, l.LB)
	if len(st.VIPs) != 1 || len(st.Backends) != len(l.Backends) {
		t.Fatalf("status after attach: %+v", st)
	}
	s.vid = st.VIPs[0].ID
	for _, b := range l.Backends {
		a := b.IP4
		if o.v6 {
			a = b.IP6
		}
		found := false
		for _, e := range st.Backends {
			if e.Addr == a.String() {
				s.ids = append(s.ids, e.ID)
				found = true
			}
		}
		if !found {
			t.Fatalf("backend %s not in status %+v", a, st.Backends)
		}
	}
	return s
}

// mibs reads the MIB of every backend.
func (s *setup) mibs(t testing.TB) []lab.MIB {
	t.Helper()
	m, err := s.BackendMIBs()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dial opens n connections to the VIP, par at a time.
func (s *setup) dial(ctx context.Context, t testing.TB, n, par int) []*lablb.Conn {
	t.Helper()
	conns := make([]*lablb.Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = s.Dial(ctx, s.vip)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
			t.Fatalf("dial %d of %d: %v", i, n, err)
		}
	}
	return conns
}

func (s *setup) joins(t testing.TB, base []lab.MIB) lablb.JoinCounts {
	t.Helper()
	j, err := s.Joins(base)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// waitJoins waits until n joins since base have been answered by the backends: accepted (third
// ACK received) or refused for want of a token; it returns the counts then, or at the deadline.
func (s *setup) waitJoins(ctx context.Context, t testing.TB, base []lab.MIB, n int64) lablb.JoinCounts {
	t.Helper()
	for {
		j := s.joins(t, base)
		if j.Answered() >= n {
			return j
		}
		select {
		case <-ctx.Done():
			t.Logf("joins answered: %d of %d (accepted %v, no token %v)", j.Answered(), n, j.AckRx, j.NoToken)
			return j
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// view is what `ss -M` shows of the connections to the VIP.
func (s *setup) view(t testing.TB) lablb.View {
	t.Helper()
	v, err := s.Observe(s.vip)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// transfer sends size bytes on every connection at once and returns how many arrived intact.
func transfer(ctx context.Context, conns []*lablb.Conn, size int) (ok int, errs []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.Transfer(ctx, size)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			ok++
		}()
	}
	wg.Wait()
	return ok, errs
}

func closeAll(conns []*lablb.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// tokenMatches counts the backends' tokens (as ss -M shows them) that the balancer's token table
// maps to that same backend, and lists those that it does not.
func (s *setup) tokenMatches(t testing.TB, v lablb.View) (match int, bad []string) {
	t.Helper()
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	m, err := ld.OpenLB(s.LB)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for j, toks := range v.Tokens {
		for _, tok := range toks {
			e, ok, err := m.LookupToken(s.vid, tok)
			if err != nil {
				t.Fatal(err)
			}
			if ok && e.Backend == s.ids[j] {
				match++
				continue
			}
			bad = append(bad, fmt.Sprintf("backend %d token %08x: learned %v backend %d", j, tok, ok, e.Backend))
		}
	}
	return match, bad
}

func perBackend(conns []*lablb.Conn, nb int) []int {
	out := make([]int, nb)
	for _, c := range conns {
		out[c.Backend]++
	}
	return out
}

func firstErrs(errs []error, n int) []error {
	if len(errs) > n {
		return errs[:n]
	}
	return errs
}

// kernelTunnelUp brings up, in namespace ns, the fallback tunnel device the kernel's ipip (IPv4) or
// ip6_tunnel (IPv6) driver makes in every namespace, which decapsulates any tunnelled packet to a
// local address; reverse-path filtering is turned off for the inner packets, whose source (the
// client) is routed another way. A kernel without the driver fails the test with its name.
func kernelTunnelUp(t testing.TB, l *lablb.Lab, ns string, v6 bool) {
	t.Helper()
	dev, driver := "tunl0", "ipip (CONFIG_NET_IPIP)"
	if v6 {
		dev, driver = "ip6tnl0", "ip6_tunnel (CONFIG_IPV6_TUNNEL)"
	}
	if _, err := l.IP(ns, "link", "show", dev); err != nil {
		t.Fatalf("no %s in %s: this kernel has no %s driver: %v", dev, ns, driver, err)
	}
	if _, err := l.IP(ns, "link", "set", dev, "up"); err != nil {
		t.Fatal(err)
	}
	if !v6 {
		for _, k := range []string{"all", dev} {
			if _, err := l.Exec(ns, "sysctl", "-qw", "net.ipv4.conf."+k+".rp_filter=0"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// haveKernelTunnels reports whether the kernel has the ipip and ip6_tunnel drivers, by asking for
// their fallback devices in a lab namespace (Linux 6.18 here is built without them; Debian's 6.1
// of the kernel matrix has both).
func haveKernelTunnels(t testing.TB, l *lablb.Lab) bool {
	t.Helper()
	_, e4 := l.IP(l.Backends[0].Netns, "link", "show", "tunl0")
	_, e6 := l.IP(l.Backends[0].Netns, "link", "show", "ip6tnl0")
	return e4 == nil && e6 == nil
}
