package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// connCLI runs mptcp-xdp in this process with args and returns its stdout.
func connCLI(args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// connListed is the part of a `conn list -o json` row the test reads.
type connListed struct {
	Token        string `json:"token"`
	State        string `json:"state"`
	Local        string `json:"local"`
	Remote       string `json:"remote"`
	SubflowCount int    `json:"subflow_count"`
	Totals       struct {
		BytesSent uint64 `json:"bytes_sent"`
	} `json:"totals"`
}

// unmapped writes an address:port with a v4-mapped IPv6 address as IPv4.
func unmapped(s string) string {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// TestConnCommands runs conn list, conn show and subflow list through cobra against two MPTCP
// connections (IPv4 and IPv6, two subflows each) in a lab, on both ends, and checks them against
// getsockopt (tokens, addresses) and pkg/stats (subflows).
func TestConnCommands(t *testing.T) {
	l := testutil.NewLab(t, lab.Config{Paths: 2, Subflows: true, IPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type end struct {
		ns    string
		conn  *net.TCPConn
		token stats.Token
	}
	var ends []end
	for _, host := range []string{l.Paths[0].ServerIP4.String(), l.Paths[0].ServerIP6.String()} {
		p, err := l.Pair(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		for _, e := range []end{{l.Client, p.Client.(*net.TCPConn), 0}, {l.Server, p.Server.(*net.TCPConn), 0}} {
			info, err := sockopt.Info(e.conn)
			if err != nil {
				t.Fatal(err)
			}
			e.token = stats.Token(info.Token)
			ends = append(ends, e)
		}
	}
	r, err := stats.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, e := range ends {
		for {
			conns, err := r.Connections(e.ns)
			if err != nil {
				t.Fatal(err)
			}
			if c := stats.Find(conns, e.token); c != nil && c.Live() == 2 {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("connection %v in %s never had 2 subflows", e.token, e.ns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	for _, ns := range []string{l.Client, l.Server} {
		var mine []end
		for _, e := range ends {
			if e.ns == ns {
				mine = append(mine, e)
			}
		}
		t.Run("list/"+ns, func(t *testing.T) {
			out, err := connCLI("conn", "list", "--netns", ns, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var rep struct {
				Netns       string       `json:"netns"`
				Connections []connListed `json:"connections"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v in %s", err, out)
			}
			if rep.Netns != ns || len(rep.Connections) != len(mine) {
				t.Fatalf("netns %q, %d connections, want %q, %d:\n%s", rep.Netns, len(rep.Connections), ns, len(mine), out)
			}
			for _, e := range mine {
				i := slices.IndexFunc(rep.Connections, func(c connListed) bool {
					return c.Token == fmt.Sprintf("%08x", uint32(e.token))
				})
				if i < 0 {
					t.Errorf("token %08x (getsockopt) not listed:\n%s", uint32(e.token), out)
					continue
				}
				c := rep.Connections[i]
				// The first subflow is the one the socket was made with: its addresses are the socket's
				// (the kernel, like ss, keeps an IPv4 peer of an IPv6 socket v4-mapped; Go unmaps it).
				if unmapped(c.Local) != e.conn.LocalAddr().String() || unmapped(c.Remote) != e.conn.RemoteAddr().String() ||
					c.SubflowCount != 2 || c.State != "ESTAB" || c.Totals.BytesSent == 0 {
					t.Errorf("connection %+v; socket %v -> %v", c, e.conn.LocalAddr(), e.conn.RemoteAddr())
				}
			}
			table, err := connCLI("conn", "list", "--netns", ns)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(table, "TOKEN ") {
				t.Errorf("table:\n%s", table)
			}
			for _, e := range mine {
				if !strings.Contains(table, fmt.Sprintf("%08x ", uint32(e.token))) {
					t.Errorf("token %08x not in the table:\n%s", uint32(e.token), table)
				}
			}
		})
		t.Run("show/"+ns, func(t *testing.T) {
			for _, e := range mine {
				// ss -M prints tokens without leading zeros; conn show takes both forms.
				out, err := connCLI("conn", "show", fmt.Sprintf("%x", uint32(e.token)), "--netns", ns, "-o", "json")
				if err != nil {
					t.Fatal(err)
				}
				var rep struct {
					Netns      string `json:"netns"`
					Connection struct {
						Token    stats.Token     `json:"token"`
						Subflows []stats.Subflow `json:"subflows"`
					} `json:"connection"`
				}
				if err := json.Unmarshal([]byte(out), &rep); err != nil {
					t.Fatalf("%v in %s", err, out)
				}
				if rep.Netns != ns || rep.Connection.Token != e.token || len(rep.Connection.Subflows) != 2 {
					t.Fatalf("conn show %v:\n%s", e.token, out)
				}
				conns, err := r.Connections(ns)
				if err != nil {
					t.Fatal(err)
				}
				want := stats.Find(conns, e.token)
				for i, s := range rep.Connection.Subflows {
					w := want.Subflows[i]
					if s.Cookie != w.Cookie || s.ID != w.ID || s.Local != w.Local || s.Remote != w.Remote ||
						s.Flags != w.Flags || s.LocalID != w.LocalID || s.RemoteID != w.RemoteID {
						t.Errorf("subflow %d: CLI %+v, reader %+v", i, s, w)
					}
				}
				table, err := connCLI("conn", "show", e.token.String(), "--netns", ns)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(table, "token ") || !strings.Contains(table, e.token.String()) ||
					strings.Count(table, "ESTAB") < 3 { // the connection and both subflows
					t.Errorf("conn show table:\n%s", table)
				}
			}
			// A token that none of the namespace's connections has (the list subtest checks they are all mine).
			var absent stats.Token
			for slices.ContainsFunc(mine, func(e end) bool { return e.token == absent }) {
				absent++
			}
			if _, err := connCLI("conn", "show", absent.String(), "--netns", ns); err == nil || !strings.Contains(err.Error(), "no MPTCP connection with token "+absent.String()) {
				t.Errorf("conn show of an absent token %v: %v", absent, err)
			}
			if _, err := connCLI("conn", "show", "123456789", "--netns", ns); err == nil {
				t.Error("conn show of a 9-digit token succeeded")
			}
		})
		t.Run("subflows/"+ns, func(t *testing.T) {
			out, err := connCLI("subflow", "list", "--netns", ns, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var rep struct {
				Netns    string          `json:"netns"`
				Subflows []stats.Subflow `json:"subflows"`
			}
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("%v in %s", err, out)
			}
			if len(rep.Subflows) != 2*len(mine) {
				t.Fatalf("%d subflows, want %d:\n%s", len(rep.Subflows), 2*len(mine), out)
			}
			for _, e := range mine {
				n := 0
				for _, s := range rep.Subflows {
					if s.Token == e.token {
						n++
					}
				}
				if n != 2 {
					t.Errorf("token %v: %d subflows listed, want 2", e.token, n)
				}
			}
			table, err := connCLI("subflow", "list", "--netns", ns)
			if err != nil {
				t.Fatal(err)
			}
			if lines := strings.Count(strings.TrimSpace(table), "\n") + 1; lines != 1+2*len(mine) {
				t.Errorf("subflow table has %d lines, want %d:\n%s", lines, 1+2*len(mine), table)
			}
		})
	}
	if _, err := connCLI("conn", "list", "--netns", "mx-no-such-ns"); err == nil {
		t.Error("conn list in a missing namespace succeeded")
	}
}
