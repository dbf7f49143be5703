package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// rxPairs maps a datapath ingress class to the server namespace's MPTcpExt counter of the same
// event: what the server's interfaces received must be what the server's MPTCP stack processed.
var rxPairs = []struct{ class, mib string }{
	{"mp_capable_syn", "MPCapableSYNRX"},
	{"mp_capable_synack", "MPCapableSYNACKRX"},
	{"mp_capable_ack", "MPCapableACKRX"},
	{"mp_join_syn", "MPJoinSynRx"},
	{"mp_join_synack", "MPJoinSynAckRx"},
	{"mp_join_ack", "MPJoinAckRx"},
	{"add_addr", "AddAddr"},
	{"add_addr_echo", "EchoAdd"},
	{"remove_addr", "RmAddr"},
	{"mp_prio", "MPPrioRx"},
	{"mp_fail", "MPFailRx"},
	{"mp_fastclose", "MPFastcloseRx"},
	{"mp_tcprst", "MPRstRx"},
}

// txPairs maps a datapath egress class to the server's MPTcpExt counter of options it sent.
var txPairs = []struct{ class, mib string }{
	{"mp_capable_syn", "MPCapableSYNTX"},
	{"mp_join_syn", "MPJoinSynTx"},
	{"add_addr", "AddAddrTx"},
	{"add_addr_echo", "EchoAddTx"},
	{"remove_addr", "RmAddrTx"},
	{"mp_prio", "MPPrioTx"},
	{"mp_fail", "MPFailTx"},
	{"mp_fastclose", "MPFastcloseTx"},
	{"mp_tcprst", "MPRstTx"},
}

// TestCountersEqualKernel attaches the datapath to both server-side interfaces, runs an MPTCP
// connection over two paths through every event that makes the kernel send a rarer option, and
// requires the datapath's ingress counters to equal the server kernel's own MPTcpExt counters.
func TestCountersEqualKernel(t *testing.T) {
	testutil.RequireRoot(t)
	t.Parallel()
	for _, tc := range []struct {
		name    string
		v6      bool
		attach  []string
		ingress string
	}{
		{"xdp-native/ipv4", false, []string{"--ingress", "xdp", "--mode", "native"}, "xdp"},
		{"xdp-native/ipv6", true, []string{"--ingress", "xdp", "--mode", "native"}, "xdp"},
		{"tc/ipv4", false, []string{"--ingress", "tc"}, "tc"},
		{"tc/ipv6", true, []string{"--ingress", "tc"}, "tc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			countersEqualKernel(t, tc.v6, tc.attach, tc.ingress)
		})
	}
}

func countersEqualKernel(t *testing.T, v6 bool, attachFlags []string, ingress string) {
	l := testutil.NewLab(t, lab.Config{Subflows: true, IPv6: v6})
	// Room for the extra subflows the announced addresses bring, so that every option is followed
	// by what the path managers do with it.
	for _, ns := range []string{l.Client, l.Server} {
		if err := l.SetLimits(ns, 4, 4); err != nil {
			t.Fatal(err)
		}
	}
	addr := func(a4, a6 netip.Addr) netip.Addr {
		if v6 {
			return a6
		}
		return a4
	}
	p0, p1 := l.Paths[0], l.Paths[1]
	srvExtra := addr(netip.MustParseAddr("10.101.0.12"), netip.MustParseAddr("fd00:101::12"))
	cliExtra := addr(netip.MustParseAddr("10.101.0.11"), netip.MustParseAddr("fd00:101::11"))

	ifaces := []string{l.Paths[0].ServerIf, l.Paths[1].ServerIf}
	for _, ifc := range ifaces {
		attach(t, l.Server, ifc, attachFlags...)
	}
	st := status(t, l.Server)
	for _, ifc := range ifaces {
		if a := st[ifc]; a.Ingress != ingress {
			t.Fatalf("status of %s: ingress %q, want %q", ifc, a.Ingress, ingress)
		}
	}

	// What the interfaces receive is captured too, to be replayed (native XDP sees every frame
	// before the stack does, as tcpdump does: the two count the same frames).
	var caps []*capture
	var anyCap *capture           // every interface, for replay --per-connection (Linux cooked v2 frames)
	var dpPre map[string]statsRow // the datapath before the captures start
	if ingress == "xdp" {
		dpPre = stats(t, l.Server)
		dir := t.TempDir()
		for _, ifc := range ifaces {
			caps = append(caps, startCapture(t, l.Server, ifc, dir))
		}
		anyCap = startCapture(t, l.Server, "any", dir)
	}

	// The connection's whole life, from here: the attaches above (the verifier's work, which
	// takes many seconds in the kernel matrix's emulated guest) are not part of it.
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Scaled(30*time.Second))
	defer cancel()
	srvBase, err := l.MIB(l.Server)
	if err != nil {
		t.Fatal(err)
	}
	cliBase, err := l.MIB(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	cliDropBase := txDropped(t, l, l.Client)
	dpBase := stats(t, l.Server)

	pair, err := l.Pair(ctx, addr(p0.ServerIP4, p0.ServerIP6).String())
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	if !lab.IsMPTCP(pair.Client) {
		t.Fatal("connection fell back to TCP")
	}
	// has: the kernel has that MPTcpExt counter (it lists every one it has, zero or not).
	has := func(mib string) bool { _, ok := srvBase["MPTcpExt."+mib]; return ok }
	wait := func(key string, n int64) {
		t.Helper()
		if d, err := l.WaitMIB(ctx, l.Server, srvBase, "MPTcpExt."+key, n); err != nil {
			var nz []string
			for k, v := range d {
				if v != 0 && strings.HasPrefix(k, "MPTcpExt.") {
					nz = append(nz, fmt.Sprintf("%s=%d", k, v))
				}
			}
			sort.Strings(nz)
			t.Fatalf("%v; server MPTcpExt deltas: %s", err, strings.Join(nz, " "))
		}
	}
	if is6 := pair.Server.LocalAddr().(*net.TCPAddr).IP.To4() == nil; is6 != v6 {
		t.Fatalf("server end %v: want IPv6 %v", pair.Server.LocalAddr(), v6)
	}
	// The client's subflow endpoint on path 1 joins.
	wait("MPJoinAckRx", 1)
	// Bulk data both ways over both subflows, so that data segments (DSS, GSO/GRO-sized) are
	// counted among the rarer options.
	if err := exchange(pair, 4<<20); err != nil {
		t.Fatal(err)
	}

	// A server signal endpoint: ADD_ADDR to the client, which echoes it (and joins it).
	addAddr(t, l, l.Server, p1.ServerIf, srvExtra)
	if _, err := l.AddEndpoint(l.Server, srvExtra.String(), "signal"); err != nil {
		t.Fatal(err)
	}
	wait("EchoAdd", 1)

	// A client signal endpoint: ADD_ADDR to the server, which joins it. The kernel counts that SYN
	// (MPJoinSynTx, Tcp.OutSegs) when it hands it to IP; were the neighbour unresolved, the SYN
	// would wait in the neighbour queue, out of the datapath's sight, and could be dropped there
	// when the REMOVE_ADDR below closes the subflow. So resolve it first. (The address is added
	// only now so that the client's earlier joins do not take it as their source.)
	addAddr(t, l, l.Client, p1.ClientIf, cliExtra)
	resolveNeighbour(t, l, l.Server, p1.ServerIf, cliExtra)
	cid, err := l.AddEndpoint(l.Client, cliExtra.String(), "signal")
	if err != nil {
		t.Fatal(err)
	}
	wait("AddAddr", 1)
	// MPJoinSynTx came with Linux 6.10 (as the other join counters of the sending side); before
	// it, the client's SYN-ACK to that join is the sign that the server sent it.
	if has("MPJoinSynTx") {
		wait("MPJoinSynTx", 1)
	} else {
		// Linux 6.1's path manager, on the server side, has been seen to answer the ADD_ADDR
		// (echo) without opening a subflow to it: what the datapath and the kernels counted
		// then is logged, and the comparison below holds whether the join came or not.
		jctx, jcancel := context.WithTimeout(ctx, testutil.Scaled(5*time.Second))
		_, err := l.WaitMIB(jctx, l.Server, srvBase, "MPTcpExt.MPJoinSynAckRx", 1)
		jcancel()
		if err != nil {
			d := dpDelta(t, dpBase, stats(t, l.Server), ifaces)
			c := mibDeltaIn(t, l, l.Client, cliBase)
			t.Logf("no join from the server to the client's announced address: server egress mp_join_syn %d, client MPJoinSynRx %d, MPJoinNoTokenFound %d",
				d["out.mp_join_syn"], c.MPTCP("MPJoinSynRx"), c.MPTCP("MPJoinNoTokenFound"))
		}
	}

	// Deleting it: REMOVE_ADDR to the server.
	if err := l.DelEndpoint(l.Client, cid); err != nil {
		t.Fatal(err)
	}
	wait("RmAddr", 1)

	// A backup change of the client's subflow endpoint on path 1: MP_PRIO.
	eps, err := l.Endpoints(l.Client)
	if err != nil {
		t.Fatal(err)
	}
	sub := -1
	for _, e := range eps {
		if e.Subflow && e.Address == addr(p1.ClientIP4, p1.ClientIP6).String() {
			sub = e.ID
		}
	}
	if sub < 0 {
		t.Fatalf("no client subflow endpoint for path 1 in %+v", eps)
	}
	if err := l.ChangeEndpoint(l.Client, sub, "backup"); err != nil {
		t.Fatal(err)
	}
	wait("MPPrioRx", 1)

	conn, err := l.WaitSubflows(ctx, l.Server, 1, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before the abort, the server's connection has %d subflows beyond the first", conn.Subflows)
	cliConns, err := l.Subflows(l.Client)
	if err != nil {
		t.Fatal(err)
	}

	// An abortive close: MP_FASTCLOSE on every subflow.
	if err := lab.Abort(pair.Client); err != nil {
		t.Fatal(err)
	}
	wait("MPFastcloseRx", 1)

	// Both sides settle: compare once neither moves (the last RSTs may still be in flight).
	var got map[string]int64
	var kern lab.Delta
	for deadline := time.Now().Add(5 * time.Second); ; {
		time.Sleep(200 * time.Millisecond)
		g, k := dpDelta(t, dpBase, stats(t, l.Server), ifaces), mibDelta(t, l, srvBase)
		stable := fmt.Sprint(g, k) == fmt.Sprint(got, kern)
		got, kern = g, k
		if stable || time.Now().After(deadline) {
			break
		}
	}

	if len(caps) != 0 {
		replayEqualsLive(t, caps, got, func() map[string]int64 { return dpDelta(t, dpPre, stats(t, l.Server), ifaces) })
		var cliTok uint32
		for _, c := range cliConns {
			if c.State != "LISTEN" {
				cliTok = c.Token
			}
		}
		replayConnection(t, anyCap, cliTok, conn.Token, kern.MPTCP("MPJoinSynRx"))
	}

	var rows []string
	for _, p := range rxPairs {
		rows = append(rows, fmt.Sprintf("%s=%d/%s=%d", p.class, got["in."+p.class], p.mib, kern.MPTCP(p.mib)))
		dp, k := got["in."+p.class], kern.MPTCP(p.mib)
		// The abort: the client sends an MP_FASTCLOSE RST on each of the connection's subflows.
		// A kernel may process the first and close the connection before the others arrive,
		// which then meet no MPTCP socket and are not counted (seen on 6.1 at TC ingress, once
		// in three runs). The datapath must then have seen exactly one per subflow.
		abortRace := (p.class == "mp_fastclose" || p.class == "mp_tcprst") && k >= 1 && dp == int64(conn.Subflows+1)
		if dp != k && !abortRace {
			t.Errorf("ingress %s = %d, server MPTcpExt.%s = %d", p.class, dp, p.mib, k)
		} else if dp != k {
			t.Logf("ingress %s = %d, one per subflow of the aborted connection; the server's kernel counted %d (MPTcpExt.%s): the rest reached it after the connection was gone", p.class, dp, k, p.mib)
		}
	}
	t.Logf("ingress vs kernel: %s", strings.Join(rows, " "))
	rows = rows[:0]
	var absent []string
	for _, p := range txPairs {
		if !has(p.mib) {
			// Nothing to compare with: the kernel does not count that option when it sends it.
			absent = append(absent, p.mib)
			continue
		}
		rows = append(rows, fmt.Sprintf("%s=%d/%s=%d", p.class, got["out."+p.class], p.mib, kern.MPTCP(p.mib)))
		if got["out."+p.class] != kern.MPTCP(p.mib) {
			t.Errorf("egress %s = %d, server MPTcpExt.%s = %d", p.class, got["out."+p.class], p.mib, kern.MPTCP(p.mib))
		}
	}
	t.Logf("egress vs kernel: %s", strings.Join(rows, " "))
	if len(absent) > 0 {
		t.Logf("egress not compared, this kernel has no MPTcpExt counter for it: %s", strings.Join(absent, " "))
	}
	for _, p := range rxPairs {
		if !has(p.mib) {
			t.Errorf("this kernel has no MPTcpExt.%s: the ingress pairs need every receive counter", p.mib)
		}
	}

	// The server answers every MP_CAPABLE SYN and MP_JOIN SYN it accepts with a SYN-ACK.
	for _, p := range []struct{ class, mib string }{{"mp_capable_synack", "MPCapableSYNRX"}, {"mp_join_synack", "MPJoinSynRx"}} {
		if got["out."+p.class] != kern.MPTCP(p.mib) {
			t.Errorf("egress %s = %d, server MPTcpExt.%s = %d", p.class, got["out."+p.class], p.mib, kern.MPTCP(p.mib))
		}
	}
	// Packets: the server namespace has no other traffic than the client's, on these interfaces.
	// TCP's OutSegs leaves out retransmissions, which RetransSegs counts; both count GSO segments.
	// A veth drops what its peer has no room for, counted as tx_dropped of the sending end: the
	// client's segments then never reached the server's interfaces.
	cli := mibDeltaIn(t, l, l.Client, cliBase)
	segs := func(d lab.Delta) int64 { return d["Tcp.OutSegs"] + d["Tcp.RetransSegs"] }
	drops := txDropped(t, l, l.Client) - cliDropBase
	t.Logf("in.pkt.tcp = %d, client segments sent = %d (client veths dropped %d), server InSegs = %d; out.pkt.tcp = %d, server segments sent = %d",
		got["in.pkt.tcp"], segs(cli), drops, kern["Tcp.InSegs"], got["out.pkt.tcp"], segs(kern))
	if drops == 0 && got["in.pkt.tcp"] != segs(cli) || drops > 0 && got["in.pkt.tcp"] >= segs(cli) {
		t.Errorf("in.pkt.tcp = %d, client Tcp.OutSegs+RetransSegs = %d with %d dropped on the way", got["in.pkt.tcp"], segs(cli), drops)
	}
	if got["out.pkt.tcp"] != segs(kern) {
		t.Errorf("out.pkt.tcp = %d, server Tcp.OutSegs+RetransSegs = %d", got["out.pkt.tcp"], segs(kern))
	}
	// XDP sees frames before any aggregation, and native XDP on veth turns aggregation off, so the
	// server's stack takes in one segment per frame (InSegs counts skbs). At TC, a veth hands
	// over the sender's GSO packets whole, counted as the segments they stand for.
	if ingress == "xdp" && got["in.pkt.tcp"] != kern["Tcp.InSegs"] {
		t.Errorf("in.pkt.tcp = %d, server Tcp.InSegs = %d", got["in.pkt.tcp"], kern["Tcp.InSegs"])
	}
	// Real kernel traffic is never malformed, and the data went as DSS.
	if got["in.malformed"] != 0 || got["out.malformed"] != 0 {
		t.Errorf("malformed: in %d out %d, want 0", got["in.malformed"], got["out.malformed"])
	}
	if got["in.dss"] == 0 || got["out.dss"] == 0 || got["in.pkt.mptcp"] == 0 {
		t.Errorf("dss in %d out %d, mptcp packets in %d: want traffic", got["in.dss"], got["out.dss"], got["in.pkt.mptcp"])
	}
	var all []string
	for k, v := range got {
		all = append(all, k+"="+strconv.FormatInt(v, 10))
	}
	sort.Strings(all)
	t.Logf("datapath deltas: %s", strings.Join(all, " "))
}

// addAddr adds an extra address to dev in ns, usable at once.
func addAddr(t *testing.T, l *lab.Lab, ns, dev string, a netip.Addr) {
	t.Helper()
	args := []string{"addr", "add", a.String() + "/24", "dev", dev}
	if a.Is6() {
		args = []string{"addr", "add", a.String() + "/64", "dev", dev, "nodad"}
	}
	if _, err := l.IP(ns, args...); err != nil {
		t.Fatal(err)
	}
}

// resolveNeighbour makes ns resolve the link-layer address of a (on dev) by sending it one UDP
// datagram, and waits until the neighbour entry is complete.
func resolveNeighbour(t *testing.T, l *lab.Lab, ns, dev string, a netip.Addr) {
	t.Helper()
	err := netns.Do(ns, func() error {
		c, err := net.Dial("udp", net.JoinHostPort(a.String(), "9"))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte{0})
		return err
	})
	if err != nil {
		t.Fatalf("send to %s from %s: %v", a, ns, err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := l.IP(ns, "neigh", "show", "to", a.String(), "dev", dev)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "lladdr") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("neighbour %s not resolved in %s: %q", a, ns, out)
		}
	}
}

// dpDelta sums the datapath's counters over ifaces, minus base: "in.<class>", "out.<class>",
// "in.pkt.<counter>", "out.pkt.<counter>".
func dpDelta(t *testing.T, base, now map[string]statsRow, ifaces []string) map[string]int64 {
	t.Helper()
	d := map[string]int64{}
	for _, ifc := range ifaces {
		n, ok := now[ifc]
		if !ok {
			t.Fatalf("stats lists no %s", ifc)
		}
		b := base[ifc]
		for k, v := range n.Ingress.Options {
			d["in."+k] += int64(v - b.Ingress.Options[k])
		}
		for k, v := range n.Egress.Options {
			d["out."+k] += int64(v - b.Egress.Options[k])
		}
		for k, v := range n.Ingress.Packets {
			d["in.pkt."+k] += int64(v - b.Ingress.Packets[k])
		}
		for k, v := range n.Egress.Packets {
			d["out.pkt."+k] += int64(v - b.Egress.Packets[k])
		}
	}
	return d
}

func mibDelta(t *testing.T, l *lab.Lab, base lab.MIB) lab.Delta {
	t.Helper()
	return mibDeltaIn(t, l, l.Server, base)
}

func mibDeltaIn(t *testing.T, l *lab.Lab, ns string, base lab.MIB) lab.Delta {
	t.Helper()
	m, err := l.MIB(ns)
	if err != nil {
		t.Fatal(err)
	}
	return m.Sub(base)
}

// txDropped sums the tx_dropped counters of every interface of ns.
func txDropped(t *testing.T, l *lab.Lab, ns string) int64 {
	t.Helper()
	ls, err := l.LinkStats(ns)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, s := range ls {
		n += int64(s.TxDropped)
	}
	return n
}

// exchange sends n bytes each way over the pair at once and reads them back.
func exchange(p *lab.Pair, n int) error {
	errs := make(chan error, 4)
	buf := make([]byte, n)
	for _, d := range [][2]net.Conn{{p.Client, p.Server}, {p.Server, p.Client}} {
		go func() {
			_, err := d[0].Write(buf)
			errs <- err
		}()
		go func() {
			_, err := io.ReadFull(d[1], make([]byte, n))
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			return fmt.Errorf("exchange: %w", err)
		}
	}
	return nil
}
