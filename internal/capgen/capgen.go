// Package capgen writes large captures (pcap or pcapng) of realistic MPTCP traffic, with no network
// and no privilege, for the tests and benchmarks of `mptcp-xdp replay`: many concurrent connections
// over IPv4 and IPv6, some VLAN-tagged, each opened with an MP_CAPABLE handshake, some joined by
// MP_JOIN subflows, carrying mostly full-size (1514-byte) DSS data segments and pure ACKs with a DSS
// data ACK, with a few ADD_ADDR, echoes, REMOVE_ADDR, MP_PRIO, MP_FASTCLOSE and MP_TCPRST signals,
// plain TCP connections, MP_CAPABLE SYNs that fall back, and UDP datagrams. Frames are built with gopacket's
// layers (real lengths and checksums).
//
// The same Config gives the same file, byte for byte. The generator counts, as it builds each frame,
// what it put in it: Counts.Counters is what mptcp-xdp's counters must show for the file, derived from
// the generator's own construction and not from a parser.
package capgen

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// Format is the file format written.
type Format int

// The formats.
const (
	PCAP   Format = iota // libpcap, microsecond timestamps
	PCAPNG               // pcapng: one section, one Ethernet interface, enhanced packet blocks
)

func (f Format) String() string {
	if f == PCAPNG {
		return "pcapng"
	}
	return "pcap"
}

// Config says what to write.
type Config struct {
	// Bytes: frames are written until the file holds at least this many bytes (the last frame
	// crosses it; connections still open are cut there, as a capture cuts them).
	Bytes  int64
	Seed   uint64 // the same seed gives the same file
	Format Format
	// Concurrent is how many connections are open at once, their frames interleaved (default 64).
	Concurrent int
}

// Counts is what the generator wrote.
type Counts struct {
	Frames uint64 // frames in the file
	Bytes  int64  // bytes of the file
	// Counters are what mptcp-xdp counts for the file (either direction: the programs count a frame
	// the same way whether it was received or sent), from the generator's own bookkeeping.
	Counters maps.Counters

	IPv4, IPv6, VLAN, UDP uint64 // frames by network layer; VLAN-tagged frames; UDP frames
	Conns                 uint64 // TCP connections begun (MPTCP or not)
	MPTCPConns            uint64 // of which opened with MP_CAPABLE on both sides
	Fallbacks             uint64 // MP_CAPABLE SYNs answered without it
	Joins                 uint64 // MP_JOIN subflows begun
	Data                  uint64 // full-size data segments (1514 bytes, 1518 tagged)
	PureAcks              uint64 // TCP segments without payload, SYN, FIN or RST
	PayloadBytes          uint64 // TCP payload bytes
}

// WriteFile writes a capture to path.
func WriteFile(path string, cfg Config) (Counts, error) {
	f, err := os.Create(path)
	if err != nil {
		return Counts{}, err
	}
	c, err := Write(f, cfg)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return Counts{}, fmt.Errorf("write %s: %w", path, err)
	}
	return c, nil
}

// Write writes a capture to w.
func Write(w io.Writer, cfg Config) (Counts, error) {
	if cfg.Concurrent <= 0 {
		cfg.Concurrent = 64
	}
	cw := &countingWriter{w: w}
	bw := bufio.NewWriterSize(cw, 1<<20)
	g := newGen(cfg)
	switch cfg.Format {
	case PCAP:
		pw := pcapgo.NewWriter(bw)
		if err := pw.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
			return Counts{}, err
		}
		g.write = pw.WritePacket
	case PCAPNG:
		nw, err := pcapgo.NewNgWriter(bw, layers.LinkTypeEthernet)
		if err != nil {
			return Counts{}, err
		}
		g.write = nw.WritePacket
		g.flush = nw.Flush
	default:
		return Counts{}, fmt.Errorf("unknown format %d", cfg.Format)
	}
	written := func() int64 { return cw.n + int64(bw.Buffered()) }
	for written() < cfg.Bytes {
		if err := g.step(); err != nil {
			return Counts{}, err
		}
	}
	if g.flush != nil {
		if err := g.flush(); err != nil {
			return Counts{}, err
		}
	}
	if err := bw.Flush(); err != nil {
		return Counts{}, err
	}
	g.c.Bytes = cw.n
	return g.c, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}

// Wire sizes.
const (
	frameLen = 1514 // a full-size Ethernet frame (1500-byte MTU), without a VLAN tag
	tsOptLen = 12   // NOP, NOP, timestamps
)

// gen is the generator's state.
type gen struct {
	rng     *rand.Rand
	cfg     Config
	c       Counts
	write   func(gopacket.CaptureInfo, []byte) error
	flush   func() error
	now     time.Time
	conns   []*conn
	buf     gopacket.SerializeBuffer
	payload []byte // random bytes that payloads are cut from
	ipID    uint16

	eth  layers.Ethernet
	vlan layers.Dot1Q
	ip4  layers.IPv4
	ip6  layers.IPv6
	tcp  layers.TCP
	udp  layers.UDP
}

func newGen(cfg Config) *gen {
	g := &gen{
		rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x6d707463702d7864)),
		cfg: cfg,
		now: time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC),
		buf: gopacket.NewSerializeBuffer(),
	}
	g.payload = make([]byte, 1<<16+frameLen)
	for i := range g.payload {
		g.payload[i] = byte(g.rng.Uint32())
	}
	return g
}

// step writes one frame: most often the next frame of one of the open connections, sometimes a
// UDP datagram (QUIC-like) between them.
func (g *gen) step() error {
	for len(g.conns) < g.cfg.Concurrent {
		g.conns = append(g.conns, g.newConn())
	}
	if g.rng.IntN(200) == 0 {
		return g.emitUDP()
	}
	i := g.rng.IntN(len(g.conns))
	c := g.conns[i]
	for len(c.queue) == 0 {
		if !c.plan(g) {
			g.conns[i] = g.newConn()
			c = g.conns[i]
		}
	}
	f := c.queue[0]
	c.queue = c.queue[1:]
	return g.emit(c, f)
}

// endpoint is one side of a subflow.
type endpoint struct {
	ip   net.IP
	port uint16
	mac  net.HardwareAddr
	seq  uint32 // next sequence number to send
	ts   uint32 // TSval
	win  uint16
}

// subflow is one TCP connection; cli opened it.
type subflow struct {
	cli, srv    endpoint
	addrID      uint8
	established bool
	unacked     int // full data segments from the server since the client's last ACK
}

// conn is one TCP connection (an MPTCP connection: its subflows).
type conn struct {
	v6, mptcp, csum bool
	vlan            uint16 // 0: untagged
	subs            []*subflow
	keyC, keyS      uint64
	dsn             [2]uint64 // data sequence numbers: [0] client's, [1] server's
	queue           []frame
	phase           int
	request         int // bytes of the client's request
	segments        int // full-size segments the server still has to send
	joins           int // joins still to open
	addAddr         bool
	removeAddr      bool
	prio            bool
	fastclose       bool
	fallback        bool // the SYN asks for MPTCP, the server does not answer it
}

// dssKind says which DSS a frame carries (built when the frame is written, from the sequence numbers
// then).
type dssKind int

const (
	dssNone    dssKind = iota
	dssAck             // data ACK only (8-byte)
	dssAck4            // data ACK only (4-byte)
	dssMapping         // data ACK and a mapping of the payload
	dssFin             // data ACK and a DATA_FIN mapping
)

// frame is one frame to write on subflow sf.
type frame struct {
	sf                      int
	fromClient              bool
	syn, ack, fin, rst, psh bool
	payload                 int
	handshake               []byte   // SYN options (MSS, SACK permitted, timestamps, window scale)
	mp                      [][]byte // MPTCP options besides the DSS, each a whole option (kind 30)
	classes                 []mptcp.Class
	dss                     dssKind
}

func (g *gen) newConn() *conn {
	r := g.rng
	c := &conn{v6: r.IntN(10) < 3, csum: r.IntN(20) == 0}
	if r.IntN(5) == 0 {
		c.vlan = uint16(100 + r.IntN(8))
	}
	switch k := r.IntN(100); {
	case k < 5: // plain TCP
	case k < 7: // MP_CAPABLE SYN, answered without it: TCP from then on
		c.fallback = true
		g.c.Fallbacks++
	default:
		c.mptcp = true
		g.c.MPTCPConns++
	}
	g.c.Conns++
	c.keyC, c.keyS = r.Uint64(), r.Uint64()
	c.dsn = [2]uint64{r.Uint64(), r.Uint64()}
	c.request = 80 + r.IntN(600)
	switch k := r.IntN(100); {
	case k < 55:
		c.segments = 1 + r.IntN(20)
	case k < 88:
		c.segments = 20 + r.IntN(500)
	default:
		c.segments = 500 + r.IntN(5000)
	}
	if c.mptcp {
		switch k := r.IntN(100); {
		case k < 40:
			c.joins = 1
		case k < 55:
			c.joins = 2
		}
		c.addAddr = r.IntN(100) < 30
		c.removeAddr = c.addAddr && r.IntN(2) == 0
		c.prio = c.joins > 0 && r.IntN(100) < 10
		c.fastclose = r.IntN(100) < 3
	}
	c.subs = []*subflow{g.newSubflow(c, 0)}
	return c
}

// newSubflow is subflow id of c: the client's address id-th address, a new port.
func (g *gen) newSubflow(c *conn, id int) *subflow {
	r := g.rng
	sf := &subflow{addrID: uint8(id)}
	host := r.Uint32()
	if c.v6 {
		sf.cli.ip = net.IP{0x20, 0x01, 0x0d, 0xb8, 0xc0, byte(id), 0, 0, 0, 0, 0, 0, byte(host >> 24), byte(host >> 16), byte(host >> 8), byte(host)}
		sf.srv.ip = net.IP{0x20, 0x01, 0x0d, 0xb8, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(1 + host%16)}
	} else {
		sf.cli.ip = net.IP{10, byte(id), byte(host >> 8), byte(host)}
		sf.srv.ip = net.IP{192, 0, 2, byte(1 + host%16)}
	}
	if len(c.subs) > 0 {
		sf.srv.ip = c.subs[0].srv.ip
		sf.srv.port = c.subs[0].srv.port
	} else {
		sf.srv.port = []uint16{443, 80, 8080, 5201}[r.IntN(4)]
	}
	sf.cli.port = uint16(32768 + r.IntN(28232))
	sf.cli.mac = net.HardwareAddr{0x02, 0xc1, byte(id), byte(host >> 16), byte(host >> 8), byte(host)}
	sf.srv.mac = net.HardwareAddr{0x02, 0x5e, 0, 0, 0, byte(1 + host%16)}
	sf.cli.seq, sf.srv.seq = r.Uint32(), r.Uint32()
	sf.cli.ts, sf.srv.ts = r.Uint32(), r.Uint32()
	sf.cli.win, sf.srv.win = 502, 509
	return sf
}

// opt is a whole MPTCP option (RFC 8684): kind 30, its length, the byte holding the subtype (high
// nibble) and its flags (low nibble), then the parts.
func opt(subtype byte, parts ...[]byte) []byte {
	o := []byte{30, 0, subtype}
	for _, p := range parts {
		o = append(o, p...)
	}
	o[1] = byte(len(o))
	return o
}

func b(v ...byte) []byte { return v }

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// synOptions are Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window scale (20 bytes;
// the timestamps are filled in when written).
var synOptions = []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7}

// plan queues the next frames of c; false when c is over.
func (c *conn) plan(g *gen) bool {
	r := g.rng
	q := func(f frame) { c.queue = append(c.queue, f) }
	mpc := func(classes ...mptcp.Class) []mptcp.Class { return classes }
	switch c.phase {
	case 0: // the handshake
		c.phase = 1
		syn := frame{fromClient: true, syn: true, handshake: synOptions}
		if c.mptcp || c.fallback {
			syn.mp = [][]byte{opt(0x01, b(0x81))} // MP_CAPABLE v1; flags: checksum required (A), HMAC-SHA256 (H)
			syn.classes = mpc(mptcp.MPCapableSYN)
		}
		q(syn)
		synack := frame{syn: true, ack: true, handshake: synOptions}
		if c.mptcp {
			synack.mp = [][]byte{opt(0x01, b(0x01), be64(c.keyS))}
			synack.classes = mpc(mptcp.MPCapableSYNACK)
		}
		q(synack)
		ack := frame{fromClient: true, ack: true}
		if c.mptcp {
			ack.mp = [][]byte{opt(0x01, b(0x01), be64(c.keyC), be64(c.keyS))}
			ack.classes = mpc(mptcp.MPCapableACK)
		}
		q(ack)
		// The request: on MPTCP, its first data carries MP_CAPABLE with the data-level length.
		req := frame{fromClient: true, ack: true, psh: true, payload: c.request}
		if c.mptcp {
			var csum []byte
			if c.csum {
				csum = b(0xab, 0xcd)
			}
			o := opt(0x01, b(0x01), be64(c.keyC), be64(c.keyS), b(byte(c.request>>8), byte(c.request)), csum)
			req.mp, req.classes = [][]byte{o}, mpc(mptcp.MPCapableData)
			c.dsn[0] += uint64(c.request)
		}
		q(req)
		q(frame{ack: true, dss: c.dssAck()})
		return true
	case 1: // the response, across the subflows, with joins and signals on the way
		if c.segments == 0 {
			c.phase = 2
			return true
		}
		if c.mptcp && c.joins > 0 && r.IntN(8) == 0 {
			c.join(g)
			return true
		}
		if c.addAddr && r.IntN(50) == 0 {
			c.addAddr = false
			c.signalAddAddr(g)
			return true
		}
		if c.removeAddr && !c.addAddr && r.IntN(10) == 0 {
			c.removeAddr = false
			q(frame{ack: true, mp: [][]byte{opt(0x40, b(1))}, classes: mpc(mptcp.RemoveAddr), dss: c.ackFits(4)})
			return true
		}
		if c.prio && len(c.subs) > 1 && r.IntN(50) == 0 {
			c.prio = false
			q(frame{sf: len(c.subs) - 1, fromClient: true, ack: true, mp: [][]byte{opt(0x51)}, classes: mpc(mptcp.MPPrio), dss: dssAck})
			return true
		}
		// A full-size segment on one established subflow (the last one may be shorter), and the
		// client's ACK of every second one on that subflow.
		sf := c.pickSubflow(r)
		f := frame{sf: sf, ack: true, payload: c.segmentPayload(-1)}
		if c.mptcp {
			f.dss = dssMapping
		}
		c.segments--
		if c.segments == 0 {
			f.psh = true
			f.payload = c.segmentPayload(200 + r.IntN(1000))
		}
		q(f)
		s := c.subs[sf]
		if s.unacked++; s.unacked == 2 || c.segments == 0 {
			s.unacked = 0
			q(frame{sf: sf, fromClient: true, ack: true, dss: c.dssAck()})
		}
		return true
	case 2: // the end: MP_FASTCLOSE and a reset, or DATA_FIN and FIN on every subflow
		c.phase = 3
		if c.fastclose {
			q(frame{fromClient: true, ack: true, mp: [][]byte{opt(0x70, b(0), be64(c.keyS))}, classes: mpc(mptcp.MPFastclose)})
			for i := range c.subs {
				if c.subs[i].established {
					q(frame{sf: i, rst: true, ack: true, mp: [][]byte{opt(0x80, b(1))}, classes: mpc(mptcp.MPTCPRst)})
				}
			}
			return true
		}
		for i := range c.subs {
			if !c.subs[i].established {
				continue
			}
			var fin, finack dssKind
			if c.mptcp {
				fin, finack = dssFin, dssFin
			}
			q(frame{sf: i, fromClient: true, fin: true, ack: true, dss: fin})
			q(frame{sf: i, fin: true, ack: true, dss: finack})
			q(frame{sf: i, fromClient: true, ack: true, dss: c.dssAck()})
		}
		return true
	}
	return false
}

// dssAck is the DSS of a pure ACK: none without MPTCP, else an 8-byte data ACK (a 4-byte one now and
// then).
func (c *conn) dssAck() dssKind {
	if !c.mptcp {
		return dssNone
	}
	if c.dsn[0]%8 == 0 {
		return dssAck4
	}
	return dssAck
}

// ackFits is an 8-byte data ACK when it fits beside an option of n bytes and the timestamps.
func (c *conn) ackFits(n int) dssKind {
	if tsOptLen+n+12 <= 40 {
		return dssAck
	}
	return dssNone
}

// pickSubflow chooses an established subflow, the initial one twice as often as each join.
func (c *conn) pickSubflow(r *rand.Rand) int {
	var est []int
	for i, s := range c.subs {
		if s.established {
			est = append(est, i)
			if i == 0 {
				est = append(est, i)
			}
		}
	}
	return est[r.IntN(len(est))]
}

// segmentPayload is the payload of a full-size segment from the server, or want bytes when it is
// less.
func (c *conn) segmentPayload(want int) int {
	ip := 20
	if c.v6 {
		ip = 40
	}
	tcp := 20
	if c.mptcp {
		tcp += tsOptLen + 28 // DSS: 8-byte data ACK, 8-byte DSN, with or without checksum (26 or 28)
	} else {
		tcp += tsOptLen
	}
	full := frameLen - 14 - ip - tcp
	if want >= 0 && want < full {
		return want
	}
	return full
}

// join opens a new subflow from the client's next address: MP_JOIN SYN, SYN-ACK and ACK, and the
// server's ACK of it.
func (c *conn) join(g *gen) {
	c.joins--
	g.c.Joins++
	id := len(c.subs)
	c.subs = append(c.subs, g.newSubflow(c, id))
	token := uint32(c.keyS >> 32) // a stand-in: the generator does not hash the key
	nonceC, nonceS := g.rng.Uint32(), g.rng.Uint32()
	backup := byte(0)
	if c.prio {
		backup = 0x01
	}
	syn := opt(0x10|backup, b(byte(id)), be32(token), be32(nonceC))
	synack := opt(0x10|backup, b(byte(id)), be64(g.rng.Uint64()), be32(nonceS))
	hmac := make([]byte, 20)
	for i := range hmac {
		hmac[i] = byte(g.rng.Uint32())
	}
	ack := opt(0x10, b(0), hmac)
	c.queue = append(c.queue,
		frame{sf: id, fromClient: true, syn: true, handshake: synOptions, mp: [][]byte{syn}, classes: []mptcp.Class{mptcp.MPJoinSYN}},
		frame{sf: id, syn: true, ack: true, handshake: synOptions, mp: [][]byte{synack}, classes: []mptcp.Class{mptcp.MPJoinSYNACK}},
		frame{sf: id, fromClient: true, ack: true, mp: [][]byte{ack}, classes: []mptcp.Class{mptcp.MPJoinACK}},
		frame{sf: id, ack: true, dss: dssAck},
	)
}

// signalAddAddr: the server announces another address (with a port now and then), the client
// echoes it.
func (c *conn) signalAddAddr(g *gen) {
	var addr []byte
	if c.v6 {
		addr = net.IP{0x20, 0x01, 0x0d, 0xb8, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99}
	} else {
		addr = []byte{198, 51, 100, byte(1 + g.rng.IntN(200))}
	}
	body := append([]byte{1}, addr...)
	if !c.v6 && g.rng.IntN(3) == 0 {
		body = append(body, 0x01, 0xbb) // port 443
	}
	hmac := be64(g.rng.Uint64())
	announce := opt(0x30, body, hmac)
	echo := opt(0x31, body)
	c.queue = append(c.queue,
		frame{ack: true, mp: [][]byte{announce}, classes: []mptcp.Class{mptcp.AddAddr}, dss: c.ackFits(len(announce))},
		frame{fromClient: true, ack: true, mp: [][]byte{echo}, classes: []mptcp.Class{mptcp.AddAddrEcho}, dss: c.ackFits(len(echo))},
	)
}

// dssOption builds the DSS of a frame of payload bytes sent by one side at subflow sequence ssn.
func (c *conn) dssOption(k dssKind, fromClient bool, ssn uint32, payload int) ([]byte, mptcp.Class) {
	me, peer := 1, 0
	if fromClient {
		me, peer = 0, 1
	}
	switch k {
	case dssAck4:
		return opt(0x20, b(0x01), be32(uint32(c.dsn[peer]))), mptcp.DSS
	case dssAck:
		return opt(0x20, b(0x03), be64(c.dsn[peer])), mptcp.DSS
	}
	flags := byte(0x01 | 0x02 | 0x04 | 0x08) // data ACK (8 bytes), mapping with an 8-byte DSN
	length := payload
	if k == dssFin {
		flags |= 0x10
		length++
	}
	var csum []byte
	if c.csum {
		csum = b(0x12, 0x34)
	}
	o := opt(0x20, b(flags), be64(c.dsn[peer]), be64(c.dsn[me]), be32(ssn), b(byte(length>>8), byte(length)), csum)
	c.dsn[me] += uint64(length)
	return o, mptcp.DSS
}

// emit builds f and writes it.
func (g *gen) emit(c *conn, f frame) error {
	sf := c.subs[f.sf]
	src, dst := &sf.srv, &sf.cli
	if f.fromClient {
		src, dst = dst, src
	}
	// TCP options: the SYN's, or the timestamps; then the MPTCP options, NOP-padded to 4 bytes.
	var raw []byte
	if f.syn {
		raw = append(raw, f.handshake...)
		binary.BigEndian.PutUint32(raw[8:], src.ts)
		if f.ack {
			binary.BigEndian.PutUint32(raw[12:], dst.ts)
		}
	} else {
		raw = append(raw, 1, 1, 8, 10)
		raw = binary.BigEndian.AppendUint32(raw, src.ts)
		raw = binary.BigEndian.AppendUint32(raw, dst.ts)
	}
	src.ts += 1 + uint32(g.rng.IntN(3))
	classes := f.classes
	for _, o := range f.mp {
		raw = append(raw, o...)
	}
	if f.dss != dssNone {
		o, cl := c.dssOption(f.dss, f.fromClient, src.seq, f.payload)
		raw = append(raw, o...)
		classes = append(classes[:len(classes):len(classes)], cl)
	}
	for len(raw)%4 != 0 {
		raw = append(raw, 1)
	}
	if len(raw) > 40 {
		return fmt.Errorf("capgen: %d bytes of TCP options", len(raw))
	}
	g.tcp = layers.TCP{
		SrcPort: layers.TCPPort(src.port), DstPort: layers.TCPPort(dst.port),
		Seq: src.seq, SYN: f.syn, ACK: f.ack, FIN: f.fin, RST: f.rst, PSH: f.psh,
		Window: src.win, Options: tcpOptions(raw),
	}
	if f.ack {
		g.tcp.Ack = dst.seq
	}
	src.seq += uint32(f.payload)
	if f.syn || f.fin {
		src.seq++
	}
	if f.syn && f.ack {
		sf.established = true
	}
	if f.payload == 0 && !f.syn && !f.fin && !f.rst {
		g.c.PureAcks++
	}
	g.c.PayloadBytes += uint64(f.payload)
	g.c.Counters.Packets[mptcp.PacketsTCP]++
	if len(f.mp) > 0 || f.dss != dssNone {
		g.c.Counters.Packets[mptcp.PacketsMPTCP]++
	}
	for _, cl := range classes {
		g.c.Counters.Options[cl]++
	}
	n, err := g.serialize(c, src.mac, dst.mac, src.ip, dst.ip, &g.tcp, f.payload)
	if err == nil && n >= frameLen {
		g.c.Data++
	}
	return err
}

// tcpOptions splits raw TCP options into gopacket's options (which it writes back as they were).
func tcpOptions(raw []byte) []layers.TCPOption {
	var out []layers.TCPOption
	for len(raw) > 0 {
		switch raw[0] {
		case 0, 1:
			out = append(out, layers.TCPOption{OptionType: layers.TCPOptionKind(raw[0]), OptionLength: 1})
			raw = raw[1:]
		default:
			n := int(raw[1])
			out = append(out, layers.TCPOption{OptionType: layers.TCPOptionKind(raw[0]), OptionLength: raw[1], OptionData: raw[2:n]})
			raw = raw[n:]
		}
	}
	return out
}

// emitUDP writes a UDP datagram to port 443 (QUIC-like: 1200 to 1350 bytes) between two hosts.
func (g *gen) emitUDP() error {
	c := &conn{v6: g.rng.IntN(10) < 3}
	sf := g.newSubflow(c, 0)
	g.udp = layers.UDP{SrcPort: layers.UDPPort(sf.cli.port), DstPort: 443}
	g.c.UDP++
	_, err := g.serialize(c, sf.cli.mac, sf.srv.mac, sf.cli.ip, sf.srv.ip, &g.udp, 1200+g.rng.IntN(151))
	return err
}

// serialize writes one frame: Ethernet, the VLAN tag of c, IPv4 or IPv6, then l4 (TCP or UDP) and
// payload bytes. It counts the frame's headers and returns its length.
func (g *gen) serialize(c *conn, srcMAC, dstMAC net.HardwareAddr, src, dst net.IP, l4 gopacket.SerializableLayer, payload int) (int, error) {
	proto := layers.IPProtocolTCP
	if _, ok := l4.(*layers.UDP); ok {
		proto = layers.IPProtocolUDP
	}
	ls := make([]gopacket.SerializableLayer, 0, 5)
	g.eth = layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ls = append(ls, &g.eth)
	ethType := &g.eth.EthernetType
	if c.vlan != 0 {
		g.eth.EthernetType = layers.EthernetTypeDot1Q
		g.vlan = layers.Dot1Q{VLANIdentifier: c.vlan}
		ls = append(ls, &g.vlan)
		ethType = &g.vlan.Type
		g.c.VLAN++
	}
	var nl gopacket.NetworkLayer
	if c.v6 {
		*ethType = layers.EthernetTypeIPv6
		g.ip6 = layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: src, DstIP: dst, FlowLabel: uint32(src[15]) << 8}
		ls, nl = append(ls, &g.ip6), &g.ip6
		g.c.IPv6++
	} else {
		*ethType = layers.EthernetTypeIPv4
		g.ipID++
		g.ip4 = layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: g.ipID, Flags: layers.IPv4DontFragment, Protocol: proto, SrcIP: src, DstIP: dst}
		ls, nl = append(ls, &g.ip4), &g.ip4
		g.c.IPv4++
	}
	switch l := l4.(type) {
	case *layers.TCP:
		_ = l.SetNetworkLayerForChecksum(nl)
	case *layers.UDP:
		_ = l.SetNetworkLayerForChecksum(nl)
	}
	off := g.rng.IntN(1 << 16)
	ls = append(ls, l4, gopacket.Payload(g.payload[off:off+payload]))
	if err := gopacket.SerializeLayers(g.buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		return 0, err
	}
	b := g.buf.Bytes()
	g.now = g.now.Add(time.Duration(1+g.rng.IntN(20)) * time.Microsecond)
	if err := g.write(gopacket.CaptureInfo{Timestamp: g.now, CaptureLength: len(b), Length: len(b)}, b); err != nil {
		return 0, err
	}
	g.c.Frames++
	g.c.Counters.Packets[mptcp.PacketsTotal]++
	return len(b), nil
}
