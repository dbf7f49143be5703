package stats

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// record is the iterator's wire record (struct mx_subflow_rec).
type record = datapath.IterTcpMxSubflowRec

// RecordSize is the size of one iterator record in bytes.
const RecordSize = int(unsafe.Sizeof(record{}))

// Reader reads subflows with the iterator program, loaded once; it is safe for concurrent use.
// Close it to unload the program.
type Reader struct {
	coll *ebpf.Collection
	iter *link.Iter

	mu      sync.Mutex
	buf     []byte // read buffer, reused between reads under mu
	histDir string // pins of the subflow history (history.go); "" for none
}

// Probe checks that the kernel has what the iterator needs: BTF, MPTCP and the TCP socket
// iterator (5.9). The error is a *loader.FeatureError. (Loading also needs bpf_get_socket_cookie in
// tracing programs, 5.12; NewReader reports that one when the load fails on it.) NewReader probes
// only when loading fails; call Probe to check a kernel without loading anything.
func Probe() error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return &loader.FeatureError{Feature: "kernel BTF (CONFIG_DEBUG_INFO_BTF)", Kernel: "5.4", Err: err}
	}
	if _, err := spec.AnyTypeByName("mptcp_subflow_context"); err != nil {
		return &loader.FeatureError{Feature: "MPTCP (CONFIG_MPTCP)", Kernel: "5.6", Err: err}
	}
	var fn *btf.Func
	if err := spec.TypeByName("bpf_iter_tcp", &fn); err != nil {
		return &loader.FeatureError{Feature: "BPF iterators over TCP sockets (iter/tcp)", Kernel: "5.9", Err: err}
	}
	return nil
}

// NewReader loads the iterator program and attaches it as an iterator (not pinned: it goes with
// the process or Close). When the kernel refuses it, the error says which feature is missing
// (Probe) when that is the reason.
func NewReader() (*Reader, error) {
	r, err := newReader()
	if err != nil {
		// Probing parses the kernel's BTF once more: only worth it to explain a failure.
		if perr := Probe(); perr != nil {
			return nil, perr
		}
	}
	return r, err
}

func newReader() (*Reader, error) {
	spec, err := datapath.LoadIterTcp()
	if err != nil {
		return nil, fmt.Errorf("read embedded socket iterator object: %w", err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) && strings.Contains(fmt.Sprintf("%+v", ve), "bpf_get_socket_cookie") {
			return nil, &loader.FeatureError{Feature: "bpf_get_socket_cookie in BPF iterators", Kernel: "5.12", Err: err}
		}
		return nil, fmt.Errorf("load socket iterator: %w", err)
	}
	it, err := link.AttachIter(link.IterOptions{Program: coll.Programs[datapath.IterTcpProgMptcpxIterTcp]})
	if err != nil {
		coll.Close()
		return nil, fmt.Errorf("attach socket iterator: %w", err)
	}
	return &Reader{coll: coll, iter: it, histDir: defaultHistoryDir()}, nil
}

// Close detaches and unloads the iterator.
func (r *Reader) Close() error {
	err := r.iter.Close()
	r.coll.Close()
	return err
}

// Subflows returns every MPTCP subflow of network namespace ns ("" is the caller's), in the
// kernel's socket table order, followed by the subflows of ns that closed recently (Closed, with
// their final figures) when the subflow history is enabled (SetHistoryDir).
func (r *Reader) Subflows(ns string) ([]Subflow, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := r.read(ns)
	if err != nil {
		return nil, err
	}
	sfs, err := decode(b)
	if err != nil {
		return nil, err
	}
	return r.addHistory(ns, sfs)
}

// Connections returns every MPTCP connection of ns with its live subflows (Group).
func (r *Reader) Connections(ns string) ([]Connection, error) {
	sfs, err := r.Subflows(ns)
	if err != nil {
		return nil, err
	}
	return Group(sfs), nil
}

// read opens the iterator in ns (the kernel binds the walk to the opener's network namespace)
// and reads it to the end into r.buf.
func (r *Reader) read(ns string) ([]byte, error) {
	var rc io.ReadCloser
	err := netns.Do(ns, func() error {
		var err error
		rc, err = r.iter.Open()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open socket iterator in %s: %w", nsName(ns), err)
	}
	defer rc.Close()
	if cap(r.buf) == 0 {
		r.buf = make([]byte, 0, 64<<10)
	}
	b := r.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := rc.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF || (err == nil && n == 0) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read socket iterator in %s: %w", nsName(ns), err)
		}
	}
	r.buf = b
	return b, nil
}

func nsName(ns string) string {
	if ns == "" {
		return "the current network namespace"
	}
	return "network namespace " + ns
}

// decode converts the records to Subflows.
func decode(b []byte) ([]Subflow, error) {
	if len(b)%RecordSize != 0 {
		return nil, fmt.Errorf("socket iterator wrote %d bytes: not a whole number of %d-byte records", len(b), RecordSize)
	}
	out := make([]Subflow, len(b)/RecordSize)
	for i := range out {
		var rec record
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), RecordSize), b[i*RecordSize:])
		out[i] = fromRecord(&rec)
	}
	return out, nil
}

// Address families of the kernel's records.
const (
	afInet  = unix.AF_INET
	afInet6 = unix.AF_INET6
)

// fromRecord converts one wire record to the domain type.
func fromRecord(r *record) Subflow {
	s := Subflow{
		Token:         Token(r.Token),
		Cookie:        r.Cookie,
		ID:            r.SubflowId,
		LocalID:       r.LocalId,
		RemoteID:      r.RemoteId,
		Flags:         Flags(r.Flags),
		State:         State(r.State),
		ConnState:     State(r.ConnState),
		SRTT:          time.Duration(r.SrttUs) * time.Microsecond,
		RTTVar:        time.Duration(r.RttvarUs) * time.Microsecond,
		Cwnd:          r.SndCwnd,
		Ssthresh:      r.SndSsthresh,
		MSS:           r.SndMss,
		BytesSent:     r.BytesSent,
		BytesAcked:    r.BytesAcked,
		BytesReceived: r.BytesReceived,
		BytesRetrans:  r.BytesRetrans,
		TotalRetrans:  r.TotalRetrans,
		Retrans:       r.Retrans,
		Lost:          r.Lost,
		SegsIn:        r.SegsIn,
		SegsOut:       r.SegsOut,
		DataSegsIn:    r.DataSegsIn,
		DataSegsOut:   r.DataSegsOut,
		DeliveryRate:  r.DeliveryRate,
		PacingRate:    r.PacingRate,
	}
	if r.MinRttUs != ^uint32(0) { // no sample yet
		s.MinRTT = time.Duration(r.MinRttUs) * time.Microsecond
	}
	switch r.Family {
	case afInet:
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Saddr[:4])), r.Sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Daddr[:4])), r.Dport)
	case afInet6:
		s.Local = netip.AddrPortFrom(netip.AddrFrom16(r.Saddr), r.Sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16(r.Daddr), r.Dport)
	}
	return s
}
