package sockopt

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Defaults of a Reader's zero fields.
const (
	// DefaultRoom is how many subflows the first attempt of a read makes room for. The in-kernel
	// path manager allows at most 8 extra subflows; most connections have 1 to 4.
	DefaultRoom = 4
	// DefaultAttempts bounds the getsockopt calls of one read: a retry is needed when the kernel
	// reports more subflows than fitted, or an element larger than asked for (once per process).
	DefaultAttempts = 5
)

// The element sizes the running kernel reported, learnt from the first exchange and shared by
// every Reader; they start at the sizes this package knows.
var (
	kernelMPTCPInfoSize   atomic.Uint32
	kernelTCPInfoSize     atomic.Uint32
	kernelAddrsSize       atomic.Uint32
	kernelSubflowInfoSize atomic.Uint32
)

func init() {
	kernelMPTCPInfoSize.Store(uint32(mptcpInfoSize))
	kernelTCPInfoSize.Store(uint32(tcpInfoSize))
	kernelAddrsSize.Store(subflowAddrsSize)
	kernelSubflowInfoSize.Store(subflowInfoSize)
}

// A Reader reads MPTCP socket options, reusing its buffers between calls. The zero value is ready
// to use; a Reader is not safe for concurrent use. The package-level functions use a pool of them.
type Reader struct {
	// Room is how many subflows the first attempt of a read makes room for (0: DefaultRoom).
	// A read that finds more subflows raises it, so the next read needs one attempt.
	Room int
	// Attempts bounds the getsockopt calls one read may make (0: DefaultAttempts).
	Attempts int
	// LastAttempts is how many getsockopt calls the last read made.
	LastAttempts int

	buf, sfBuf, tcpBuf []byte
	noFullInfo         bool // behave as on a kernel without MPTCP_FULL_INFO (tests of that path)
}

func (r *Reader) room() int {
	if r.Room > 0 {
		return r.Room
	}
	return DefaultRoom
}

func (r *Reader) attempts() int {
	if r.Attempts > 0 {
		return r.Attempts
	}
	return DefaultAttempts
}

func grow(b *[]byte, n int) []byte {
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	*b = (*b)[:n]
	clear(*b)
	return *b
}

// Info returns the connection's mptcp_info (MPTCP_INFO).
func (r *Reader) Info(c syscall.Conn) (*MPTCPInfo, error) {
	var m *MPTCPInfo
	err := control(c, func(fd int) (err error) { m, err = r.info(fd); return err })
	return m, err
}

// TCPInfo returns one tcp_info per subflow (MPTCP_TCPINFO), in the kernel's subflow order.
func (r *Reader) TCPInfo(c syscall.Conn) ([]SubflowTCPInfo, error) {
	var t []SubflowTCPInfo
	err := control(c, func(fd int) (err error) { t, err = r.tcpInfo(fd); return err })
	return t, err
}

// SubflowAddrs returns the local and remote address of every subflow (MPTCP_SUBFLOW_ADDRS), in the
// kernel's subflow order.
func (r *Reader) SubflowAddrs(c syscall.Conn) ([]SubflowAddr, error) {
	var a []SubflowAddr
	err := control(c, func(fd int) (err error) { a, err = r.subflowAddrs(fd); return err })
	return a, err
}

// FullInfo returns everything in one consistent snapshot (MPTCP_FULL_INFO, 6.5+): mptcp_info and,
// per subflow, its id, addresses and tcp_info. On a kernel without MPTCP_FULL_INFO it makes the
// three separate calls instead (retrying while their subflow counts disagree) and Full.IDs is false.
func (r *Reader) FullInfo(c syscall.Conn) (*Full, error) {
	var f *Full
	err := control(c, func(fd int) (err error) { f, err = r.fullInfo(fd); return err })
	return f, err
}

// Fallback reports whether an MPTCP connection fell back to plain TCP, with the kernel's own probe:
// MPTCP_INFO with optlen 0, which succeeds on an MPTCP connection and fails on a fallen-back one.
// A socket that is not MPTCP gives ErrNotMPTCP.
func Fallback(c syscall.Conn) (bool, error) {
	err := control(c, func(fd int) error {
		if _, err := getsockopt(fd, SolMPTCP, int(OptInfo), nil); err != nil {
			return classify(fd, OptInfo, err)
		}
		return nil
	})
	if errors.Is(err, ErrFallback) {
		return true, nil
	}
	return false, err
}

func (r *Reader) info(fd int) (*MPTCPInfo, error) {
	// Offer more room than the kernel's struct was last seen to need: a returned length short of
	// the room is the kernel's whole struct; a full one may be cut, so double and ask again.
	room := 2 * int(kernelMPTCPInfoSize.Load())
	for r.LastAttempts = 1; ; r.LastAttempts++ {
		buf := grow(&r.buf, room)
		n, err := getsockopt(fd, SolMPTCP, int(OptInfo), buf)
		if err != nil {
			return nil, classify(fd, OptInfo, err)
		}
		if n < room || r.LastAttempts >= r.attempts() {
			kernelMPTCPInfoSize.Store(uint32(n))
			m := &MPTCPInfo{}
			m.decode(buf[:n])
			m.Raw = append([]byte(nil), buf[:n]...)
			return m, nil
		}
		room *= 2
	}
}

// readSubflows runs the MPTCP_TCPINFO or MPTCP_SUBFLOW_ADDRS exchange until every subflow the
// kernel counted fitted, and returns the elements and their stride.
func (r *Reader) readSubflows(fd int, opt Option, size *atomic.Uint32) ([]byte, int, error) {
	room, elem := r.room(), int(size.Load())
	for r.LastAttempts = 1; r.LastAttempts <= r.attempts(); r.LastAttempts++ {
		buf := grow(&r.buf, SubflowDataLen+room*elem)
		SubflowData{SizeSubflowData: SubflowDataLen, SizeUser: uint32(elem)}.Put(buf)
		n, err := getsockopt(fd, SolMPTCP, int(opt), buf)
		if err != nil {
			return nil, 0, classify(fd, opt, err)
		}
		h := ParseSubflowData(buf)
		num := int(h.NumSubflows)
		if h.SizeKernel != 0 && int(h.SizeKernel) != elem {
			size.Store(h.SizeKernel)
		}
		if int(h.SizeKernel) > elem {
			// The kernel's element is larger than asked for: ask again for all of it.
			elem, room = int(h.SizeKernel), max(room, num)
			continue
		}
		stride := int(h.SizeUser)
		copied := 0
		if n > SubflowDataLen && stride > 0 {
			copied = (n - SubflowDataLen) / stride
		}
		if copied >= num {
			r.Room = max(r.Room, num)
			return buf[SubflowDataLen : SubflowDataLen+num*stride], stride, nil
		}
		room = num + 1 // a subflow may appear before the next attempt
	}
	return nil, 0, &Error{Option: opt, Err: ErrUnsettled}
}

func (r *Reader) tcpInfo(fd int) ([]SubflowTCPInfo, error) {
	elems, stride, err := r.readSubflows(fd, OptTCPInfo, &kernelTCPInfoSize)
	if err != nil {
		return nil, err
	}
	return decodeTCPInfos(elems, stride), nil
}

// decodeTCPInfos decodes back-to-back tcp_info elements of the given stride, keeping one copy of
// the returned bytes for their Raw fields.
func decodeTCPInfos(elems []byte, stride int) []SubflowTCPInfo {
	if stride == 0 {
		return nil
	}
	raw := append([]byte(nil), elems...)
	out := make([]SubflowTCPInfo, len(raw)/stride)
	for i := range out {
		b := raw[i*stride : (i+1)*stride : (i+1)*stride]
		out[i].decode(b)
		out[i].Raw = b
	}
	return out
}

func (r *Reader) subflowAddrs(fd int) ([]SubflowAddr, error) {
	elems, stride, err := r.readSubflows(fd, OptSubflowAddrs, &kernelAddrsSize)
	if err != nil || stride == 0 {
		return nil, err
	}
	out := make([]SubflowAddr, len(elems)/stride)
	for i := range out {
		out[i].decode(elems[i*stride : (i+1)*stride])
	}
	return out, nil
}

// Full is one connection's MPTCP_FULL_INFO: connection info and every subflow.
type Full struct {
	Info     MPTCPInfo
	Subflows []Subflow
	// IDs says whether Subflow.ID holds the kernel's subflow ids: true from MPTCP_FULL_INFO, false
	// when the kernel lacked it and the separate calls were made.
	IDs bool
}

// Subflow is one subflow of a Full answer.
type Subflow struct {
	ID   uint32 // the kernel's subflow id (mptcp_subflow_info.id)
	Addr SubflowAddr
	TCP  SubflowTCPInfo
}

func (r *Reader) fullInfo(fd int) (*Full, error) {
	if r.noFullInfo {
		return r.separate(fd)
	}
	room := r.room()
	infoRoom := 2 * int(kernelMPTCPInfoSize.Load())
	tcpElem, sfElem := int(kernelTCPInfoSize.Load()), int(kernelSubflowInfoSize.Load())
	var pin runtime.Pinner
	defer pin.Unpin()
	for r.LastAttempts = 1; r.LastAttempts <= r.attempts(); r.LastAttempts++ {
		buf := grow(&r.buf, FullInfoHeaderLen+infoRoom)
		sf := grow(&r.sfBuf, room*sfElem)
		tcp := grow(&r.tcpBuf, room*tcpElem)
		pin.Unpin()
		pin.Pin(&sf[0])
		pin.Pin(&tcp[0])
		FullInfoHeader{
			SizeTCPInfoUser: uint32(tcpElem),
			SizeSfInfoUser:  uint32(sfElem),
			SizeArraysUser:  uint32(room),
			SubflowInfo:     uint64(uintptr(unsafe.Pointer(&sf[0]))),
			TCPInfo:         uint64(uintptr(unsafe.Pointer(&tcp[0]))),
		}.Put(buf)
		n, err := getsockopt(fd, SolMPTCP, int(OptFullInfo), buf)
		if err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) {
				// Before 6.5 the option is unknown (EOPNOTSUPP), which is also how an IPv4
				// fallback answers: the MPTCP_INFO probe tells them apart.
				if _, perr := getsockopt(fd, SolMPTCP, int(OptInfo), nil); perr == nil {
					return r.separate(fd)
				}
			}
			return nil, classify(fd, OptFullInfo, err)
		}
		h := ParseFullInfoHeader(buf)
		num := int(h.NumSubflows)
		retry := false
		if int(h.SizeTCPInfoKernel) != tcpElem {
			kernelTCPInfoSize.Store(h.SizeTCPInfoKernel)
			if int(h.SizeTCPInfoKernel) > tcpElem {
				tcpElem, retry = int(h.SizeTCPInfoKernel), true
			}
		}
		if int(h.SizeSfInfoKernel) != sfElem {
			kernelSubflowInfoSize.Store(h.SizeSfInfoKernel)
			if int(h.SizeSfInfoKernel) > sfElem {
				sfElem, retry = int(h.SizeSfInfoKernel), true
			}
		}
		infoLen := max(n-FullInfoHeaderLen, 0)
		if infoLen >= infoRoom && r.LastAttempts < r.attempts() {
			infoRoom, retry = 2*infoRoom, true
		}
		if num > room {
			room, retry = num+1, true
		}
		if retry {
			continue
		}
		kernelMPTCPInfoSize.Store(uint32(infoLen))
		r.Room = max(r.Room, num)
		f := &Full{IDs: true, Subflows: make([]Subflow, num)}
		f.Info.decode(buf[FullInfoHeaderLen:n])
		f.Info.Raw = append([]byte(nil), buf[FullInfoHeaderLen:n]...)
		ts, ss := int(h.SizeTCPInfoUser), int(h.SizeSfInfoUser)
		tcpInfos := decodeTCPInfos(tcp[:num*ts], ts)
		for i := range f.Subflows {
			s := &f.Subflows[i]
			e := sf[i*ss : (i+1)*ss]
			if ss >= 4 {
				s.ID = *(*uint32)(unsafe.Pointer(&e[0]))
			}
			if ss > subflowInfoAddrsOff {
				s.Addr.decode(e[subflowInfoAddrsOff:])
			}
			if i < len(tcpInfos) {
				s.TCP = tcpInfos[i]
			}
		}
		return f, nil
	}
	return nil, &Error{Option: OptFullInfo, Err: ErrUnsettled}
}

// separate builds a Full from MPTCP_INFO, MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS, retrying while
// the two subflow lists disagree in length (a subflow came or went between the calls).
func (r *Reader) separate(fd int) (*Full, error) {
	for range r.attempts() {
		m, err := r.info(fd)
		if err != nil {
			return nil, err
		}
		t, err := r.tcpInfo(fd)
		if err != nil {
			return nil, err
		}
		a, err := r.subflowAddrs(fd)
		if err != nil {
			return nil, err
		}
		if len(t) != len(a) {
			continue
		}
		f := &Full{Info: *m, Subflows: make([]Subflow, len(t))}
		for i := range t {
			f.Subflows[i] = Subflow{Addr: a[i], TCP: t[i]}
		}
		return f, nil
	}
	return nil, &Error{Option: OptFullInfo, Err: ErrUnsettled}
}

var readers = sync.Pool{New: func() any { return new(Reader) }}

func pooled[T any](c syscall.Conn, f func(*Reader, syscall.Conn) (T, error)) (T, error) {
	r := readers.Get().(*Reader)
	defer readers.Put(r)
	return f(r, c)
}

// Info returns the connection's mptcp_info (MPTCP_INFO). See Reader.Info.
func Info(c syscall.Conn) (*MPTCPInfo, error) { return pooled(c, (*Reader).Info) }

// TCPInfo returns one tcp_info per subflow (MPTCP_TCPINFO). See Reader.TCPInfo.
func TCPInfo(c syscall.Conn) ([]SubflowTCPInfo, error) { return pooled(c, (*Reader).TCPInfo) }

// SubflowAddrs returns every subflow's addresses (MPTCP_SUBFLOW_ADDRS). See Reader.SubflowAddrs.
func SubflowAddrs(c syscall.Conn) ([]SubflowAddr, error) { return pooled(c, (*Reader).SubflowAddrs) }

// FullInfo returns connection info and every subflow in one call (MPTCP_FULL_INFO, falling back to
// the separate calls before 6.5). See Reader.FullInfo.
func FullInfo(c syscall.Conn) (*Full, error) { return pooled(c, (*Reader).FullInfo) }

// SocketTCPInfo returns getsockopt(SOL_TCP, TCP_INFO) of the socket itself: on a connection that
// fell back to TCP it is the one remaining subflow's tcp_info (the kernel passes the option
// through), on an MPTCP connection the first subflow's, on a plain TCP socket its own.
func SocketTCPInfo(c syscall.Conn) (*SubflowTCPInfo, error) {
	var t *SubflowTCPInfo
	err := control(c, func(fd int) error {
		buf := make([]byte, 2*int(kernelTCPInfoSize.Load()))
		n, err := getsockopt(fd, unix.SOL_TCP, unix.TCP_INFO, buf)
		if err != nil {
			return fmt.Errorf("getsockopt TCP_INFO: %w", err)
		}
		t = &SubflowTCPInfo{}
		t.decode(buf[:n])
		t.Raw = buf[:n:n]
		return nil
	})
	return t, err
}
