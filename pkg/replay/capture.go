// Package replay feeds the frames of a capture file (pcap or pcapng) to the committed counting
// programs through BPF_PROG_TEST_RUN, with no interface, attachment or pin, and sums what they count:
// the same counters `mptcp-xdp stats` shows for a live attachment. A Go engine runs the reference
// parser (pkg/mptcp) instead, for machines where loading eBPF is not allowed; the differential fuzz
// test of pkg/datapath keeps the two equal.
package replay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Link types read besides Ethernet; each frame of them gets an Ethernet header in front of its
// network header, as the programs expect.
//
// gopacket's LinkType is 8 bits wide: LINKTYPE_LINUX_SLL2 (276, what tcpdump -i any writes since
// libpcap 1.10) does not fit, so a pcap file's link type is read from its header here, and the
// Linux cooked v2 frames are told by that.
const linkTypeLinuxSLL2 = 276

// supported names the link types a capture may have.
const supported = "ethernet, linux_sll, linux_sll2, raw, ipv4, ipv6, null, loop"

// packetSource is what pcapgo's two readers have in common.
type packetSource interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// Capture reads the frames of one capture file as Ethernet frames.
type Capture struct {
	f      *os.File
	src    packetSource
	ng     *pcapgo.NgReader // pcapng: per-interface link types
	link   uint32           // pcap: the file's link type, as its header has it
	frames int              // frames read so far
	buf    []byte
}

// Frame is one frame of a capture, as an Ethernet frame.
type Frame struct {
	Data []byte // the captured bytes, behind an Ethernet header (valid until the next Next)
	Info gopacket.CaptureInfo
	Cut  bool // the capture holds fewer bytes than the frame had (snaplen)
}

// Open opens a pcap or pcapng file. An empty file, an unknown magic number or a header that
// cannot be read is an error naming the file.
func Open(path string) (*Capture, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	c := &Capture{f: f}
	if err := c.open(path); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func (c *Capture) open(path string) error {
	br := bufio.NewReaderSize(c.f, 1<<16)
	magic, err := br.Peek(4)
	hdr, _ := br.Peek(24)
	switch {
	case len(magic) == 0 && errors.Is(err, io.EOF):
		return fmt.Errorf("%s: empty file, not a capture", path)
	case err != nil:
		return fmt.Errorf("%s: %d bytes: too short for a pcap or pcapng header", path, len(magic))
	}
	switch binary.BigEndian.Uint32(magic) {
	case 0x0a0d0d0a: // pcapng section header block
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			return fmt.Errorf("%s: pcapng: %v", path, err)
		}
		c.src, c.ng = ng, ng
		for i := range ng.NInterfaces() {
			ifc, _ := ng.Interface(i)
			if !linkSupported(uint32(ifc.LinkType)) || ifc.LinkType == linkTypeLinuxSLL2&0xff {
				return fmt.Errorf("%s: interface %d has link type %s, which replay does not read (it reads %s)", path, i, ifc.LinkType, supported)
			}
		}
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1:
		r, err := pcapgo.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: pcap: %v", path, err)
		}
		c.src, c.link = r, binary.LittleEndian.Uint32(hdr[20:24])
		if m := binary.LittleEndian.Uint32(magic); m == 0xd4c3b2a1 || m == 0x4d3cb2a1 { // written big-endian
			c.link = binary.BigEndian.Uint32(hdr[20:24])
		}
		if !linkSupported(c.link) {
			return fmt.Errorf("%s: link type %d, which replay does not read (it reads %s)", path, c.link, supported)
		}
	default:
		return fmt.Errorf("%s: not a pcap or pcapng capture (magic %#08x)", path, binary.BigEndian.Uint32(magic))
	}
	return nil
}

func linkSupported(l uint32) bool {
	switch l {
	case uint32(layers.LinkTypeEthernet), uint32(layers.LinkTypeLinuxSLL), linkTypeLinuxSLL2, uint32(layers.LinkTypeRaw),
		uint32(layers.LinkTypeIPv4), uint32(layers.LinkTypeIPv6), uint32(layers.LinkTypeNull), uint32(layers.LinkTypeLoop):
		return true
	}
	return false
}

// Close closes the file.
func (c *Capture) Close() error { return c.f.Close() }

// Next returns the next frame, io.EOF after the last one, or an error that names the frame (a
// file cut in the middle of a record: "truncated after frame N").
func (c *Capture) Next() (Frame, error) {
	data, ci, err := c.src.ZeroCopyReadPacketData()
	switch {
	case errors.Is(err, io.EOF): // the end, between records (both readers)
		return Frame{}, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF): // the end, inside a record
		return Frame{}, fmt.Errorf("%s: truncated after frame %d: the file ends inside a record", c.f.Name(), c.frames)
	case err != nil:
		return Frame{}, fmt.Errorf("%s: frame %d: %v", c.f.Name(), c.frames+1, err)
	}
	c.frames++
	link := c.link
	if c.ng != nil {
		if len(ci.AncillaryData) > 0 {
			if l, ok := ci.AncillaryData[0].(layers.LinkType); ok {
				link = uint32(l)
			}
		}
		if !linkSupported(link) {
			return Frame{}, fmt.Errorf("%s: frame %d: link type %d, which replay does not read (it reads %s)", c.f.Name(), c.frames, link, supported)
		}
	}
	eth, err := c.ethernet(link, data)
	if err != nil {
		return Frame{}, fmt.Errorf("%s: frame %d: %v", c.f.Name(), c.frames, err)
	}
	return Frame{Data: eth, Info: ci, Cut: ci.CaptureLength < ci.Length}, nil
}

// ethernet returns data as an Ethernet frame: as it is for Ethernet, else behind an Ethernet header
// with zero addresses and the network protocol the link header (or the IP version) names.
func (c *Capture) ethernet(link uint32, data []byte) ([]byte, error) {
	var proto uint16
	switch link {
	case uint32(layers.LinkTypeEthernet):
		return data, nil
	case uint32(layers.LinkTypeLinuxSLL): // 16 bytes: packet type, ARPHRD, address length, address (8), protocol
		if len(data) < 16 {
			return nil, fmt.Errorf("%d bytes: shorter than a Linux cooked (SLL) header", len(data))
		}
		proto, data = binary.BigEndian.Uint16(data[14:16]), data[16:]
	case linkTypeLinuxSLL2: // 20 bytes: protocol, reserved, ifindex, ARPHRD, packet type, address length, address (8)
		if len(data) < 20 {
			return nil, fmt.Errorf("%d bytes: shorter than a Linux cooked v2 (SLL2) header", len(data))
		}
		proto, data = binary.BigEndian.Uint16(data[0:2]), data[20:]
	case uint32(layers.LinkTypeNull), uint32(layers.LinkTypeLoop): // 4 bytes: address family, host order (Null) or big-endian (Loop)
		if len(data) < 4 {
			return nil, fmt.Errorf("%d bytes: shorter than a loopback header", len(data))
		}
		data = data[4:]
		proto = ipEtherType(data)
	default: // raw IP: the version nibble says which
		proto = ipEtherType(data)
	}
	need := 14 + len(data)
	if cap(c.buf) < need {
		c.buf = make([]byte, need, need+need/2)
	}
	b := c.buf[:need]
	clear(b[:12])
	binary.BigEndian.PutUint16(b[12:14], proto)
	copy(b[14:], data)
	return b, nil
}

// ipEtherType is the EtherType of the IP packet in b by its version nibble (0 when it is no IP:
// the programs then count the frame in total only, as they would a non-IP frame).
func ipEtherType(b []byte) uint16 {
	if len(b) == 0 {
		return 0
	}
	switch b[0] >> 4 {
	case 4:
		return 0x0800
	case 6:
		return 0x86dd
	}
	return 0
}

// FrameCounts are what every replay reports of a capture's frames.
type FrameCounts struct {
	Frames uint64 `json:"frames"` // frames in the file
	Short  uint64 `json:"short"`  // frames under 14 bytes (no Ethernet header): not run
	Cut    uint64 `json:"cut"`    // frames the capture holds only part of (snaplen): run as captured
}

// each reads every frame of c in order, counting it in n, and calls fn with those that hold an
// Ethernet header; it stops at the end of the file or at the first error, fn's or the file's.
func (c *Capture) each(n *FrameCounts, fn func(Frame) error) error {
	for {
		f, err := c.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		n.Frames++
		if f.Cut {
			n.Cut++
		}
		if len(f.Data) < 14 {
			n.Short++
			continue
		}
		if err := fn(f); err != nil {
			return err
		}
	}
}
