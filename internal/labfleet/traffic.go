package labfleet

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

// The service protocol: on accept the server writes one byte, its backend's index; the client
// writes the length of its data (8 bytes, big-endian), then the data; the server reads that much
// and answers with the byte count (8 bytes) and CRC-32C (4 bytes) of what it read, which the client
// compares with its own. The server then waits for the client to close first, so that a
// connection whose transfer is done stays established until the test closes it: counters read
// meanwhile (resets, aborts) cannot include a close's.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Servers are the MPTCP servers of every backend.
type Servers struct {
	Port     int
	Accepted []atomic.Int64 // connections accepted, per backend
	Verified []atomic.Int64 // transfers answered, per backend

	lns    []net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Serve starts, in every backend, MPTCP servers on VIP4:port, [VIP6]:port and [JoinAddr6(j)]:port
// (a join to the backend's own IPv6 address needs a listener there). Close them when done.
func (l *Lab) Serve(ctx context.Context, port int) (_ *Servers, err error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &Servers{Port: port, Accepted: make([]atomic.Int64, len(l.Backends)), Verified: make([]atomic.Int64, len(l.Backends)), cancel: cancel}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	for _, b := range l.Backends {
		for _, a := range []netip.Addr{l.VIP4, l.VIP6, JoinAddr6(b.Index)} {
			ln, err := lab.ListenIn(ctx, b.Netns, net.JoinHostPort(a.String(), strconv.Itoa(port)))
			if err != nil {
				return nil, fmt.Errorf("backend %d: %w", b.Index, err)
			}
			s.lns = append(s.lns, ln)
			s.wg.Add(1)
			go s.accept(ctx, ln, b.Index)
		}
	}
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
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	want := binary.BigEndian.Uint64(hdr[:])
	buf := make([]byte, 64<<10)
	var n uint64
	var crc uint32
	for n < want {
		k, err := c.Read(buf[:min(uint64(len(buf)), want-n)])
		crc = crc32.Update(crc, castagnoli, buf[:k])
		n += uint64(k)
		if err != nil {
			return err
		}
	}
	var ans [12]byte
	binary.BigEndian.PutUint64(ans[:8], n)
	binary.BigEndian.PutUint32(ans[8:], crc)
	if _, err := c.Write(ans[:]); err != nil {
		return err
	}
	_, err := io.Copy(io.Discard, c) // until the client closes (or ctx ends)
	return err
}

// Close stops the servers and waits (up to 30 s) for their connections to end.
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
	case <-time.After(30 * time.Second):
		errs = append(errs, errors.New("labfleet servers: connections still served 30 s after close"))
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
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetReadDeadline(dl)
	}
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("read backend index from %s: %w", addr, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return &Conn{Conn: c, Backend: int(b[0])}, nil
}

// ErrCorrupt reports a transfer whose bytes did not arrive intact.
var ErrCorrupt = errors.New("data corrupted in transit")

// Transfer sends n bytes of random data in chunks of chunk bytes, pausing pace between chunks
// (0: none), and checks the server's count and CRC-32C against its own. It does not close the
// connection (nor does the server until it is closed), so it runs once per connection.
func (c *Conn) Transfer(ctx context.Context, n, chunk int, pace time.Duration) error {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	if chunk <= 0 {
		chunk = 64 << 10
	}
	buf := make([]byte, chunk)
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("write length: %w", err)
	}
	var crc uint32
	sent := 0
	for sent < n {
		k := min(len(buf), n-sent)
		if _, err := rand.Read(buf[:k]); err != nil {
			return err
		}
		w, err := c.Write(buf[:k])
		crc = crc32.Update(crc, castagnoli, buf[:w])
		sent += w
		if err != nil {
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
		if pace > 0 && sent < n {
			select {
			case <-time.After(pace):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	var ans [12]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return fmt.Errorf("read server checksum: %w", err)
	}
	if got, sum := binary.BigEndian.Uint64(ans[:8]), binary.BigEndian.Uint32(ans[8:]); got != uint64(sent) || sum != crc {
		return fmt.Errorf("%w: server read %d bytes crc %08x, client sent %d crc %08x", ErrCorrupt, got, sum, sent, crc)
	}
	return nil
}

// DialN opens n connections to addr, par at a time; on any error it closes those it opened.
func (l *Lab) DialN(ctx context.Context, addr netip.AddrPort, n, par int) ([]*Conn, error) {
	conns := make([]*Conn, n)
	errs := make([]error, n)
	sem := make(chan struct{}, par)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			conns[i], errs[i] = l.Dial(ctx, addr)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			CloseAll(conns)
			return nil, fmt.Errorf("dial %d of %d: %w", i, n, err)
		}
	}
	return conns, nil
}

// TransferAll runs Transfer on every connection at once and returns the errors, one per
// connection (nil: intact).
func TransferAll(ctx context.Context, conns []*Conn, n, chunk int, pace time.Duration) []error {
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Transfer(ctx, n, chunk, pace)
		}()
	}
	wg.Wait()
	return errs
}

// CloseAll closes every connection that is not nil.
func CloseAll(conns []*Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}
