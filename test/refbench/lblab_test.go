package refbench

// The balancer lab (internal/lablb) with both balancers loaded and configured alike, for
// BenchmarkLBThroughputSwap and TestLBSwapForwards: the reference (its redirect variant,
// rb_ref_lb_redir, twice: the control swaps one copy against the other) and mptcp-xdp's balancer,
// with the same VIP, backends, Maglev ring (pkg/control.Maglev) and hash seed, so that both place
// every flow on the same backend. One XDP link per client-facing interface of the balancer, in
// native mode; the runs swap its program in place (link.Update).

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	ilab "github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// lbLabFlows is the flow-table size of all three balancers (the connections of a run are few).
const lbLabFlows = 1 << 16

// lbLab is a balancer lab with both balancers loaded, one of them attached.
type lbLab struct {
	*lablb.Lab
	fwd  lb.Forward
	v6   bool // IPv6 VIP, client and backend addresses (outer IPv6 for ipip)
	vip  netip.AddrPort
	seed uint32
	ring []uint32 // the Maglev table of the VIP (backend ids), the same in all three
	ids  []uint32 // balancer backend id of backend index j
	refs [2]RefObjects
	mx   *lb.Balancer
	// links: the XDP links on the balancer's client-facing interfaces (l0, l1), whose program the
	// runs swap.
	links []link.Link
	srv   *sinkServers
}

// newLBLab builds the lab (namespaces "lt<hex>-…"; the client has no subflow endpoints, so that
// every MPTCP connection keeps its one subflow: the reference steers no joins), starts the sink
// servers, loads and configures the three balancers, puts mptcp-xdp's decapsulator on every
// backend's link for ipip, and attaches the first reference copy. Everything goes when tb ends.
func newLBLab(tb testing.TB, fwd lb.Forward, v6 bool) *lbLab {
	tb.Helper()
	testutil.RequireRoot(tb)
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		tb.Fatal(err)
	}
	l, err := lablb.New(lablb.Config{Prefix: "lt" + hex.EncodeToString(rnd[:]), NoEndpoints: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("close lab: %v", err)
		}
	})
	ll := &lbLab{Lab: l, fwd: fwd, v6: v6, seed: 0x5eed1234}
	vip := l.VIP4
	if v6 {
		vip = l.VIP6
	}
	if ll.srv, err = serveSinks(l, vip); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ll.srv.close(); err != nil {
			tb.Errorf("close servers: %v", err)
		}
	})
	ll.vip = netip.AddrPortFrom(vip, uint16(ll.srv.port))

	// Backends as the control plane resolves them: the backend's MAC, the balancer's MAC, ifindex
	// and MTU on the backend's link, the tunnel's addresses.
	var backends []lb.Backend
	var entries []control.MaglevEntry
	for _, b := range l.Backends {
		be := lb.Backend{ID: uint32(b.Index + 1), Addr: b.IP4, SrcAddr: b.LBIP4}
		if v6 {
			be.Addr, be.SrcAddr = b.IP6, b.LBIP6
		}
		err := netns.Do(l.LB, func() error {
			ifc, err := net.InterfaceByName(b.LBIf)
			if err != nil {
				return err
			}
			be.SrcMAC, be.Ifindex, be.MTU = ifc.HardwareAddr, ifc.Index, ifc.MTU
			return nil
		})
		if err == nil {
			err = netns.Do(b.Netns, func() error {
				ifc, err := net.InterfaceByName(b.If)
				if err != nil {
					return err
				}
				be.MAC = ifc.HardwareAddr
				return nil
			})
		}
		if err != nil {
			tb.Fatalf("backend %d: %v", b.Index, err)
		}
		backends = append(backends, be)
		ll.ids = append(ll.ids, be.ID)
		entries = append(entries, control.MaglevEntry{Name: be.Addr.String(), ID: be.ID, Weight: 1})
	}
	if ll.ring, err = control.Maglev(entries, lb.RingSize); err != nil {
		tb.Fatal(err)
	}

	if ll.mx, err = lb.Load(lb.Config{HashSeed: ll.seed, MaxVIPs: 1, MaxFlows: lbLabFlows}); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ll.mx.Close() })
	for _, be := range backends {
		if err := ll.mx.PutBackend(be); err != nil {
			tb.Fatal(err)
		}
	}
	if err := ll.mx.PutVIP(lb.VIP{Addr: ll.vip, ID: 0, JoinSteering: true, Forward: fwd, UnknownJoin: lb.JoinDrop}); err != nil {
		tb.Fatal(err)
	}
	if err := ll.mx.WriteRing(0, ll.ring); err != nil {
		tb.Fatal(err)
	}
	for k := range ll.refs {
		if err := ll.loadRef(&ll.refs[k], backends); err != nil {
			tb.Fatalf("reference copy %d: %v", k, err)
		}
		tb.Cleanup(func() { ll.refs[k].Close() })
	}
	if fwd == lb.ForwardIPIP {
		for _, b := range l.Backends {
			ll.decap(tb, b)
		}
	}

	err = netns.Do(l.LB, func() error {
		for _, p := range l.Paths {
			ifc, err := net.InterfaceByName(p.LBIf)
			if err != nil {
				return err
			}
			lk, err := link.AttachXDP(link.XDPOptions{Program: ll.refs[0].RbRefLbRedir, Interface: ifc.Index, Flags: link.XDPDriverMode})
			if err != nil {
				return fmt.Errorf("attach native xdp to %s: %w", p.LBIf, err)
			}
			ll.links = append(ll.links, lk)
		}
		return nil
	})
	tb.Cleanup(func() {
		for _, lk := range ll.links {
			lk.Close()
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	return ll
}

// loadRef loads one copy of the reference with its own maps, configured as mptcp-xdp's balancer.
func (ll *lbLab) loadRef(objs *RefObjects, backends []lb.Backend) error {
	spec, err := LoadRef()
	if err != nil {
		return err
	}
	if err := spec.Variables["rb_hash_seed"].Set(ll.seed); err != nil {
		return err
	}
	spec.Maps["rb_flows"].MaxEntries = lbLabFlows
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		return fmt.Errorf("load reference balancer: %w", err)
	}
	for _, b := range backends {
		rb := RefRbBackend{Addr: addr16(b.Addr), SrcAddr: addr16(b.SrcAddr), Ifindex: uint32(b.Ifindex)}
		copy(rb.Mac[:], b.MAC)
		copy(rb.SrcMac[:], b.SrcMAC)
		if b.Addr.Is6() {
			rb.OuterV6 = 1
		}
		if err := objs.RbBackends.Put(b.ID, rb); err != nil {
			return err
		}
	}
	vk := RefRbVipKey{Addr: addr16(ll.vip.Addr()), Port: htons(ll.vip.Port()), Proto: 6}
	if err := objs.RbVips.Put(vk, RefRbVip{Id: 0, Forward: uint32(ll.fwd)}); err != nil {
		return err
	}
	keys := make([]uint32, len(ll.ring))
	for s := range keys {
		keys[s] = uint32(s)
	}
	if _, err := objs.RbRing.BatchUpdate(keys, ll.ring, nil); err != nil {
		return fmt.Errorf("write the ring: %w", err)
	}
	return nil
}

// decap attaches mptcp-xdp's decapsulator to backend b's link (native XDP), accepting what the
// balancer tunnels to the VIP.
func (ll *lbLab) decap(tb testing.TB, b lablb.Backend) {
	tb.Helper()
	spec, err := lb.DecapSpec(false)
	if err != nil {
		tb.Fatal(err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		tb.Fatalf("load decapsulator: %v", err)
	}
	tb.Cleanup(func() { coll.Close() })
	maps, err := lb.DecapMapsOf(coll)
	if err != nil {
		tb.Fatal(err)
	}
	allow := lb.DecapAllow{Local: []netip.Addr{b.IP4}, Balancers: []netip.Addr{b.LBIP4}, VIPs: []netip.AddrPort{ll.vip}}
	if ll.v6 {
		allow.Local, allow.Balancers = []netip.Addr{b.IP6}, []netip.Addr{b.LBIP6}
	}
	if err := maps.SetAllow(allow); err != nil {
		tb.Fatal(err)
	}
	var lk link.Link
	err = netns.Do(b.Netns, func() error {
		ifc, err := net.InterfaceByName(b.If)
		if err != nil {
			return err
		}
		lk, err = link.AttachXDP(link.XDPOptions{Program: coll.Programs[lb.DecapProg], Interface: ifc.Index, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		tb.Fatalf("attach decapsulator in backend %d: %v", b.Index, err)
	}
	tb.Cleanup(func() { lk.Close() })
}

// use puts prog on every client-facing interface, in place.
func (ll *lbLab) use(prog *ebpf.Program) error {
	for i, lk := range ll.links {
		if err := lk.Update(prog); err != nil {
			return fmt.Errorf("update xdp link on %s: %w", ll.Paths[i].LBIf, err)
		}
	}
	return nil
}

// ringBackend is the backend id that all three balancers' ring gives a new flow src -> VIP.
func (ll *lbLab) ringBackend(src netip.AddrPort) uint32 {
	return ll.ring[lb.FlowHash(lb.FlowKey{Src: src, Dst: ll.vip}, ll.seed)%lb.RingSize]
}

// sinkServers are MPTCP servers on the VIP in every backend: each accepted connection gets one
// byte, the backend's index, then the server reads to EOF, counting what it reads (per backend, as
// it arrives), and answers with the byte count (8 bytes, big-endian).
type sinkServers struct {
	port   int
	rx     []atomic.Uint64 // bytes received, per backend index
	lns    []net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func serveSinks(l *lablb.Lab, vip netip.Addr) (_ *sinkServers, err error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &sinkServers{rx: make([]atomic.Uint64, len(l.Backends)), cancel: cancel}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	for _, b := range l.Backends {
		ln, err := ilab.ListenIn(ctx, b.Netns, net.JoinHostPort(vip.String(), strconv.Itoa(s.port)))
		if err != nil {
			return nil, fmt.Errorf("backend %d: %w", b.Index, err)
		}
		s.port = ln.Addr().(*net.TCPAddr).Port
		s.lns = append(s.lns, ln)
		s.wg.Add(1)
		go s.accept(ctx, ln, b.Index)
	}
	return s, nil
}

func (s *sinkServers) accept(ctx context.Context, ln net.Listener, idx int) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
			defer stop()
			if _, err := c.Write([]byte{byte(idx)}); err != nil {
				return
			}
			buf := make([]byte, 64<<10)
			var n uint64
			for {
				k, err := c.Read(buf)
				n += uint64(k)
				s.rx[idx].Add(uint64(k))
				if err != nil {
					if err == io.EOF {
						var ans [8]byte
						binary.BigEndian.PutUint64(ans[:], n)
						c.Write(ans[:])
					}
					return
				}
			}
		}()
	}
}

// received is the bytes received by all backends so far.
func (s *sinkServers) received() (n uint64) {
	for i := range s.rx {
		n += s.rx[i].Load()
	}
	return n
}

func (s *sinkServers) close() error {
	s.cancel()
	var errs []error
	for _, ln := range s.lns {
		errs = append(errs, ln.Close())
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("sink servers: connections still open 30 s after close"))
	}
	return errors.Join(errs...)
}

// lbConn is one client connection that writes until stopped.
type lbConn struct {
	c       *net.TCPConn
	src     netip.AddrPort
	backend uint32 // balancer backend id that accepted it
	sent    uint64
	err     error
}

// dial opens n MPTCP connections to the VIP, alternating over the client's paths (each from its
// path's address, so that its one subflow takes that path), and checks that each landed on the
// backend the ring gives its 5-tuple. Then it writes every connection's flow into both reference
// copies' flow tables (the backend the ring gave it), so that the references find them as
// mptcp-xdp's balancer does: established flows are hits in all three, placed alike.
func (ll *lbLab) dial(ctx context.Context, n int) ([]*lbConn, error) {
	var out []*lbConn
	fail := func(err error) ([]*lbConn, error) {
		for _, s := range out {
			s.c.Close()
		}
		return nil, err
	}
	for i := range n {
		p := ll.Paths[i%len(ll.Paths)]
		local := p.ClientIP4
		if ll.v6 {
			local = p.ClientIP6
		}
		c, err := ilab.DialFromAddr(ctx, ll.Client, local.String(), ll.vip.String())
		if err != nil {
			return fail(fmt.Errorf("dial %d: %w", i, err))
		}
		s := &lbConn{c: c.(*net.TCPConn), src: netip.MustParseAddrPort(c.LocalAddr().String())}
		out = append(out, s)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var idx [1]byte
		if _, err := io.ReadFull(c, idx[:]); err != nil {
			return fail(fmt.Errorf("connection %d: read backend index: %w", i, err))
		}
		_ = c.SetReadDeadline(time.Time{})
		if int(idx[0]) >= len(ll.ids) {
			return fail(fmt.Errorf("connection %d: backend index %d", i, idx[0]))
		}
		s.backend = ll.ids[idx[0]]
		if want := ll.ringBackend(s.src); s.backend != want {
			return fail(fmt.Errorf("connection %d from %s landed on backend %d, the ring gives %d", i, s.src, s.backend, want))
		}
		if mp, err := s.c.MultipathTCP(); err != nil || !mp {
			return fail(fmt.Errorf("connection %d from %s is not MPTCP (%v)", i, s.src, err))
		}
		for k := range ll.refs {
			if err := ll.refs[k].RbFlows.Put(refFlowKey(s.src, ll.vip), s.backend); err != nil {
				return fail(fmt.Errorf("reference copy %d: put flow: %w", k, err))
			}
		}
	}
	return out, nil
}

// run writes on the connection until stop is set, half-closes, and checks the server's count.
func (s *lbConn) run(stop *atomic.Bool) {
	defer s.c.Close()
	buf := make([]byte, 64<<10)
	if _, err := rand.Read(buf); err != nil {
		s.err = err
		return
	}
	for !stop.Load() {
		k, err := s.c.Write(buf)
		s.sent += uint64(k)
		if err != nil {
			s.err = fmt.Errorf("%s: write: %w", s.src, err)
			return
		}
	}
	if err := s.c.CloseWrite(); err != nil {
		s.err = fmt.Errorf("%s: close write: %w", s.src, err)
		return
	}
	_ = s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ans [8]byte
	if _, err := io.ReadFull(s.c, ans[:]); err != nil {
		s.err = fmt.Errorf("%s: read the server's count: %w", s.src, err)
		return
	}
	if got := binary.BigEndian.Uint64(ans[:]); got != s.sent {
		s.err = fmt.Errorf("%s: backend %d received %d bytes, %d sent", s.src, s.backend, got, s.sent)
	}
}
