//go:build integrity

package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// integrityVariants are the attachments TestIntegrity compares.
var integrityVariants = map[string]variant{
	"none":                  {name: "none"},
	"trivial-native":        {name: "trivial-native", trivial: true, mode: loader.ModeNative},
	"trivial-generic":       {name: "trivial-generic", trivial: true, mode: loader.ModeGeneric},
	"trivial-generic-eg":    {name: "trivial-generic-eg", trivial: true, trivialEgress: true, mode: loader.ModeGeneric},
	"trivial-tc":            {name: "trivial-tc", trivialTC: true},
	"trivial-native-eg":     {name: "trivial-native-eg", trivial: true, trivialEgress: true, mode: loader.ModeNative},
	"busy-native-eg":        {name: "busy-native-eg", trivial: true, trivialEgress: true, mode: loader.ModeNative, busy: envInt("MX_BUSY", 300)},
	"none-busyeg":           {name: "none-busyeg", trivialEgress: true, busyEgress: envInt("MX_BUSY", 120)},
	"generic-busyeg":        {name: "generic-busyeg", trivial: true, trivialEgress: true, mode: loader.ModeGeneric, busyEgress: envInt("MX_BUSY", 120)},
	"busy-both":             {name: "busy-both", trivial: true, trivialEgress: true, mode: loader.ModeNative, busy: 50, busyEgress: 120},
	"trivial-native-busyeg": {name: "trivial-native-busyeg", trivial: true, trivialEgress: true, mode: loader.ModeNative, busyEgress: envInt("MX_BUSY", 300)},
	"datapath-native":       {name: "datapath-native", datapath: true, mode: loader.ModeNative, ingress: loader.IngressXDP, egress: true},
	"datapath-native-x":     {name: "datapath-native-x", datapath: true, mode: loader.ModeNative, ingress: loader.IngressXDP},
	"datapath-generic":      {name: "datapath-generic", datapath: true, mode: loader.ModeGeneric, ingress: loader.IngressXDP, egress: true},
	"datapath-tc":           {name: "datapath-tc", datapath: true, ingress: loader.IngressTC, egress: true},
}

// TestIntegrity repeats transfers and reports how many delivered a byte stream that differs from
// the one sent. It is an investigation tool, not part of `make test`: it runs only when
// MX_INTEGRITY names the variants (comma-separated keys of integrityVariants), with MX_RUNS runs of
// each (default 10), MX_DURATION each (default 2s), a fresh lab per run as `demo` does, and
// MX_CSUM=1 to turn on MPTCP's DSS checksum in both namespaces. MX_CHECK=lab uses lab.Transfer;
// the default checks every byte against a known pattern and reports where the first bad byte is.
func TestIntegrity(t *testing.T) {
	names := os.Getenv("MX_INTEGRITY")
	if names == "" {
		t.Skip("MX_INTEGRITY not set")
	}
	testutil.RequireRoot(t)
	runs := envInt("MX_RUNS", 10)
	d := 2 * time.Second
	if s := os.Getenv("MX_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatal(err)
		}
	}
	root := bpffsRoot(t)
	if ks := os.Getenv("MX_KPROBES"); ks != "" {
		kc, err := newKprobeCounters(strings.Split(ks, ","))
		if err != nil {
			t.Fatal(err)
		}
		defer kc.Close()
		defer func() { t.Logf("kernel function calls during the test (all namespaces): %s", kc) }()
	}
	for _, name := range strings.Split(names, ",") {
		v, ok := integrityVariants[name]
		if !ok {
			t.Fatalf("unknown variant %q", name)
		}
		bad := 0
		var shared *lab.Lab
		if os.Getenv("MX_REUSE") == "1" {
			shared = testutil.NewLab(t, lab.Config{Paths: 2, Subflows: os.Getenv("MX_SUBFLOWS") != "0"})
		}
		for i := 0; i < runs; i++ {
			r, err := integrityRun(t, shared, v, root, d)
			if err != nil {
				t.Fatalf("%s run %d: %v", name, i, err)
			}
			if !r.ok {
				bad++
			}
			t.Logf("%s run %d: %s", name, i, r)
		}
		t.Logf("%s: %d of %d runs corrupted", name, bad, runs)
	}
}

type integrityResult struct {
	ok         bool
	sent, recv uint64
	mbps       float64
	firstBad   int64 // -1: none
	detail     string
	cli, srv   lab.Delta
}

func (r integrityResult) String() string {
	s := fmt.Sprintf("ok=%v sent=%d recv=%d %.0f Mbit/s", r.ok, r.sent, r.recv, r.mbps)
	if r.firstBad >= 0 {
		s += fmt.Sprintf(" first bad byte at %d: %s", r.firstBad, r.detail)
	}
	for _, k := range []string{"Tcp.InCsumErrors", "MPTcpExt.DataCsumErr", "MPTcpExt.DSSNoMatchTCP", "MPTcpExt.DSSNotMatching", "MPTcpExt.InfiniteMapRx", "MPTcpExt.MPFailRx", "MPTcpExt.DuplicateData", "TcpExt.TCPOFOQueue", "TcpExt.TCPTimeouts", "Tcp.RetransSegs", "MPTcpExt.RcvPruned", "TcpExt.TCPRcvQDrop", "TcpExt.TCPBacklogDrop", "MPTcpExt.MPTCPRetrans", "TcpExt.TCPOFODrop", "TcpExt.PruneCalled", "TcpExt.RcvPruned"} {
		if r.srv[k] != 0 || r.cli[k] != 0 {
			s += fmt.Sprintf(" %s srv=%d cli=%d", k, r.srv[k], r.cli[k])
		}
	}
	return s
}

// integrityRun runs one transfer over l, or over a lab of its own when l is nil.
func integrityRun(t *testing.T, l *lab.Lab, v variant, root string, d time.Duration) (integrityResult, error) {
	if l == nil {
		l = testutil.NewLab(t, lab.Config{Paths: 2, Subflows: os.Getenv("MX_SUBFLOWS") != "0"})
		defer l.Close()
	}
	if os.Getenv("MX_CSUM") == "1" {
		for _, ns := range []string{l.Client, l.Server} {
			if err := lab.WriteSysctls(ns, map[string]string{"net/mptcp/checksum_enabled": "1"}); err != nil {
				return integrityResult{}, err
			}
		}
	}
	detach, err := attach(l, v, root)
	if err != nil {
		return integrityResult{}, err
	}
	defer detach()
	if os.Getenv("MX_SHOWFEAT") == "1" {
		out, _ := l.Exec(l.Client, "ethtool", "-k", l.Paths[0].ClientIf)
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "segmentation-offload") || strings.Contains(line, "receive-offload") {
				t.Logf("  client %s: %s", l.Paths[0].ClientIf, strings.TrimSpace(line))
			}
		}
	}
	if off := os.Getenv("MX_CLIENT_OFF"); off != "" {
		// e.g. "tso,gso": turn these features off on every client veth (the sender).
		for _, p := range l.Paths {
			args := []string{"-K", p.ClientIf}
			for _, f := range strings.Split(off, ",") {
				args = append(args, f, "off")
			}
			if _, err := l.Exec(l.Client, "ethtool", args...); err != nil {
				return integrityResult{}, err
			}
		}
	}
	var costs string
	if os.Getenv("MX_STATS") == "1" {
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			return integrityResult{}, err
		}
		defer st.Close()
		defer func() { t.Logf("  per-run cost on %s: %s", l.Paths[0].ServerIf, costs) }()
	}
	if os.Getenv("MX_PULLCOUNT") == "1" {
		pc, err := newPullCounter(l)
		if err != nil {
			return integrityResult{}, err
		}
		defer func() {
			t.Logf("  server skbs whose TCP/IP headers are not all linear (the only ones the TC programs pull): %s", pc)
			pc.Close()
		}()
	}
	cli0, _ := l.MIB(l.Client)
	srv0, _ := l.MIB(l.Server)
	ctx, cancel := context.WithTimeout(context.Background(), d+60*time.Second)
	defer cancel()
	var r integrityResult
	if os.Getenv("MX_CHECK") == "lab" {
		res, err := l.Transfer(ctx, lab.TransferConfig{Duration: d})
		if err != nil {
			return r, err
		}
		r = integrityResult{ok: res.ChecksumOK, sent: res.Sent, recv: res.Received, firstBad: -1,
			mbps: float64(res.Received) * 8 / res.Duration.Seconds() / 1e6}
		if res.FirstBadStamp >= 0 {
			r.firstBad = res.FirstBadStamp
			r.detail = fmt.Sprintf("stamp (4 KiB granularity) says the bytes are from offset %d (delta %d)",
				res.BadStampValue, int64(res.BadStampValue)-res.FirstBadStamp)
		}
	} else {
		r, err = patternTransfer(ctx, l, d)
		if err != nil {
			return r, err
		}
	}
	if os.Getenv("MX_STATS") == "1" {
		costs = progCosts(l)
	}
	cli1, _ := l.MIB(l.Client)
	srv1, _ := l.MIB(l.Server)
	r.cli, r.srv = cli1.Sub(cli0), srv1.Sub(srv0)
	return r, detach()
}

// patternPeriod is the length of the repeating pattern patternTransfer sends: a prime, so that a
// misplaced chunk shows where in the stream it came from.
const patternPeriod = 1<<20 + 7

// pattern is patternPeriod random bytes followed by a copy of its first 1 MiB, so that any window
// of up to 1 MiB starting anywhere in the period is one slice.
var pattern = func() []byte {
	p := make([]byte, patternPeriod+1<<20)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < patternPeriod; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(p[i:patternPeriod], w[:])
	}
	copy(p[patternPeriod:], p[:1<<20])
	return p
}()

// patternTransfer sends the pattern over one MPTCP connection for d and checks every received byte.
func patternTransfer(ctx context.Context, l *lab.Lab, d time.Duration) (integrityResult, error) {
	r := integrityResult{firstBad: -1}
	ln, err := l.Listen(ctx, ":0")
	if err != nil {
		return r, err
	}
	defer ln.Close()
	type srvRes struct {
		n        uint64
		firstBad int64
		detail   string
		err      error
	}
	done := make(chan srvRes, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- srvRes{err: err}
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		res := srvRes{firstBad: -1}
		for {
			k, err := c.Read(buf)
			if k > 0 && res.firstBad < 0 {
				off := int(res.n % patternPeriod)
				want := pattern[off : off+k]
				if !bytes.Equal(buf[:k], want) {
					i := 0
					for buf[i] == want[i] {
						i++
					}
					res.firstBad = int64(res.n) + int64(i)
					res.detail = describeBad(buf[i:k], want[i:], res.n+uint64(i))
				}
			}
			res.n += uint64(k)
			if err == io.EOF {
				break
			}
			if err != nil {
				res.err = err
				break
			}
		}
		done <- res
	}()
	addr := net.JoinHostPort(l.Paths[0].ServerIP4.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	var c net.Conn
	if os.Getenv("MX_TCP") == "1" {
		err = netns.Do(l.Client, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			return err
		})
	} else {
		c, err = l.Dial(ctx, addr)
	}
	if err != nil {
		return r, err
	}
	defer c.Close()
	if os.Getenv("MX_TCP") != "1" && !lab.IsMPTCP(c) {
		return r, errors.New("fell back to TCP")
	}
	start := time.Now()
	c.SetWriteDeadline(start.Add(d))
	for {
		off := int(r.sent % patternPeriod)
		n, err := c.Write(pattern[off : off+256<<10])
		r.sent += uint64(n)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return r, err
			}
			break
		}
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case s := <-done:
		if s.err != nil {
			return r, s.err
		}
		r.recv, r.firstBad, r.detail = s.n, s.firstBad, s.detail
	case <-ctx.Done():
		return r, ctx.Err()
	}
	r.mbps = float64(r.recv) * 8 / time.Since(start).Seconds() / 1e6
	r.ok = r.recv == r.sent && r.firstBad < 0
	return r, nil
}

// describeBad says how long the bad run is, and where in the stream its bytes came from.
func describeBad(got, want []byte, at uint64) string {
	n := 0
	for n < len(got) && n < len(want) && got[n] != want[n] {
		n++
	}
	// Extent of differing region up to 64 KiB (bytes may coincide by chance: allow gaps).
	end := 0
	for i := 0; i < len(got) && i < len(want) && i < 64<<10; i++ {
		if got[i] != want[i] {
			end = i + 1
		}
	}
	s := fmt.Sprintf("first run %d bytes, bad span <= %d bytes (stream mod period %d)", n, end, at%patternPeriod)
	if len(got) >= 32 {
		if zero := bytes.Count(got[:min(end, len(got))], []byte{0}); zero > end/2 {
			s += fmt.Sprintf(", %d zero bytes", zero)
		}
		if j := bytes.Index(pattern[:patternPeriod+31], got[:32]); j >= 0 {
			s += fmt.Sprintf(", bytes are pattern offset %d (delta %d)", j, int64(j)-int64(at%patternPeriod))
		} else {
			s += ", bytes not from the pattern"
		}
	}
	s += fmt.Sprintf(", got % x want % x", got[:min(16, len(got))], want[:min(16, len(want))])
	return s
}

func envInt(key string, def int) int {
	if s := os.Getenv(key); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			return n
		}
	}
	return def
}

// kprobeCounters counts calls of kernel functions with one fentry program each.
type kprobeCounters struct {
	names []string
	m     *ebpf.Map
	progs []*ebpf.Program
	links []link.Link
}

func newKprobeCounters(names []string) (*kprobeCounters, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, err
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: uint32(len(names))})
	if err != nil {
		return nil, err
	}
	k := &kprobeCounters{names: names, m: m}
	for i, fn := range names {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Type:       ebpf.Tracing,
			AttachType: ebpf.AttachTraceFEntry,
			AttachTo:   fn,
			License:    "GPL",
			Instructions: asm.Instructions{
				asm.StoreImm(asm.RFP, -4, int64(i), asm.Word),
				asm.Mov.Reg(asm.R2, asm.RFP),
				asm.Add.Imm(asm.R2, -4),
				asm.LoadMapPtr(asm.R1, m.FD()),
				asm.FnMapLookupElem.Call(),
				asm.JEq.Imm(asm.R0, 0, "out"),
				asm.Mov.Imm(asm.R1, 1),
				asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
				asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
				asm.Return(),
			},
		})
		if err != nil {
			k.Close()
			return nil, fmt.Errorf("load kprobe for %s: %w", fn, err)
		}
		k.progs = append(k.progs, prog)
		lk, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			k.Close()
			return nil, fmt.Errorf("kprobe %s: %w", fn, err)
		}
		k.links = append(k.links, lk)
	}
	return k, nil
}

func (k *kprobeCounters) String() string {
	var parts []string
	for i, fn := range k.names {
		var v uint64
		_ = k.m.Lookup(uint32(i), &v)
		parts = append(parts, fmt.Sprintf("%s=%d", fn, v))
	}
	return strings.Join(parts, " ")
}

func (k *kprobeCounters) Close() {
	for _, l := range k.links {
		l.Close()
	}
	for _, p := range k.progs {
		p.Close()
	}
	k.m.Close()
}

// pullCounter counts, on tcx ingress and egress of every server interface (ahead of any other
// program), the IPv4 TCP skbs whose Ethernet, IPv4 and TCP headers (options included) are not all in
// the linear area: the only skbs on which the datapath's TC programs call bpf_skb_pull_data (the lab
// is IPv4 only).
type pullCounter struct {
	m     *ebpf.Map
	prog  *ebpf.Program
	links []link.Link
}

func newPullCounter(l *lab.Lab) (*pullCounter, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 2})
	if err != nil {
		return nil, err
	}
	pc := &pullCounter{m: m}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 76, asm.Word), // skb->data
			asm.LoadMem(asm.R3, asm.R1, 80, asm.Word), // skb->data_end
			asm.LoadMem(asm.R4, asm.R1, 16, asm.Word), // skb->protocol (network order)
			asm.Mov.Imm(asm.R0, -1),
			asm.JNE.Imm(asm.R4, 0x0008, "out"),     // not IPv4: not counted
			asm.StoreImm(asm.RFP, -4, 1, asm.Word), // key 1: headers not linear
			// Ethernet + minimal IPv4 + minimal TCP linear?
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+20+20),
			asm.JGT.Reg(asm.R4, asm.R3, "count"),
			asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte), // version/IHL
			asm.And.Imm(asm.R5, 0x0f),
			asm.LSh.Imm(asm.R5, 2),
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14),
			asm.Add.Reg(asm.R4, asm.R5), // TCP header
			asm.Mov.Reg(asm.R0, asm.R4),
			asm.Add.Imm(asm.R0, 20),
			asm.JGT.Reg(asm.R0, asm.R3, "count"),
			asm.LoadMem(asm.R5, asm.R4, 12, asm.Byte), // data offset
			asm.RSh.Imm(asm.R5, 4),
			asm.LSh.Imm(asm.R5, 2),
			asm.Add.Reg(asm.R4, asm.R5),
			asm.JGT.Reg(asm.R4, asm.R3, "count"),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key 0: headers linear
			asm.Mov.Reg(asm.R2, asm.RFP).WithSymbol("count"),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
			asm.Return(),
		},
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("load pull counter: %w", err)
	}
	pc.prog = prog
	for _, p := range l.Paths {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			err := netns.Do(l.Server, func() error {
				idx, err := interfaceIndex(p.ServerIf)
				if err != nil {
					return err
				}
				lk, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: prog, Attach: at, Anchor: link.Head()})
				if err != nil {
					return err
				}
				pc.links = append(pc.links, lk)
				return nil
			})
			if err != nil {
				pc.Close()
				return nil, fmt.Errorf("attach pull counter to %s: %w", p.ServerIf, err)
			}
		}
	}
	return pc, nil
}

func (pc *pullCounter) String() string {
	var all, short uint64
	if err := pc.m.Lookup(uint32(0), &all); err != nil {
		return err.Error()
	}
	if err := pc.m.Lookup(uint32(1), &short); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("%d of %d skbs", short, all+short)
}

func (pc *pullCounter) Close() {
	for _, l := range pc.links {
		l.Close()
	}
	pc.prog.Close()
	pc.m.Close()
}

// progCosts reads the run-time statistics (kernel.bpf_stats_enabled) of the XDP and tcx programs on
// path 0's server interface.
func progCosts(l *lab.Lab) string {
	var ids []ebpf.ProgramID
	err := netns.Do(l.Server, func() error {
		lk, err := netlink.LinkByName(l.Paths[0].ServerIf)
		if err != nil {
			return err
		}
		if x := lk.Attrs().Xdp; x != nil && x.ProgId != 0 {
			ids = append(ids, ebpf.ProgramID(x.ProgId))
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: lk.Attrs().Index, Attach: at})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
		}
		return nil
	})
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil {
			p.Close()
			continue
		}
		st, err := p.Stats()
		p.Close()
		if err != nil {
			continue
		}
		if st.RunCount > 0 {
			parts = append(parts, fmt.Sprintf("%s %d runs %.0f ns/run", info.Name, st.RunCount, float64(st.Runtime.Nanoseconds())/float64(st.RunCount)))
		}
	}
	return strings.Join(parts, ", ")
}
