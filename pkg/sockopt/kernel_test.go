package sockopt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// TestKernel runs every check against real MPTCP connections between two network namespaces,
// with 1, 2 and 4 subflows, over IPv4 and IPv6.
func TestKernel(t *testing.T) {
	tcpInfoSize := int(kernelStruct(t, "tcp_info").Size)
	addrsSize := int(kernelStruct(t, "mptcp_subflow_addrs").Size)
	for _, v6 := range []bool{false, true} {
		for _, n := range []int{1, 2, 4} {
			t.Run(fmt.Sprintf("%s/%dsubflows", family(v6), n), func(t *testing.T) {
				p := newPair(t, n, v6)
				for _, o := range []struct {
					opt  sockopt.Option
					size int
				}{{sockopt.OptTCPInfo, tcpInfoSize}, {sockopt.OptSubflowAddrs, addrsSize}} {
					t.Run(o.opt.String(), func(t *testing.T) {
						t.Run("EINVAL", func(t *testing.T) { testEINVAL(t, p.client, o.opt) })
						t.Run("Exchange", func(t *testing.T) { testExchange(t, p.client, o.opt, o.size, n) })
						t.Run("LargerHeader", func(t *testing.T) { testLargerHeader(t, p.client, o.opt, o.size, n) })
						t.Run("SmallSizeUser", func(t *testing.T) { testSmallSizeUser(t, p.client, o.opt, o.size, n) })
						t.Run("LargeSizeUser", func(t *testing.T) { testLargeSizeUser(t, p.client, o.opt, o.size, n) })
						t.Run("ShortBuffer", func(t *testing.T) { testShortBuffer(t, p.client, o.opt, o.size, n) })
					})
				}
				t.Run("MPTCPInfoLength", func(t *testing.T) { testInfoLength(t, p.client) })
				t.Run("Retry", func(t *testing.T) { testRetry(t, p, n) })
				t.Run("FullInfoProtocol", func(t *testing.T) { testFullInfoProtocol(t, p.client, n) })
				t.Run("Values", func(t *testing.T) { testValues(t, p, n) })
				t.Run("Addrs", func(t *testing.T) { testAddrs(t, p, n) })
				t.Run("Token", func(t *testing.T) { testToken(t, p) })
				t.Run("FullInfoAgrees", func(t *testing.T) { testFullInfoAgrees(t, p) })
				t.Run("FD", func(t *testing.T) { testFD(t, p) })
			})
		}
	}
}

// call lays out a header in a buffer of optlen bytes filled with 0xAA, makes one getsockopt and
// returns the buffer and the returned optlen.
func call(t *testing.T, c syscall.Conn, opt sockopt.Option, h sockopt.SubflowData, optlen int) ([]byte, int, error) {
	t.Helper()
	buf := bytes.Repeat([]byte{0xAA}, optlen)
	if optlen >= sockopt.SubflowDataLen {
		h.Put(buf)
	}
	n, err := sockopt.Raw(c, opt, buf)
	return buf, n, err
}

func untouched(b []byte) bool { return len(bytes.Trim(b, "\xAA")) == 0 }

func testEINVAL(t *testing.T, c syscall.Conn, opt sockopt.Option) {
	const room = 16 + 4*1024
	for _, tc := range []struct {
		name   string
		h      sockopt.SubflowData
		optlen int
	}{
		{"optlen 0", sockopt.SubflowData{}, 0},
		{"optlen 15", sockopt.SubflowData{}, 15},
		{"size_subflow_data 0", sockopt.SubflowData{SizeSubflowData: 0, SizeUser: 8}, room},
		{"size_subflow_data 15", sockopt.SubflowData{SizeSubflowData: 15, SizeUser: 8}, room},
		{"size_subflow_data > optlen", sockopt.SubflowData{SizeSubflowData: 33, SizeUser: 8}, 32},
		{"num_subflows 1", sockopt.SubflowData{SizeSubflowData: 16, NumSubflows: 1, SizeUser: 8}, room},
		{"size_kernel 1", sockopt.SubflowData{SizeSubflowData: 16, SizeKernel: 1, SizeUser: 8}, room},
		{"size_user > INT_MAX", sockopt.SubflowData{SizeSubflowData: 16, SizeUser: 1 << 31}, room},
		{"size_subflow_data > INT_MAX", sockopt.SubflowData{SizeSubflowData: 1 << 31, SizeUser: 8}, room},
	} {
		buf, _, err := call(t, c, opt, tc.h, tc.optlen)
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("%s: err %v, want EINVAL", tc.name, err)
		}
		if len(buf) > 16 && !untouched(buf[16:]) {
			t.Errorf("%s: kernel wrote after the header despite EINVAL", tc.name)
		}
	}
}

// testExchange: the plain exchange. The kernel reports its element size (the BTF size), clamps
// size_user to it, counts every subflow and returns 16 + copied bytes.
func testExchange(t *testing.T, c syscall.Conn, opt sockopt.Option, size, n int) {
	optlen := 16 + (n+1)*size
	buf, got, err := call(t, c, opt, sockopt.SubflowData{SizeSubflowData: 16, SizeUser: uint32(size)}, optlen)
	if err != nil {
		t.Fatal(err)
	}
	h := sockopt.ParseSubflowData(buf)
	want := sockopt.SubflowData{SizeSubflowData: 16, NumSubflows: uint32(n), SizeKernel: uint32(size), SizeUser: uint32(size)}
	if h != want {
		t.Errorf("header %+v, want %+v", h, want)
	}
	if got != 16+n*size {
		t.Errorf("optlen %d, want %d", got, 16+n*size)
	}
	if !untouched(buf[16+n*size:]) {
		t.Error("kernel wrote past the last element")
	}
	checkElements(t, opt, buf[16:16+n*size], size, n)
}

// checkElements checks that each element begins as a live subflow's does: TCP_ESTABLISHED for a
// tcp_info, the connection's address family for an address pair.
func checkElements(t *testing.T, opt sockopt.Option, elems []byte, stride, n int) {
	t.Helper()
	for i := range n {
		e := elems[i*stride:]
		switch opt {
		case sockopt.OptTCPInfo:
			if e[0] != 1 {
				t.Errorf("element %d: tcpi_state %d, want 1 (ESTABLISHED)", i, e[0])
			}
		case sockopt.OptSubflowAddrs:
			if f := binary.NativeEndian.Uint16(e); f != unix.AF_INET && f != unix.AF_INET6 {
				t.Errorf("element %d: family %d", i, f)
			}
		}
	}
}

// testLargerHeader: a caller with a 24-byte header. Elements land after it; the kernel writes back
// only the 16 bytes it knows of the header, leaves size_subflow_data as the caller set it, and
// returns size_subflow_data + copied.
func testLargerHeader(t *testing.T, c syscall.Conn, opt sockopt.Option, size, n int) {
	const hdr = 24
	optlen := hdr + n*size
	buf, got, err := call(t, c, opt, sockopt.SubflowData{SizeSubflowData: hdr, SizeUser: uint32(size)}, optlen)
	if err != nil {
		t.Fatal(err)
	}
	h := sockopt.ParseSubflowData(buf)
	if h.SizeSubflowData != hdr || h.NumSubflows != uint32(n) || h.SizeUser != uint32(size) {
		t.Errorf("header %+v", h)
	}
	if !untouched(buf[16:hdr]) {
		t.Errorf("kernel wrote into the caller's header extension: % x", buf[16:hdr])
	}
	if got != optlen {
		t.Errorf("optlen %d, want %d", got, optlen)
	}
	checkElements(t, opt, buf[hdr:], size, n)

	// With no room for an element the returned optlen is min(size_subflow_data, 16).
	_, got, err = call(t, c, opt, sockopt.SubflowData{SizeSubflowData: hdr, SizeUser: uint32(size)}, hdr)
	if err != nil {
		t.Fatal(err)
	}
	if got != 16 {
		t.Errorf("no room: optlen %d, want 16", got)
	}
}

// testSmallSizeUser: size_user smaller than the kernel's element: exactly that many bytes per
// element, packed at that stride, nothing beyond.
func testSmallSizeUser(t *testing.T, c syscall.Conn, opt sockopt.Option, size, n int) {
	for _, su := range []int{0, 4, 8} {
		optlen := 16 + n*su + 64
		buf, got, err := call(t, c, opt, sockopt.SubflowData{SizeSubflowData: 16, SizeUser: uint32(su)}, optlen)
		if err != nil {
			t.Fatal(err)
		}
		h := sockopt.ParseSubflowData(buf)
		want := sockopt.SubflowData{SizeSubflowData: 16, NumSubflows: uint32(n), SizeKernel: uint32(size), SizeUser: uint32(su)}
		if h != want {
			t.Errorf("size_user %d: header %+v, want %+v", su, h, want)
		}
		wantLen := 16 + n*su // size_user 0 copies nothing: the header alone
		if got != wantLen {
			t.Errorf("size_user %d: optlen %d, want %d", su, got, wantLen)
		}
		if !untouched(buf[16+n*su:]) {
			t.Errorf("size_user %d: kernel wrote past n*size_user", su)
		}
		if su > 0 {
			checkElements(t, opt, buf[16:], su, n)
		}
	}
}

// testLargeSizeUser: size_user larger than the kernel's element is clamped to it, and elements are
// packed at the kernel's size.
func testLargeSizeUser(t *testing.T, c syscall.Conn, opt sockopt.Option, size, n int) {
	su := size + 64
	buf, got, err := call(t, c, opt, sockopt.SubflowData{SizeSubflowData: 16, SizeUser: uint32(su)}, 16+n*su)
	if err != nil {
		t.Fatal(err)
	}
	if h := sockopt.ParseSubflowData(buf); h.SizeUser != uint32(size) || h.SizeKernel != uint32(size) {
		t.Errorf("header %+v, want size_user and size_kernel %d", h, size)
	}
	if got != 16+n*size {
		t.Errorf("optlen %d, want %d", got, 16+n*size)
	}
	if !untouched(buf[16+n*size:]) {
		t.Error("kernel wrote past n*size_kernel")
	}
	checkElements(t, opt, buf[16:], size, n)
}

// testShortBuffer: room for fewer elements than subflows: the true count comes back, only whole
// elements are copied.
func testShortBuffer(t *testing.T, c syscall.Conn, opt sockopt.Option, size, n int) {
	for fit := range n {
		optlen := 16 + fit*size + size/2 // room for fit and a half elements
		buf, got, err := call(t, c, opt, sockopt.SubflowData{SizeSubflowData: 16, SizeUser: uint32(size)}, optlen)
		if err != nil {
			t.Fatal(err)
		}
		if h := sockopt.ParseSubflowData(buf); h.NumSubflows != uint32(n) {
			t.Errorf("room for %d.5: num_subflows %d, want %d", fit, h.NumSubflows, n)
		}
		if got != 16+fit*size {
			t.Errorf("room for %d.5: optlen %d, want %d", fit, got, 16+fit*size)
		}
		if !untouched(buf[16+fit*size:]) {
			t.Errorf("room for %d.5: kernel wrote part of an element", fit)
		}
	}
}

// testInfoLength: MPTCP_INFO returns min(optlen, sizeof(struct mptcp_info)) bytes and writes
// nothing beyond; optlen 0 succeeds with nothing written (the fallback probe).
func testInfoLength(t *testing.T, c syscall.Conn) {
	size := int(kernelStruct(t, "mptcp_info").Size)
	for _, optlen := range []int{0, 1, 40, size, size + 100} {
		buf := bytes.Repeat([]byte{0xAA}, optlen)
		got, err := sockopt.Raw(c, sockopt.OptInfo, buf)
		if err != nil {
			t.Fatalf("optlen %d: %v", optlen, err)
		}
		if want := min(optlen, size); got != want || !untouched(buf[got:]) {
			t.Errorf("optlen %d: returned %d, want %d (untouched after: %v)", optlen, got, want, untouched(buf[got:]))
		}
	}
}

// testRetry: a reader with room for one subflow retries once and gets them all.
func testRetry(t *testing.T, p *pair, n int) {
	want := 1
	if n > 1 {
		want = 2
	}
	for _, tc := range []struct {
		name string
		read func(r *sockopt.Reader) (int, error)
	}{
		{"TCPInfo", func(r *sockopt.Reader) (int, error) { v, err := r.TCPInfo(p.client); return len(v), err }},
		{"SubflowAddrs", func(r *sockopt.Reader) (int, error) { v, err := r.SubflowAddrs(p.client); return len(v), err }},
		{"FullInfo", func(r *sockopt.Reader) (int, error) {
			v, err := r.FullInfo(p.client)
			if err != nil {
				return 0, err
			}
			return len(v.Subflows), nil
		}},
	} {
		r := &sockopt.Reader{Room: 1}
		got, err := tc.read(r)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.name == "FullInfo" && !kernelHasFullInfo(t) {
			// The separate calls' fallback: each call retries on its own, and LastAttempts is
			// its last call's.
			if got != n {
				t.Errorf("FullInfo (separate calls) with room for 1: %d subflows, want %d", got, n)
			}
			continue
		}
		if got != n || r.LastAttempts != want {
			t.Errorf("%s with room for 1: %d subflows in %d attempts, want %d in %d", tc.name, got, r.LastAttempts, n, want)
		}
		if got, err = tc.read(r); err != nil || r.LastAttempts != 1 {
			t.Errorf("%s again: %d subflows in %d attempts (%v), want 1 attempt", tc.name, got, r.LastAttempts, err)
		}
	}
	// A bound of one attempt that is not enough is an error, not a silent short answer.
	if n > 1 {
		r := &sockopt.Reader{Room: 1, Attempts: 1}
		if _, err := r.TCPInfo(p.client); !errors.Is(err, sockopt.ErrUnsettled) {
			t.Errorf("one attempt, room for 1 of %d: err %v, want ErrUnsettled", n, err)
		}
	}
}

// fullCall makes one raw MPTCP_FULL_INFO exchange with arrays of room elements of the given sizes.
func fullCall(t *testing.T, c syscall.Conn, h sockopt.FullInfoHeader, optlen, room, sfSize, tcpSize int) (buf, sf, tcp []byte, n int, err error) {
	t.Helper()
	buf = bytes.Repeat([]byte{0xAA}, optlen)
	sf = bytes.Repeat([]byte{0xAA}, room*sfSize+64)
	tcp = bytes.Repeat([]byte{0xAA}, room*tcpSize+64)
	var pin runtime.Pinner
	defer pin.Unpin()
	pin.Pin(&sf[0])
	pin.Pin(&tcp[0])
	h.SubflowInfo = uint64(uintptr(unsafe.Pointer(&sf[0])))
	h.TCPInfo = uint64(uintptr(unsafe.Pointer(&tcp[0])))
	if optlen >= sockopt.FullInfoHeaderLen {
		h.Put(buf)
	}
	n, err = sockopt.Raw(c, sockopt.OptFullInfo, buf)
	return
}

func testFullInfoProtocol(t *testing.T, c syscall.Conn, n int) {
	if !kernelHasFullInfo(t) {
		// Before 6.5 the option is unknown: EOPNOTSUPP, while MPTCP_INFO's probe succeeds on
		// the same socket (which is how Reader.FullInfo tells this from a fallen-back one).
		buf := bytes.Repeat([]byte{0xAA}, 40+1024)
		if _, err := sockopt.Raw(c, sockopt.OptFullInfo, buf); !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("MPTCP_FULL_INFO on a kernel without it: err %v, want EOPNOTSUPP", err)
		}
		if _, err := sockopt.Raw(c, sockopt.OptInfo, nil); err != nil {
			t.Errorf("MPTCP_INFO probe: %v", err)
		}
		return
	}
	tcpSize := int(kernelStruct(t, "tcp_info").Size)
	sfSize := int(kernelStruct(t, "mptcp_subflow_info").Size)
	infoSize := int(kernelStruct(t, "mptcp_info").Size)
	hdrSize := int(kernelStruct(t, "mptcp_full_info").Size) - infoSize
	if hdrSize != sockopt.FullInfoHeaderLen {
		t.Fatalf("kernel mptcp_full_info header is %d bytes, package assumes %d", hdrSize, sockopt.FullInfoHeaderLen)
	}
	full := sockopt.FullInfoHeader{SizeTCPInfoUser: uint32(tcpSize), SizeSfInfoUser: uint32(sfSize), SizeArraysUser: uint32(n)}
	for _, tc := range []struct {
		name   string
		h      sockopt.FullInfoHeader
		optlen int
	}{
		{"optlen 39", full, 39},
		{"size_tcpinfo_kernel 1", withField(full, func(h *sockopt.FullInfoHeader) { h.SizeTCPInfoKernel = 1 }), 40 + infoSize},
		{"size_sfinfo_kernel 1", withField(full, func(h *sockopt.FullInfoHeader) { h.SizeSfInfoKernel = 1 }), 40 + infoSize},
		{"num_subflows 1", withField(full, func(h *sockopt.FullInfoHeader) { h.NumSubflows = 1 }), 40 + infoSize},
		{"size_tcpinfo_user > INT_MAX", withField(full, func(h *sockopt.FullInfoHeader) { h.SizeTCPInfoUser = 1 << 31 }), 40 + infoSize},
	} {
		if _, _, _, _, err := fullCall(t, c, tc.h, tc.optlen, n, sfSize, tcpSize); !errors.Is(err, unix.EINVAL) {
			t.Errorf("%s: err %v, want EINVAL", tc.name, err)
		}
	}

	// Whole exchange, user sizes larger than the kernel's: clamped; the returned length is the
	// header plus the kernel's mptcp_info.
	big := withField(full, func(h *sockopt.FullInfoHeader) { h.SizeTCPInfoUser += 64; h.SizeSfInfoUser += 64 })
	buf, sf, tcp, got, err := fullCall(t, c, big, 40+infoSize+64, n, sfSize+64, tcpSize+64)
	if err != nil {
		t.Fatal(err)
	}
	h := sockopt.ParseFullInfoHeader(buf)
	if h.SizeTCPInfoKernel != uint32(tcpSize) || h.SizeTCPInfoUser != uint32(tcpSize) ||
		h.SizeSfInfoKernel != uint32(sfSize) || h.SizeSfInfoUser != uint32(sfSize) || h.NumSubflows != uint32(n) {
		t.Errorf("header %+v: want sizes clamped to tcp_info %d, subflow_info %d, %d subflows", h, tcpSize, sfSize, n)
	}
	if got != 40+infoSize {
		t.Errorf("optlen %d, want %d", got, 40+infoSize)
	}
	if !untouched(buf[40+infoSize:]) || !untouched(sf[n*sfSize:]) || !untouched(tcp[n*tcpSize:]) {
		t.Error("kernel wrote past the mptcp_info or the arrays")
	}
	for i := range n {
		if tcp[i*tcpSize] != 1 {
			t.Errorf("subflow %d: tcpi_state %d", i, tcp[i*tcpSize])
		}
	}

	// optlen 40: the header only (num_subflows is still the true count), no mptcp_info.
	buf, _, _, got, err = fullCall(t, c, full, 40, n, sfSize, tcpSize)
	if err != nil || got != 40 || sockopt.ParseFullInfoHeader(buf).NumSubflows != uint32(n) {
		t.Errorf("optlen 40: optlen %d, header %+v, err %v", got, sockopt.ParseFullInfoHeader(buf), err)
	}

	// Room for one subflow: true count, one element each, nothing beyond.
	one := withField(full, func(h *sockopt.FullInfoHeader) { h.SizeArraysUser = 1 })
	buf, sf, tcp, _, err = fullCall(t, c, one, 40+infoSize, 1, sfSize, tcpSize)
	if err != nil {
		t.Fatal(err)
	}
	if h := sockopt.ParseFullInfoHeader(buf); h.NumSubflows != uint32(n) {
		t.Errorf("room for 1: num_subflows %d, want %d", h.NumSubflows, n)
	}
	if !untouched(sf[sfSize:]) || !untouched(tcp[tcpSize:]) {
		t.Error("room for 1: kernel wrote a second element")
	}

	// size_sfinfo_user 4 and size_tcpinfo_user 0: ids only, no addresses, no tcp_info.
	ids := withField(full, func(h *sockopt.FullInfoHeader) { h.SizeSfInfoUser = 4; h.SizeTCPInfoUser = 0 })
	_, sf, tcp, _, err = fullCall(t, c, ids, 40+infoSize, n, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !untouched(sf[n*4:]) || !untouched(tcp) {
		t.Error("ids only: kernel wrote addresses or tcp_info")
	}
	for i := range n {
		if id := binary.NativeEndian.Uint32(sf[i*4:]); id == 0 {
			t.Errorf("subflow %d: id 0", i)
		}
	}
}

func withField(h sockopt.FullInfoHeader, f func(*sockopt.FullInfoHeader)) sockopt.FullInfoHeader {
	f(&h)
	return h
}

// quiet polls until both ends' data-level counters stop moving and everything sent is acked.
func quiet(t *testing.T, p *pair) (cli, srv *sockopt.MPTCPInfo) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var err error
		if cli, err = sockopt.Info(p.client); err != nil {
			t.Fatal(err)
		}
		if srv, err = sockopt.Info(p.server); err != nil {
			t.Fatal(err)
		}
		// Everything written acknowledged and received, by data sequence numbers (every kernel)
		// and by the byte counters (6.5+; zero before).
		if cli.SndUna == cli.WriteSeq && srv.SndUna == srv.WriteSeq && cli.RcvNxt == srv.WriteSeq && srv.RcvNxt == cli.WriteSeq &&
			cli.BytesAcked == cli.BytesSent && srv.BytesAcked == srv.BytesSent &&
			cli.BytesReceived == srv.BytesSent && srv.BytesReceived == cli.BytesSent {
			return cli, srv
		}
	}
	t.Fatalf("connection not quiet: client %+v server %+v", cli, srv)
	return nil, nil
}

// testValues: after a transfer both ways, once the connection is quiet, the data-level counters
// equal what the test wrote and read, and the subflows account for every byte. The subflows carry
// the application's bytes plus the data-level retransmissions (mptcpi_bytes_retrans: on a veth lab
// the kernel does reinject, even with one subflow); each subflow's unique bytes sent
// (tcpi_bytes_sent - tcpi_bytes_retrans) are what the peer's subflow received.
func testValues(t *testing.T, p *pair, n int) {
	c0, s0 := quiet(t, p)
	const up, down = 3<<20 + 123, 1<<20 + 7
	p.exchange(t, up, down)
	c1, s1 := quiet(t, p)
	// The data sequence numbers, on every kernel: each end's next sequence number to write (and,
	// once quiet, its oldest unacknowledged one) moved by what it sent; the next one it expects by
	// what it received.
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"client mptcpi_write_seq", c1.WriteSeq - c0.WriteSeq, up},
		{"client mptcpi_snd_una", c1.SndUna - c0.SndUna, up},
		{"client mptcpi_rcv_nxt", c1.RcvNxt - c0.RcvNxt, down},
		{"server mptcpi_write_seq", s1.WriteSeq - s0.WriteSeq, down},
		{"server mptcpi_snd_una", s1.SndUna - s0.SndUna, down},
		{"server mptcpi_rcv_nxt", s1.RcvNxt - s0.RcvNxt, up},
	} {
		if tc.got != tc.want {
			t.Errorf("%s moved by %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	// What the kernel's struct lacks (the data-level byte counters before 6.5) is reported missing
	// and left zero, never invented.
	if got, want := c1.Missing(), kernelLacks(t, "mptcp_info", sockopt.MPTCPInfo{}); !slices.Equal(got, want) {
		t.Errorf("mptcp_info: %d bytes returned (the kernel's struct is %d), missing %v, want %v",
			c1.Len, kernelStruct(t, "mptcp_info").Size, got, want)
	}
	if c1.Len != int(kernelStruct(t, "mptcp_info").Size) {
		t.Errorf("mptcp_info: %d bytes returned, the kernel's struct is %d", c1.Len, kernelStruct(t, "mptcp_info").Size)
	}
	if !c1.Has("mptcpi_bytes_sent") {
		if c1.BytesSent|c1.BytesAcked|c1.BytesReceived|c1.BytesRetrans|s1.BytesSent|s1.BytesReceived != 0 {
			t.Errorf("kernel without mptcpi_bytes_*: decoded non-zero byte counters %+v", c1)
		}
		if c1.Subflows != uint8(n-1) {
			t.Errorf("client mptcpi_subflows %d, want %d", c1.Subflows, n-1)
		}
		if c1.Flags&sockopt.FlagFallback != 0 || c1.Flags&sockopt.FlagRemoteKeyReceived == 0 {
			t.Errorf("client flags %#x: want remote key received, no fallback", c1.Flags)
		}
		return
	}
	for _, tc := range []struct {
		name      string
		got, want uint64
	}{
		{"client mptcpi_bytes_sent", c1.BytesSent - c0.BytesSent, up},
		{"client mptcpi_bytes_acked", c1.BytesAcked - c0.BytesAcked, up},
		{"client mptcpi_bytes_received", c1.BytesReceived - c0.BytesReceived, down},
		{"server mptcpi_bytes_sent", s1.BytesSent - s0.BytesSent, down},
		{"server mptcpi_bytes_acked", s1.BytesAcked - s0.BytesAcked, down},
		{"server mptcpi_bytes_received", s1.BytesReceived - s0.BytesReceived, up},
		// Totals since the connection began: the one handshake byte each way, then the transfer.
		{"client mptcpi_bytes_sent total", c1.BytesSent, up + 1},
		{"server mptcpi_bytes_received total", s1.BytesReceived, up + 1},
		{"client mptcpi_bytes_received total", c1.BytesReceived, down + 1},
		{"server mptcpi_bytes_sent total", s1.BytesSent, down + 1},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if c1.Subflows != uint8(n-1) || c1.Has("mptcpi_subflows_total") && c1.SubflowsTotal != uint8(n) {
		t.Errorf("client mptcpi_subflows %d subflows_total %d, want %d and %d", c1.Subflows, c1.SubflowsTotal, n-1, n)
	}
	if c1.Flags&sockopt.FlagFallback != 0 || c1.Flags&sockopt.FlagRemoteKeyReceived == 0 {
		t.Errorf("client flags %#x: want remote key received, no fallback", c1.Flags)
	}

	// Subflow level, polled: reinjected copies may still be in flight when the data level is quiet.
	var problems []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		problems = subflowAccounting(t, p, n)
		if len(problems) == 0 {
			return
		}
	}
	for _, pr := range problems {
		t.Error(pr)
	}
}

func subflowAccounting(t *testing.T, p *pair, n int) []string {
	cf, err := sockopt.FullInfo(p.client)
	if err != nil {
		t.Fatal(err)
	}
	sf, err := sockopt.FullInfo(p.server)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	check := func(name string, got, want uint64) {
		if got != want {
			out = append(out, fmt.Sprintf("%s = %d, want %d", name, got, want))
		}
	}
	// Pair the subflows of both ends by their addresses (the server sees IPv4 peers v4-mapped).
	peer := map[string]*sockopt.Subflow{}
	for i := range sf.Subflows {
		s := &sf.Subflows[i]
		peer[unmap(s.Addr.Remote).String()+" "+unmap(s.Addr.Local).String()] = s
	}
	if len(cf.Subflows) != n || len(sf.Subflows) != n {
		return []string{fmt.Sprintf("%d client and %d server subflows, want %d", len(cf.Subflows), len(sf.Subflows), n)}
	}
	var cUnique, sUnique, cRecv, sRecv uint64
	for _, c := range cf.Subflows {
		key := unmap(c.Addr.Local).String() + " " + unmap(c.Addr.Remote).String()
		s, ok := peer[key]
		if !ok {
			return []string{"client subflow " + key + " has no server subflow"}
		}
		if got, want := c.TCP.Missing(), kernelLacks(t, "tcp_info", sockopt.SubflowTCPInfo{}); !slices.Equal(got, want) {
			out = append(out, fmt.Sprintf("tcp_info: %d bytes returned, missing %v, want %v", c.TCP.Len, got, want))
		}
		check(key+" client tcpi_bytes_sent - tcpi_bytes_retrans vs server tcpi_bytes_received",
			c.TCP.BytesSent-c.TCP.BytesRetrans, s.TCP.BytesReceived)
		check(key+" server tcpi_bytes_sent - tcpi_bytes_retrans vs client tcpi_bytes_received",
			s.TCP.BytesSent-s.TCP.BytesRetrans, c.TCP.BytesReceived)
		// tcpi_bytes_acked counts the SYN on the connecting side (the client), not on the server.
		check(key+" client tcpi_bytes_acked vs its unique bytes sent + 1 (the SYN)",
			c.TCP.BytesAcked, c.TCP.BytesSent-c.TCP.BytesRetrans+1)
		check(key+" server tcpi_bytes_acked vs its unique bytes sent",
			s.TCP.BytesAcked, s.TCP.BytesSent-s.TCP.BytesRetrans)
		cUnique += c.TCP.BytesSent - c.TCP.BytesRetrans
		sUnique += s.TCP.BytesSent - s.TCP.BytesRetrans
		cRecv += c.TCP.BytesReceived
		sRecv += s.TCP.BytesReceived
	}
	// Every byte a sender's subflows carried, each subflow's own retransmissions aside, is what the
	// peer's subflows received; it covers the application's bytes and the data-level
	// retransmissions, and may exceed them: bytes re-sent while the connection recovers after a
	// failover count as neither (net/mptcp/protocol.c, mptcp_update_post_push).
	check("server Σ tcpi_bytes_received vs client Σ(tcpi_bytes_sent - tcpi_bytes_retrans)", sRecv, cUnique)
	check("client Σ tcpi_bytes_received vs server Σ(tcpi_bytes_sent - tcpi_bytes_retrans)", cRecv, sUnique)
	for _, e := range []struct {
		name   string
		unique uint64
		info   *sockopt.MPTCPInfo
	}{{"client", cUnique, &cf.Info}, {"server", sUnique, &sf.Info}} {
		if !e.info.Has("mptcpi_bytes_sent") {
			continue // before 6.5: no data-level byte counters to compare with
		}
		if min := e.info.BytesSent + e.info.BytesRetrans; e.unique < min {
			out = append(out, fmt.Sprintf("%s Σ(tcpi_bytes_sent - tcpi_bytes_retrans) = %d < mptcpi_bytes_sent + mptcpi_bytes_retrans = %d",
				e.name, e.unique, min))
		} else if e.unique > min {
			t.Logf("%s subflows carried %d bytes beyond mptcpi_bytes_sent + mptcpi_bytes_retrans (re-sent in recovery)", e.name, e.unique-min)
		}
	}
	return out
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// ssSubflows lists the MPTCP subflows `ss -ti` shows in ns as "local peer" pairs (scope suffixes
// such as %cli1 removed).
func ssSubflows(t *testing.T, p *pair, ns string) []string {
	t.Helper()
	out, err := p.lab.Exec(ns, "ss", "-Htni")
	if err != nil {
		t.Fatal(err)
	}
	var pairs []string
	var cur string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' && len(f) >= 5 {
			cur = stripScope(f[3]) + " " + stripScope(f[4])
			continue
		}
		if slices.Contains(f, "tcp-ulp-mptcp") {
			pairs = append(pairs, cur)
		}
	}
	slices.Sort(pairs)
	return pairs
}

func stripScope(s string) string {
	if i := strings.LastIndex(s, "%"); i >= 0 {
		if j := strings.LastIndex(s, ":"); j > i {
			return s[:i] + s[j:]
		}
	}
	return s
}

// testAddrs: the subflow addresses equal what `ss -ti` shows for the subflow sockets of each end,
// the initial subflow's equal getsockname/getpeername of the MPTCP socket, and the server's are the
// client's reversed.
func testAddrs(t *testing.T, p *pair, n int) {
	ca, err := sockopt.SubflowAddrs(p.client)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := sockopt.SubflowAddrs(p.server)
	if err != nil {
		t.Fatal(err)
	}
	if len(ca) != n || len(sa) != n {
		t.Fatalf("%d client and %d server subflows, want %d", len(ca), len(sa), n)
	}
	var cli, srv, rev, unmapped []string
	for i := range ca {
		cli = append(cli, ca[i].Local.String()+" "+ca[i].Remote.String())
		rev = append(rev, ca[i].Remote.String()+" "+ca[i].Local.String())
		srv = append(srv, sa[i].Local.String()+" "+sa[i].Remote.String())
		unmapped = append(unmapped, unmap(sa[i].Local).String()+" "+unmap(sa[i].Remote).String())
	}
	slices.Sort(cli)
	slices.Sort(srv)
	slices.Sort(rev)
	slices.Sort(unmapped)
	if ss := ssSubflows(t, p, p.lab.Client); !slices.Equal(cli, ss) {
		t.Errorf("client subflows %v, ss -ti shows %v", cli, ss)
	}
	if ss := ssSubflows(t, p, p.lab.Server); !slices.Equal(srv, ss) {
		t.Errorf("server subflows %v, ss -ti shows %v", srv, ss)
	}
	// The server's dual-stack listener sees IPv4 peers as v4-mapped IPv6 addresses, as ss does.
	if !slices.Equal(unmapped, rev) {
		t.Errorf("server subflows %v are not the client's reversed %v", unmapped, rev)
	}
	first := netip.MustParseAddrPort(p.client.LocalAddr().String())
	peer := netip.MustParseAddrPort(p.client.RemoteAddr().String())
	if !slices.ContainsFunc(ca, func(a sockopt.SubflowAddr) bool { return a.Local == first && a.Remote == peer }) {
		t.Errorf("no subflow has the socket's own addresses %v → %v: %+v", first, peer, ca)
	}
}

// testToken: the token and the subflow count equal what `ss -M` shows.
func testToken(t *testing.T, p *pair) {
	for _, end := range []struct {
		ns string
		c  *net.TCPConn
	}{{p.lab.Client, p.client}, {p.lab.Server, p.server}} {
		m, err := sockopt.Info(end.c)
		if err != nil {
			t.Fatal(err)
		}
		conns, err := p.lab.Subflows(end.ns)
		if err != nil {
			t.Fatal(err)
		}
		local := unmap(netip.MustParseAddrPort(end.c.LocalAddr().String()))
		i := slices.IndexFunc(conns, func(c lab.Conn) bool {
			a, err := netip.ParseAddrPort(stripScope(c.Local))
			return err == nil && unmap(a) == local && c.State == "ESTAB"
		})
		if i < 0 {
			t.Fatalf("%s: ss -M has no connection from %s: %+v", end.ns, local, conns)
		}
		if conns[i].Token != m.Token || conns[i].Subflows != int(m.Subflows) {
			t.Errorf("%s: token %08x subflows %d, ss -M shows %08x %d", end.ns, m.Token, m.Subflows, conns[i].Token, conns[i].Subflows)
		}
	}
}

// testFullInfoAgrees: FULL_INFO on a quiet connection says what TCPINFO + SUBFLOW_ADDRS say, and
// the separate-call path (kernels before 6.5) says the same without ids.
func testFullInfoAgrees(t *testing.T, p *pair) {
	quiet(t, p)
	f, err := sockopt.FullInfo(p.client)
	if err != nil {
		t.Fatal(err)
	}
	full := kernelHasFullInfo(t)
	if f.IDs != full {
		t.Errorf("FullInfo gave subflow ids %v on a kernel whose MPTCP_FULL_INFO exists: %v (the separate calls give none)", f.IDs, full)
	}
	sep, err := sockopt.WithoutFullInfo(&sockopt.Reader{}).FullInfo(p.client)
	if err != nil {
		t.Fatal(err)
	}
	ti, err := sockopt.TCPInfo(p.client)
	if err != nil {
		t.Fatal(err)
	}
	ad, err := sockopt.SubflowAddrs(p.client)
	if err != nil {
		t.Fatal(err)
	}
	m, err := sockopt.Info(p.client)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []*sockopt.Full{f, sep} {
		if g.Info.Token != m.Token || g.Info.BytesSent != m.BytesSent || g.Info.BytesReceived != m.BytesReceived || g.Info.Len != m.Len {
			t.Errorf("mptcp_info differs: full %+v, MPTCP_INFO %+v", g.Info, m)
		}
		if len(g.Subflows) != len(ti) || len(ti) != len(ad) {
			t.Fatalf("%d subflows, TCPINFO %d, SUBFLOW_ADDRS %d", len(g.Subflows), len(ti), len(ad))
		}
		for i, s := range g.Subflows {
			if s.Addr != ad[i] {
				t.Errorf("subflow %d: addresses %+v, SUBFLOW_ADDRS %+v", i, s.Addr, ad[i])
			}
			a, b := s.TCP, ti[i]
			if a.Len != b.Len || a.State != b.State || a.BytesSent != b.BytesSent || a.BytesReceived != b.BytesReceived ||
				a.BytesAcked != b.BytesAcked || a.SndMSS != b.SndMSS || a.DataSegsOut != b.DataSegsOut {
				t.Errorf("subflow %d: tcp_info differs: full %+v, TCPINFO %+v", i, a, b)
			}
		}
	}
	// The initial subflow is id 1 and the joins count up, in the kernel's list order (without
	// MPTCP_FULL_INFO there are no ids: all 0).
	for i, s := range f.Subflows {
		want := uint32(0)
		if full {
			want = uint32(i + 1)
		}
		if s.ID != want {
			t.Errorf("subflow %d has id %d, want %d", i, s.ID, want)
		}
	}
	if sep.IDs {
		t.Error("separate calls claim subflow ids")
	}
}

// testFD: the same answers through a raw descriptor (a dup of the connection's).
func testFD(t *testing.T, p *pair) {
	f, err := p.client.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a, err := sockopt.Info(sockopt.FD(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	b, err := sockopt.Info(p.client)
	if err != nil {
		t.Fatal(err)
	}
	if a.Token != b.Token {
		t.Errorf("token through the fd %08x, through the conn %08x", a.Token, b.Token)
	}
}

// kernelLacks lists, in layout order, the fields of v (a mirrored struct) that the running kernel's
// struct name (from its BTF) does not have: what a reader of the kernel's returned bytes must
// report missing. A field the kernel calls "reserved" at the same offset (mptcpi_endp_laminar_max
// on 6.10-6.17) is returned, as a zero.
func kernelLacks(t testing.TB, name string, v any) []string {
	t.Helper()
	has, reserved := map[string]bool{}, map[int]bool{}
	for _, m := range kernelStruct(t, name).Members {
		has[m.Name] = true
		if m.Name == "reserved" {
			reserved[int(m.Offset.Bytes())] = true
		}
	}
	layout := sockopt.Layout(v)
	var out []string
	for _, f := range sockopt.Names(v) {
		if !has[f] && !reserved[layout[f][0]] {
			out = append(out, f)
		}
	}
	return out
}
