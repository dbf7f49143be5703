package sockopt

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcessSocket is one MPTCP socket of a process, read through a copy of its descriptor taken with
// pidfd_getfd(2). Only the fields that apply are set: a listener has addresses only, a connection
// that fell back to TCP has its one subflow (from TCP_INFO) and no Info.
type ProcessSocket struct {
	FD    int    // descriptor number in the process
	Inode uint64 // socket inode: the one /proc/PID/fd/FD names, confirmed by fstat of the copy
	// Family is the socket's address family, unix.AF_INET or unix.AF_INET6.
	Family int
	// Local and Remote are getsockname and getpeername of the MPTCP socket; Remote is invalid when
	// the socket is not connected.
	Local, Remote netip.AddrPort
	Listening     bool // a listener: no connection, no subflows
	// Fallback says the connection fell back to plain TCP: Info is nil and Subflows holds the one
	// remaining subflow, without an id.
	Fallback bool
	// Info is the connection's mptcp_info; nil for a listener, a fallback, or when reading failed.
	Info *MPTCPInfo
	// Subflows are the connection's subflows in the kernel's order.
	Subflows []Subflow
	// IDs says whether Subflow.ID holds the kernel's subflow ids (MPTCP_FULL_INFO, Linux 6.5+).
	IDs bool
	// Err is why reading the socket's options failed; the fields above hold what was read before.
	Err error
}

// Process reads every MPTCP socket of the process pid, ordered by descriptor. Other descriptors
// (files, pipes, plain TCP sockets) are skipped, and so is one closed or replaced by another while
// the process is walked. Reading another user's process needs CAP_SYS_PTRACE (ptrace access to
// it); a failure to read one socket's options is reported in its Err, not as Process's error.
func Process(pid int) ([]ProcessSocket, error) {
	p, err := openProcess(pid)
	if err != nil {
		return nil, err
	}
	defer p.close()
	dir := p.fdDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, procError(pid, "list "+dir, err)
	}
	fds := make([]int, 0, len(ents))
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			fds = append(fds, n)
		}
	}
	slices.Sort(fds)
	socks := []ProcessSocket{}
	for _, fd := range fds {
		s, err := p.socket(fd)
		switch {
		case errors.Is(err, errGone), errors.As(err, new(*notSocketError)), errors.Is(err, ErrNotMPTCP):
			continue
		case err != nil:
			return nil, err
		}
		socks = append(socks, *s)
	}
	return socks, nil
}

// ProcessFD reads the MPTCP socket at descriptor fd of the process pid. A descriptor that is not
// open, not a socket or not an MPTCP socket is an error (the last one wraps ErrNotMPTCP).
func ProcessFD(pid, fd int) (*ProcessSocket, error) {
	if fd < 0 {
		return nil, fmt.Errorf("file descriptor %d: want 0 or more", fd)
	}
	p, err := openProcess(pid)
	if err != nil {
		return nil, err
	}
	defer p.close()
	s, err := p.socket(fd)
	switch {
	case errors.Is(err, errGone):
		return nil, fmt.Errorf("process %d has no file descriptor %d", pid, fd)
	case err != nil:
		return nil, err
	}
	return s, nil
}

// errGone is a descriptor that closed, or was replaced by another, while it was being read.
var errGone = errors.New("descriptor closed or replaced")

// notSocketError is a descriptor that is not a socket.
type notSocketError struct {
	pid, fd int
	target  string // the /proc/PID/fd link target
}

func (e *notSocketError) Error() string {
	return fmt.Sprintf("file descriptor %d of process %d is not a socket (%s)", e.fd, e.pid, e.target)
}

// process is a process opened with pidfd_open, so that its descriptors are taken from it and not
// from a process that reused its pid.
type process struct {
	pid, pidfd int
}

func openProcess(pid int) (*process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("process id %d: want 1 or more", pid)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("process %d: %w", pid, unix.ESRCH)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &process{pid: pid, pidfd: pidfd}, nil
}

func (p *process) close() { unix.Close(p.pidfd) }

func (p *process) fdDir() string { return filepath.Join("/proc", strconv.Itoa(p.pid), "fd") }

// socket reads descriptor fd: errGone when it is not open (any more) or the copy taken is not the
// socket the link named; a *notSocketError, or an error wrapping ErrNotMPTCP, for other
// descriptors.
func (p *process) socket(fd int) (*ProcessSocket, error) {
	link := filepath.Join(p.fdDir(), strconv.Itoa(fd))
	target, err := os.Readlink(link)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// /proc/PID/fd itself vanishes with the process.
			if _, serr := os.Stat(p.fdDir()); serr != nil {
				return nil, procError(p.pid, "read "+link, serr)
			}
			return nil, errGone
		}
		return nil, procError(p.pid, "read "+link, err)
	}
	ino, ok := socketInode(target)
	if !ok {
		return nil, &notSocketError{pid: p.pid, fd: fd, target: target}
	}
	local, err := unix.PidfdGetfd(p.pidfd, fd, 0)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return nil, errGone // closed since the readlink
		}
		return nil, procError(p.pid, fmt.Sprintf("pidfd_getfd %d", fd), err)
	}
	defer unix.Close(local)
	// The descriptor may have been closed and reused between the readlink and the copy: the copy
	// must be the inode the link named.
	var st unix.Stat_t
	if err := unix.Fstat(local, &st); err != nil {
		return nil, fmt.Errorf("fstat copy of file descriptor %d of process %d: %w", fd, p.pid, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Ino != ino {
		return nil, errGone
	}
	sock := FD(local)
	if proto, err := Protocol(sock); err != nil {
		return nil, fmt.Errorf("file descriptor %d of process %d: %w", fd, p.pid, err)
	} else if proto != IPProtoMPTCP {
		return nil, fmt.Errorf("file descriptor %d of process %d: %w (SO_PROTOCOL %d)", fd, p.pid, ErrNotMPTCP, proto)
	}
	s := &ProcessSocket{FD: fd, Inode: ino}
	if sa, err := unix.Getsockname(local); err == nil {
		s.Local, s.Family = sockaddrPort(sa)
	}
	if sa, err := unix.Getpeername(local); err == nil {
		s.Remote, _ = sockaddrPort(sa)
	}
	if acc, err := unix.GetsockoptInt(local, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && acc == 1 {
		s.Listening = true
		return s, nil
	}
	f, err := FullInfo(sock)
	switch {
	case errors.Is(err, ErrFallback):
		s.Fallback = true
		ti, err := SocketTCPInfo(sock)
		if err != nil {
			s.Err = err
			return s, nil
		}
		s.Subflows = []Subflow{{Addr: SubflowAddr{Local: s.Local, Remote: s.Remote}, TCP: *ti}}
		return s, nil
	case err != nil:
		s.Err = err
		return s, nil
	}
	s.Info, s.Subflows, s.IDs = &f.Info, f.Subflows, f.IDs
	s.Fallback = f.Info.Flags&FlagFallback != 0
	return s, nil
}

// socketInode parses a /proc/PID/fd link target "socket:[12345]".
func socketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return ino, err == nil
}

// procError words a failure to read /proc/PID or to take a descriptor, naming the capability when
// permission is the cause.
func procError(pid int, what string, err error) error {
	switch {
	case errors.Is(err, unix.ESRCH), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s: process %d: %w", what, pid, unix.ESRCH)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: permission denied: reading the sockets of process %d needs CAP_SYS_PTRACE "+
			"(ptrace access to it; a non-dumpable process or a security module can refuse even then): %w", what, pid, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func sockaddrPort(sa unix.Sockaddr) (netip.AddrPort, int) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), unix.AF_INET
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), unix.AF_INET6
	}
	return netip.AddrPort{}, 0
}
