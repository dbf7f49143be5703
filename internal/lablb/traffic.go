package lablb

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
)

// The service protocol: the server writes one byte, the index of its backend, as soon as it accepts
// (so the client knows where it landed); the client writes data, stamped with its stream offset
// every 4 KiB, and half-closes; the server reads to EOF and answers with the byte count (8 bytes) and
// CRC-32C (4 bytes) of what it read, which the client compares with its own.

const stampEvery = 4 << 10

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Servers are the MPTCP servers listening on the VIPs in every backend.
type Servers struct {
	Port     int
	Accepted []atomic.Int64 // connections accepted, per backend
	Verified []atomic.Int64 // transfers answered, per backend

	lns    []net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Serve starts, in every backend, an MPTCP server on VIP4:port and [VIP6]:port (port 0: one free
// port, the same in every backend). Close the Servers to stop them.
func (l *Lab) Serve(ctx context.Context, port int) (_ *Servers, err error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &Servers{Accepted: make([]atomic.Int64, len(l.Backends)), Verified: make([]atomic.Int64, len(l.Backends)), cancel: cancel}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, b := range l.Backends {
		for _, vip := range []netip.Addr{l.VIP4, l.VIP6} {
			ln, err := lab.ListenIn(ctx, b.Netns, net.JoinHostPort(vip.String(), strconv.Itoa(port)))
			if err != nil {
				return nil, fmt.Errorf("backend %d: %w", b.Index, err)
			}
			if port == 0 {
				port = ln.Addr().(*net.TCPAddr).Port
			}
			s.lns = append(s.lns, ln)
			s.wg.Add(1)
			go s.accept(ctx, ln, b.Index)
		}
	}
	s.Port = port
	return s, nil
}

func (s *Servers) accept(ctx context.Context, ln net.Listener, idx int) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.Accepted[idx].Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if serveOne(ctx, c, idx) == nil {
				s.Verified[idx].Add(1)
			}
		}()
	}
}

func serveOne(ctx context.Context, c net.Conn, idx int) error {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if _, err := c.Write([]byte{byte(idx)}); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	var n uint64
	crc := uint32(0)
	for {
		k, err := c.Read(buf)
		crc = crc32.Update(crc, castagnoli, buf[:k])
		n += uint64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	var ans [12]byte
	binary.BigEndian.PutUint64(ans[:8], n)
	binary.BigEndian.PutUint32(ans[8:], crc)
	_, err := c.Write(ans[:])
	return err
}

// closeTimeout bounds Close's wait for the servers' goroutines.
const closeTimeout = 30 * time.Second

// Close stops the servers and waits (up to closeTimeout) for their connections to end.
func (s *Servers) Close() error {
	s.cancel()
	var errs []error
	for _, ln := range s.lns {
		errs = append(errs, ln.Close())
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(closeTimeout):
		errs = append(errs, fmt.Errorf("lablb servers: connections still being served %v after close", closeTimeout))
	}
	return errors.Join(errs...)
}

// Conn is a client connection to a VIP.
type Conn struct {
	net.Conn
	Backend int // index of the backend that accepted it
}

// Dial connects from the client namespace to addr over MPTCP and reads which backend accepted.
func (l *Lab) Dial(ctx context.Context, addr netip.AddrPort) (*Conn, error) {
	c, err := lab.DialFrom(ctx, l.Client, addr.String())
	if err != nil {
		return nil, err
	}
	// The read of the backend's index ends with ctx, deadline or not.
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		stop()
		c.Close()
		return nil, fmt.Errorf("read backend index from %s: %w", addr, err)
	}
	if !stop() {
		// ctx ended meanwhile and its deadline may be set: the connection is unusable anyway.
		c.Close()
		return nil, fmt.Errorf("read backend index from %s: %w", addr, ctx.Err())
	}
	_ = c.SetReadDeadline(time.Time{})
	return &Conn{Conn: c, Backend: int(b[0])}, nil
}

// ErrCorrupt reports a transfer whose bytes did not arrive intact.
var ErrCorrupt = errors.New("data corrupted in transit")

// Transfer sends n bytes of stamped random data, half-closes and checks the server's count and
// CRC-32C against the client's. It does not close the connection.
func (c *Conn) Transfer(ctx context.Context, n int) error {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 64<<10)
	if _, err := rand.Read(buf); err != nil {
		return err
	}
	crc := uint32(0)
	var sent uint64
	for sent < uint64(n) {
		k := min(len(buf), n-int(sent))
		for off := 0; off < k; off += stampEvery {
			if off+8 <= k {
				binary.BigEndian.PutUint64(buf[off:], sent+uint64(off))
			}
		}
		w, err := c.Write(buf[:k])
		crc = crc32.Update(crc, castagnoli, buf[:w])
		sent += uint64(w)
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
	}
	if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	var ans [12]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return fmt.Errorf("read server checksum: %w", err)
	}
	if got, sum := binary.BigEndian.Uint64(ans[:8]), binary.BigEndian.Uint32(ans[8:]); got != sent || sum != crc {
		return fmt.Errorf("%w: server read %d bytes crc %08x, client sent %d crc %08x", ErrCorrupt, got, sum, sent, crc)
	}
	return nil
}
