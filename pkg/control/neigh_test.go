package control_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// linkMAC reads an interface's MAC in ns from the kernel.
func linkMAC(t *testing.T, l *lab.Lab, ns, dev string) net.HardwareAddr {
	t.Helper()
	h, err := l.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lk, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	return lk.Attrs().HardwareAddr
}

// The resolver asks the kernel to resolve a neighbour it has never talked to (ARP and neighbour
// discovery), and returns the peer's real MAC, the egress interface and the source address; when the
// peer's MAC changes, the watch reports the new one as the kernel learns it.
func TestResolverFollowsTheNeighbourTable(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Paths: 1, IPv6: true})
	p := l.Paths[0]
	r, err := control.NewResolver(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	want := linkMAC(t, l, l.Server, p.ServerIf)
	for _, tc := range []struct{ peer, src string }{
		{p.ServerIP4.String(), p.ClientIP4.String()},
		{p.ServerIP6.String(), p.ClientIP6.String()},
	} {
		before, err := r.Lookup(mustAddr(tc.peer), true)
		if err != nil {
			t.Fatal(err)
		}
		if before.DstMAC != nil {
			t.Fatalf("%s: neighbour known before resolving (%s): the test needs a fresh lab", tc.peer, before.State)
		}
		nh, err := r.Resolve(ctx, mustAddr(tc.peer), true)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(nh.DstMAC, want) || nh.Iface != p.ClientIf || nh.SrcAddr.String() != tc.src ||
			!bytes.Equal(nh.SrcMAC, linkMAC(t, l, l.Client, p.ClientIf)) {
			t.Errorf("%s: got %+v, want MAC %s via %s from %s", tc.peer, nh, want, p.ClientIf, tc.src)
		}
		t.Logf("%s: %s via %s (%s), src %s, state %s", tc.peer, nh.DstMAC, nh.Iface, nh.SrcMAC, nh.SrcAddr, nh.State)
	}

	// A local address is no backend; an off-link one is refused for l2 forwarding.
	if _, err := r.Route(p.ClientIP4, true); err == nil {
		t.Error("a local address resolved as a next hop")
	}
	if _, err := l.IP(l.Client, "route", "add", "192.0.2.0/24", "via", p.ServerIP4.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Route(mustAddr("192.0.2.7"), true); !errors.Is(err, control.ErrNotOnLink) {
		t.Errorf("off-link backend for l2: %v, want ErrNotOnLink", err)
	}
	if nh, err := r.Route(mustAddr("192.0.2.7"), false); err != nil || nh.Gateway != p.ServerIP4 {
		t.Errorf("off-link backend for ipip: %+v %v, want gateway %s", nh, err, p.ServerIP4)
	}

	// The server's interface changes its MAC and talks to the client: the client's kernel learns
	// the new address from the ARP request, and the watch reports it.
	newMAC := net.HardwareAddr{0x02, 0x6d, 0x78, 0x00, 0x00, 0x42}
	events := make(chan control.NeighEvent, 64)
	wctx, wcancel := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() { werr <- r.Watch(wctx, func(e control.NeighEvent) { events <- e }) }()
	time.Sleep(100 * time.Millisecond) // let the subscription start
	if _, err := l.IP(l.Server, "link", "set", p.ServerIf, "address", newMAC.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.IP(l.Server, "neigh", "flush", "dev", p.ServerIf); err != nil {
		t.Fatal(err)
	}
	if err := netns.Do(l.Server, func() error {
		c, err := net.Dial("udp", net.JoinHostPort(p.ClientIP4.String(), "9"))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte{0})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var got control.NeighEvent
	for !bytes.Equal(got.MAC, newMAC) {
		select {
		case got = <-events:
			t.Logf("event: %+v", got)
		case <-ctx.Done():
			t.Fatalf("no neighbour event with the new MAC %s", newMAC)
		}
	}
	if got.Addr != p.ServerIP4 {
		t.Errorf("new MAC reported for %s, want %s", got.Addr, p.ServerIP4)
	}
	if nh, err := r.Lookup(p.ServerIP4, true); err != nil || !bytes.Equal(nh.DstMAC, newMAC) {
		t.Errorf("lookup after the change: %+v %v", nh, err)
	}
	wcancel()
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
}
