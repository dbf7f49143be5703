package refbench

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// lab is a veth pair between two network namespaces: the sender's end (rbs…, with the sink
// attached in native XDP mode and an AF_PACKET socket that writes frames into it) and the
// balancer's end (rbb…, where the program under test runs in native mode behind one XDP link
// whose program the rounds swap).
type lab struct {
	sendNS, balNS   string
	sendIf, balIf   string
	sendIdx, balIdx int
	balMTU          int // of balIf, which the backends' frames leave by
	fd              int // AF_PACKET socket on sendIf
	sinkLink        link.Link
	balLink         link.Link
	sender          *sender
}

func ip(tb testing.TB, args ...string) {
	tb.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func run(tb testing.TB, name string, args ...string) {
	tb.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		tb.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// inNS runs fn on a locked OS thread inside network namespace ns (setns, not `ip netns exec`,
// which would remount /sys and with it bpffs).
func inNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is left locked (and so discarded when the goroutine ends) if restoring the
		// original namespace fails.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newLab creates the namespaces and the veth pair (names rb + a random suffix, so that concurrent
// runs do not collide), attaches sink on the sender's end and first on the balancer's end, and
// opens the sender's socket. Everything is removed at cleanup.
func newLab(tb testing.TB, sink, first *ebpf.Program) *lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root (network namespaces, XDP)")
	}
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		tb.Fatal(err)
	}
	suf := hex.EncodeToString(r[:])
	l := &lab{sendNS: "rbs" + suf, balNS: "rbb" + suf, sendIf: "rbs" + suf, balIf: "rbb" + suf, fd: -1}
	ip(tb, "netns", "add", l.sendNS)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", l.sendNS).Run() })
	ip(tb, "netns", "add", l.balNS)
	tb.Cleanup(func() { exec.Command("ip", "netns", "del", l.balNS).Run() })
	ip(tb, "link", "add", l.sendIf, "netns", l.sendNS, "type", "veth", "peer", "name", l.balIf, "netns", l.balNS)
	for _, e := range []struct{ ns, dev string }{{l.sendNS, l.sendIf}, {l.balNS, l.balIf}} {
		// No IPv6 (no router solicitations or DAD probes through the balancer: the rounds count
		// every frame), no addresses: the only frames on the link are the sender's.
		run(tb, "ip", "netns", "exec", e.ns, "sysctl", "-qw", "net.ipv6.conf."+e.dev+".disable_ipv6=1")
		ip(tb, "-n", e.ns, "link", "set", e.dev, "up")
	}
	// A queue on the sender's end: when the balancer's end's ring is full, veth stops the queue
	// and the frames wait there (the socket's send buffer blocks the sender) instead of being
	// dropped, as they would be with noqueue or PACKET_QDISC_BYPASS.
	ip(tb, "-n", l.sendNS, "link", "set", l.sendIf, "txqueuelen", "10000")
	run(tb, "tc", "-n", l.sendNS, "qdisc", "replace", "dev", l.sendIf, "root", "pfifo", "limit", "10000")

	if err := inNS(l.sendNS, func() error {
		ifc, err := net.InterfaceByName(l.sendIf)
		if err != nil {
			return err
		}
		l.sendIdx = ifc.Index
		if l.sinkLink, err = link.AttachXDP(link.XDPOptions{Program: sink, Interface: ifc.Index, Flags: link.XDPDriverMode}); err != nil {
			return fmt.Errorf("attach sink to %s (native): %w", l.sendIf, err)
		}
		// Protocol 0: the socket only sends; it receives nothing.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		l.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifc.Index})
	}); err != nil {
		l.close()
		tb.Fatal(err)
	}
	if err := inNS(l.balNS, func() error {
		ifc, err := net.InterfaceByName(l.balIf)
		if err != nil {
			return err
		}
		l.balIdx, l.balMTU = ifc.Index, ifc.MTU
		if l.balLink, err = link.AttachXDP(link.XDPOptions{Program: first, Interface: ifc.Index, Flags: link.XDPDriverMode}); err != nil {
			return fmt.Errorf("attach balancer to %s (native): %w", l.balIf, err)
		}
		return nil
	}); err != nil {
		l.close()
		tb.Fatal(err)
	}
	l.sender = newSender(l.fd, 64)
	tb.Cleanup(func() { l.close() })
	return l
}

func (l *lab) close() {
	if l.balLink != nil {
		l.balLink.Close()
		l.balLink = nil
	}
	if l.sinkLink != nil {
		l.sinkLink.Close()
		l.sinkLink = nil
	}
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

// use puts prog behind the balancer's XDP link.
func (l *lab) use(prog *ebpf.Program) error {
	if err := l.balLink.Update(prog); err != nil {
		return fmt.Errorf("swap the balancer's program: %w", err)
	}
	return nil
}

// sender writes frames into the socket with sendmmsg, batch frames a call.
type sender struct {
	fd   int
	msgs []unix.Mmsghdr
	iovs []unix.Iovec
}

func newSender(fd, batch int) *sender {
	s := &sender{fd: fd, msgs: make([]unix.Mmsghdr, batch), iovs: make([]unix.Iovec, batch)}
	for i := range s.msgs {
		s.msgs[i].Hdr.Iov = &s.iovs[i]
		s.msgs[i].Hdr.Iovlen = 1
	}
	return s
}

// send writes every frame once, in order. A call the kernel interrupts or that finds the send
// buffer full is retried; no frame is skipped.
func (s *sender) send(frames [][]byte) error {
	for len(frames) > 0 {
		n := min(len(frames), len(s.msgs))
		for i := 0; i < n; i++ {
			s.iovs[i].Base = &frames[i][0]
			s.iovs[i].SetLen(len(frames[i]))
		}
		r, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.msgs[0])), uintptr(n), 0, 0, 0)
		runtime.KeepAlive(frames)
		switch {
		case errno == syscall.EINTR || errno == syscall.EAGAIN || errno == syscall.ENOBUFS:
			time.Sleep(50 * time.Microsecond)
			continue
		case errno != 0:
			return fmt.Errorf("sendmmsg: %w", errno)
		}
		frames = frames[r:]
	}
	return nil
}
