package datapath

// Packet tests of the counting programs through BPF_PROG_TEST_RUN (root, real kernel): every frame
// of the table goes through the XDP program and both TC programs; the verdict must be pass, the
// packet must come out unchanged, and the counters must move by exactly the expected amount.

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

const (
	xdpPass    = 2          // XDP_PASS
	tcActUnspc = 0xffffffff // TC_ACT_UNSPEC (-1)
	dirIngress = DirIngress // MX_DIR_INGRESS
	dirEgress  = DirEgress  // MX_DIR_EGRESS
	ethHLen    = 14         // BPF_PROG_TEST_RUN refuses shorter frames
)

func TestMain(m *testing.M) {
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Fprintln(os.Stderr, "remove memlock rlimit:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// testProg is one loaded counting program with its own counters map.
type testProg struct {
	name     string
	prog     *ebpf.Program
	counters *ebpf.Map
	dir      uint32 // the counters key the program writes
	verdict  uint32 // what it must always return
	skb      bool   // a TC program (takes an __sk_buff context)
}

func loadProg(tb testing.TB, name string, load func() (*ebpf.CollectionSpec, error), progName string, dir, verdict uint32, skb bool) *testProg {
	tb.Helper()
	spec, err := load()
	if err != nil {
		tb.Fatalf("load %s spec: %v", name, err)
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			tb.Fatalf("load %s: %+v", name, ve)
		}
		tb.Fatalf("load %s: %v", name, err)
	}
	tb.Cleanup(func() { coll.Close() })
	p := &testProg{name: name, prog: coll.Programs[progName], counters: coll.Maps[XdpMapMptcpxCounters], dir: dir, verdict: verdict, skb: skb}
	if p.prog == nil || p.counters == nil {
		tb.Fatalf("%s: program %s or map mptcpx_counters missing", name, progName)
	}
	return p
}

func loadXDP(tb testing.TB) *testProg {
	return loadProg(tb, "xdp", LoadXdp, XdpProgMptcpxXdpIn, dirIngress, xdpPass, false)
}

func loadAll(tb testing.TB) []*testProg {
	return []*testProg{
		loadXDP(tb),
		loadProg(tb, "tc_ingress", LoadTcIngress, TcIngressProgMptcpxTcIn, dirIngress, tcActUnspc, true),
		loadProg(tb, "tc_egress", LoadTcEgress, TcEgressProgMptcpxTcOut, dirEgress, tcActUnspc, true),
	}
}

// readCounters sums one direction's per-CPU counters.
func readCounters(tb testing.TB, m *ebpf.Map, dir uint32) counts {
	tb.Helper()
	var perCPU []XdpMxCounters
	if err := m.Lookup(dir, &perCPU); err != nil {
		tb.Fatalf("lookup counters[%d]: %v", dir, err)
	}
	var c counts
	for _, v := range perCPU {
		for i := range c.Packets {
			c.Packets[i] += v.Packets[i]
		}
		for i := range c.Options {
			c.Options[i] += v.Options[i]
		}
	}
	return c
}

// skbCtx mirrors the leading fields of struct __sk_buff (include/uapi/linux/bpf.h) up to and
// including gso_segs, the last one these tests set; TestSkbCtxLayout checks it against the
// kernel's BTF. BPF_PROG_TEST_RUN takes a shorter context and zero-fills the rest.
type skbCtx struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTCI        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
	TCIndex        uint32
	CB             [5]uint32
	Hash           uint32
	TCClassid      uint32
	Data           uint32
	DataEnd        uint32
	NapiID         uint32
	Family         uint32
	RemoteIP4      uint32
	LocalIP4       uint32
	RemoteIP6      [4]uint32
	LocalIP6       [4]uint32
	RemotePort     uint32
	LocalPort      uint32
	DataMeta       uint32
	FlowKeys       uint64
	Tstamp         uint64
	WireLen        uint32
	GSOSegs        uint32
}

// run passes one frame through the program (as a GSO packet of gsoSegs segments for TC, when
// non-zero) and returns the change of the program's counters. It fails the test when the verdict
// is not pass, the frame changed, or the other direction's counters moved.
func (p *testProg) run(tb testing.TB, frame []byte, gsoSegs uint32) counts {
	tb.Helper()
	other := p.dir ^ 1
	before, beforeOther := readCounters(tb, p.counters, p.dir), readCounters(tb, p.counters, other)

	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Repeat: 1}
	if gsoSegs != 0 {
		opts.Context = skbCtx{GSOSegs: gsoSegs}
	}
	ret, err := p.prog.Run(opts)
	if err != nil {
		tb.Fatalf("%s: run: %v", p.name, err)
	}
	if ret != p.verdict {
		tb.Errorf("%s: verdict %#x, want %#x", p.name, ret, p.verdict)
	}
	if out := opts.DataOut; string(out) != string(frame) {
		tb.Errorf("%s: the packet changed\n%s", p.name, hexDiff(frame, out))
	}

	after, afterOther := readCounters(tb, p.counters, p.dir), readCounters(tb, p.counters, other)
	if d := afterOther.sub(beforeOther); d != (counts{}) {
		tb.Errorf("%s: counters of direction %d moved: %v", p.name, other, d)
	}
	return after.sub(before)
}

// hexDiff dumps two byte strings side by side, 16 bytes a line, marking the lines that differ.
func hexDiff(want, got []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "want %d bytes, got %d bytes\n", len(want), len(got))
	for off := 0; off < max(len(want), len(got)); off += 16 {
		w, g := window(want, off), window(got, off)
		mark := " "
		if string(w) != string(g) {
			mark = "!"
		}
		fmt.Fprintf(&b, "%s %04x  %-47s | %-47s\n", mark, off, spaced(w), spaced(g))
	}
	return b.String()
}

func window(b []byte, off int) []byte {
	if off >= len(b) {
		return nil
	}
	return b[off:min(off+16, len(b))]
}

func spaced(b []byte) string {
	h := hex.EncodeToString(b)
	var s strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			s.WriteByte(' ')
		}
		s.WriteString(h[i : i+2])
	}
	return s.String()
}

// checkCase compares counter deltas and, on failure, says what the frame was.
func checkCase(t *testing.T, who string, frame []byte, got, want counts) {
	t.Helper()
	if got != want {
		t.Errorf("%s: counters\n got %v\nwant %v\nframe:\n%s", who, got, want, hex.Dump(frame))
	}
}

func TestPrograms(t *testing.T) {
	progs := loadAll(t)
	cases := packetCases(t)
	for _, p := range progs {
		t.Run(p.name, func(t *testing.T) {
			for _, tc := range cases {
				if len(tc.frame) < ethHLen {
					continue // the kernel refuses it; TestReferenceParser covers it
				}
				t.Run(tc.name, func(t *testing.T) {
					checkCase(t, p.name, tc.frame, p.run(t, tc.frame, 0), tc.want)
				})
			}
		})
	}
}

// TestReferenceParser holds the Go parser to the same table.
func TestReferenceParser(t *testing.T) {
	for _, tc := range packetCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			checkCase(t, "mptcp.Parse", tc.frame, fromResult(mptcp.Parse(tc.frame)), tc.want)
		})
	}
}

// TestTCGSO sets gso_segs in the __sk_buff context: a GSO packet of N segments must count N wire
// packets, each carrying the options.
func TestTCGSO(t *testing.T) {
	progs := loadAll(t)[1:]
	frames := map[string]packetCase{}
	for _, tc := range packetCases(t) {
		switch tc.name {
		case "v4/untagged/dss_ack64_map64", "v6/dot1ad-dot1q/multi_dss_addaddr_prio", "v4/dot1q/plain_tcp", "v4_udp", "truncated_v4_tcp_options":
			frames[tc.name] = tc
		}
	}
	if len(frames) != 5 {
		t.Fatalf("found %d of the 5 frames in the table", len(frames))
	}
	for _, p := range progs {
		for name, tc := range frames {
			for _, segs := range []uint32{1, 2, 7, 64} {
				t.Run(fmt.Sprintf("%s/%s/segs=%d", p.name, name, segs), func(t *testing.T) {
					checkCase(t, p.name, tc.frame, p.run(t, tc.frame, segs), tc.want.times(uint64(segs)))
				})
			}
		}
	}
}

// TestSkbCtxLayout checks skbCtx against the running kernel's struct __sk_buff.
func TestSkbCtxLayout(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var skb *btf.Struct
	if err := spec.TypeByName("__sk_buff", &skb); err != nil {
		t.Fatalf("__sk_buff in kernel BTF: %v", err)
	}
	offsets := map[string]uint32{}
	for _, m := range skb.Members {
		offsets[m.Name] = m.Offset.Bytes()
	}
	for _, f := range []struct {
		name string
		off  uintptr
	}{
		{"mark", unsafe.Offsetof(skbCtx{}.Mark)},
		{"cb", unsafe.Offsetof(skbCtx{}.CB)},
		{"data_meta", unsafe.Offsetof(skbCtx{}.DataMeta)},
		{"tstamp", unsafe.Offsetof(skbCtx{}.Tstamp)},
		{"wire_len", unsafe.Offsetof(skbCtx{}.WireLen)},
		{"gso_segs", unsafe.Offsetof(skbCtx{}.GSOSegs)},
	} {
		got, ok := offsets[f.name]
		if !ok {
			t.Errorf("__sk_buff has no %s", f.name)
			continue
		}
		if uintptr(got) != f.off {
			t.Errorf("__sk_buff.%s at %d, skbCtx has it at %d", f.name, got, f.off)
		}
	}
	if end := unsafe.Sizeof(skbCtx{}); end > uintptr(skb.Size) {
		t.Errorf("skbCtx is %d bytes, __sk_buff %d", end, skb.Size)
	}
}
