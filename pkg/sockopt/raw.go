package sockopt

import (
	"encoding/binary"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Protocol numbers of the MPTCP socket API (include/uapi/linux/in.h, linux/socket.h, linux/mptcp.h).
const (
	SolMPTCP     = unix.SOL_MPTCP     // 284, the getsockopt level
	IPProtoMPTCP = unix.IPPROTO_MPTCP // 262, what SO_PROTOCOL answers for an MPTCP socket
)

// Option is one SOL_MPTCP socket option.
type Option int

// The SOL_MPTCP options this package reads.
const (
	OptInfo         Option = 1 // MPTCP_INFO: struct mptcp_info
	OptTCPInfo      Option = 2 // MPTCP_TCPINFO: mptcp_subflow_data header, then one tcp_info per subflow
	OptSubflowAddrs Option = 3 // MPTCP_SUBFLOW_ADDRS: mptcp_subflow_data header, then one mptcp_subflow_addrs per subflow
	OptFullInfo     Option = 4 // MPTCP_FULL_INFO: mptcp_full_info (6.5+)
)

func (o Option) String() string {
	switch o {
	case OptInfo:
		return "MPTCP_INFO"
	case OptTCPInfo:
		return "MPTCP_TCPINFO"
	case OptSubflowAddrs:
		return "MPTCP_SUBFLOW_ADDRS"
	case OptFullInfo:
		return "MPTCP_FULL_INFO"
	}
	return fmt.Sprintf("SOL_MPTCP option %d", int(o))
}

// SubflowDataLen is the size of struct mptcp_subflow_data as this package and Linux 5.16–6.18 lay
// it out. The kernel accepts a larger header (size_subflow_data) and puts the elements after it.
const SubflowDataLen = 16

// SubflowData is struct mptcp_subflow_data, the header of MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS.
type SubflowData struct {
	SizeSubflowData uint32 // header size as the caller lays it out; the elements start there
	NumSubflows     uint32 // 0 on the way in; the connection's true subflow count on the way out
	SizeKernel      uint32 // 0 on the way in; the kernel's element size on the way out
	SizeUser        uint32 // element size the caller wants; clamped to SizeKernel on the way out
}

// Put writes h in native byte order into the first SubflowDataLen bytes of b.
func (h SubflowData) Put(b []byte) {
	_ = b[SubflowDataLen-1]
	binary.NativeEndian.PutUint32(b[0:], h.SizeSubflowData)
	binary.NativeEndian.PutUint32(b[4:], h.NumSubflows)
	binary.NativeEndian.PutUint32(b[8:], h.SizeKernel)
	binary.NativeEndian.PutUint32(b[12:], h.SizeUser)
}

// ParseSubflowData reads a header from the first SubflowDataLen bytes of b.
func ParseSubflowData(b []byte) SubflowData {
	_ = b[SubflowDataLen-1]
	return SubflowData{
		SizeSubflowData: binary.NativeEndian.Uint32(b[0:]),
		NumSubflows:     binary.NativeEndian.Uint32(b[4:]),
		SizeKernel:      binary.NativeEndian.Uint32(b[8:]),
		SizeUser:        binary.NativeEndian.Uint32(b[12:]),
	}
}

// FullInfoHeaderLen is the size of struct mptcp_full_info up to its mptcp_info member.
const FullInfoHeaderLen = 40

// FullInfoHeader is the fixed part of struct mptcp_full_info (MPTCP_FULL_INFO).
type FullInfoHeader struct {
	SizeTCPInfoKernel uint32 // 0 on the way in; the kernel's tcp_info size on the way out
	SizeTCPInfoUser   uint32 // tcp_info element size the caller wants; clamped to the kernel's
	SizeSfInfoKernel  uint32 // 0 on the way in; the kernel's mptcp_subflow_info size on the way out
	SizeSfInfoUser    uint32 // mptcp_subflow_info element size the caller wants; clamped
	NumSubflows       uint32 // 0 on the way in; the true subflow count on the way out
	SizeArraysUser    uint32 // how many elements each of the two arrays has room for
	SubflowInfo       uint64 // user address of the mptcp_subflow_info array
	TCPInfo           uint64 // user address of the tcp_info array
}

// Put writes h in native byte order into the first FullInfoHeaderLen bytes of b.
func (h FullInfoHeader) Put(b []byte) {
	_ = b[FullInfoHeaderLen-1]
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], h.SizeTCPInfoKernel)
	ne.PutUint32(b[4:], h.SizeTCPInfoUser)
	ne.PutUint32(b[8:], h.SizeSfInfoKernel)
	ne.PutUint32(b[12:], h.SizeSfInfoUser)
	ne.PutUint32(b[16:], h.NumSubflows)
	ne.PutUint32(b[20:], h.SizeArraysUser)
	ne.PutUint64(b[24:], h.SubflowInfo)
	ne.PutUint64(b[32:], h.TCPInfo)
}

// ParseFullInfoHeader reads a header from the first FullInfoHeaderLen bytes of b.
func ParseFullInfoHeader(b []byte) FullInfoHeader {
	_ = b[FullInfoHeaderLen-1]
	ne := binary.NativeEndian
	return FullInfoHeader{
		SizeTCPInfoKernel: ne.Uint32(b[0:]),
		SizeTCPInfoUser:   ne.Uint32(b[4:]),
		SizeSfInfoKernel:  ne.Uint32(b[8:]),
		SizeSfInfoUser:    ne.Uint32(b[12:]),
		NumSubflows:       ne.Uint32(b[16:]),
		SizeArraysUser:    ne.Uint32(b[20:]),
		SubflowInfo:       ne.Uint64(b[24:]),
		TCPInfo:           ne.Uint64(b[32:]),
	}
}

// Raw makes one getsockopt(fd, SOL_MPTCP, opt, buf, len(buf)) call with buf exactly as the caller
// laid it out, and returns the length the kernel wrote back. It is the bare header exchange, for
// tests of the protocol's edges and for fields this package does not know yet: the caller puts the
// header (SubflowData.Put, FullInfoHeader.Put) and reads it and the elements back. A nil or empty
// buf passes optlen 0. Errors are *Error carrying the errno as the kernel returned it; Raw does not
// tell a fallback from other failures.
func Raw(c syscall.Conn, opt Option, buf []byte) (int, error) {
	var n int
	err := control(c, func(fd int) error {
		var err error
		n, err = getsockopt(fd, SolMPTCP, int(opt), buf)
		return err
	})
	if err != nil {
		errno, _ := err.(syscall.Errno)
		return n, &Error{Option: opt, Err: err, Errno: errno}
	}
	return n, nil
}

// getsockopt calls getsockopt(2) with optlen = len(buf) and returns the optlen the kernel wrote back.
func getsockopt(fd, level, opt int, buf []byte) (int, error) {
	var p unsafe.Pointer
	if len(buf) > 0 {
		p = unsafe.Pointer(&buf[0])
	}
	l := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return int(l), e
	}
	return int(l), nil
}

// FD makes a raw socket file descriptor usable wherever the package takes a [syscall.Conn]. The
// caller keeps the descriptor open during each call.
type FD int

// SyscallConn returns a RawConn whose methods run their function on the descriptor.
func (fd FD) SyscallConn() (syscall.RawConn, error) { return rawFD(fd), nil }

type rawFD int

func (fd rawFD) Control(f func(uintptr)) error    { f(uintptr(fd)); return nil }
func (fd rawFD) Read(f func(uintptr) bool) error  { f(uintptr(fd)); return nil }
func (fd rawFD) Write(f func(uintptr) bool) error { f(uintptr(fd)); return nil }

// control runs fn on c's descriptor, kept open by the runtime for the duration of the call.
func control(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("get raw connection: %w", err)
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return fmt.Errorf("get raw connection: %w", err)
	}
	return ferr
}

// Protocol returns the socket's SO_PROTOCOL: IPProtoMPTCP (262) for an MPTCP socket, even one
// that fell back to TCP; IPPROTO_TCP (6) for a plain TCP socket.
func Protocol(c syscall.Conn) (int, error) {
	var p int
	err := control(c, func(fd int) error {
		var err error
		p, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("getsockopt SO_PROTOCOL: %w", err)
	}
	return p, nil
}
