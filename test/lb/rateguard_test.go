package lb

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// guardRate is the rate guard's limit in TestRateGuard: new flows stored per second per CPU, far
// below what the flood sends, so that the guard engages within the first milliseconds.
const guardRate = 100

// synFrame is a SYN with MP_CAPABLE from 198.18.0.1 (or 2001:db8:f::1) to the VIP, which the
// forger's patch gives a random source address, port and sequence number per send (the TCP
// checksum left stale: a backend the SYN reaches drops it without answering).
func synFrame(t *testing.T, f *forger) []byte {
	t.Helper()
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(f.vip.Port()), Seq: 1, SYN: true, Window: 64240,
		Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
			{OptionType: 30, OptionLength: 4, OptionData: []byte{0x01, 0x81}}}}
	eth := &layers.Ethernet{SrcMAC: f.src, DstMAC: f.dst, EthernetType: layers.EthernetTypeIPv4}
	var ip gopacket.SerializableLayer
	if f.vip.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{198, 18, 0, 1}, DstIP: f.vip.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: netip.MustParseAddr("2001:db8:f::1").AsSlice(), DstIP: f.vip.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// A SYN flood with random 5-tuples, as fast as AF_PACKET writes it into the client's side, at a
// balancer whose rate guard stores at most guardRate new flows per second per CPU, while the
// join-steering traffic runs (half the connections opened before the flood, half during it; all
// join during it): the guard refuses flows (guarded > 0), the flow table holds no more flood
// entries than the limit lets through, the connections whose SYN the guard refused have their
// token learned from their third ACK (late_learn), and every join reaches its backend (the
// backends' MIB: MPJoinSynRx and MPJoinAckRx one per connection, MPJoinNoTokenFound 0), every
// transfer intact. l2 over IPv4 and ipip over IPv6.
func TestRateGuard(t *testing.T) {
	for _, o := range []options{{forward: "l2"}, {forward: "ipip", v6: true}} {
		t.Run(o.String(), func(t *testing.T) { rateGuardRun(t, o) })
	}
}

func rateGuardRun(t *testing.T, o options) {
	s := newSmallSetupWith(t, o, "rg", lb.Config{MaxFlows: floodTable, MaxTokens: floodTable, NewFlowRate: guardRate})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	ld, err := loader.New(loader.DefaultRoot)
	if err != nil {
		t.Fatal(err)
	}
	maps, err := ld.OpenLB(s.LB)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	if st := lbStatus(t, s.LB); st.NewFlowRate == nil || *st.NewFlowRate != guardRate {
		t.Fatalf("lb status new_flow_rate %v, want %d", st.NewFlowRate, guardRate)
	}
	base := s.mibs(t)
	st0, err := maps.ReadStats()
	if err != nil {
		t.Fatal(err)
	}

	first := s.dial(ctx, t, floodConns/2, 15)
	defer closeAll(first)

	f, err := newForger(s)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syn := synFrame(t, f)
	fl := startFlood(ctx, f, func(int) ([]byte, bool) { return syn, false })
	defer fl.abort(cancel)

	for fl.sent.Load() < floodPrefill && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.AddSubflowEndpoints(); err != nil {
		t.Fatal(err)
	}
	second := s.dial(ctx, t, floodConns-floodConns/2, 15)
	defer closeAll(second)
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	s.waitJoins(wctx, t, base, floodConns)
	wcancel()
	fl.stop()
	if fl.err != nil {
		t.Fatalf("flood: %v after %d frames", fl.err, fl.sent.Load())
	}
	n := fl.sent.Load()

	all := append(append([]*lablb.Conn(nil), first...), second...)
	// Every SYN sent is counted as a new flow, stored or guarded: wait until the counters show
	// them all (or the deadline, and fail).
	var d lb.Stats
	for {
		st1, err := maps.ReadStats()
		if err != nil {
			t.Fatal(err)
		}
		d = st1.Sub(st0)
		if int64(d[lb.StatNewFlow]) >= n+floodConns || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	occ, err := maps.Occupancy()
	if err != nil {
		t.Fatal(err)
	}
	j := s.joins(t, base)
	v := s.view(t)
	match, bad := s.tokenMatches(t, v)
	okN, errs := transfer(ctx, all, 16<<10)

	// What the limit lets through: guardRate a second on each CPU, over every window the flood
	// touched (the first and the last partial ones included), for the flood and the legitimate
	// SYNs together.
	cpus := runtime.NumCPU()
	windows := int(math.Ceil(fl.took.Seconds())) + 1
	allowed := uint64(guardRate * cpus * windows)
	stored := d[lb.StatNewFlow] - d[lb.StatGuarded]
	t.Logf("flood: %d SYNs with random 5-tuples in %v (%.0f/s); guard %d new flows/s per CPU, %d CPUs, %d windows: at most %d stored",
		n, fl.took.Round(time.Millisecond), float64(n)/fl.took.Seconds(), guardRate, cpus, windows, allowed)
	t.Logf("balancer: new_flow %d guarded %d (stored %d) late_learn %d token_learned %d join_steered %d join_unknown %d insert_failed %d; flows %d tokens %d (tables of %d)",
		d[lb.StatNewFlow], d[lb.StatGuarded], stored, d[lb.StatLateLearn], d[lb.StatTokenLearned], d[lb.StatJoinSteered],
		d[lb.StatJoinUnknown], d[lb.StatInsertFailed], occ.Flows, occ.Tokens, floodTable)
	t.Logf("backends: MPJoinSynRx %v MPJoinAckRx %v MPJoinNoTokenFound %v; ss -M: client %d with 2 subflows, %d with 1",
		j.SynRx, j.AckRx, j.NoToken, v.ClientTwo, v.ClientOne)

	if n < floodMin {
		t.Errorf("flood sent %d SYNs, want at least %d", n, floodMin)
	}
	if d[lb.StatGuarded] == 0 {
		t.Errorf("guarded 0: the guard never refused a flow")
	}
	if stored > allowed {
		t.Errorf("%d new flows stored, the limit allows %d", stored, allowed)
	}
	// The table: the stored new flows, the late-placed ones, the steered joins (protected table,
	// counted too), nothing more.
	if limit := int(allowed + d[lb.StatLateLearn] + d[lb.StatJoinSteered]); occ.Flows > limit || occ.Flows >= floodTable {
		t.Errorf("%d flows stored, want at most %d (and fewer than the table's %d)", occ.Flows, limit, floodTable)
	}
	if d[lb.StatLateLearn] == 0 {
		t.Errorf("late_learn 0: no connection whose SYN the guard refused was placed from its third ACK")
	}
	if d[lb.StatTokenLearned] != floodConns {
		t.Errorf("tokens learned %d, want the %d legitimate ones", d[lb.StatTokenLearned], floodConns)
	}
	if d[lb.StatInsertFailed] != 0 {
		t.Errorf("insert_failed %d", d[lb.StatInsertFailed])
	}
	if d[lb.StatJoinUnknown] != 0 {
		t.Errorf("join_unknown %d, want 0", d[lb.StatJoinUnknown])
	}
	if lablb.Sum(j.NoToken) != 0 || lablb.Sum(j.SynRx) != floodConns || lablb.Sum(j.AckRx) != floodConns {
		t.Errorf("MPJoinNoTokenFound %v (want 0), MPJoinSynRx %v and MPJoinAckRx %v (want %d in all)", j.NoToken, j.SynRx, j.AckRx, floodConns)
	}
	if v.ClientTwo != floodConns || v.ClientOne != 0 {
		t.Errorf("client: %d connections with 2 subflows and %d with 1, want %d and 0", v.ClientTwo, v.ClientOne, floodConns)
	}
	if match != floodConns || len(bad) > 0 {
		t.Errorf("%d of %d backend tokens (ss -M) are the balancer's; mismatches: %v", match, floodConns, bad)
	}
	if okN != floodConns {
		t.Errorf("%d of %d transfers intact; first errors: %v", okN, floodConns, firstErrs(errs, 3))
	}
}

// `lb run --config` gives the program the file's new_flow_rate, and `lb reload` a new one: lb
// status shows the rate the attached program runs with (0 after new_flow_rate: 0, no guard), and
// the default without the field.
func TestConfigNewFlowRate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := newConfigSetup(ctx, t, lablb.Config{Prefix: "rgc"})
	l := s.Lab
	file := filepath.Join(t.TempDir(), "lb.yaml")
	write := func(rate string) {
		t.Helper()
		var b strings.Builder
		b.WriteString(s.configInterfaces())
		b.WriteString(rate)
		fmt.Fprintf(&b, "vips:\n  - addr: %s\nbackends:\n  - addr: %s\n", s.vip, l.Backends[0].IP4)
		if err := os.WriteFile(file, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := func(what string, rate uint32) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		st := lbStatus(t, l.LB)
		for ; (st.NewFlowRate == nil || *st.NewFlowRate != rate) && time.Now().Before(deadline); st = lbStatus(t, l.LB) {
			time.Sleep(100 * time.Millisecond)
		}
		if st.NewFlowRate == nil || *st.NewFlowRate != rate {
			t.Fatalf("%s: lb status new_flow_rate %v, want %d", what, st.NewFlowRate, rate)
		}
	}
	write("new_flow_rate: 5000\n")
	startControlPlane(t, l.LB, "--config", file)
	t.Cleanup(func() { _, _ = mxErr("--netns", l.LB, "lb", "detach") })
	want("lb run", 5000)
	write("new_flow_rate: 0\n")
	mx(t, "--netns", l.LB, "lb", "reload", "--config", file)
	want("reload with new_flow_rate 0", 0)
	write("")
	mx(t, "--netns", l.LB, "lb", "reload", "--config", file)
	want("reload without new_flow_rate", lb.DefaultNewFlowRate)
	write("new_flow_rate: -3\n")
	if _, err := mxErr("--netns", l.LB, "lb", "reload", "--config", file); err == nil || !strings.Contains(err.Error(), "new_flow_rate: -3") {
		t.Errorf("lb reload with new_flow_rate -3: %v, want a refusal naming the field", err)
	}
	want("after the refused reload", lb.DefaultNewFlowRate)
}

// `lb attach --new-flow-rate` gives the program its limit (0: no guard); an attach without the flag
// (one that adds an interface) keeps the running program's, and a value out of range is refused
// naming the flag, changing nothing.
func TestAttachNewFlowRate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := newConfigSetup(ctx, t, lablb.Config{Prefix: "rga"})
	l := s.Lab
	attach := func(iface string, extra ...string) []string {
		return append([]string{"--netns", l.LB, "lb", "attach", iface, "--vip", s.vip.String(), "--backend", l.Backends[0].IP4.String()}, extra...)
	}
	want := func(what string, rate uint32) {
		t.Helper()
		st := lbStatus(t, l.LB)
		if st.NewFlowRate == nil || *st.NewFlowRate != rate {
			t.Fatalf("%s: lb status new_flow_rate %v, want %d", what, st.NewFlowRate, rate)
		}
	}
	t.Cleanup(func() { _, _ = mxErr("--netns", l.LB, "lb", "detach") })
	mx(t, attach(l.Paths[0].LBIf)...)
	want("first attach without the flag", lb.DefaultNewFlowRate)
	mx(t, attach(l.Paths[0].LBIf, "--new-flow-rate", "700")...)
	want("--new-flow-rate 700", 700)
	mx(t, attach(l.Paths[1].LBIf)...)
	want("an attach that adds an interface, without the flag", 700)
	mx(t, attach(l.Paths[1].LBIf, "--new-flow-rate", "0")...)
	want("--new-flow-rate 0", 0)
	mx(t, attach(l.Paths[0].LBIf)...)
	want("an attach without the flag after --new-flow-rate 0", 0)
	if _, err := mxErr(attach(l.Paths[0].LBIf, "--new-flow-rate", "-2")...); err == nil || !strings.Contains(err.Error(), "--new-flow-rate -2") {
		t.Errorf("--new-flow-rate -2: %v, want a refusal naming the flag", err)
	}
	want("after the refused attach", 0)
}
