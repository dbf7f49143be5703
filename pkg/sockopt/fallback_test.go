package sockopt_test

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// TestFallback: with MPTCP disabled on the server (net.mptcp.enabled=0, so Go's MPTCP listener
// gets a plain TCP socket), the client's MPTCP connection falls back to TCP. Every option gives
// ErrFallback, carrying EOPNOTSUPP on IPv4 and ENOPROTOOPT on IPv6; the server's plain socket gives
// ErrNotMPTCP.
func TestFallback(t *testing.T) {
	for _, tc := range []struct {
		v6    bool
		errno syscall.Errno
	}{{false, unix.EOPNOTSUPP}, {true, unix.ENOPROTOOPT}} {
		t.Run(family(tc.v6), func(t *testing.T) {
			l := testutil.NewLab(t, lab.Config{Paths: 2, Subflows: true, IPv6: tc.v6})
			if err := lab.WriteSysctls(l.Server, map[string]string{"net/mptcp/enabled": "0"}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			host := l.Paths[0].ServerIP4.String()
			if tc.v6 {
				host = l.Paths[0].ServerIP6.String()
			}
			lp, err := l.Pair(ctx, host)
			if err != nil {
				t.Fatal(err)
			}
			defer lp.Close()
			if p, err := sockopt.Protocol(lp.Client.(*net.TCPConn)); err != nil || p != sockopt.IPProtoMPTCP {
				t.Fatalf("client SO_PROTOCOL %d (%v), want %d", p, err, sockopt.IPProtoMPTCP)
			}
			if p, err := sockopt.Protocol(lp.Server.(*net.TCPConn)); err != nil || p != unix.IPPROTO_TCP {
				t.Fatalf("server SO_PROTOCOL %d (%v), want %d: MPTCP was not disabled", p, err, unix.IPPROTO_TCP)
			}
			c := lp.Client.(*net.TCPConn)
			calls := map[string]func(syscall.Conn) error{
				"Info":         func(c syscall.Conn) error { _, err := sockopt.Info(c); return err },
				"TCPInfo":      func(c syscall.Conn) error { _, err := sockopt.TCPInfo(c); return err },
				"SubflowAddrs": func(c syscall.Conn) error { _, err := sockopt.SubflowAddrs(c); return err },
				"FullInfo":     func(c syscall.Conn) error { _, err := sockopt.FullInfo(c); return err },
			}
			for name, call := range calls {
				err := call(c)
				var se *sockopt.Error
				if !errors.Is(err, sockopt.ErrFallback) || !errors.Is(err, tc.errno) || !errors.As(err, &se) {
					t.Errorf("client %s: %v, want ErrFallback with %v", name, err, tc.errno)
				}
				if err := call(lp.Server.(*net.TCPConn)); !errors.Is(err, sockopt.ErrNotMPTCP) {
					t.Errorf("server %s: %v, want ErrNotMPTCP", name, err)
				}
			}
			// The raw exchange sees the kernel's errno for every option, whatever the buffer.
			for _, opt := range []sockopt.Option{sockopt.OptInfo, sockopt.OptTCPInfo, sockopt.OptSubflowAddrs, sockopt.OptFullInfo} {
				buf := make([]byte, 512)
				sockopt.SubflowData{SizeSubflowData: 16, SizeUser: 8}.Put(buf)
				if _, err := sockopt.Raw(c, opt, buf); !errors.Is(err, tc.errno) {
					t.Errorf("raw %s: %v, want %v", opt, err, tc.errno)
				}
			}
			if fb, err := sockopt.Fallback(c); !fb || err != nil {
				t.Errorf("Fallback(client) = %v, %v; want true", fb, err)
			}
			if fb, err := sockopt.Fallback(lp.Server.(*net.TCPConn)); fb || !errors.Is(err, sockopt.ErrNotMPTCP) {
				t.Errorf("Fallback(server) = %v, %v; want ErrNotMPTCP", fb, err)
			}
			// Go's own probe agrees.
			if on, err := c.MultipathTCP(); on || err != nil {
				t.Errorf("net.TCPConn.MultipathTCP() = %v, %v", on, err)
			}
		})
	}
}

// TestNotMPTCP: a live MPTCP connection is not a fallback; a plain TCP socket and a descriptor that
// is no socket give ErrNotMPTCP.
func TestNotMPTCP(t *testing.T) {
	p := newPair(t, 1, false)
	if fb, err := sockopt.Fallback(p.client); fb || err != nil {
		t.Errorf("Fallback(MPTCP connection) = %v, %v", fb, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := sockopt.Info(c.(*net.TCPConn)); !errors.Is(err, sockopt.ErrNotMPTCP) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("plain TCP: %v, want ErrNotMPTCP (EOPNOTSUPP)", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := sockopt.TCPInfo(sockopt.FD(int(r.Fd()))); !errors.Is(err, sockopt.ErrNotMPTCP) || !errors.Is(err, unix.ENOTSOCK) {
		t.Errorf("pipe: %v, want ErrNotMPTCP (ENOTSOCK)", err)
	}
}
