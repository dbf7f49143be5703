package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Pair is one established MPTCP connection between the namespaces, with the listener kept open:
// MP_JOIN SYNs are received by the listener, so closing it stops further subflows.
type Pair struct {
	Client   net.Conn // the client namespace's end
	Server   net.Conn // the server namespace's end
	Listener net.Listener
}

// Close closes both ends and the listener.
func (p *Pair) Close() error {
	return errors.Join(p.Client.Close(), p.Server.Close(), p.Listener.Close())
}

// Pair listens in the server namespace on an ephemeral port, dials it from the client at host
// (empty: path 0's server IPv4 address) and exchanges one byte each way, so the connection is fully
// established and the path managers start adding subflows and announcing addresses.
func (l *Lab) Pair(ctx context.Context, host string) (_ *Pair, err error) {
	if host == "" {
		host = l.Paths[0].ServerIP4.String()
	}
	ln, err := l.Listen(ctx, ":0")
	if err != nil {
		return nil, err
	}
	p := &Pair{Listener: ln}
	defer func() {
		if err != nil {
			for _, c := range []io.Closer{p.Client, p.Server, p.Listener} {
				if c != nil {
					c.Close()
				}
			}
		}
	}()
	acc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		p.Server = c
		acc <- err
	}()
	c, err := l.Dial(ctx, net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		ln.Close()
		<-acc
		return nil, err
	}
	p.Client = c
	select {
	case err = <-acc:
	case <-ctx.Done():
		ln.Close()
		<-acc
		err = ctx.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("pair: accept: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = p.Client.SetDeadline(dl)
		_ = p.Server.SetDeadline(dl)
	}
	var b [1]byte
	for _, d := range [][2]net.Conn{{p.Client, p.Server}, {p.Server, p.Client}} {
		if _, err = d[0].Write([]byte{1}); err == nil {
			_, err = io.ReadFull(d[1], b[:])
		}
		if err != nil {
			return nil, fmt.Errorf("pair: handshake byte: %w", err)
		}
	}
	_ = p.Client.SetDeadline(time.Time{})
	_ = p.Server.SetDeadline(time.Time{})
	return p, nil
}

// Abort closes c abortively: SO_LINGER 0 then close. On an MPTCP connection the 6.18 kernel sends
// MP_FASTCLOSE (with MP_TCPRST on a RST) on every subflow; closing with unread received data does the
// same.
func Abort(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return fmt.Errorf("abort: %T is not a TCP connection", c)
	}
	if err := tc.SetLinger(0); err != nil {
		return fmt.Errorf("abort: set SO_LINGER 0: %w", err)
	}
	return tc.Close()
}

// WaitMIB polls ns's counters until counter key has grown by at least delta since base, and returns
// all the deltas at that moment (or the last ones read, with ctx's error).
func (l *Lab) WaitMIB(ctx context.Context, ns string, base MIB, key string, delta int64) (Delta, error) {
	for {
		m, err := l.MIB(ns)
		if err != nil {
			return nil, err
		}
		if _, ok := m[key]; !ok {
			// The kernel lists every counter it has, zero or not: this one it does not have.
			return nil, fmt.Errorf("wait for %s +%d in %s: this kernel has no such counter", key, delta, ns)
		}
		d := m.Sub(base)
		if d[key] >= delta {
			return d, nil
		}
		select {
		case <-ctx.Done():
			return d, fmt.Errorf("wait for %s +%d in %s (now +%d): %w", key, delta, ns, d[key], ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitSubflows polls `ss -M` in ns until an established MPTCP connection has at least n subflows
// beyond the first (or exactly n with exact), and returns it.
func (l *Lab) WaitSubflows(ctx context.Context, ns string, n int, exact bool) (Conn, error) {
	for {
		conns, err := l.Subflows(ns)
		if err != nil {
			return Conn{}, err
		}
		for _, c := range conns {
			if c.State == "ESTAB" && (c.Subflows == n || !exact && c.Subflows > n) {
				return c, nil
			}
		}
		select {
		case <-ctx.Done():
			return Conn{}, fmt.Errorf("wait for a connection with %d subflows in %s (have %+v): %w", n, ns, conns, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
