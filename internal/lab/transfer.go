package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
)

// TransferConfig configures a bulk transfer from client to server.
type TransferConfig struct {
	// Duration of the sending phase; 0 means 3 s.
	Duration time.Duration
	// Conns is the number of parallel MPTCP connections; 0 means 1.
	Conns int
	// Addr is the server address to dial (host, or host:port to also choose the listening port);
	// empty means path 0's server IPv4 address.
	Addr string
	// Interval between ticks; 0 means 1 s.
	Interval time.Duration
	// OnTick, if set, is called every Interval (from one goroutine, never concurrently) with the
	// throughput of each path over that interval.
	OnTick func(TransferTick)
	// CongestionControl, if set, is set with TCP_CONGESTION on the listener and the client's socket
	// before they listen and connect (see congestionControl). Benchmarks set "cubic": with the bbr
	// default of some machines, MPTCP over veth collapses to about 130 Mbit/s per subflow
	// (docs/veth-lab.md).
	CongestionControl string
}

// PathRate is what one path carried during one tick, measured from the server-side interface's
// rx byte counter (so it includes headers of every packet received there, data and control).
type PathRate struct {
	Index   int
	Iface   string // server-side interface
	RxBytes uint64 // bytes received on Iface during the interval
	Mbps    float64
}

// TransferTick reports one interval of a running transfer.
type TransferTick struct {
	Elapsed   time.Duration // since the transfer started sending
	Interval  time.Duration // measured length of this interval
	Paths     []PathRate
	TotalMbps float64 // sum over paths
	Received  uint64  // application bytes the server has read so far, all connections
}

// TransferResult is the outcome of a transfer.
type TransferResult struct {
	Duration   time.Duration // first write to last byte acknowledged by the server
	Sent       uint64        // application bytes written by the client
	Received   uint64        // application bytes read by the server
	ChecksumOK bool          // every connection: the server's CRC-32C and count equal the client's
	MPTCP      bool          // every connection used MPTCP (none fell back to TCP)
	PathBytes  []uint64      // server-side rx bytes per path over the whole transfer
	// FirstBadStamp is, when a connection's stream offset stamps (one every 4 KiB) show that the
	// server read bytes at the wrong place, the stream offset of the first wrong stamp, and
	// BadStampValue the offset that stamp carried: where in the stream the bytes came from. -1 when
	// every stamp was right (the checksum can still differ: stamps cover 8 bytes in 4 KiB).
	FirstBadStamp int64
	BadStampValue uint64
}

const (
	chunkSize  = 256 << 10
	stampEvery = 4 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Transfer runs real MPTCP bulk traffic: it listens in the server namespace, dials cfg.Conns
// connections from the client, writes pseudo-random data (stamped with its stream offset every 4 KiB,
// so reordered or duplicated chunks change the checksum) as fast as it can for cfg.Duration, then
// half-closes; the server reads to EOF, answers with its byte count and CRC-32C, and Transfer
// compares them with the client's. The error reports I/O failures; a mismatch is ChecksumOK false.
func (l *Lab) Transfer(ctx context.Context, cfg TransferConfig) (TransferResult, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = 3 * time.Second
	}
	if cfg.Conns <= 0 {
		cfg.Conns = 1
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	host, port := cfg.Addr, "0"
	if host == "" {
		if len(l.Paths) == 0 {
			return TransferResult{}, errors.New("transfer: lab has no paths")
		}
		host = l.Paths[0].ServerIP4.String()
	} else if h, p, err := net.SplitHostPort(host); err == nil {
		host, port = h, p
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	ln, err := listenIn(ctx, l.Server, net.JoinHostPort("", port), cfg.CongestionControl)
	if err != nil {
		return TransferResult{}, fmt.Errorf("transfer: %w", err)
	}
	defer ln.Close()
	dst := net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))

	var received atomic.Uint64
	srvErr := make(chan error, cfg.Conns)
	stamps := make(chan stampCheck, cfg.Conns)
	go func() {
		for i := 0; i < cfg.Conns; i++ {
			c, err := ln.Accept()
			if err != nil {
				srvErr <- fmt.Errorf("accept: %w", err)
				return
			}
			go func() {
				sc, err := serveSink(ctx, c, &received)
				stamps <- sc
				srvErr <- err
			}()
		}
	}()

	h, err := l.Handle(l.Server)
	if err != nil {
		return TransferResult{}, fmt.Errorf("transfer: %w", err)
	}
	defer h.Close()
	start0, err := l.pathRx(h)
	if err != nil {
		return TransferResult{}, fmt.Errorf("transfer: %w", err)
	}

	conns := make([]net.Conn, 0, cfg.Conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	res := TransferResult{MPTCP: true, ChecksumOK: true, FirstBadStamp: -1}
	for i := 0; i < cfg.Conns; i++ {
		c, err := dialFromAddr(ctx, l.Client, "", dst, cfg.CongestionControl)
		if err != nil {
			return TransferResult{}, fmt.Errorf("transfer: %w", err)
		}
		conns = append(conns, c)
		res.MPTCP = res.MPTCP && IsMPTCP(c)
	}

	// Ticks: per-path server rx deltas.
	tickDone := make(chan struct{})
	tickStop := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(tickDone)
		if cfg.OnTick == nil {
			return
		}
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		prev, prevT := start0, start
		for {
			select {
			case <-tickStop:
				return
			case now := <-t.C:
				cur, err := l.pathRx(h)
				if err != nil {
					continue
				}
				iv := now.Sub(prevT)
				tick := TransferTick{Elapsed: now.Sub(start), Interval: iv, Received: received.Load()}
				for i, p := range l.Paths {
					d := cur[i] - prev[i]
					r := PathRate{Index: i, Iface: p.ServerIf, RxBytes: d, Mbps: float64(d) * 8 / iv.Seconds() / 1e6}
					tick.Paths = append(tick.Paths, r)
					tick.TotalMbps += r.Mbps
				}
				prev, prevT = cur, now
				cfg.OnTick(tick)
			}
		}
	}()

	type cliRes struct {
		sent uint64
		ok   bool
		err  error
	}
	results := make(chan cliRes, cfg.Conns)
	deadline := start.Add(cfg.Duration)
	for _, c := range conns {
		go func() {
			sent, ok, err := sendSource(ctx, c, deadline)
			results <- cliRes{sent, ok, err}
		}()
	}
	var errs []error
	for range conns {
		r := <-results
		res.Sent += r.sent
		res.ChecksumOK = res.ChecksumOK && r.ok
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	res.Duration = time.Since(start)
	close(tickStop)
	<-tickDone
	for range conns {
		if err := <-srvErr; err != nil {
			errs = append(errs, fmt.Errorf("server: %w", err))
			break // the accept loop may have stopped early
		}
		if sc := <-stamps; sc.firstBad >= 0 && res.FirstBadStamp < 0 {
			res.FirstBadStamp, res.BadStampValue = sc.firstBad, sc.value
		}
	}
	res.Received = received.Load()
	if end, err := l.pathRx(h); err == nil {
		for i := range l.Paths {
			res.PathBytes = append(res.PathBytes, end[i]-start0[i])
		}
	}
	if len(errs) > 0 {
		res.ChecksumOK = false
		return res, fmt.Errorf("transfer: %w", errors.Join(errs...))
	}
	return res, nil
}

// pathRx reads the rx byte counter of each path's server-side interface.
func (l *Lab) pathRx(h *netlink.Handle) ([]uint64, error) {
	out := make([]uint64, len(l.Paths))
	for i, p := range l.Paths {
		lk, err := h.LinkByName(p.ServerIf)
		if err != nil {
			return nil, fmt.Errorf("link %s in %s: %w", p.ServerIf, l.Server, err)
		}
		if st := lk.Attrs().Statistics; st != nil {
			out[i] = st.RxBytes
		}
	}
	return out, nil
}

// sendSource writes stamped random data until deadline, half-closes and checks the server's
// count and CRC-32C against its own.
func sendSource(ctx context.Context, c net.Conn, deadline time.Time) (sent uint64, ok bool, err error) {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, chunkSize)
	if _, err := rand.Read(buf); err != nil {
		return 0, false, err
	}
	crc := uint32(0)
	if err := c.SetWriteDeadline(deadline); err != nil {
		return 0, false, err
	}
	for {
		for off := 0; off < len(buf); off += stampEvery {
			binary.BigEndian.PutUint64(buf[off:], sent+uint64(off))
		}
		n, err := c.Write(buf)
		crc = crc32.Update(crc, castagnoli, buf[:n])
		sent += uint64(n)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				break
			}
			return sent, false, fmt.Errorf("write: %w", err)
		}
	}
	if err := c.SetWriteDeadline(time.Time{}); err != nil {
		return sent, false, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return sent, false, fmt.Errorf("close write: %w", err)
	}
	// The server answers once it has read everything: allow it time to drain queues.
	if err := c.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return sent, false, err
	}
	var ans [12]byte
	if _, err := io.ReadFull(c, ans[:]); err != nil {
		return sent, false, fmt.Errorf("read server checksum: %w", err)
	}
	n, sum := binary.BigEndian.Uint64(ans[:8]), binary.BigEndian.Uint32(ans[8:])
	return sent, n == sent && sum == crc, nil
}

// stampCheck is what serveSink found in the stream offset stamps.
type stampCheck struct {
	firstBad int64 // stream offset of the first wrong stamp, -1 if none
	value    uint64
	stamp    [8]byte // the stamp being assembled (it may straddle reads)
}

// check looks at the stamp bytes among b, which starts at stream offset at.
func (sc *stampCheck) check(b []byte, at uint64) {
	if sc.firstBad >= 0 {
		return
	}
	for i := uint64(0); i < uint64(len(b)); {
		off := at + i
		in := off % stampEvery
		if in >= 8 {
			i += stampEvery - in // to the next stamp
			continue
		}
		sc.stamp[in] = b[i]
		if in == 7 {
			base := off - 7
			if v := binary.BigEndian.Uint64(sc.stamp[:]); v != base {
				sc.firstBad, sc.value = int64(base), v
				return
			}
		}
		i++
	}
}

// serveSink reads c to EOF, counting, checksumming and checking the stamps, then answers count and
// CRC-32C.
func serveSink(ctx context.Context, c net.Conn, received *atomic.Uint64) (stampCheck, error) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, chunkSize)
	var n uint64
	crc := uint32(0)
	sc := stampCheck{firstBad: -1}
	for {
		k, err := c.Read(buf)
		crc = crc32.Update(crc, castagnoli, buf[:k])
		sc.check(buf[:k], n)
		n += uint64(k)
		received.Add(uint64(k))
		if err == io.EOF {
			break
		}
		if err != nil {
			return sc, fmt.Errorf("read: %w", err)
		}
	}
	var ans [12]byte
	binary.BigEndian.PutUint64(ans[:8], n)
	binary.BigEndian.PutUint32(ans[8:], crc)
	if _, err := c.Write(ans[:]); err != nil {
		return sc, fmt.Errorf("write checksum: %w", err)
	}
	return sc, nil
}
