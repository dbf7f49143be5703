package capgen

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// The generator's own counts equal what the reference parser reads in the file it wrote, in both
// formats; every frame decodes with gopacket and its TCP checksum verifies.
func TestCountsEqualParser(t *testing.T) {
	for _, format := range []Format{PCAP, PCAPNG} {
		t.Run(format.String(), func(t *testing.T) {
			var file bytes.Buffer
			c, err := Write(&file, Config{Bytes: 24 << 20, Seed: 1, Format: format})
			if err != nil {
				t.Fatal(err)
			}
			if c.Bytes != int64(file.Len()) || c.Bytes < 24<<20 {
				t.Errorf("Counts.Bytes %d, file %d bytes, asked for %d", c.Bytes, file.Len(), 24<<20)
			}
			var src interface {
				ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
			}
			if format == PCAPNG {
				src, err = pcapgo.NewNgReader(&file, pcapgo.DefaultNgReaderOptions)
			} else {
				src, err = pcapgo.NewReader(&file)
			}
			if err != nil {
				t.Fatal(err)
			}
			var got maps.Counters
			var frames, badSum uint64
			for {
				data, _, err := src.ReadPacketData()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				frames++
				r := mptcp.Parse(data)
				p := r.Packets()
				for i := range p {
					got.Packets[i] += p[i]
				}
				for i := range r.Options {
					got.Options[i] += r.Options[i]
				}
				if !checksumOK(t, data) {
					badSum++
				}
			}
			if frames != c.Frames || got != c.Counters {
				t.Errorf("the parser read %d frames %+v; the generator counted %d %+v", frames, got, c.Frames, c.Counters)
			}
			if badSum > 0 {
				t.Errorf("%d frames with a bad TCP checksum", badSum)
			}
			if got.Options[mptcp.Malformed] != 0 {
				t.Errorf("%d malformed options", got.Options[mptcp.Malformed])
			}
			for _, cl := range mptcp.Classes() {
				if cl != mptcp.Malformed && cl != mptcp.MPFail && c.Counters.Options[cl] == 0 {
					t.Errorf("no %s in %d frames", cl, c.Frames)
				}
			}
			if c.IPv4 == 0 || c.IPv6 == 0 || c.VLAN == 0 || c.UDP == 0 || c.Fallbacks == 0 || c.Joins == 0 || c.Data == 0 {
				t.Errorf("a class of frame is missing: %+v", c)
			}
			t.Logf("%d frames, %d bytes: %d data, %d pure ACKs, %d IPv6, %d VLAN, %d UDP, %d connections (%d MPTCP, %d fallbacks), %d joins; %v",
				c.Frames, c.Bytes, c.Data, c.PureAcks, c.IPv6, c.VLAN, c.UDP, c.Conns, c.MPTCPConns, c.Fallbacks, c.Joins, c.Counters.Options)
		})
	}
}

// checksumOK verifies the TCP checksum of an Ethernet frame over its pseudo-header (true for
// frames without TCP).
func checksumOK(t *testing.T, data []byte) bool {
	t.Helper()
	p := gopacket.NewPacket(data, layers.LayerTypeEthernet, gopacket.Default)
	if p.ErrorLayer() != nil {
		t.Fatalf("frame does not decode: %v", p.ErrorLayer().Error())
	}
	tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if tcp == nil {
		return true
	}
	seg := append(append([]byte(nil), tcp.Contents...), tcp.Payload...)
	var pseudo []byte
	switch ip := p.NetworkLayer().(type) {
	case *layers.IPv4:
		pseudo = append(append(pseudo, ip.SrcIP.To4()...), ip.DstIP.To4()...)
		pseudo = append(pseudo, 0, 6, byte(len(seg)>>8), byte(len(seg)))
	case *layers.IPv6:
		pseudo = append(append(pseudo, ip.SrcIP...), ip.DstIP...)
		pseudo = append(pseudo, byte(len(seg)>>24), byte(len(seg)>>16), byte(len(seg)>>8), byte(len(seg)), 0, 0, 0, 6)
	}
	var sum uint32
	all := append(pseudo, seg...)
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	for i := 0; i < len(all); i += 2 {
		sum += uint32(all[i])<<8 | uint32(all[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return sum == 0xffff
}

// The same config writes the same bytes; another seed, others.
func TestDeterministic(t *testing.T) {
	sum := func(seed uint64) [32]byte {
		var b bytes.Buffer
		if _, err := Write(&b, Config{Bytes: 1 << 20, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		return sha256.Sum256(b.Bytes())
	}
	if sum(7) != sum(7) {
		t.Error("two files of seed 7 differ")
	}
	if sum(7) == sum(8) {
		t.Error("seeds 7 and 8 wrote the same file")
	}
}

func BenchmarkWrite(b *testing.B) {
	var n int64
	for b.Loop() {
		c, err := Write(io.Discard, Config{Bytes: 64 << 20, Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		n += c.Bytes
	}
	b.SetBytes(n / int64(b.N))
}
