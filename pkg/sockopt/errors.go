package sockopt

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

var (
	// ErrFallback means the connection fell back to plain TCP (the peer or a middlebox refused
	// MPTCP): the kernel answers every SOL_MPTCP option with EOPNOTSUPP (IPv4) or ENOPROTOOPT
	// (IPv6). The socket is still an MPTCP socket (SO_PROTOCOL 262).
	ErrFallback = errors.New("connection fell back to plain TCP")
	// ErrNotMPTCP means the socket is not an MPTCP socket (SO_PROTOCOL is not 262).
	ErrNotMPTCP = errors.New("not an MPTCP socket")
	// ErrUnsettled means subflows kept coming and going faster than the bounded retries could
	// catch a consistent answer.
	ErrUnsettled = errors.New("subflows kept changing between attempts")
)

// Error is a failed SOL_MPTCP getsockopt: which option, and why. Err is ErrFallback, ErrNotMPTCP,
// ErrUnsettled or the errno; Errno is the errno the kernel returned, when there was one. errors.Is
// matches both.
type Error struct {
	Option Option
	Err    error
	Errno  syscall.Errno
}

func (e *Error) Error() string {
	if e.Errno != 0 && e.Err != error(e.Errno) {
		return fmt.Sprintf("getsockopt %s: %v (%v)", e.Option, e.Err, e.Errno)
	}
	return fmt.Sprintf("getsockopt %s: %v", e.Option, e.Err)
}

// Unwrap returns the cause and the errno.
func (e *Error) Unwrap() []error {
	if e.Errno != 0 && e.Err != error(e.Errno) {
		return []error{e.Err, e.Errno}
	}
	return []error{e.Err}
}

// classify turns a getsockopt failure into an *Error; for EOPNOTSUPP and ENOPROTOOPT it asks
// SO_PROTOCOL to tell a fallen-back MPTCP connection from a socket that never was MPTCP.
func classify(fd int, opt Option, err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return &Error{Option: opt, Err: err}
	}
	if errno == unix.EOPNOTSUPP || errno == unix.ENOPROTOOPT {
		p, perr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		switch {
		case perr != nil:
			return &Error{Option: opt, Err: fmt.Errorf("%w; SO_PROTOCOL: %w", errno, perr), Errno: errno}
		case p == IPProtoMPTCP:
			return &Error{Option: opt, Err: ErrFallback, Errno: errno}
		default:
			return &Error{Option: opt, Err: fmt.Errorf("%w (SO_PROTOCOL %d)", ErrNotMPTCP, p), Errno: errno}
		}
	}
	if errno == unix.ENOTSOCK {
		return &Error{Option: opt, Err: fmt.Errorf("%w: not a socket", ErrNotMPTCP), Errno: errno}
	}
	return &Error{Option: opt, Err: errno, Errno: errno}
}
