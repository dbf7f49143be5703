package refbench

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	clientMAC = net.HardwareAddr{0x02, 0xc1, 0, 0, 0, 0x01}
	lbMAC     = net.HardwareAddr{0x02, 0x1b, 0, 0, 0, 0x01}
)

// TCP options of the frames, as Linux sends them.
var (
	optNOP  = layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	optTS   = layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0x10, 0, 0, 0, 0x20, 0}}
	optMSS  = layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}}
	optSACK = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2}
	optWS   = layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}}
)

func mptcpOpt(data ...byte) layers.TCPOption {
	return layers.TCPOption{OptionType: 30, OptionLength: uint8(2 + len(data)), OptionData: data}
}

// MPTCP options (RFC 8684): MP_CAPABLE v1 on a SYN; MP_CAPABLE with both keys (third ACK); MP_JOIN
// SYN (address id 1, token, nonce); DSS with a 64-bit data ACK.
func optMPCSYN() layers.TCPOption { return mptcpOpt(0x01, 0x81) }
func optMPCACK(skey, rkey uint64) layers.TCPOption {
	d := []byte{0x01, 0x81}
	d = binary.BigEndian.AppendUint64(d, skey)
	return mptcpOpt(binary.BigEndian.AppendUint64(d, rkey)...)
}
func optJoinSYN(token, nonce uint32) layers.TCPOption {
	d := binary.BigEndian.AppendUint32([]byte{0x10, 0x01}, token)
	return mptcpOpt(binary.BigEndian.AppendUint32(d, nonce)...)
}
func optDSSAck() layers.TCPOption { return mptcpOpt(0x20, 0x03, 0, 0, 0, 0, 0, 0, 0x12, 0x34) }

// The options of each kind of frame.
var (
	optsACK    = []layers.TCPOption{optNOP, optNOP, optTS}
	optsDSS    = []layers.TCPOption{optNOP, optNOP, optTS, optDSSAck()}
	optsSYN    = []layers.TCPOption{optMSS, optSACK, optTS, optNOP, optWS, optMPCSYN()}
	optsMPCACK = func(skey, rkey uint64) []layers.TCPOption {
		return []layers.TCPOption{optNOP, optNOP, optTS, optMPCACK(skey, rkey)}
	}
	optsJoin = func(token uint32) []layers.TCPOption {
		return []layers.TCPOption{optMSS, optSACK, optTS, optNOP, optWS, optJoinSYN(token, 0x5eed)}
	}
)

// seg is one TCP segment from a client to a VIP.
type seg struct {
	src, dst netip.AddrPort
	syn, ack bool
	opts     []layers.TCPOption
}

func (s seg) frame(tb testing.TB) []byte {
	tb.Helper()
	tcp := &layers.TCP{SrcPort: layers.TCPPort(s.src.Port()), DstPort: layers.TCPPort(s.dst.Port()),
		Seq: 1000, Ack: 2000, SYN: s.syn, ACK: s.ack, Window: 502, Options: s.opts}
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: layers.EthernetTypeIPv4}
	var ipl gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip4)
		ipl = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip6)
		ipl = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ipl, tcp); err != nil {
		tb.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// clientAddr is client i of family v6: distinct addresses and ports for up to 2^32 clients.
func clientAddr(i uint32, v6 bool) netip.AddrPort {
	port := uint16(1024 + i%60000)
	hi := i / 60000
	if v6 {
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0xc1, 12: byte(hi >> 24), 13: byte(hi >> 16), 14: byte(hi >> 8), 15: byte(hi)}), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64 + byte(hi>>16), byte(hi >> 8), byte(hi)}), port)
}
