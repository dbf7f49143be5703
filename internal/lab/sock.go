package lab

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// Listen opens an MPTCP listener in the server namespace. addr is a host:port ("" host: all
// addresses, IPv4 and IPv6; port 0: any). The socket stays in the server namespace whichever
// goroutine uses it later.
func (l *Lab) Listen(ctx context.Context, addr string) (net.Listener, error) {
	return ListenIn(ctx, l.Server, addr)
}

// Dial opens an MPTCP connection from the client namespace to addr (host:port).
func (l *Lab) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return DialFrom(ctx, l.Client, addr)
}

// ListenIn opens an MPTCP TCP listener inside network namespace ns ("" is the caller's).
func ListenIn(ctx context.Context, ns, addr string) (net.Listener, error) {
	return listenIn(ctx, ns, addr, "")
}

// listenIn is ListenIn with a congestion control algorithm for the listener and the connections it
// accepts ("" for the namespace's default).
func listenIn(ctx context.Context, ns, addr, cc string) (net.Listener, error) {
	lc := net.ListenConfig{Control: congestionControl(cc)}
	lc.SetMultipathTCP(true)
	var ln net.Listener
	err := netns.Do(ns, func() error {
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mptcp listen on %s in %s: %w", addr, ns, err)
	}
	return ln, nil
}

// DialFrom opens an MPTCP connection from network namespace ns ("" is the caller's) to addr.
// When the peer or the kernel refuses MPTCP the connection silently falls back to TCP, as Go does;
// check with IsMPTCP.
func DialFrom(ctx context.Context, ns, addr string) (net.Conn, error) {
	return DialFromAddr(ctx, ns, "", addr)
}

// DialFromAddr is DialFrom with a local address (host or host:port) to bind, "" for any.
func DialFromAddr(ctx context.Context, ns, local, addr string) (net.Conn, error) {
	return dialFromAddr(ctx, ns, local, addr, "")
}

// dialFromAddr is DialFromAddr with a congestion control algorithm ("" for the namespace's default).
func dialFromAddr(ctx context.Context, ns, local, addr, cc string) (net.Conn, error) {
	d := net.Dialer{Control: congestionControl(cc)}
	d.SetMultipathTCP(true)
	if local != "" {
		if _, _, err := net.SplitHostPort(local); err != nil {
			local = net.JoinHostPort(local, "0")
		}
		la, err := net.ResolveTCPAddr("tcp", local)
		if err != nil {
			return nil, fmt.Errorf("mptcp dial %s from %s: %w", addr, local, err)
		}
		d.LocalAddr = la
	}
	var c net.Conn
	err := netns.Do(ns, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("mptcp dial %s from %s: %w", addr, ns, err)
	}
	return c, nil
}

// IsMPTCP reports whether c is a TCP connection that is (still) using MPTCP.
func IsMPTCP(c net.Conn) bool {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return false
	}
	on, err := tc.MultipathTCP()
	return err == nil && on
}

// congestionControl returns a Control function for net.Dialer and net.ListenConfig that sets
// TCP_CONGESTION on the socket before it connects or listens (nil for ""). Before, not after: set
// after connecting, cubic did not lift MPTCP over veth out of the ~130 Mbit/s-per-subflow floor it
// falls to with bbr (docs/veth-lab.md; it seems the socket keeps the internal pacing bbr turned on). For an MPTCP socket the kernel passes the algorithm to every subflow, and an
// accepted connection inherits its listener's. Setting it per socket needs CAP_NET_ADMIN but not
// net.ipv4.tcp_allowed_congestion_control, which only the initial namespace can widen.
func congestionControl(name string) func(network, address string, c syscall.RawConn) error {
	if name == "" {
		return nil
	}
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, name)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set congestion control %q (see net.ipv4.tcp_available_congestion_control): %w", name, serr)
		}
		return nil
	}
}
