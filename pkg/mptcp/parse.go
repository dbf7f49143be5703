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
	etherTypeIPv4     = 0x0800
	etherTypeIPv6     = 0x86dd
	etherTypeVLAN     = 0x8100 // 802.1Q
	etherTypeQinQ     = 0x88a8 // 802.1ad
	ethHeaderLen      = 14
	vlanTagLen        = 4
	ipv4MinHeader     = 20
	ipv6HeaderLen     = 40
	ipv6FragHdrLen    = 8
	tcpMinHeader      = 20
	protoHopByHop     = 0
	protoTCP          = 6
	protoRouting      = 43
	protoFragment     = 44
	protoAH           = 51
	protoDestOpts     = 60
	tcpOptEOL         = 0
	tcpOptNOP         = 1
	tcpOptMPTCP       = 30
	tcpFlagSYN        = 0x02
	tcpFlagACK        = 0x10
	ipv4OffsetMask    = 0x1fff
	ipv4MoreFragments = 0x2000
	ipv6OffsetMask    = 0xfff8
	addAddrEchoFlag   = 0x01
)

// parser carries the result through one frame.
type parser struct {
	r Result
}

// Parse reads one Ethernet frame and returns what the datapath counts for it. It never fails: every
// frame, however short or broken, is counted (in total, and in malformed when it is broken).
func Parse(frame []byte) Result {
	var p parser
	h := Locate(frame)
	ok := true
	switch h.Status {
	case HeadersTruncated:
		ok = false
	case HeadersMalformed:
		p.malformed()
	case HeadersTCP:
		ok = p.tcp(frame, h.L4)
	}
	if !ok {
		p.r.Truncated = true
		p.r.Options[Malformed]++
	}
	return p.r
}

func (p *parser) malformed() { p.r.Options[Malformed]++ }

// HeaderStatus is what Locate found in a frame.
type HeaderStatus uint8

// The statuses, as enum mx_hdrs_status in bpf/include/mx_parse.h.
const (
	HeadersTCP       HeaderStatus = iota // a TCP header at Headers.L4 (unfragmented, or a first fragment)
	HeadersOther                         // nothing to walk: not IP, another protocol, a later fragment
	HeadersMalformed                     // a broken IP header, or more IPv6 extension headers than walked
	HeadersTruncated                     // a header runs past the frame, or an extension header past MaxL4Offset
)

// Headers is where the link, network and transport headers of a frame lie: what mx_parse_hdrs
// (bpf/include/mx_parse.h), the parser every eBPF program shares, finds.
type Headers struct {
	Status   HeaderStatus
	VLANTags int  // 802.1Q/802.1ad tags before the IP header (at most MaxVLANTags)
	L3       int  // offset of the IP header (when one was found)
	L4       int  // offset of the TCP header (HeadersTCP; it may lie past MaxL4Offset)
	IPv6     bool // the IP header is IPv6
	// Fragment: a first fragment (IPv4 with MF set, or an IPv6 fragment header of offset 0). A
	// later fragment is HeadersOther.
	Fragment bool
}

// Locate finds the headers of one Ethernet frame by the rules in this file's comment: Ethernet, at
// most MaxVLANTags tags, IPv4 (options skipped) or IPv6 and at most MaxIPv6ExtHeaders extension
// headers, up to the TCP header. It reads nothing of the TCP header.
func Locate(frame []byte) Headers {
	var h Headers
	if len(frame) < ethHeaderLen {
		h.Status = HeadersTruncated
		return h
	}
	etherType := binary.BigEndian.Uint16(frame[12:])
	off := ethHeaderLen
	for range MaxVLANTags {
		if etherType != etherTypeVLAN && etherType != etherTypeQinQ {
			break
		}
		if len(frame) < off+vlanTagLen {
			h.Status = HeadersTruncated
			return h
		}
		etherType = binary.BigEndian.Uint16(frame[off+2:]) // after the tag control information
		off += vlanTagLen
		h.VLANTags++
	}
	h.L3 = off
	switch etherType {
	case etherTypeIPv4:
		h.Status = locateIPv4(frame, &h)
	case etherTypeIPv6:
		h.IPv6 = true
		h.Status = locateIPv6(frame, &h)
	default:
		h.Status = HeadersOther
	}
	return h
}

func locateIPv4(frame []byte, h *Headers) HeaderStatus {
	b := frame[h.L3:]
	if len(b) < ipv4MinHeader {
		return HeadersTruncated
	}
	version, headerLen := b[0]>>4, int(b[0]&0x0f)*4
	if version != 4 || headerLen < ipv4MinHeader {
		return HeadersMalformed
	}
	if len(b) < headerLen {
		return HeadersTruncated
	}
	fragOff := binary.BigEndian.Uint16(b[6:])
	if b[9] != protoTCP || fragOff&ipv4OffsetMask != 0 {
		return HeadersOther // a later fragment: its bytes are payload, not a TCP header
	}
	h.Fragment = fragOff&ipv4MoreFragments != 0
	h.L4 = h.L3 + headerLen
	return HeadersTCP
}

func locateIPv6(frame []byte, h *Headers) HeaderStatus {
	off := h.L3
	if len(frame) < off+ipv6HeaderLen {
		return HeadersTruncated
	}
	if frame[off]>>4 != 6 {
		return HeadersMalformed
	}
	next := frame[off+6]
	off += ipv6HeaderLen
	for skipped := 0; ; skipped++ {
		if next == protoTCP {
			h.L4 = off
			return HeadersTCP
		}
		var size int
		switch next {
		case protoHopByHop, protoRouting, protoDestOpts, protoAH, protoFragment:
		default:
			return HeadersOther // another upper-layer protocol
		}
		if skipped == MaxIPv6ExtHeaders {
			return HeadersMalformed // more headers than the datapath walks: what follows is unknown
		}
		if off > MaxL4Offset {
			return HeadersTruncated
		}
		b := frame[off:]
		if len(b) < ipv6FragHdrLen {
			return HeadersTruncated // every extension header is at least 8 bytes long
		}
		switch next {
		case protoFragment:
			if binary.BigEndian.Uint16(b[2:])&ipv6OffsetMask != 0 {
				return HeadersOther // a later fragment
			}
			h.Fragment = true
			size = ipv6FragHdrLen
		case protoAH:
			size = (int(b[1]) + 2) * 4 // RFC 4302: length in 4-octet units, minus 2
		default:
			size = (int(b[1]) + 1) * 8 // RFC 8200: length in 8-octet units, not counting the first
		}
		if len(b) < size {
			return HeadersTruncated
		}
		next = b[0]
		off += size
	}
}

// tcp walks the TCP header at offset off of the frame.
func (p *parser) tcp(frame []byte, off int) bool {
	p.r.TCP = true
	b := frame[off:]
	if off > MaxL4Offset || len(b) < tcpMinHeader {
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
	bad := WalkOptions(b[tcpMinHeader:headerLen], func(opt []byte) bool {
		if opt[0] == tcpOptMPTCP {
			p.r.MPTCP = true
			p.r.Options[ClassifyOption(opt, syn, ack)]++
		}
		return true
	})
	if bad != nil {
		if bad[0] == tcpOptMPTCP {
			p.r.MPTCP = true // even a broken kind-30 option marks the packet
		}
		p.malformed()
	}
	return true
}

// WalkOptions walks a block of TCP options (the bytes after the fixed TCP header, up to its data
// offset) as the datapath does: EOL ends the walk, NOP is skipped, and every other option, whole
// (kind, length and body), goes to fn, which returns false to end the walk there. An option whose
// length byte is missing, below 2, or runs past the block is malformed and ends the walk: WalkOptions
// returns the rest of the block from it. Otherwise it returns nil.
func WalkOptions(opts []byte, fn func(opt []byte) bool) []byte {
	for len(opts) > 0 {
		switch opts[0] {
		case tcpOptEOL:
			return nil
		case tcpOptNOP:
			opts = opts[1:]
			continue
		}
		if len(opts) < 2 || opts[1] < 2 || int(opts[1]) > len(opts) {
			return opts
		}
		n := int(opts[1])
		if !fn(opts[:n]) {
			return nil
		}
		opts = opts[n:]
	}
	return nil
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
