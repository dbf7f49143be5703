package lb

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// forger sends MP_JOIN SYNs with random tokens at the VIP from the client's first path, through an
// AF_PACKET socket: frames built with gopacket, as a client's kernel would send a join, except that
// no connection holds the token.
type forger struct {
	fd       int
	ifindex  int
	src, dst net.HardwareAddr
	from     netip.Addr
	vip      netip.AddrPort
	rng      *rand.Rand
	buf      gopacket.SerializeBuffer
}

func newForger(s *setup) (*forger, error) {
	p := s.Paths[0]
	f := &forger{vip: s.vip, rng: rand.New(rand.NewPCG(rand.Uint64(), 5)), buf: gopacket.NewSerializeBuffer()}
	f.from = p.ClientIP4
	if s.vip.Addr().Is6() {
		f.from = p.ClientIP6
	}
	err := netns.Do(s.Client, func() error {
		c, err := net.InterfaceByName(p.ClientIf)
		if err != nil {
			return err
		}
		f.ifindex, f.src = c.Index, c.HardwareAddr
		f.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("forger: %w", err)
	}
	err = netns.Do(s.LB, func() error {
		l, err := net.InterfaceByName(p.LBIf)
		if err == nil {
			f.dst = l.HardwareAddr
		}
		return err
	})
	if err != nil {
		unix.Close(f.fd)
		return nil, fmt.Errorf("forger: %w", err)
	}
	return f, nil
}

func (f *forger) Close() { unix.Close(f.fd) }

// send forges one MP_JOIN SYN carrying token, retrying while the link is full until ctx ends.
func (f *forger) send(ctx context.Context, token uint32) error {
	// MP_JOIN SYN option after kind and length: subtype 1 in the high nibble (backup bit clear),
	// address id, the receiver's token, the sender's nonce.
	data := make([]byte, 10)
	data[0], data[1] = 0x10, byte(f.rng.IntN(256))
	binary.BigEndian.PutUint32(data[2:], token)
	binary.BigEndian.PutUint32(data[6:], f.rng.Uint32())
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(32768 + f.rng.IntN(28000)), DstPort: layers.TCPPort(f.vip.Port()),
		Seq: f.rng.Uint32(), SYN: true, Window: 64240,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
			{OptionType: 30, OptionLength: 12, OptionData: data},
		},
	}
	eth := &layers.Ethernet{SrcMAC: f.src, DstMAC: f.dst}
	var ip gopacket.SerializableLayer
	if f.vip.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
			SrcIP: f.from.AsSlice(), DstIP: f.vip.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: f.from.AsSlice(), DstIP: f.vip.Addr().AsSlice()}
		_ = tcp.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	if err := gopacket.SerializeLayers(f.buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		return err
	}
	sa := &unix.SockaddrLinklayer{Ifindex: f.ifindex, Halen: 6}
	copy(sa.Addr[:], f.dst)
	for {
		err := unix.Sendto(f.fd, f.buf.Bytes(), 0, sa)
		if err == unix.ENOBUFS || err == unix.EAGAIN {
			if ctx.Err() != nil {
				return fmt.Errorf("send: %w (link still full at the deadline: %w)", err, ctx.Err())
			}
			continue
		}
		return err
	}
}
