package datapath

// The packet table shared by the program tests, the reference-parser test, the fuzz seeds and the
// benchmarks: frames built with gopacket (MPTCP options written as raw TCP option bytes), each with
// the exact counters one pass of the frame must add.

import (
	"fmt"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// counts is one direction's counters, summed over CPUs (the layout of struct mx_counters).
type counts struct {
	Packets [mptcp.NumPacketCounters]uint64
	Options [mptcp.NumClasses]uint64
}

func (c counts) sub(o counts) counts {
	for i := range c.Packets {
		c.Packets[i] -= o.Packets[i]
	}
	for i := range c.Options {
		c.Options[i] -= o.Options[i]
	}
	return c
}

func (c counts) times(n uint64) counts {
	for i := range c.Packets {
		c.Packets[i] *= n
	}
	for i := range c.Options {
		c.Options[i] *= n
	}
	return c
}

// String lists the non-zero counters by name, e.g. "total=1 tcp=1 mptcp=1 dss=2".
func (c counts) String() string {
	s := ""
	for i, v := range c.Packets {
		if v != 0 {
			s += fmt.Sprintf("%s=%d ", mptcp.PacketCounter(i), v)
		}
	}
	for i, v := range c.Options {
		if v != 0 {
			s += fmt.Sprintf("%s=%d ", mptcp.Class(i), v)
		}
	}
	if s == "" {
		return "none"
	}
	return s[:len(s)-1]
}

// fromResult is what the reference parser says one frame adds.
func fromResult(r mptcp.Result) counts {
	return counts{Packets: r.Packets(), Options: r.Options}
}

type pktFlags uint8

const (
	isTCP pktFlags = 1 << iota
	isMPTCP
	notTCP pktFlags = 0
	mp              = isTCP | isMPTCP
)

// want is the counters one frame adds: total 1, tcp/mptcp per flags, one per class listed.
func want(f pktFlags, classes ...mptcp.Class) counts {
	c := counts{}
	c.Packets[mptcp.PacketsTotal] = 1
	if f&isTCP != 0 {
		c.Packets[mptcp.PacketsTCP] = 1
	}
	if f&isMPTCP != 0 {
		c.Packets[mptcp.PacketsMPTCP] = 1
	}
	for _, cl := range classes {
		c.Options[cl]++
	}
	return c
}

// MPTCP options as raw TCP option bytes (kind 30, length, subtype<<4|low, body).

func mpOpt(subtype, low byte, body ...byte) layers.TCPOption {
	data := append([]byte{subtype<<4 | low}, body...)
	return layers.TCPOption{OptionType: 30, OptionLength: uint8(2 + len(data)), OptionData: data}
}

// withLen overrides an option's length byte, leaving its bytes as they are.
func withLen(o layers.TCPOption, n uint8) layers.TCPOption {
	o.OptionLength = n
	return o
}

func zeros(n int) []byte { return make([]byte, n) }

func seq(n int, from byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = from + byte(i)
	}
	return b
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

var (
	key1 = seq(8, 0x11)
	key2 = seq(8, 0x21)

	optMPCSyn    = mpOpt(0, 1, 0x81)
	optMPCSynAck = mpOpt(0, 1, cat([]byte{0x81}, key1)...)
	optMPCAck    = mpOpt(0, 1, cat([]byte{0x81}, key1, key2)...)
	optMPCData   = mpOpt(0, 1, cat([]byte{0x81}, key1, key2, []byte{0x05, 0xdc})...)
	optMPCDataCk = mpOpt(0, 1, cat([]byte{0x81}, key1, key2, []byte{0x05, 0xdc, 0xbe, 0xef})...)
	optJoinSyn   = mpOpt(1, 0, cat([]byte{2}, seq(4, 0xa0), seq(4, 0xb0))...)
	optJoinSynAk = mpOpt(1, 1, cat([]byte{2}, seq(8, 0xc0), seq(4, 0xd0))...)
	optJoinAck   = mpOpt(1, 0, cat([]byte{0}, seq(20, 0xe0))...)
	optMPPrio    = mpOpt(5, 1)
	optMPFail    = mpOpt(6, 0, cat([]byte{0}, seq(8, 1))...)
	optFastclose = mpOpt(7, 0, cat([]byte{0}, key2)...)
	optTCPRst    = mpOpt(8, 1, 3)
	optRmAddr1   = mpOpt(4, 0, 3)
	optRmAddr3   = mpOpt(4, 0, 3, 4, 5)
)

// dss builds a DSS option from its flags, with zero-filled fields of the sizes the flags ask for,
// plus extra bytes (a checksum, or garbage for the wrong-length cases).
func dss(flags byte, extra int) layers.TCPOption {
	n := 0
	if flags&0x01 != 0 {
		n += 4
		if flags&0x02 != 0 {
			n += 4
		}
	}
	if flags&0x04 != 0 {
		n += 10
		if flags&0x08 != 0 {
			n += 4
		}
	}
	return mpOpt(2, 0, cat([]byte{flags}, seq(n+extra, 1))...)
}

// addAddr builds an ADD_ADDR: v6 picks the address size, port adds 2 bytes, echo drops the HMAC.
func addAddr(v6, port, echo bool) layers.TCPOption {
	low := byte(0)
	body := []byte{7} // address id
	if v6 {
		body = append(body, net.ParseIP("2001:db8::7")...)
	} else {
		body = append(body, 192, 0, 2, 7)
	}
	if port {
		body = append(body, 0x1f, 0x90)
	}
	if echo {
		low = 1
	} else {
		body = append(body, seq(8, 0x70)...)
	}
	return mpOpt(3, low, body...)
}

// Common non-MPTCP options.
var (
	optNOP       = layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	optEOL       = layers.TCPOption{OptionType: layers.TCPOptionKindEndList}
	optMSS       = layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}
	optSACKPerm  = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	optTimestamp = layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: seq(8, 0x40)}
	optWScale    = layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}
)

// TCP flag sets.
const (
	fSYN    = "S"
	fSYNACK = "SA"
	fACK    = "A"
	fPSH    = "PA"
	fNone   = ""
)

// rawTCP serializes a TCP header whose option bytes are exactly those given: gopacket's FixLengths
// would rewrite the option length bytes, and the malformed cases need them as written. The data
// offset covers the options padded with EOL to a 4-byte boundary, unless doff overrides it.
type rawTCP struct {
	layers.TCP
	doff uint8
}

func (t *rawTCP) SerializeTo(b gopacket.SerializeBuffer, opts gopacket.SerializeOptions) error {
	n := 0
	for _, o := range t.Options {
		if o.OptionType <= 1 {
			n++
		} else {
			n += 2 + len(o.OptionData)
		}
	}
	t.Padding = zeros((4 - n%4) % 4)
	t.DataOffset = uint8((20 + n + len(t.Padding)) / 4)
	if t.doff != 0 {
		t.DataOffset = t.doff
	}
	opts.FixLengths = false
	return t.TCP.SerializeTo(b, opts)
}

// tagsOf names a VLAN stack by the EtherTypes of its tags, outermost first.
type encap struct {
	name string
	tags []layers.EthernetType
}

var encaps = []encap{
	{"untagged", nil},
	{"dot1q", []layers.EthernetType{layers.EthernetTypeDot1Q}},
	{"dot1ad", []layers.EthernetType{layers.EthernetTypeQinQ}},
	{"dot1q-dot1q", []layers.EthernetType{layers.EthernetTypeDot1Q, layers.EthernetTypeDot1Q}},
	{"dot1ad-dot1q", []layers.EthernetType{layers.EthernetTypeQinQ, layers.EthernetTypeDot1Q}},
}

// pkt describes one frame to build.
type pkt struct {
	v6       bool
	tags     []layers.EthernetType
	ipOpts   []layers.IPv4Option // IPv4 options (IHL > 5)
	fragOff  uint16              // IPv4 fragment offset (8-byte units)
	moreFrag bool
	ext      [][]byte // IPv6 extension headers, raw, each starting with its next-header byte
	proto    byte     // L4 protocol, TCP when 0
	flags    string
	opts     []layers.TCPOption
	doff     uint8
	payload  []byte
}

// ext6 builds an IPv6 extension header of the given kind (0 hop-by-hop, 43 routing, 60 destination
// options, 51 AH) with n 8-octet units (4-octet units for AH) after the first, padded with PadN.
func ext6(kind byte, n int) []byte {
	var b []byte
	if kind == 51 {
		b = make([]byte, (n+2)*4)
		b[1] = byte(n)
	} else {
		b = make([]byte, (n+1)*8)
		b[1] = byte(n)
		if kind == 43 {
			b[2], b[3] = 4, 0 // segment routing header, no segments left
		} else {
			for i := 2; i < len(b); { // PadN options (Pad1 for a last single byte)
				if len(b)-i == 1 {
					break
				}
				n := min(len(b)-i-2, 255)
				b[i], b[i+1] = 1, byte(n)
				i += 2 + n
			}
		}
	}
	b[0] = kind // placeholder: the builder writes the real next header
	return b
}

// frag6 builds an IPv6 fragment header.
func frag6(offset uint16, more bool) []byte {
	b := make([]byte, 8)
	b[0] = 44
	v := offset << 3
	if more {
		v |= 1
	}
	b[2], b[3] = byte(v>>8), byte(v)
	b[4], b[5], b[6], b[7] = 0, 0, 0x12, 0x34
	return b
}

func (p pkt) build(tb testing.TB) []byte {
	tb.Helper()
	var ls []gopacket.SerializableLayer
	eth := &layers.Ethernet{
		SrcMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 1},
		DstMAC: net.HardwareAddr{0x02, 0, 0, 0, 0, 2},
	}
	l3type := layers.EthernetTypeIPv4
	if p.v6 {
		l3type = layers.EthernetTypeIPv6
	}
	ls = append(ls, eth)
	next := &eth.EthernetType
	for i, tag := range p.tags {
		*next = tag
		q := &layers.Dot1Q{VLANIdentifier: uint16(100 + i)}
		ls = append(ls, q)
		next = &q.Type
	}
	*next = l3type

	proto := layers.IPProtocol(p.proto)
	if p.proto == 0 {
		proto = layers.IPProtocolTCP
	}
	var netLayer gopacket.NetworkLayer
	if p.v6 {
		ip := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: proto,
			SrcIP: net.ParseIP("2001:db8::1"), DstIP: net.ParseIP("2001:db8::2"),
		}
		ls = append(ls, ip)
		netLayer = ip
		prev := &ip.NextHeader
		for _, e := range p.ext {
			h := append([]byte(nil), e...)
			*prev = layers.IPProtocol(h[0])
			h[0] = byte(proto)
			ls = append(ls, gopacket.Payload(h))
			prev = (*layers.IPProtocol)(&h[0])
		}
	} else {
		ip := &layers.IPv4{
			Version: 4, TTL: 64, Protocol: proto, Id: 0x1234, Options: p.ipOpts,
			FragOffset: p.fragOff,
			SrcIP:      net.IPv4(192, 0, 2, 1), DstIP: net.IPv4(192, 0, 2, 2),
		}
		if p.moreFrag {
			ip.Flags = layers.IPv4MoreFragments
		}
		ls = append(ls, ip)
		netLayer = ip
	}

	if proto == layers.IPProtocolTCP {
		t := &rawTCP{TCP: layers.TCP{SrcPort: 40000, DstPort: 443, Seq: 1000, Ack: 2000, Window: 512, Options: p.opts}, doff: p.doff}
		for _, f := range p.flags {
			switch f {
			case 'S':
				t.SYN = true
			case 'A':
				t.ACK = true
			case 'P':
				t.PSH = true
			case 'F':
				t.FIN = true
			case 'R':
				t.RST = true
			}
		}
		if err := t.SetNetworkLayerForChecksum(netLayer); err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, t)
	}
	ls = append(ls, gopacket.Payload(p.payload))

	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// packetCase is one row of the table.
type packetCase struct {
	name  string
	frame []byte
	want  counts // what one pass of the frame adds
}

// optCase is a TCP segment (flags and options) and the counters it must produce, to be wrapped in
// every encapsulation.
type optCase struct {
	name  string
	flags string
	opts  []layers.TCPOption
	want  counts
}

func optionCases() []optCase {
	c := []optCase{
		// Every class.
		{"mp_capable_syn", fSYN, []layers.TCPOption{optMSS, optSACKPerm, optTimestamp, optNOP, optWScale, optMPCSyn}, want(mp, mptcp.MPCapableSYN)},
		{"mp_capable_synack", fSYNACK, []layers.TCPOption{optMSS, optNOP, optNOP, optSACKPerm, optNOP, optWScale, optMPCSynAck}, want(mp, mptcp.MPCapableSYNACK)},
		{"mp_capable_ack", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, optMPCAck}, want(mp, mptcp.MPCapableACK)},
		{"mp_capable_data", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, optMPCData}, want(mp, mptcp.MPCapableData)},
		{"mp_capable_data_csum", fPSH, []layers.TCPOption{optMPCDataCk}, want(mp, mptcp.MPCapableData)},
		{"mp_join_syn", fSYN, []layers.TCPOption{optMSS, optSACKPerm, optTimestamp, optNOP, optWScale, optJoinSyn}, want(mp, mptcp.MPJoinSYN)},
		{"mp_join_synack", fSYNACK, []layers.TCPOption{optMSS, optSACKPerm, optNOP, optWScale, optJoinSynAk}, want(mp, mptcp.MPJoinSYNACK)},
		{"mp_join_ack", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, optJoinAck}, want(mp, mptcp.MPJoinACK)},
		{"dss_ack", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x01, 0)}, want(mp, mptcp.DSS)},
		{"dss_ack64_map64", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0)}, want(mp, mptcp.DSS)},
		{"dss_map_csum", fPSH, []layers.TCPOption{dss(0x05, 2)}, want(mp, mptcp.DSS)},
		{"dss_fin_map64_csum", fPSH, []layers.TCPOption{dss(0x1f, 2)}, want(mp, mptcp.DSS)},
		{"dss_no_flags", fACK, []layers.TCPOption{dss(0, 0)}, want(mp, mptcp.DSS)},
		{"add_addr_v4", fACK, []layers.TCPOption{addAddr(false, false, false)}, want(mp, mptcp.AddAddr)},
		{"add_addr_v4_port", fACK, []layers.TCPOption{addAddr(false, true, false)}, want(mp, mptcp.AddAddr)},
		{"add_addr_v6", fACK, []layers.TCPOption{addAddr(true, false, false)}, want(mp, mptcp.AddAddr)},
		{"add_addr_v6_port", fACK, []layers.TCPOption{addAddr(true, true, false)}, want(mp, mptcp.AddAddr)},
		{"add_addr_echo_v4", fACK, []layers.TCPOption{addAddr(false, false, true)}, want(mp, mptcp.AddAddrEcho)},
		{"add_addr_echo_v4_port", fACK, []layers.TCPOption{addAddr(false, true, true)}, want(mp, mptcp.AddAddrEcho)},
		{"add_addr_echo_v6", fACK, []layers.TCPOption{addAddr(true, false, true)}, want(mp, mptcp.AddAddrEcho)},
		{"add_addr_echo_v6_port", fACK, []layers.TCPOption{addAddr(true, true, true)}, want(mp, mptcp.AddAddrEcho)},
		{"remove_addr", fACK, []layers.TCPOption{optRmAddr1}, want(mp, mptcp.RemoveAddr)},
		{"remove_addr_3", fACK, []layers.TCPOption{optRmAddr3}, want(mp, mptcp.RemoveAddr)},
		{"mp_prio", fACK, []layers.TCPOption{optNOP, optMPPrio}, want(mp, mptcp.MPPrio)},
		{"mp_fail", fACK, []layers.TCPOption{optMPFail}, want(mp, mptcp.MPFail)},
		{"mp_fastclose", fACK, []layers.TCPOption{optFastclose}, want(mp, mptcp.MPFastclose)},
		{"mp_fastclose_rst", "RA", []layers.TCPOption{optFastclose, optTCPRst}, want(mp, mptcp.MPFastclose, mptcp.MPTCPRst)},
		{"mp_tcprst", "R", []layers.TCPOption{optTCPRst}, want(mp, mptcp.MPTCPRst)},

		// The DSS layouts Linux sends after NOP, NOP, timestamps (mptcp_write_options), which XDP
		// recognizes without a walk (mx_dss_layout), and shapes next to them that it must not.
		{"linux_dss_ack64", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x03, 0)}, want(mp, mptcp.DSS)},
		{"linux_dss_map64_nop_nop", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0), optNOP, optNOP}, want(mp, mptcp.DSS)},
		{"linux_dss_map64_nop_eol", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0), optNOP, optEOL}, want(mp, mptcp.DSS)},
		{"linux_dss_fin_map64", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x1f, 0), optNOP, optNOP}, want(mp, mptcp.DSS)},
		{"linux_dss_map64_csum", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 2)}, want(mp, mptcp.DSS)},
		{"linux_dss_fin_map64_csum", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x1f, 2)}, want(mp, mptcp.DSS)},
		{"dss_map64_then_short_mptcp", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0), {OptionType: 30, OptionLength: 2}}, want(mp, mptcp.DSS, mptcp.Malformed)},
		{"dss_map64_then_sack_perm", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0), optSACKPerm}, want(mp, mptcp.DSS)},
		{"dss_map64_then_prio", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0c, 0), optMPPrio}, want(mp, mptcp.DSS, mptcp.MPPrio)},
		{"dss_ack64_then_nop_prio", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x03, 0), optNOP, optMPPrio}, want(mp, mptcp.DSS, mptcp.MPPrio)},
		{"dss_ack64_bad_len", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, withLen(dss(0x03, 0), 11), optNOP}, want(mp, mptcp.Malformed, mptcp.Malformed)},
		{"ts_then_mp_fail", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp, optMPFail}, want(mp, mptcp.MPFail)},
		{"ts_then_dss_reserved_bits", fPSH, []layers.TCPOption{optNOP, optNOP, optTimestamp, mpOpt(2, 0x3, cat([]byte{0x0f}, seq(22, 1))...), optNOP, optNOP}, want(mp, mptcp.DSS)},

		// Plain TCP and non-MPTCP shapes.
		{"plain_tcp", fACK, []layers.TCPOption{optNOP, optNOP, optTimestamp}, want(isTCP)},
		{"plain_syn", fSYN, []layers.TCPOption{optMSS, optSACKPerm, optTimestamp, optNOP, optWScale}, want(isTCP)},
		{"no_options", fACK, nil, want(isTCP)},
		{"eol_hides_rest", fACK, []layers.TCPOption{optNOP, optEOL, optNOP, dss(0x01, 0)}, want(isTCP)},

		// Several MPTCP options in one segment: each counts once in its class.
		{"multi_dss_addaddr_prio", fACK, []layers.TCPOption{dss(0x01, 0), addAddr(false, false, false), optMPPrio, optRmAddr1}, want(mp, mptcp.DSS, mptcp.AddAddr, mptcp.MPPrio, mptcp.RemoveAddr)},
		{"multi_two_dss", fACK, []layers.TCPOption{dss(0x01, 0), dss(0x05, 0)}, want(mp, mptcp.DSS, mptcp.DSS)},
		{"multi_mpc_ack_dss", fACK, []layers.TCPOption{optMPCAck, dss(0x03, 0)}, want(mp, mptcp.MPCapableACK, mptcp.DSS)},
		{"multi_good_then_bad", fACK, []layers.TCPOption{optMPPrio, withLen(dss(0x01, 0), 9), optNOP}, want(mp, mptcp.MPPrio, mptcp.Malformed)},

		// Malformed options.
		{"opt_len0_mptcp", fACK, []layers.TCPOption{withLen(dss(0x01, 0), 0)}, want(mp, mptcp.Malformed)},
		{"opt_len1_mptcp", fACK, []layers.TCPOption{withLen(dss(0x01, 0), 1)}, want(mp, mptcp.Malformed)},
		{"opt_len0_other_stops_walk", fACK, []layers.TCPOption{withLen(optMSS, 0), dss(0x01, 0)}, want(isTCP, mptcp.Malformed)},
		{"opt_len1_other_stops_walk", fACK, []layers.TCPOption{withLen(optMSS, 1), dss(0x01, 0)}, want(isTCP, mptcp.Malformed)},
		{"opt_len2_mptcp_no_subtype", fACK, []layers.TCPOption{{OptionType: 30, OptionLength: 2}}, want(mp, mptcp.Malformed)},
		{"opt_past_header", fACK, []layers.TCPOption{optNOP, optNOP, withLen(dss(0x01, 0), 12)}, want(mp, mptcp.Malformed)},
		{"opt_other_past_header", fACK, []layers.TCPOption{withLen(optTimestamp, 14), optNOP, optNOP}, want(isTCP, mptcp.Malformed)},
		{"wrong_len_mpc_syn", fSYN, []layers.TCPOption{optMPCSynAck}, want(mp, mptcp.Malformed)},
		{"wrong_len_mpc_synack", fSYNACK, []layers.TCPOption{optMPCSyn}, want(mp, mptcp.Malformed)},
		{"wrong_len_mpc_ack", fACK, []layers.TCPOption{optMPCSynAck}, want(mp, mptcp.Malformed)},
		{"wrong_len_join_syn", fSYN, []layers.TCPOption{optJoinSynAk}, want(mp, mptcp.Malformed)},
		{"wrong_len_join_synack", fSYNACK, []layers.TCPOption{optJoinSyn}, want(mp, mptcp.Malformed)},
		{"wrong_len_join_ack", fACK, []layers.TCPOption{optJoinSyn}, want(mp, mptcp.Malformed)},
		{"wrong_len_dss_short", fACK, []layers.TCPOption{dss(0x05, -1)}, want(mp, mptcp.Malformed)},
		{"wrong_len_dss_csum_without_map", fACK, []layers.TCPOption{dss(0x01, 2)}, want(mp, mptcp.Malformed)},
		{"wrong_len_dss_3", fACK, []layers.TCPOption{mpOpt(2, 0)}, want(mp, mptcp.Malformed)},
		{"wrong_len_add_addr", fACK, []layers.TCPOption{mpOpt(3, 0, seq(12, 1)...)}, want(mp, mptcp.Malformed)},
		{"wrong_len_add_addr_echo_with_hmac", fACK, []layers.TCPOption{mpOpt(3, 1, seq(13, 1)...)}, want(mp, mptcp.Malformed)},
		{"wrong_len_remove_addr_empty", fACK, []layers.TCPOption{mpOpt(4, 0)}, want(mp, mptcp.Malformed)},
		{"wrong_len_mp_prio", fACK, []layers.TCPOption{mpOpt(5, 0, 1)}, want(mp, mptcp.Malformed)},
		{"wrong_len_mp_fail", fACK, []layers.TCPOption{mpOpt(6, 0, seq(8, 1)...)}, want(mp, mptcp.Malformed)},
		{"wrong_len_fastclose", fACK, []layers.TCPOption{mpOpt(7, 0, seq(10, 1)...)}, want(mp, mptcp.Malformed)},
		{"wrong_len_tcprst", fACK, []layers.TCPOption{mpOpt(8, 0)}, want(mp, mptcp.Malformed)},
		{"unknown_subtype_9", fACK, []layers.TCPOption{mpOpt(9, 0, 0)}, want(mp, mptcp.Malformed)},
		{"unknown_subtype_15", fACK, []layers.TCPOption{mpOpt(15, 0, seq(6, 1)...)}, want(mp, mptcp.Malformed)},
	}
	return c
}

// packetCases is the whole table: every option case on IPv4 and IPv6 in every VLAN encapsulation,
// then the cases about the headers around the options.
func packetCases(tb testing.TB) []packetCase {
	var cases []packetCase
	for _, v6 := range []bool{false, true} {
		fam := "v4"
		if v6 {
			fam = "v6"
		}
		for _, e := range encaps {
			for _, oc := range optionCases() {
				f := pkt{v6: v6, tags: e.tags, flags: oc.flags, opts: oc.opts, payload: []byte("mptcp")}.build(tb)
				cases = append(cases, packetCase{fam + "/" + e.name + "/" + oc.name, f, oc.want})
			}
		}
	}
	return append(cases, headerCases(tb)...)
}

func headerCases(tb testing.TB) []packetCase {
	tagged := []layers.EthernetType{layers.EthernetTypeQinQ, layers.EthernetTypeDot1Q}
	dssOpts := []layers.TCPOption{optNOP, optNOP, optTimestamp, dss(0x0f, 0)}
	ack4 := pkt{flags: fACK, opts: dssOpts, payload: []byte("data")}
	ack6 := pkt{v6: true, flags: fACK, opts: dssOpts, payload: []byte("data")}
	withExt := func(p pkt, ext ...[]byte) pkt { p.ext = ext; return p }
	withTags := func(p pkt, t []layers.EthernetType) pkt { p.tags = t; return p }
	ipOpt := func(kind, n uint8) layers.IPv4Option {
		return layers.IPv4Option{OptionType: kind, OptionLength: n, OptionData: zeros(int(n) - 2)}
	}
	patch := func(f []byte, off int, b byte) []byte { f[off] = b; return f }
	b := func(p pkt) []byte { return p.build(tb) }

	ninth := make([][]byte, 0, 9)
	for range 9 {
		ninth = append(ninth, ext6(60, 0))
	}

	cases := []packetCase{
		// Non-IP, non-TCP.
		{"arp", func() []byte {
			f := b(ack4)
			f[12], f[13] = 0x08, 0x06
			return f
		}(), want(notTCP)},
		{"three_vlan_tags_not_followed", b(withTags(ack4, []layers.EthernetType{0x8100, 0x8100, 0x8100})), want(notTCP)},
		{"v4_udp", b(pkt{proto: 17, payload: zeros(16)}), want(notTCP)},
		{"v6_udp", b(pkt{v6: true, proto: 17, payload: zeros(16)}), want(notTCP)},
		{"v6_no_next_header", b(pkt{v6: true, proto: 59}), want(notTCP)},
		{"v6_ext_then_udp", b(pkt{v6: true, proto: 17, ext: [][]byte{ext6(0, 1), ext6(60, 0)}, payload: zeros(8)}), want(notTCP)},

		// IPv4 options (IHL > 5).
		{"v4_ihl6_router_alert", b(pkt{ipOpts: []layers.IPv4Option{ipOpt(148, 4)}, flags: fSYN, opts: []layers.TCPOption{optMPCSyn}}), want(mp, mptcp.MPCapableSYN)},
		{"v4_ihl15", b(pkt{ipOpts: []layers.IPv4Option{ipOpt(7, 39), {OptionType: 0}}, flags: fACK, opts: dssOpts}), want(mp, mptcp.DSS)},
		{"v4_ihl15_tagged", b(withTags(pkt{ipOpts: []layers.IPv4Option{ipOpt(68, 36), {OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}, flags: fACK, opts: []layers.TCPOption{optJoinAck}}, tagged)), want(mp, mptcp.MPJoinACK)},
		{"v4_ihl4", patch(b(ack4), 14, 0x44), want(notTCP, mptcp.Malformed)},
		{"v4_ihl0", patch(b(ack4), 14, 0x40), want(notTCP, mptcp.Malformed)},
		{"v4_version6", patch(b(ack4), 14, 0x65), want(notTCP, mptcp.Malformed)},
		{"v4_ihl_past_end", patch(b(pkt{proto: 17}), 14, 0x4f), want(notTCP, mptcp.Malformed)},

		// IPv4 fragments.
		{"v4_first_fragment", b(pkt{moreFrag: true, flags: fSYN, opts: []layers.TCPOption{optJoinSyn}}), want(mp, mptcp.MPJoinSYN)},
		{"v4_later_fragment", b(pkt{fragOff: 185, flags: fSYN, opts: []layers.TCPOption{optJoinSyn}}), want(notTCP)},
		{"v4_later_fragment_more", b(pkt{fragOff: 1, moreFrag: true, flags: fACK, opts: []layers.TCPOption{withLen(optNOP, 0)}}), want(notTCP)},
		{"v4_later_fragment_bad_tcp", patch(b(pkt{fragOff: 3, flags: fACK}), 14+20+12, 0x10), want(notTCP)},

		// IPv6 extension headers.
		{"v6_hopbyhop", b(withExt(ack6, ext6(0, 0))), want(mp, mptcp.DSS)},
		{"v6_routing", b(withExt(ack6, ext6(43, 2))), want(mp, mptcp.DSS)},
		{"v6_destopts", b(withExt(ack6, ext6(60, 1))), want(mp, mptcp.DSS)},
		{"v6_ah", b(withExt(ack6, ext6(51, 4))), want(mp, mptcp.DSS)},
		{"v6_fragment_first", b(withExt(ack6, frag6(0, true))), want(mp, mptcp.DSS)},
		{"v6_fragment_later", b(withExt(ack6, frag6(100, false))), want(notTCP)},
		{"v6_fragment_later_more", b(withExt(ack6, frag6(1, true))), want(notTCP)},
		{"v6_all_kinds_tagged", b(withTags(withExt(ack6, ext6(0, 0), ext6(60, 0), ext6(43, 0), frag6(0, true), ext6(51, 1), ext6(60, 2)), tagged)), want(mp, mptcp.DSS)},
		{"v6_hop_then_later_fragment", b(withExt(ack6, ext6(0, 0), frag6(2, false))), want(notTCP)},
		{"v6_eight_ext_headers", b(withExt(ack6, ninth[:8]...)), want(mp, mptcp.DSS)},
		{"v6_nine_ext_headers", b(withExt(ack6, ninth...)), want(notTCP, mptcp.Malformed)},
		{"v6_nine_ext_headers_udp", b(withExt(pkt{v6: true, proto: 17, payload: zeros(8)}, ninth...)), want(notTCP, mptcp.Malformed)},
		{"v6_version4", patch(b(ack6), 14, 0x40), want(notTCP, mptcp.Malformed)},

		// The datapath looks for headers no deeper than MaxL4Offset (1024) bytes into the frame.
		{"v6_tcp_at_1022", b(withExt(ack6, ext6(60, 120))), want(mp, mptcp.DSS)},
		{"v6_tcp_at_1026", b(withExt(ack6, ext6(51, 241))), want(isTCP, mptcp.Malformed)},
		{"v6_ext_at_1078", b(withExt(ack6, ext6(60, 127), ext6(60, 0))), want(notTCP, mptcp.Malformed)},

		// TCP data offset.
		{"tcp_doff4", b(pkt{flags: fACK, opts: dssOpts, doff: 4}), want(isTCP, mptcp.Malformed)},
		{"tcp_doff0", b(pkt{v6: true, flags: fACK, doff: 0x10}), want(isTCP, mptcp.Malformed)}, // doff 16 wraps to 0 in the nibble
		{"tcp_doff_past_end", b(pkt{flags: fACK, opts: []layers.TCPOption{optMPPrio}, doff: 15}), want(isTCP, mptcp.Malformed)},
		{"tcp_doff_short_hides_option", b(pkt{flags: fACK, opts: []layers.TCPOption{optNOP, optNOP, optNOP, optNOP, dss(0x01, 0)}, doff: 6}), want(isTCP)},
		{"tcp_doff_cuts_option", b(pkt{flags: fACK, opts: []layers.TCPOption{optNOP, optNOP, dss(0x01, 0)}, doff: 7}), want(mp, mptcp.Malformed)},
		// The header ends right after a kind-30 byte: its length byte is payload.
		{"tcp_kind30_last_byte", b(pkt{flags: fACK, opts: []layers.TCPOption{optNOP, optNOP, optNOP, {OptionType: 30, OptionLength: 30}}, doff: 6}), want(mp, mptcp.Malformed)},
		{"tcp_max_options_nops", b(pkt{flags: fACK, opts: append(nops(36), optMPPrio, optNOP)}), want(mp, mptcp.MPPrio)},
		{"tcp_max_options_mptcp", b(pkt{flags: fACK, opts: []layers.TCPOption{optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1, optRmAddr1}}), want(mp, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr, mptcp.RemoveAddr)},
	}

	// Truncated frames: a valid frame cut inside each header counts one malformed.
	tv4 := b(withTags(pkt{ipOpts: []layers.IPv4Option{ipOpt(148, 4)}, flags: fACK, opts: dssOpts}, tagged))
	tv6 := b(withTags(withExt(ack6, ext6(0, 1), frag6(0, true)), tagged))
	l2 := 14 + 8
	for _, tc := range []struct {
		name string
		f    []byte
		n    int
		tcp  bool
	}{
		{"eth", tv4, 13, false}, // Go only: BPF_PROG_TEST_RUN wants an Ethernet header
		{"first_tag", tv4, 16, false},
		{"second_tag", tv4, 20, false},
		{"v4_header", tv4, l2 + 19, false},
		{"v4_options", tv4, l2 + 23, false},
		{"v4_tcp_header", tv4, l2 + 24 + 19, true},
		{"v4_tcp_options", tv4, l2 + 24 + 20 + 30, true},
		{"v4_tcp_last_option_byte", tv4, l2 + 24 + 20 + 39, true},
		{"v6_header", tv6, l2 + 39, false},
		{"v6_ext_first_bytes", tv6, l2 + 40 + 1, false},
		{"v6_ext_body", tv6, l2 + 40 + 15, false},
		{"v6_fragment_header", tv6, l2 + 40 + 16 + 7, false},
		{"v6_tcp_header", tv6, l2 + 40 + 24 + 10, true},
		{"v6_tcp_options", tv6, l2 + 40 + 24 + 21, true},
	} {
		f := append([]byte(nil), tc.f[:tc.n]...)
		w := want(notTCP, mptcp.Malformed)
		if tc.tcp {
			w = want(isTCP, mptcp.Malformed)
		}
		cases = append(cases, packetCase{"truncated_" + tc.name, f, w})
	}
	// An extension header longer than the frame, with no TCP after it.
	cases = append(cases, packetCase{"truncated_v6_ext_before_udp", func() []byte {
		f := b(pkt{v6: true, proto: 17, ext: [][]byte{ext6(60, 0)}, payload: zeros(8)})
		f[14+40+1] = 4 // the destination options header now claims 40 bytes
		return f
	}(), want(notTCP, mptcp.Malformed)})
	return cases
}

func nops(n int) []layers.TCPOption {
	o := make([]layers.TCPOption, n)
	for i := range o {
		o[i] = optNOP
	}
	return o
}
