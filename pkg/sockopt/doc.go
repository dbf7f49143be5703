// Package sockopt reads the Multipath TCP socket options of one connection: the connection-level
// mptcp_info (MPTCP_INFO), the tcp_info of every subflow (MPTCP_TCPINFO), their addresses
// (MPTCP_SUBFLOW_ADDRS) and all of it at once with subflow ids (MPTCP_FULL_INFO).
//
// It works on any [syscall.Conn] — a *net.TCPConn from Go's MPTCP dialer or listener
// ([net.Dialer.SetMultipathTCP]) — and on a raw file descriptor through [FD].
//
// The kernel answers these options through a versioned header (struct mptcp_subflow_data) that
// negotiates the caller's and the kernel's element sizes. The package does that exchange as the
// kernel defines it: elements start at the header's size_subflow_data; it asks for the kernel's
// whole element (size_user is clamped by the kernel to size_kernel, which the package learns and
// remembers); it grows the buffer and retries, a bounded number of times, when the kernel reports
// more subflows than fitted; and it honours the returned length. The structs grow between kernel
// versions: every decoded value records how many bytes the kernel returned, Has says whether a
// field was among them, and the raw bytes are kept for fields newer than this package. [Raw]
// exposes one header exchange as it is, so that its edges can be tested.
//
// A connection that fell back to plain TCP answers every SOL_MPTCP option with EOPNOTSUPP (IPv4)
// or ENOPROTOOPT (IPv6); the package reports it as [ErrFallback], and a socket that is not MPTCP at
// all as [ErrNotMPTCP].
//
// Kernel: MPTCP_INFO, MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS need Linux 5.16; MPTCP_FULL_INFO needs
// 6.5, and [FullInfo] falls back to the three separate calls on older kernels. Only the process
// that holds the socket can ask; [Process] and [ProcessFD] read another process's sockets through
// copies taken with pidfd_getfd(2) (Linux 5.6), as `mptcp-xdp tcpinfo --pid` does.
package sockopt
