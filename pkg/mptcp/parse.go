package mptcp

import "encoding/binary"

// This file is the reference parser: a plain-Go reading of the wire formats in DESIGN.md (RFC 8684
// for the MPTCP option, the usual Ethernet/802.1Q/IPv4/IPv6/TCP headers around it) that reaches the
// same verdicts as the eBPF parser in bpf/include/mx_parse.h. The datapath tests and the fuzz target
// in pkg/datapath feed the same frames to both and require identical counters.
//
// The rules, in the order a frame is read:
//
//   - Ethernet, then at most MaxVLANTags 802.1Q (0x8100) or 802.1ad (0x88a8) tags. Only IPv4 and IPv6
//     are read further; anything else is counted in total only.
//   - IPv4: version must be 4 and IHL at least 5 (else one malformed). Options (IHL > 5) are skipped.
//     A fragment with a non-zero offset has no TCP header and is not read further.
//   - IPv6: version must be 6 (else one malformed). Hop-by-hop, routing, destination-options,
//     authentication and fragment headers are skipped, at most MaxIPv6ExtHeaders of them; one more
//     counts malformed. A fragment header with a non-zero offset ends the parse.
//   - TCP: the frame counts as TCP as soon as its L4 is known to be TCP. A data offset below 5 counts
//     malformed. The options are walked up to the header end: EOL stops, NOP is skipped, any other
//     option needs a length byte of at least 2 that, with the body, stays inside the header; an
//     option that breaks this counts malformed and ends the walk. Every kind-30 option marks the
//     packet MPTCP (even a broken one) and well-formed ones are classified by ClassifyOption.
//   - The datapath looks at most MaxL4Offset bytes into a frame for an IPv6 extension header or the
//     TCP header; one that starts deeper counts as truncated (only long IPv6 extension header chains
//     get there).
//   - A header that claims bytes the frame does not hold (Ethernet, a VLAN tag, the IPv4 header with
//     its options, the IPv6 header, an extension header, the TCP header with its options) makes the
//     frame truncated: it counts one malformed, and the parse stops there.
//
// Lengths in the IP headers (IPv4 total length, IPv6 payload length) are not used: the options are
// bounded by the TCP data offset and by the bytes present, as in the datapath.

// Parser limits; they match the defaults in bpf/include/mx_consts.h.
const (
	MaxVLANTags       = 2    // VLAN tags read before the network header
	MaxIPv6ExtHeaders = 8    // IPv6 extension headers skipped before giving up
	MaxL4Offset       = 1024 // deepest offset of an extension header or the TCP header
)

// Result is what one frame contributes to the datapath counters (before any GSO multiplier).
type Result struct {
	TCP       bool // the frame's L4 is TCP (counts in PacketsTCP)
	MPTCP     bool // the TCP header holds at least one kind-30 option (counts in PacketsMPTCP)
	Truncated bool // a header ran past the end of the frame; already counted in Options[Malformed]
	// Options counts the MPTCP options by class, indexed by Class.
	Options [NumClasses]uint64
}

// Packets returns the packet totals the frame adds, indexed by PacketCounter.
func (r *Result) Packets() [NumPacketCounters]uint64 {
	var p [NumPacketCounters]uint64
	p[PacketsTotal] = 1
	if r.TCP {
		p[PacketsTCP] = 1
	}
	if r.MPTCP {
		p[PacketsMPTCP] = 1
	}
	return p
}

// Wire constants.
const (
	etherTypeIPv4   = 0x0800
	etherTypeIPv6   = 0x86dd
	etherTypeVLAN   = 0x8100 // 802.1Q
	etherTypeQinQ   = 0x88a8 // 802.1ad
	ethHeaderLen    = 14
	vlanTagLen      = 4
	ipv4MinHeader   = 20
	ipv6HeaderLen   = 40
	ipv6FragHdrLen  = 8
	tcpMinHeader    = 20
	protoHopByHop   = 0
	protoTCP        = 6
	protoRouting    = 43
	protoFragment   = 44
	protoAH         = 51
	protoDestOpts   = 60
	tcpOptEOL       = 0
	tcpOptNOP       = 1
	tcpOptMPTCP     = 30
	tcpFlagSYN      = 0x02
	tcpFlagACK      = 0x10
	ipv4OffsetMask  = 0x1fff
	ipv6OffsetMask  = 0xfff8
	addAddrEchoFlag = 0x01
)

// parser carries the result through one frame. A method returns false when the frame turned out to
// be shorter than its headers claim.
type parser struct {
	r     Result
	frame int // length of the whole frame, to tell offsets from it
}

// offset is where b starts in the frame.
func (p *parser) offset(b []byte) int { return p.frame - len(b) }

// Parse reads one Ethernet frame and returns what the datapath counts for it. It never fails: every
// frame, however short or broken, is counted (in total, and in malformed when it is broken).
func Parse(frame []byte) Result {
	p := parser{frame: len(frame)}
	if !p.ethernet(frame) {
		p.r.Truncated = true
		p.r.Options[Malformed]++
	}
	return p.r
}

func (p *parser) malformed() { p.r.Options[Malformed]++ }

func (p *parser) ethernet(b []byte) bool {
	if len(b) < ethHeaderLen {
		return false
	}
	etherType := binary.BigEndian.Uint16(b[12:])
	b = b[ethHeaderLen:]
	for range MaxVLANTags {
		if etherType != etherTypeVLAN && etherType != etherTypeQinQ {
			break
		}
		if len(b) < vlanTagLen {
			return false
		}
		etherType = binary.BigEndian.Uint16(b[2:]) // after the tag control information
		b = b[vlanTagLen:]
	}
	switch etherType {
	case etherTypeIPv4:
		return p.ipv4(b)
	case etherTypeIPv6:
		return p.ipv6(b)
	}
	return true
}

func (p *parser) ipv4(b []byte) bool {
	if len(b) < ipv4MinHeader {
		return false
	}
	version, headerLen := b[0]>>4, int(b[0]&0x0f)*4
	if version != 4 || headerLen < ipv4MinHeader {
		p.malformed()
		return true
	}
	if len(b) < headerLen {
		return false
	}
	if b[9] != protoTCP {
		return true
	}
	if binary.BigEndian.Uint16(b[6:])&ipv4OffsetMask != 0 {
		return true // a later fragment: its bytes are payload, not a TCP header
	}
	return p.tcp(b[headerLen:])
}

func (p *parser) ipv6(b []byte) bool {
	if len(b) < ipv6HeaderLen {
		return false
	}
	if b[0]>>4 != 6 {
		p.malformed()
		return true
	}
	next := b[6]
	b = b[ipv6HeaderLen:]
	for skipped := 0; ; skipped++ {
		if next == protoTCP {
			return p.tcp(b)
		}
		var size int
		switch next {
		case protoHopByHop, protoRouting, protoDestOpts, protoAH, protoFragment:
		default:
			return true // another upper-layer protocol
		}
		if skipped == MaxIPv6ExtHeaders {
			p.malformed() // more headers than the datapath walks: what follows is unknown
			return true
		}
		if p.offset(b) > MaxL4Offset {
			return false
		}
		switch next {
		case protoFragment:
			if len(b) < ipv6FragHdrLen {
				return false
			}
			if binary.BigEndian.Uint16(b[2:])&ipv6OffsetMask != 0 {
				return true // a later fragment
			}
			size = ipv6FragHdrLen
		case protoAH:
			if len(b) < 2 {
				return false
			}
			size = (int(b[1]) + 2) * 4 // RFC 4302: length in 4-octet units, minus 2
		default:
			if len(b) < 2 {
				return false
			}
			size = (int(b[1]) + 1) * 8 // RFC 8200: length in 8-octet units, not counting the first
		}
		if len(b) < size {
			return false
		}
		next = b[0]
		b = b[size:]
	}
}

func (p *parser) tcp(b []byte) bool {
	p.r.TCP = true
	if p.offset(b) > MaxL4Offset || len(b) < tcpMinHeader {
		return false
	}
	headerLen := int(b[12]>>4) * 4
	if headerLen < tcpMinHeader {
		p.malformed()
		return true
	}
	if len(b) < headerLen {
		return false
	}
	syn, ack := b[13]&tcpFlagSYN != 0, b[13]&tcpFlagACK != 0
	opts := b[tcpMinHeader:headerLen]
	for len(opts) > 0 {
		kind := opts[0]
		switch kind {
		case tcpOptEOL:
			return true
		case tcpOptNOP:
			opts = opts[1:]
			continue
		case tcpOptMPTCP:
			p.r.MPTCP = true
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			p.malformed()
			return true
		}
		n := int(opts[1])
		if kind == tcpOptMPTCP {
			p.r.Options[ClassifyOption(opts[:n], syn, ack)]++
		}
		opts = opts[n:]
	}
	return true
}

// ClassifyOption returns the class of one complete MPTCP option (kind, length, subtype byte and
// the rest, exactly length bytes long) carried by a TCP segment with the given SYN and ACK flags.
// The handshake options (MP_CAPABLE, MP_JOIN) are told apart by the flags and the length; every
// other subtype by its length alone. A length the subtype does not allow, or an unknown subtype,
// is Malformed.
func ClassifyOption(opt []byte, syn, ack bool) Class {
	if len(opt) < 3 {
		return Malformed // no subtype
	}
	n := len(opt)
	subtype, low := opt[2]>>4, opt[2]&0x0f
	lengthIs := func(c Class, ok ...int) Class {
		for _, l := range ok {
			if n == l {
				return c
			}
		}
		return Malformed
	}
	switch subtype {
	case 0: // MP_CAPABLE (v1)
		switch {
		case syn && !ack:
			return lengthIs(MPCapableSYN, 4)
		case syn:
			return lengthIs(MPCapableSYNACK, 12) // sender's key
		case n == 20:
			return MPCapableACK // both keys
		default:
			return lengthIs(MPCapableData, 22, 24) // both keys, data-level length [, checksum]
		}
	case 1: // MP_JOIN
		switch {
		case syn && !ack:
			return lengthIs(MPJoinSYN, 12) // address id, token, nonce
		case syn:
			return lengthIs(MPJoinSYNACK, 16) // address id, truncated HMAC, nonce
		default:
			return lengthIs(MPJoinACK, 24) // HMAC
		}
	case 2: // DSS
		if n < 4 {
			return Malformed // no flags byte
		}
		want, mapping := dssLength(opt[3])
		if mapping {
			return lengthIs(DSS, want, want+2) // the DSS checksum is optional
		}
		return lengthIs(DSS, want)
	case 3: // ADD_ADDR: IPv4 or IPv6, optional port, HMAC unless it is an echo
		if low&addAddrEchoFlag != 0 {
			return lengthIs(AddAddrEcho, 8, 10, 20, 22)
		}
		return lengthIs(AddAddr, 16, 18, 28, 30)
	case 4: // REMOVE_ADDR: at least one address id
		if n >= 4 {
			return RemoveAddr
		}
		return Malformed
	case 5:
		return lengthIs(MPPrio, 3)
	case 6:
		return lengthIs(MPFail, 12)
	case 7:
		return lengthIs(MPFastclose, 12)
	case 8:
		return lengthIs(MPTCPRst, 4)
	}
	return Malformed
}

// dssLength is the length a DSS option with the given flags byte must have (without the optional
// checksum), and whether it carries a mapping (and so may carry the checksum).
func dssLength(flags byte) (length int, mapping bool) {
	const (
		dataACK  = 0x01  // A: data ACK present
		ack64    = 0x02  // a: it is 8 bytes, not 4
		hasMap   = 0x04  // M: mapping present
		dsn64    = 0x08  // m: its DSN is 8 bytes, not 4
		mapFixed = 4 + 2 // subflow sequence number, data-level length
	)
	length = 4 // kind, length, subtype, flags
	if flags&dataACK != 0 {
		length += 4
		if flags&ack64 != 0 {
			length += 4
		}
	}
	if flags&hasMap != 0 {
		length += 4 + mapFixed
		if flags&dsn64 != 0 {
			length += 4
		}
		mapping = true
	}
	return length, mapping
}
