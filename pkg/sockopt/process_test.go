package sockopt_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// fdOf returns the descriptor number of a connection or listener of this process.
func fdOf(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		t.Fatal(err)
	}
	return fd
}

// ssSock is one MPTCP socket as `ss -HnMipe` shows it.
type ssSock struct {
	PID, FD  int
	Inode    uint64
	Token    string // 8 hex digits (ss prints it without leading zeros)
	Subflows int    // extra subflows, as ss -M counts them
}

var ssUsers = regexp.MustCompile(`pid=(\d+),fd=(\d+)`)

// ssMPTCP lists the MPTCP sockets of namespace ns with their owner, inode and token.
func ssMPTCP(t *testing.T, ns string) []ssSock {
	t.Helper()
	out, err := exec.Command("ss", "-N", ns, "-HnaMipe").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	var socks []ssSock
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			socks = append(socks, ssSock{PID: -1, FD: -1})
		}
		if len(socks) == 0 {
			continue
		}
		s := &socks[len(socks)-1]
		if m := ssUsers.FindStringSubmatch(line); m != nil {
			s.PID, _ = strconv.Atoi(m[1])
			s.FD, _ = strconv.Atoi(m[2])
		}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, ":")
			switch k {
			case "ino":
				s.Inode, _ = strconv.ParseUint(v, 10, 64)
			case "token":
				if tok, err := strconv.ParseUint(v, 16, 32); err == nil {
					s.Token = fmt.Sprintf("%08x", tok)
				}
			case "subflows":
				s.Subflows, _ = strconv.Atoi(v)
			}
		}
	}
	return socks
}

// TestProcess reads this test process's own sockets the way `mptcp-xdp tcpinfo --pid` reads
// another's (pidfd_getfd copies) over a two-path lab: an IPv4 and an IPv6 MPTCP connection (both
// ends), a connection that fell back to TCP, a plain TCP connection and MPTCP listeners, and checks
// them against ss and against the options read directly on the sockets.
func TestProcess(t *testing.T) {
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	l := testutil.NewLab(t, lab.Config{Prefix: "mxsop" + hex.EncodeToString(b[:]), Paths: 2, Subflows: true, IPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var pairs []*lab.Pair
	for _, host := range []string{l.Paths[0].ServerIP4.String(), l.Paths[0].ServerIP6.String()} {
		p, err := l.Pair(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		pairs = append(pairs, p)
		(&pair{lab: l, client: p.Client.(*net.TCPConn), server: p.Server.(*net.TCPConn)}).waitSubflows(t, 2)
	}

	// A plain TCP listener: an MPTCP client falls back against it, a plain client is not MPTCP.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	var pln net.Listener
	if err := netns.Do(l.Server, func() (err error) { pln, err = lc.Listen(ctx, "tcp", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pln.Close()
	go func() {
		for {
			c, err := pln.Accept()
			if err != nil {
				return
			}
			go func() {
				// Echo by hand: io.Copy between sockets splices through pipes that Go keeps in a
				// pool, which the fd-leak check would report.
				defer c.Close()
				buf := make([]byte, 512)
				for {
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
	paddr := net.JoinHostPort(l.Paths[0].ServerIP4.String(), strconv.Itoa(pln.Addr().(*net.TCPAddr).Port))
	fb, err := lab.DialFrom(ctx, l.Client, paddr)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	var d net.Dialer
	d.SetMultipathTCP(false)
	var plain net.Conn
	if err := netns.Do(l.Client, func() (err error) { plain, err = d.DialContext(ctx, "tcp", paddr); return err }); err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	for _, c := range []net.Conn{fb, plain} {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}

	pid := os.Getpid()
	socks, err := sockopt.Process(pid)
	if err != nil {
		t.Fatal(err)
	}
	byFD := map[int]sockopt.ProcessSocket{}
	for i, s := range socks {
		if i > 0 && s.FD <= socks[i-1].FD {
			t.Errorf("not ordered by fd: %d after %d", s.FD, socks[i-1].FD)
		}
		byFD[s.FD] = s
	}

	// Every MPTCP socket ss shows for this process in either namespace: same inode, token and
	// subflow count.
	seen := 0
	for _, ns := range []string{l.Client, l.Server} {
		for _, ss := range ssMPTCP(t, ns) {
			if ss.PID != pid {
				continue
			}
			seen++
			s, ok := byFD[ss.FD]
			if !ok {
				t.Errorf("%s: ss shows fd %d (inode %d), Process does not", ns, ss.FD, ss.Inode)
				continue
			}
			if s.Inode != ss.Inode {
				t.Errorf("%s fd %d: inode %d, ss -e ino:%d", ns, ss.FD, s.Inode, ss.Inode)
			}
			if s.Info == nil {
				continue // listener or fallback: ss prints no token
			}
			if tok := fmt.Sprintf("%08x", s.Info.Token); tok != ss.Token || int(s.Info.Subflows) != ss.Subflows ||
				len(s.Subflows) != ss.Subflows+1 {
				t.Errorf("%s fd %d: token %s, %d extra and %d listed subflows; ss -M: token %s, %d extra",
					ns, ss.FD, tok, s.Info.Subflows, len(s.Subflows), ss.Token, ss.Subflows)
			}
		}
	}
	// 2 connections × 2 ends + 2 listeners + the fallback.
	if seen != 7 {
		t.Errorf("ss shows %d MPTCP sockets of this process, want 7", seen)
	}

	// Both ends of each connection agree with the options read directly on the socket.
	for _, p := range pairs {
		for _, c := range []*net.TCPConn{p.Client.(*net.TCPConn), p.Server.(*net.TCPConn)} {
			fd := fdOf(t, c)
			s, ok := byFD[fd]
			if !ok {
				t.Errorf("fd %d (%s → %s) not listed", fd, c.LocalAddr(), c.RemoteAddr())
				continue
			}
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Fatal(err)
			}
			direct, err := sockopt.FullInfo(c)
			if err != nil {
				t.Fatal(err)
			}
			// A dual-stack listener's connections are IPv6 sockets with v4-mapped addresses, which
			// Go's LocalAddr unmaps.
			sa, err := unix.Getsockname(fd)
			if err != nil {
				t.Fatal(err)
			}
			wantFamily := unix.AF_INET
			if _, ok := sa.(*unix.SockaddrInet6); ok {
				wantFamily = unix.AF_INET6
			}
			unmapped := func(a netip.AddrPort) string { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String() }
			switch {
			case s.Inode != st.Ino:
				t.Errorf("fd %d: inode %d, fstat %d", fd, s.Inode, st.Ino)
			case s.Err != nil || s.Fallback || s.Listening || s.Info == nil || s.IDs != kernelHasFullInfo(t):
				t.Errorf("fd %d: %+v", fd, s)
			case s.Family != wantFamily:
				t.Errorf("fd %d: family %d, want %d", fd, s.Family, wantFamily)
			case unmapped(s.Local) != c.LocalAddr().String() || unmapped(s.Remote) != c.RemoteAddr().String():
				t.Errorf("fd %d: %s → %s, socket %s → %s", fd, s.Local, s.Remote, c.LocalAddr(), c.RemoteAddr())
			case s.Info.Token != direct.Info.Token || len(s.Subflows) != len(direct.Subflows) || len(s.Subflows) != 2:
				t.Errorf("fd %d: token %08x, %d subflows; directly %08x, %d", fd, s.Info.Token, len(s.Subflows),
					direct.Info.Token, len(direct.Subflows))
			default:
				for i, sf := range s.Subflows {
					want := direct.Subflows[i]
					if sf.ID != want.ID || sf.Addr.Local != want.Addr.Local || sf.Addr.Remote != want.Addr.Remote ||
						sf.TCP.StateName() != "ESTAB" || sf.TCP.RTT == 0 || sf.TCP.SndCwnd == 0 {
						t.Errorf("fd %d subflow %d: id %d %s → %s %s; directly id %d %s → %s", fd, i, sf.ID,
							sf.Addr.Local, sf.Addr.Remote, sf.TCP.StateName(), want.ID, want.Addr.Local, want.Addr.Remote)
					}
				}
			}
		}
		lfd := fdOf(t, p.Listener.(*net.TCPListener))
		if s, ok := byFD[lfd]; !ok || !s.Listening || s.Info != nil || len(s.Subflows) != 0 ||
			s.Local.Port() != uint16(p.Listener.Addr().(*net.TCPAddr).Port) {
			t.Errorf("listener fd %d: %+v (listed %v)", lfd, s, ok)
		}
	}
	if s, ok := byFD[fdOf(t, fb.(*net.TCPConn))]; !ok || !s.Fallback || s.Info != nil || len(s.Subflows) != 1 ||
		s.Subflows[0].TCP.StateName() != "ESTAB" || s.Subflows[0].Addr.Remote.String() != paddr {
		t.Errorf("fallback: %+v (listed %v)", s, ok)
	}
	plainFD := fdOf(t, plain.(*net.TCPConn))
	if s, ok := byFD[plainFD]; ok {
		t.Errorf("plain TCP socket listed: %+v", s)
	}

	t.Run("FD", func(t *testing.T) {
		c := pairs[0].Client.(*net.TCPConn)
		fd := fdOf(t, c)
		s, err := sockopt.ProcessFD(pid, fd)
		if err != nil || s.FD != fd || s.Info == nil || len(s.Subflows) != 2 || s.Inode != byFD[fd].Inode {
			t.Errorf("ProcessFD %d: %v %+v", fd, err, s)
		}
		if _, err := sockopt.ProcessFD(pid, plainFD); !errors.Is(err, sockopt.ErrNotMPTCP) {
			t.Errorf("plain TCP fd %d: %v, want ErrNotMPTCP", plainFD, err)
		}
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		if _, err := sockopt.ProcessFD(pid, int(r.Fd())); err == nil || !strings.Contains(err.Error(), "is not a socket (pipe:[") {
			t.Errorf("pipe: %v, want an error saying it is not a socket", err)
		}
		if _, err := sockopt.ProcessFD(pid, 4095); err == nil || !strings.Contains(err.Error(), "has no file descriptor 4095") {
			t.Errorf("fd 4095: %v", err)
		}
	})

	t.Run("NoSuchProcess", func(t *testing.T) {
		gone := exec.Command("true")
		if err := gone.Run(); err != nil {
			t.Fatal(err)
		}
		if _, err := sockopt.Process(gone.Process.Pid); !errors.Is(err, unix.ESRCH) {
			t.Errorf("exited process: %v, want ESRCH", err)
		}
		if _, err := sockopt.ProcessFD(gone.Process.Pid, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("exited process, fd 0: %v, want ESRCH", err)
		}
	})
}
