package mptcp

import (
	"encoding/binary"
	"testing"
)

// opt builds an MPTCP option of total length n with the given subtype and low nibble; byte 3 (if
// any) is b3, the rest zero.
func opt(subtype, low byte, n int, b3 byte) []byte {
	o := make([]byte, n)
	o[0] = 30
	o[1] = byte(n)
	if n > 2 {
		o[2] = subtype<<4 | low
	}
	if n > 3 {
		o[3] = b3
	}
	return o
}

// TestClassifyOptionLengths walks every subtype, handshake position and length and checks that
// exactly the lengths of DESIGN.md's table are accepted.
func TestClassifyOptionLengths(t *testing.T) {
	type pos struct {
		name     string
		syn, ack bool
	}
	positions := []pos{{"syn", true, false}, {"synack", true, true}, {"ack", false, true}, {"none", false, false}}
	// valid[subtype][position] = length → class.
	valid := func(subtype byte, low byte, p pos) map[int]Class {
		switch subtype {
		case 0:
			switch {
			case p.syn && !p.ack:
				return map[int]Class{4: MPCapableSYN}
			case p.syn:
				return map[int]Class{12: MPCapableSYNACK}
			}
			return map[int]Class{20: MPCapableACK, 22: MPCapableData, 24: MPCapableData}
		case 1:
			switch {
			case p.syn && !p.ack:
				return map[int]Class{12: MPJoinSYN}
			case p.syn:
				return map[int]Class{16: MPJoinSYNACK}
			}
			return map[int]Class{24: MPJoinACK}
		case 2: // with flags 0: just the header
			return map[int]Class{4: DSS}
		case 3:
			if low&1 != 0 {
				return map[int]Class{8: AddAddrEcho, 10: AddAddrEcho, 20: AddAddrEcho, 22: AddAddrEcho}
			}
			return map[int]Class{16: AddAddr, 18: AddAddr, 28: AddAddr, 30: AddAddr}
		case 4:
			m := map[int]Class{}
			for n := 4; n <= 40; n++ {
				m[n] = RemoveAddr
			}
			return m
		case 5:
			return map[int]Class{3: MPPrio}
		case 6:
			return map[int]Class{12: MPFail}
		case 7:
			return map[int]Class{12: MPFastclose}
		case 8:
			return map[int]Class{4: MPTCPRst}
		}
		return nil // unknown subtypes 9..15
	}
	for subtype := byte(0); subtype < 16; subtype++ {
		for _, low := range []byte{0, 1, 0xf} {
			for _, p := range positions {
				ok := valid(subtype, low, p)
				for n := 2; n <= 40; n++ {
					want, found := ok[n]
					if !found {
						want = Malformed
					}
					got := ClassifyOption(opt(subtype, low, n, 0), p.syn, p.ack)
					if got != want {
						t.Errorf("subtype %d low %#x %s len %d: got %s, want %s", subtype, low, p.name, n, got, want)
					}
				}
			}
		}
	}
}

// TestClassifyDSS checks the DSS length for every combination of the five flags.
func TestClassifyDSS(t *testing.T) {
	for flags := 0; flags < 64; flags++ {
		f := byte(flags)
		want := 4
		if f&0x01 != 0 { // A
			want += 4
			if f&0x02 != 0 { // a
				want += 4
			}
		}
		mapping := f&0x04 != 0
		if mapping { // M: DSN, SSN, length
			want += 4 + 4 + 2
			if f&0x08 != 0 { // m
				want += 4
			}
		}
		for n := 3; n <= 40; n++ {
			exp := Malformed
			if n == want || (mapping && n == want+2) {
				exp = DSS
			}
			if got := ClassifyOption(opt(2, 0, n, f), false, true); got != exp {
				t.Errorf("DSS flags %#02x len %d: got %s, want %s", f, n, got, exp)
			}
		}
	}
}

func TestClassifyShort(t *testing.T) {
	for _, o := range [][]byte{nil, {30}, {30, 2}} {
		if got := ClassifyOption(o, false, true); got != Malformed {
			t.Errorf("%x: got %s", o, got)
		}
	}
}

// frame is a little frame builder for the parser's own tests (pkg/datapath builds its frames with
// gopacket; here the bytes are spelled out to keep this package free of dependencies).
func frame(l2 []byte, l3 []byte, tcp []byte) []byte {
	var b []byte
	b = append(b, l2...)
	b = append(b, l3...)
	return append(b, tcp...)
}

func eth(types ...uint16) []byte {
	b := make([]byte, 12, 12+2+4*len(types))
	for i, et := range types {
		b = binary.BigEndian.AppendUint16(b, et)
		if i < len(types)-1 {
			b = append(b, 0, 100) // the tag control information of the next tag
		}
	}
	return b
}

func ipv4(proto byte, opts int) []byte {
	b := make([]byte, 20+opts)
	b[0] = 0x40 | byte((20+opts)/4)
	b[8] = 64
	b[9] = proto
	for i := 20; i < len(b); i++ {
		b[i] = 1 // NOP
	}
	return b
}

func ipv6(next byte, ext ...byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	b[6] = next
	b[7] = 64
	return append(b, ext...)
}

func tcp(flags byte, opts ...byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0)
	}
	b := make([]byte, 20, 20+len(opts))
	b[12] = byte((20+len(opts))/4) << 4
	b[13] = flags
	return append(b, opts...)
}

var (
	mpcSYN = opt(0, 1, 4, 0x81)
	dssAck = opt(2, 0, 8, 0x01)
	prio   = opt(5, 1, 3, 0)
)

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestParse(t *testing.T) {
	const syn, ack = 0x02, 0x10
	type want struct {
		tcp, mptcp, trunc bool
		classes           []Class
	}
	tests := []struct {
		name  string
		frame []byte
		want  want
	}{
		{"empty", nil, want{trunc: true, classes: []Class{Malformed}}},
		{"arp", frame(eth(0x0806), make([]byte, 28), nil), want{}},
		{"three vlan tags are not read through", frame(eth(0x8100, 0x8100, 0x8100, 0x0800), ipv4(6, 0), tcp(syn, mpcSYN...)), want{}},
		{"v4 syn", frame(eth(0x0800), ipv4(6, 0), tcp(syn, mpcSYN...)), want{tcp: true, mptcp: true, classes: []Class{MPCapableSYN}}},
		{"v4 qinq", frame(eth(0x88a8, 0x8100, 0x0800), ipv4(6, 8), tcp(ack, cat(dssAck, prio)...)), want{tcp: true, mptcp: true, classes: []Class{DSS, MPPrio}}},
		{"v4 udp", frame(eth(0x0800), ipv4(17, 0), make([]byte, 8)), want{}},
		{"v4 ihl 4", func() []byte { f := frame(eth(0x0800), ipv4(6, 0), tcp(ack)); f[14] = 0x44; return f }(), want{classes: []Class{Malformed}}},
		{"v4 version 6", func() []byte { f := frame(eth(0x0800), ipv4(6, 0), tcp(ack)); f[14] = 0x65; return f }(), want{classes: []Class{Malformed}}},
		{"v4 later fragment", func() []byte { f := frame(eth(0x0800), ipv4(6, 0), tcp(syn, mpcSYN...)); f[14+7] = 1; return f }(), want{}},
		{"v6 hop + frag first", frame(eth(0x86dd), ipv6(0, cat([]byte{44, 0, 1, 4, 0, 0, 0, 0}, []byte{6, 0, 0, 1, 0, 0, 0, 1})...), tcp(ack, dssAck...)), want{tcp: true, mptcp: true, classes: []Class{DSS}}},
		{"v6 frag later", frame(eth(0x86dd), ipv6(44, []byte{6, 0, 0, 8, 0, 0, 0, 1}...), tcp(ack, dssAck...)), want{}},
		{"v6 ext past end", frame(eth(0x86dd), ipv6(60, []byte{17, 1, 0, 0, 0, 0, 0, 0}...), nil), want{trunc: true, classes: []Class{Malformed}}},
		{"tcp doff 4", func() []byte { f := frame(eth(0x0800), ipv4(6, 0), tcp(ack)); f[34+12] = 0x40; return f }(), want{tcp: true, classes: []Class{Malformed}}},
		{"tcp doff past end", func() []byte { f := frame(eth(0x0800), ipv4(6, 0), tcp(ack)); f[34+12] = 0x60; return f }(), want{tcp: true, trunc: true, classes: []Class{Malformed}}},
		{"option length 1", frame(eth(0x0800), ipv4(6, 0), tcp(ack, 30, 1, 0x20, 0, 1, 1, 1, 1)), want{tcp: true, mptcp: true, classes: []Class{Malformed}}},
		{"option past header", frame(eth(0x0800), ipv4(6, 0), tcp(ack, 1, 1, 30, 8, 0x20, 1)), want{tcp: true, mptcp: true, classes: []Class{Malformed}}},
		{"non-mptcp option length 0 stops the walk", frame(eth(0x0800), ipv4(6, 0), tcp(ack, cat([]byte{8, 0}, dssAck)...)), want{tcp: true, classes: []Class{Malformed}}},
		{"eol stops the walk", frame(eth(0x0800), ipv4(6, 0), tcp(ack, cat([]byte{0, 0, 0, 0}, dssAck)...)), want{tcp: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Parse(tt.frame)
			var w Result
			w.TCP, w.MPTCP, w.Truncated = tt.want.tcp, tt.want.mptcp, tt.want.trunc
			for _, c := range tt.want.classes {
				w.Options[c]++
			}
			if r != w {
				t.Errorf("frame %x:\n got %+v\nwant %+v", tt.frame, r, w)
			}
		})
	}
}

// TestParseEveryPrefix cuts valid frames at every length: a prefix that ends inside the headers is
// truncated (one malformed, nothing else), and is TCP exactly when it reaches the TCP header.
func TestParseEveryPrefix(t *testing.T) {
	frames := map[string]struct {
		frame      []byte
		tcpAt, end int // where the TCP header starts, and where the headers end
	}{
		"v4 vlan": {frame(eth(0x8100, 0x0800), ipv4(6, 4), tcp(0x02, mpcSYN...)), 14 + 4 + 24, 14 + 4 + 24 + 24},
		"v6 dst":  {frame(eth(0x86dd), ipv6(60, []byte{6, 0, 1, 4, 0, 0, 0, 0}...), tcp(0x10, dssAck...)), 14 + 48, 14 + 48 + 28},
	}
	for name, f := range frames {
		full := Parse(f.frame)
		if full.Truncated || full.Options[Malformed] != 0 || !full.MPTCP {
			t.Fatalf("%s: the whole frame does not parse cleanly: %+v", name, full)
		}
		for n := 0; n < len(f.frame); n++ {
			r := Parse(f.frame[:n])
			if n >= f.end {
				if r != full {
					t.Errorf("%s[:%d]: got %+v, want %+v", name, n, r, full)
				}
				continue
			}
			var w Result
			w.Truncated = true
			w.Options[Malformed] = 1
			w.TCP = n >= f.tcpAt
			if r != w {
				t.Errorf("%s[:%d]: got %+v, want %+v", name, n, r, w)
			}
		}
	}
}

func TestParseTooManyExtensionHeaders(t *testing.T) {
	for n := 0; n <= MaxIPv6ExtHeaders+1; n++ {
		var ext []byte
		for i := 0; i < n; i++ {
			next := byte(60)
			if i == n-1 {
				next = 6
			}
			ext = append(ext, next, 0, 1, 4, 0, 0, 0, 0)
		}
		first := byte(6)
		if n > 0 {
			first = 60
		}
		r := Parse(frame(eth(0x86dd), ipv6(first, ext...), tcp(0x10, dssAck...)))
		var w Result
		if n <= MaxIPv6ExtHeaders {
			w.TCP, w.MPTCP = true, true
			w.Options[DSS] = 1
		} else {
			w.Options[Malformed] = 1
		}
		if r != w {
			t.Errorf("%d extension headers: got %+v, want %+v", n, r, w)
		}
	}
}

func TestPackets(t *testing.T) {
	r := Result{TCP: true}
	if got := r.Packets(); got != [NumPacketCounters]uint64{1, 1, 0} {
		t.Errorf("got %v", got)
	}
}

// TestLocate checks the offsets, tag count, family and fragment flag Locate reports, and its
// statuses at each header.
func TestLocate(t *testing.T) {
	const vlan, qinq, v4, v6 = 0x8100, 0x88a8, 0x0800, 0x86dd
	mf := ipv4(protoTCP, 0)
	mf[6] = 0x20 // MF, offset 0
	later := ipv4(protoTCP, 0)
	later[7] = 1 // offset 8
	hbh := []byte{protoRouting, 0, 1, 4, 0, 0, 0, 0}
	rt := []byte{protoTCP, 1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // 16 bytes
	frag0 := []byte{protoTCP, 0, 0, 1, 1, 2, 3, 4}                      // offset 0, more
	for _, tc := range []struct {
		name  string
		frame []byte
		want  Headers
	}{
		{"untagged IPv4 with options", cat(eth(v4), ipv4(protoTCP, 8), tcp(0)), Headers{Status: HeadersTCP, L3: 14, L4: 42}},
		{"one tag", cat(eth(vlan, v4), ipv4(protoTCP, 0), tcp(0)), Headers{Status: HeadersTCP, VLANTags: 1, L3: 18, L4: 38}},
		{"two tags, IPv6", cat(eth(qinq, vlan, v6), ipv6(protoTCP), tcp(0)), Headers{Status: HeadersTCP, VLANTags: 2, L3: 22, L4: 62, IPv6: true}},
		{"three tags", cat(eth(qinq, vlan, vlan, v4), ipv4(protoTCP, 0), tcp(0)), Headers{Status: HeadersOther, VLANTags: 2, L3: 22}},
		{"IPv4 first fragment", cat(eth(v4), mf, tcp(0)), Headers{Status: HeadersTCP, L3: 14, L4: 34, Fragment: true}},
		{"IPv4 later fragment", cat(eth(v4), later, tcp(0)), Headers{Status: HeadersOther, L3: 14}},
		{"IPv6 hop-by-hop and routing", cat(eth(v6), ipv6(protoHopByHop, cat(hbh, rt)...), tcp(0)), Headers{Status: HeadersTCP, L3: 14, L4: 78, IPv6: true}},
		{"IPv6 first fragment", cat(eth(vlan, v6), ipv6(protoFragment, frag0...), tcp(0)), Headers{Status: HeadersTCP, VLANTags: 1, L3: 18, L4: 66, IPv6: true, Fragment: true}},
		{"IPv6 routing header cut", cat(eth(v6), ipv6(protoRouting, rt[:12]...)), Headers{Status: HeadersTruncated, L3: 14, IPv6: true}},
		{"tag cut", cat(eth(vlan, v4))[:16], Headers{Status: HeadersTruncated}},
		{"IPv4 version 5", cat(eth(v4), []byte{0x55}, make([]byte, 19)), Headers{Status: HeadersMalformed, L3: 14}},
		{"ARP", cat(eth(0x0806), make([]byte, 28)), Headers{Status: HeadersOther, L3: 14}},
	} {
		if got := Locate(tc.frame); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
