package test

// Wireshark's dissector as an oracle for replay: tshark reads the same capture file and its MPTCP
// fields are turned into the datapath's counters, so that each file is counted by two parsers that
// share no code.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// tsharkFields are the fields read per frame, in order.
var tsharkFields = []string{
	"frame.number",
	"tcp.flags.syn",
	"tcp.flags.ack",
	"tcp.option_kind",              // every TCP option's kind
	"tcp.options.mptcp.subtype",    // one per MPTCP option, in order
	"tcp.options.mptcp.echo",       // one per ADD_ADDR
	"tcp.options.mptcp.recvkey",    // MP_CAPABLE's second key (third ACK, or its data form)
	"tcp.options.mptcp.datalvllen", // a mapping's data-level length (DSS, or MP_CAPABLE's data form)
	"icmp.type", "icmpv6.type",     // a TCP header quoted in an ICMP error is not a segment
	"_ws.malformed", "_ws.expert.message",
}

// tsharkCounts dissects file with tshark and returns the counters the datapath's rules give for
// what Wireshark decoded, named as replayJSON names them ("in.<class>", "in.pkt.<counter>"). It
// holds for captures of well-formed traffic, such as the kernel sends: a frame Wireshark calls
// malformed fails the test rather than being guessed at.
func tsharkCounts(t *testing.T, file, dir string) map[string]int64 {
	t.Helper()
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Fatalf("tshark is needed to check replay against Wireshark's dissector (.ci/run installs it: apt-get install tshark): %v", err)
	}
	args := []string{"-n", "-r", file,
		// Each frame on its own, as the datapath sees it: no reassembly of IP fragments or of TCP
		// streams, no MPTCP analysis across frames.
		"-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE", "-o", "tcp.desegment_tcp_streams:FALSE",
		"-o", "mptcp.analyze_mptcp:FALSE",
		"-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"}
	for _, f := range tsharkFields {
		args = append(args, "-e", f)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(tshark, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tshark -r %s: %v: %s", file, err, stderr.String())
	}
	m := map[string]int64{}
	for _, line := range strings.Split(strings.TrimRight(stdout.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		col := strings.Split(line, "\t")
		if len(col) != len(tsharkFields) {
			t.Fatalf("tshark: %d fields, want %d: %q", len(col), len(tsharkFields), line)
		}
		list := func(i int) []string {
			if col[i] == "" {
				return nil
			}
			return strings.Split(col[i], ",")
		}
		m[dir+".pkt.total"]++
		if col[10] != "" {
			t.Fatalf("%s: Wireshark calls frame %s malformed (%s)", file, col[0], col[11])
		}
		if col[8] != "" || col[9] != "" || len(list(1)) == 0 {
			continue // no TCP, or only a TCP header quoted in an ICMP error
		}
		m[dir+".pkt.tcp"]++
		kinds := list(3)
		mptcp := false
		for _, k := range kinds {
			mptcp = mptcp || k == "30"
		}
		if !mptcp {
			continue
		}
		m[dir+".pkt.mptcp"]++
		syn, ack := col[1] == "1", col[2] == "1"
		echo := list(5)
		for _, st := range list(4) {
			var class string
			switch st {
			case "0":
				switch {
				case syn && !ack:
					class = "mp_capable_syn"
				case syn:
					class = "mp_capable_synack"
				case col[6] == "":
					t.Fatalf("%s: frame %s: an MP_CAPABLE without SYN and without the receiver's key", file, col[0])
				case col[7] != "":
					class = "mp_capable_data"
				default:
					class = "mp_capable_ack"
				}
			case "1":
				switch {
				case syn && !ack:
					class = "mp_join_syn"
				case syn:
					class = "mp_join_synack"
				default:
					class = "mp_join_ack"
				}
			case "2":
				class = "dss"
			case "3":
				if len(echo) == 0 {
					t.Fatalf("%s: frame %s: an ADD_ADDR without its echo flag", file, col[0])
				}
				class = "add_addr"
				if echo[0] == "1" {
					class = "add_addr_echo"
				}
				echo = echo[1:]
			case "4":
				class = "remove_addr"
			case "5":
				class = "mp_prio"
			case "6":
				class = "mp_fail"
			case "7":
				class = "mp_fastclose"
			case "8":
				class = "mp_tcprst"
			default:
				t.Fatalf("%s: frame %s: MPTCP subtype %s", file, col[0], st)
			}
			m[dir+"."+class]++
		}
	}
	return m
}

// tsharkEqualsReplay requires replay's counters for file (got, as replayJSON reads them) to equal
// Wireshark's. Classes neither counted are left out of both.
func tsharkEqualsReplay(t *testing.T, file string, got map[string]int64) {
	t.Helper()
	want := tsharkCounts(t, file, "in")
	var diff []string
	for k, v := range got {
		if v != want[k] {
			diff = append(diff, k)
		}
	}
	for k, v := range want {
		if _, ok := got[k]; !ok && v != 0 {
			diff = append(diff, k)
		}
	}
	if len(diff) != 0 {
		for _, k := range diff {
			t.Errorf("%s: %s: replay %d, tshark %d", file, k, got[k], want[k])
		}
		return
	}
	t.Logf("%s: replay equals Wireshark's dissector: %d frames, %d MPTCP, %d DSS, %d ADD_ADDR, %d MP_JOIN SYN",
		file, got["in.pkt.total"], got["in.pkt.mptcp"], got["in.dss"], got["in.add_addr"], got["in.mp_join_syn"])
}

// vlanCopy writes a copy of the Ethernet capture file with every frame tagged: one 802.1Q tag
// (VLAN 10), or with qinq an 802.1ad tag (VLAN 20) outside it. This kernel has no 8021q driver
// ("Unknown device type"), so tagged traffic is made from the lab's real frames this way.
func vlanCopy(t *testing.T, file string, qinq bool) string {
	t.Helper()
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	r, err := pcapgo.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("%s: link type %v, want Ethernet", file, r.LinkType())
	}
	name := strings.TrimSuffix(file, ".pcap") + "-vlan.pcap"
	tag := []byte{0x81, 0x00, 0x00, 10}
	if qinq {
		name = strings.TrimSuffix(file, ".pcap") + "-qinq.pcap"
		tag = []byte{0x88, 0xa8, 0x00, 20, 0x81, 0x00, 0x00, 10}
	}
	out, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w := pcapgo.NewWriter(out)
	if err := w.WriteFileHeader(r.Snaplen()+uint32(len(tag)), layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(data) < 14 {
			t.Fatalf("%s: a %d-byte frame", file, len(data))
		}
		tagged := append(append(append([]byte{}, data[:12]...), tag...), data[12:]...)
		ci.CaptureLength += len(tag)
		ci.Length += len(tag)
		if err := w.WritePacket(ci, tagged); err != nil {
			t.Fatal(err)
		}
	}
	return name
}

// vlanEqualsUntagged requires replay to count the tagged copies of file (vlanCopy) exactly as
// it counts file (untagged: replay's counters for it), and Wireshark to agree on each copy.
func vlanEqualsUntagged(t *testing.T, file string, untagged map[string]int64) {
	t.Helper()
	for _, qinq := range []bool{false, true} {
		tagged := vlanCopy(t, file, qinq)
		got := replayCounts(t, tagged)
		if fmt.Sprint(got) != fmt.Sprint(untagged) {
			t.Errorf("%s: replay counted %v, the untagged frames %v", tagged, got, untagged)
		}
		tsharkEqualsReplay(t, tagged, got)
	}
}
