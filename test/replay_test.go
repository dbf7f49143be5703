package test

// replay checked against the live datapath and against Wireshark's dissector: TestCountersEqualKernel
// captures the server's received frames (tcpdump -Q in) on the interfaces the datapath counts, and
// replays the files through `mptcp-xdp replay`.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// capture is a running tcpdump writing one interface's received frames.
type capture struct {
	*testutil.Tcpdump
	file string
}

// startCapture runs tcpdump on dev in ns, capturing the first 256 bytes (every header; replay counts
// a cut frame as the programs would the whole one) of the frames the interface receives (-Q in)
// into a file in dir, and returns once tcpdump captures.
func startCapture(t *testing.T, ns, dev, dir string) *capture {
	t.Helper()
	file := filepath.Join(dir, ns+"-"+dev+".pcap")
	return &capture{Tcpdump: testutil.StartTcpdump(t, ns, "-i", dev, "-Q", "in", "-n", "-s", "256", "-U", "--immediate-mode", "-B", "131072", "-w", file), file: file}
}

// stop ends the capture, flushing the file, and returns how many frames tcpdump says the kernel
// dropped before it could read them (-1 when it does not say).
func (c *capture) stop() int64 { return c.Dropped() }

// replayCounts runs `mptcp-xdp replay -o json` with args and returns its counters as
// "in.<class>" and "in.pkt.<counter>", as dpDelta names them.
func replayCounts(t *testing.T, file string, args ...string) map[string]int64 {
	t.Helper()
	return replayJSON(t, mxOK(t, append([]string{"replay", file, "-o", "json"}, args...)...))
}

// replayJSON reads the counters of `replay -o json` output.
func replayJSON(t *testing.T, out string) map[string]int64 {
	t.Helper()
	var doc struct {
		Dir      string `json:"iface_dir"`
		Counters struct {
			Packets map[string]int64 `json:"packets"`
			Options map[string]int64 `json:"options"`
		} `json:"counters"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("replay -o json: %v\n%s", err, out)
	}
	m := map[string]int64{}
	for k, v := range doc.Counters.Packets {
		m[doc.Dir+".pkt."+k] = v
	}
	for k, v := range doc.Counters.Options {
		m[doc.Dir+"."+k] = v
	}
	return m
}

// replayEqualsLive stops the captures, replays them with both engines, requires each file's
// counters to equal Wireshark's dissector's (tsharkEqualsReplay) and the sum of their counters to
// equal the live datapath's ingress counters (live: "in.*" deltas). The captures
// run a little longer than live's window: the namespace's own frames (IPv6 neighbour discovery,
// MLD) may fall between, so the replay must lie between live and the datapath's count over the
// whole capture (outer, read once the captures stopped). tcpdump can lose frames under load, and
// says how many: with a loss, the frames lost may make up a shortfall in the totals and DSS.
func replayEqualsLive(t *testing.T, caps []*capture, live map[string]int64, outer func() map[string]int64) {
	t.Helper()
	var dropped int64
	for _, c := range caps {
		n := c.stop()
		if n < 0 {
			t.Fatalf("tcpdump said nothing of drops: %q", c.Stop())
		}
		dropped += n
	}
	over := outer()
	bulk := map[string]bool{"in.dss": true, "in.pkt.total": true, "in.pkt.tcp": true, "in.pkt.mptcp": true}
	for _, engine := range []string{"bpf", "go"} {
		sum := map[string]int64{}
		for _, c := range caps {
			counts := replayCounts(t, c.file, "--engine", engine)
			if engine == "bpf" {
				tsharkEqualsReplay(t, c.file, counts)
				vlanEqualsUntagged(t, c.file, counts)
			}
			for k, v := range counts {
				sum[k] += v
			}
		}
		var diff []string
		for k, v := range sum {
			lo := v
			if bulk[k] {
				lo += dropped
			}
			if lo < live[k] || v > over[k] {
				diff = append(diff, fmt.Sprintf("%s replay %d, live %d (over the whole capture %d; tcpdump lost %d)", k, v, live[k], over[k], dropped))
			}
		}
		for k, v := range live {
			if _, ok := sum[k]; !ok && strings.HasPrefix(k, "in.") && v != 0 {
				diff = append(diff, fmt.Sprintf("%s replay - live %d", k, v))
			}
		}
		sort.Strings(diff)
		if len(diff) != 0 {
			t.Errorf("replay --engine %s of the captures differs from the live datapath: %s", engine, strings.Join(diff, "; "))
		} else {
			t.Logf("replay --engine %s of the captures agrees with the live datapath: %d frames (live %d, over the whole capture %d; tcpdump lost %d), %d MPTCP, %d dss (live %d)", engine,
				sum["in.pkt.total"], live["in.pkt.total"], over["in.pkt.total"], dropped, sum["in.pkt.mptcp"], sum["in.dss"], live["in.dss"])
		}
	}
}

// replayConnection replays the capture of every interface with --per-connection and requires one
// connection, whose tokens are the ones ss -M showed on the client and the server, with as many
// join subflows as the server's kernel received MP_JOIN SYNs (MPJoinSynRx), and the client's
// path-management signals in the order the test made them.
func replayConnection(t *testing.T, c *capture, cliTok, srvTok uint32, joins int64) {
	t.Helper()
	if n := c.stop(); n != 0 {
		t.Fatalf("tcpdump -i any lost %d frames", n)
	}
	tsharkEqualsReplay(t, c.file, replayCounts(t, c.file)) // Linux cooked capture v2 frames
	out := mxOK(t, "replay", c.file, "--per-connection", "-o", "json")
	var doc struct {
		Connections []struct {
			ClientToken string `json:"client_token"`
			ServerToken string `json:"server_token"`
			Subflows    []struct {
				Kind  string `json:"kind"`
				Token string `json:"token"`
			} `json:"subflows"`
			Events []struct {
				Type string `json:"type"`
			} `json:"events"`
		} `json:"connections"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("replay --per-connection -o json: %v\n%s", err, out)
	}
	if len(doc.Connections) != 1 {
		t.Fatalf("%d connections, want 1:\n%s", len(doc.Connections), out)
	}
	cn := doc.Connections[0]
	if want := fmt.Sprintf("%08x", cliTok); cn.ClientToken != want {
		t.Errorf("client token %s, ss -M on the client: %s", cn.ClientToken, want)
	}
	if want := fmt.Sprintf("%08x", srvTok); cn.ServerToken != want {
		t.Errorf("server token %s, ss -M on the server: %s", cn.ServerToken, want)
	}
	var kinds, events []string
	var nj int64
	for _, sf := range cn.Subflows {
		kinds = append(kinds, sf.Kind)
		if sf.Kind == "join" {
			nj++
			if sf.Token != cn.ServerToken {
				t.Errorf("a join names token %s, not the server's %s", sf.Token, cn.ServerToken)
			}
		}
	}
	for _, e := range cn.Events {
		events = append(events, e.Type)
	}
	if kinds[0] != "initial" || nj != joins {
		t.Errorf("subflows %v: want the initial one first and %d joins (MPJoinSynRx)", kinds, joins)
	}
	// What the server received: the echo of its ADD_ADDR, the client's ADD_ADDR, its REMOVE_ADDR,
	// the MP_PRIO, and an MP_FASTCLOSE on each subflow.
	got := strings.Join(events, " ")
	if want := "add_addr_echo add_addr remove_addr mp_prio mp_fastclose"; !strings.HasPrefix(got, want) {
		t.Errorf("events %q, want them to begin %q", got, want)
	}
	t.Logf("replay --per-connection: tokens %s/%s (ss -M %08x/%08x), subflows %v, events %v", cn.ClientToken, cn.ServerToken, cliTok, srvTok, kinds, events)
}

// TestReplayUnprivileged: without CAP_BPF (as nobody), replay says in one line what it needs and
// what to do; --engine go then counts the same frames as the eBPF program does as root.
func TestReplayUnprivileged(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "mptcp-xdp-replay-") // t.TempDir's parent is closed to others
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "syn.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	// An IPv4 MP_CAPABLE SYN (v1: kind 30, length 4, subtype 0 version 1, flags H).
	eth := &layers.Ethernet{SrcMAC: make([]byte, 6), DstMAC: make([]byte, 6), EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: []byte{10, 0, 0, 1}, DstIP: []byte{10, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 80, SYN: true, Window: 1000,
		Options: []layers.TCPOption{{OptionType: 30, OptionLength: 4, OptionData: []byte{0x01, 0x01}}}}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(b.Bytes()), Length: len(b.Bytes())}, b.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nobody := func(args ...string) result {
		c := exec.CommandContext(ctx, bin, args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return runCmd(t, c)
	}
	r := nobody("replay", file)
	if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "CAP_BPF") || !strings.Contains(r.stderr, "--engine go") {
		t.Errorf("replay as nobody: %v; want one line naming CAP_BPF and --engine go", r)
	}
	r = nobody("replay", file, "--engine", "go", "-o", "json")
	if r.code != 0 {
		t.Fatalf("replay --engine go as nobody: %v", r)
	}
	goCounts := replayJSON(t, r.stdout)
	if goCounts["in.mp_capable_syn"] != 3 || goCounts["in.pkt.mptcp"] != 3 {
		t.Errorf("replay --engine go as nobody: %v, want 3 MP_CAPABLE SYNs", goCounts)
	}
	if bpf := replayCounts(t, file); fmt.Sprint(bpf) != fmt.Sprint(goCounts) {
		t.Errorf("the eBPF program counted %v, the Go parser %v", bpf, goCounts)
	}
}
