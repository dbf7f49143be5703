package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// The helper process: TestTCPInfoHelperProcess re-executed with one of these set.
const (
	helperEnv = "MX_TCPINFO_HELPER" // hold MPTCP connections: the value is a JSON helperSpec
	cliEnv    = "MX_TCPINFO_CLI"    // run the CLI with these arguments, separated by \x1f
)

// helperSpec tells the helper what to open.
type helperSpec struct {
	Netns    string   // client network namespace
	MPTCP    []string // MPTCP connections to open (host:port)
	Subflows int      // subflows to wait for on each
	Fallback string   // an MPTCP connection to a plain TCP listener: falls back
	Plain    string   // a plain TCP connection: not MPTCP, must be skipped
	Listen   bool     // also hold an MPTCP listener
}

// helperReady is the helper's one line of output once everything is up: kind of each fd.
type helperReady struct {
	FDs map[int]string // "mptcp", "fallback", "plain", "listener"
}

// TestTCPInfoHelperProcess is not a test: it is the separate process the tcpinfo tests read.
func TestTCPInfoHelperProcess(t *testing.T) {
	if args, ok := os.LookupEnv(cliEnv); ok {
		root := newRootCmd()
		root.SetArgs(strings.Split(args, "\x1f"))
		if err := root.Execute(); err != nil {
			fmt.Fprintf(os.Stderr, "mptcp-xdp: %v\n", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	spec, ok := os.LookupEnv(helperEnv)
	if !ok {
		return
	}
	if err := runHelper(spec); err != nil {
		fmt.Fprintf(os.Stderr, "helper: %v\n", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runHelper(js string) error {
	var spec helperSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ready := helperReady{FDs: map[int]string{}}
	var conns []net.Conn
	add := func(c net.Conn, kind string) error {
		conns = append(conns, c)
		// Fully establish: one byte each way (the server echoes).
		if _, err := c.Write([]byte{1}); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return err
		}
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			return err
		}
		return rc.Control(func(fd uintptr) { ready.FDs[int(fd)] = kind })
	}
	for _, a := range spec.MPTCP {
		c, err := lab.DialFrom(ctx, spec.Netns, a)
		if err != nil {
			return err
		}
		if err := add(c, "mptcp"); err != nil {
			return err
		}
	}
	c, err := lab.DialFrom(ctx, spec.Netns, spec.Fallback)
	if err != nil {
		return err
	}
	if err := add(c, "fallback"); err != nil {
		return err
	}
	var d net.Dialer
	d.SetMultipathTCP(false)
	err = netns.Do(spec.Netns, func() (err error) { c, err = d.DialContext(ctx, "tcp", spec.Plain); return err })
	if err != nil {
		return err
	}
	if err := add(c, "plain"); err != nil {
		return err
	}
	if spec.Listen {
		ln, err := lab.ListenIn(ctx, spec.Netns, "127.0.0.1:0")
		if err != nil {
			return err
		}
		defer ln.Close()
		rc, err := ln.(*net.TCPListener).SyscallConn()
		if err != nil {
			return err
		}
		if err := rc.Control(func(fd uintptr) { ready.FDs[int(fd)] = "listener" }); err != nil {
			return err
		}
	}
	// Wait for every MPTCP connection's subflows.
	for _, c := range conns[:len(spec.MPTCP)] {
		for {
			ti, err := sockopt.TCPInfo(c.(*net.TCPConn))
			if err != nil {
				return err
			}
			est := 0
			for _, s := range ti {
				if s.StateName() == "ESTAB" {
					est++
				}
			}
			if len(ti) == spec.Subflows && est == len(ti) {
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%d subflows, want %d", len(ti), spec.Subflows)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	b, _ := json.Marshal(ready)
	fmt.Printf("ready %s\n", b)
	io.Copy(io.Discard, os.Stdin) // hold the connections until the test closes stdin
	return nil
}

// echo accepts connections and echoes them.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { io.Copy(c, c); c.Close() }()
	}
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready helperReady
}

func startHelper(t *testing.T, spec helperSpec) *helper {
	t.Helper()
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^TestTCPInfoHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if js, ok := strings.CutPrefix(sc.Text(), "ready "); ok {
			if err := json.Unmarshal([]byte(js), &h.ready); err != nil {
				t.Fatal(err)
			}
			go io.Copy(io.Discard, stdout)
			return h
		}
	}
	t.Fatalf("helper exited before it was ready: %v", sc.Err())
	return nil
}

// fd returns the lowest fd of a kind.
func (h *helper) fd(kind string) int {
	best := -1
	for fd, k := range h.ready.FDs {
		if k == kind && (best < 0 || fd < best) {
			best = fd
		}
	}
	return best
}

// runCLI runs mptcp-xdp in this process with args and returns its stdout.
func runCLI(args ...string) (string, error) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// ssConn is one MPTCP socket of `ss -Mip`.
type ssConn struct {
	Local, Peer string
	PID, FD     int
	Token       string
	Subflows    int
}

var ssUsers = regexp.MustCompile(`pid=(\d+),fd=(\d+)`)

// ssMPTCP lists the MPTCP sockets `ss -HnMip` shows in ns.
func ssMPTCP(t *testing.T, ns string) []ssConn {
	t.Helper()
	out, err := exec.Command("ss", "-N", ns, "-HnMip").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	var conns []ssConn
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			c := ssConn{PID: -1, FD: -1}
			if len(f) >= 5 {
				c.Local, c.Peer = f[3], f[4]
			}
			if m := ssUsers.FindStringSubmatch(line); m != nil {
				c.PID, _ = strconv.Atoi(m[1])
				c.FD, _ = strconv.Atoi(m[2])
			}
			conns = append(conns, c)
			continue
		}
		c := &conns[len(conns)-1]
		for _, kv := range f {
			k, v, _ := strings.Cut(kv, ":")
			switch k {
			case "token":
				// ss prints the token as %x (no leading zeros); tcpinfo as %08x.
				if tok, err := strconv.ParseUint(v, 16, 32); err == nil {
					c.Token = fmt.Sprintf("%08x", tok)
				} else {
					c.Token = v
				}
			case "subflows":
				c.Subflows, _ = strconv.Atoi(v)
			}
		}
	}
	return conns
}

// ssSubflowPairs lists "local remote" of every MPTCP subflow `ss -ti` shows in ns.
func ssSubflowPairs(t *testing.T, ns string) []string {
	t.Helper()
	out, err := exec.Command("ss", "-N", ns, "-Htni").CombinedOutput()
	if err != nil {
		t.Fatalf("ss: %v: %s", err, out)
	}
	var pairs []string
	var cur string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' && len(f) >= 5 {
			cur = normAddr(f[3]) + " " + normAddr(f[4])
			continue
		}
		if slices.Contains(f, "tcp-ulp-mptcp") {
			pairs = append(pairs, cur)
		}
	}
	slices.Sort(pairs)
	return pairs
}

// normAddr drops an interface scope (%cli1) and unmaps v4-mapped addresses.
func normAddr(s string) string {
	if i := strings.LastIndex(s, "%"); i >= 0 {
		if j := strings.LastIndex(s, ":"); j > i {
			s = s[:i] + s[j:]
		}
	}
	a, err := netip.ParseAddrPort(s)
	if err != nil {
		return s
	}
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String()
}

// TestTCPInfoProcess runs `mptcp-xdp tcpinfo` against a separate process holding three MPTCP
// connections with four subflows each (two IPv4, one IPv6), one connection that fell back to TCP
// and one plain TCP connection, and checks it against ss.
func TestTCPInfoProcess(t *testing.T) {
	const paths = 4
	l := testutil.NewLab(t, lab.Config{Prefix: fmt.Sprintf("mxsop%04x", os.Getpid()%0x10000), Paths: paths, Subflows: true, IPv6: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	mln, err := l.Listen(ctx, ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer mln.Close()
	go echo(mln)
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	var pln net.Listener
	if err := netns.Do(l.Server, func() (err error) { pln, err = lc.Listen(ctx, "tcp", ":0"); return err }); err != nil {
		t.Fatal(err)
	}
	defer pln.Close()
	go echo(pln)
	mport := strconv.Itoa(mln.Addr().(*net.TCPAddr).Port)
	pport := strconv.Itoa(pln.Addr().(*net.TCPAddr).Port)
	v4, v6 := l.Paths[0].ServerIP4.String(), l.Paths[0].ServerIP6.String()
	h := startHelper(t, helperSpec{
		Netns:    l.Client,
		MPTCP:    []string{net.JoinHostPort(v4, mport), net.JoinHostPort(v4, mport), net.JoinHostPort(v6, mport)},
		Subflows: paths,
		Fallback: net.JoinHostPort(v4, pport),
		Plain:    net.JoinHostPort(v4, pport),
		Listen:   true,
	})
	pid := strconv.Itoa(h.cmd.Process.Pid)

	// Every flavour of the command agrees: JSON, JSON with --netns (ignored), table.
	out, err := runCLI("tcpinfo", "--pid", pid, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep tcpinfoReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out2, err := runCLI("--netns", l.Client, "tcpinfo", "--pid", pid, "-o", "json"); err != nil {
		t.Errorf("with --netns: %v", err)
	} else {
		var rep2 tcpinfoReport
		if err := json.Unmarshal([]byte(out2), &rep2); err != nil || len(rep2.Connections) != len(rep.Connections) {
			t.Errorf("with --netns: %d connections (%v), without %d", len(rep2.Connections), err, len(rep.Connections))
		}
	}

	byFD := map[int]tcpinfoConn{}
	for _, c := range rep.Connections {
		byFD[c.FD] = c
	}
	if len(rep.Connections) != 5 {
		t.Errorf("%d connections, want 3 MPTCP + 1 fallback + 1 listener: %s", len(rep.Connections), out)
	}
	if c, ok := byFD[h.fd("listener")]; !ok || !c.Listening || c.Token != "" || len(c.Subflows) != 0 || c.Local == "" {
		t.Errorf("listener: %+v (present %v)", c, ok)
	}
	if c, ok := byFD[h.fd("plain")]; ok {
		t.Errorf("plain TCP socket listed: %+v", c)
	}
	fb, ok := byFD[h.fd("fallback")]
	if !ok || !fb.Fallback || fb.MPTCP != nil || len(fb.Subflows) != 1 || fb.Subflows[0].State != "ESTAB" {
		t.Errorf("fallback connection: %+v (present %v)", fb, ok)
	}

	// The same MPTCP connections as ss -M shows for the process, same tokens and subflow counts.
	var seen int
	for _, s := range ssMPTCP(t, l.Client) {
		if s.PID != h.cmd.Process.Pid {
			continue
		}
		c, ok := byFD[s.FD]
		if !ok {
			t.Errorf("ss -M shows fd %d (%s → %s), tcpinfo does not", s.FD, s.Local, s.Peer)
			continue
		}
		if c.Fallback {
			continue // ss -M prints no token or subflows for it
		}
		seen++
		if c.Token != s.Token || c.MPTCP.Subflows != uint8(s.Subflows) || len(c.Subflows) != s.Subflows+1 {
			t.Errorf("fd %d: token %s, %d extra and %d listed subflows; ss -M: token %s, %d extra subflows",
				s.FD, c.Token, c.MPTCP.Subflows, len(c.Subflows), s.Token, s.Subflows)
		}
		if normAddr(c.Local) != normAddr(s.Local) || normAddr(c.Remote) != normAddr(s.Peer) {
			t.Errorf("fd %d: %s → %s, ss -M: %s → %s", s.FD, c.Local, c.Remote, s.Local, s.Peer)
		}
		if len(c.Missing) != 0 || c.Error != "" {
			t.Errorf("fd %d: missing %v, error %q", s.FD, c.Missing, c.Error)
		}
	}
	if seen != 3 {
		t.Errorf("ss -M shows %d MPTCP connections of process %s, want 3", seen, pid)
	}

	// Every subflow ss -ti shows in the client namespace (they are all the helper's), no more.
	var ours []string
	for _, c := range rep.Connections {
		for _, s := range c.Subflows {
			ours = append(ours, normAddr(s.Local)+" "+normAddr(s.Remote))
			if s.State != "ESTAB" || s.SRTTUs == 0 || s.Cwnd == 0 || s.MSS == 0 {
				t.Errorf("fd %d subflow %s: %+v", c.FD, s.Local, s)
			}
		}
	}
	slices.Sort(ours)
	if ss := ssSubflowPairs(t, l.Client); !slices.Equal(ours, ss) {
		t.Errorf("subflows:\n tcpinfo %v\n ss -ti  %v", ours, ss)
	}

	// The table names every connection.
	table, err := runCLI("tcpinfo", "--pid", pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Connections {
		if c.Token != "" && !strings.Contains(table, "token "+c.Token) {
			t.Errorf("table lacks token %s:\n%s", c.Token, table)
		}
	}
	if !strings.Contains(table, "fallback to TCP") {
		t.Errorf("table does not show the fallback:\n%s", table)
	}
	t.Logf("mptcp-xdp tcpinfo --pid %s:\n%s", pid, table)

	t.Run("SameAsSubflowList", func(t *testing.T) {
		testSameAsSubflowList(t, l.Client, func() (string, string) {
			j, err := runCLI("tcpinfo", "--pid", pid, "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			tb, err := runCLI("tcpinfo", "--pid", pid)
			if err != nil {
				t.Fatal(err)
			}
			return j, tb
		})
	})

	t.Run("fd", func(t *testing.T) {
		fd := strconv.Itoa(h.fd("mptcp"))
		out, err := runCLI("tcpinfo", "--pid", pid, "--fd", fd, "-o", "json")
		var one tcpinfoReport
		if err == nil {
			err = json.Unmarshal([]byte(out), &one)
		}
		if err != nil || len(one.Connections) != 1 || one.Connections[0].FD != h.fd("mptcp") || len(one.Connections[0].Subflows) != paths {
			t.Errorf("--fd %s: %v %+v", fd, err, one)
		}
		for _, tc := range []struct {
			fd   int
			want string
		}{
			{h.fd("plain"), "not an MPTCP socket"},
			{0, "is not a socket"}, // the helper's stdin is a pipe
			{4095, "has no file descriptor 4095"},
		} {
			if _, err := runCLI("tcpinfo", "--pid", pid, "--fd", strconv.Itoa(tc.fd)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("--fd %d: %v, want an error saying %q", tc.fd, err, tc.want)
			}
		}
	})

	t.Run("NoSuchProcess", func(t *testing.T) {
		gone := exec.Command("true")
		if err := gone.Run(); err != nil {
			t.Fatal(err)
		}
		_, err := runCLI("tcpinfo", "--pid", strconv.Itoa(gone.Process.Pid))
		if err == nil || !strings.Contains(err.Error(), "no such process") {
			t.Errorf("exited process: %v", err)
		}
	})

	t.Run("Permission", func(t *testing.T) {
		// The CLI as user nobody against the helper (root's): refused, naming the capability.
		dir := t.TempDir()
		bin := filepath.Join(dir, "mptcp-xdp.test")
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, data, 0o755); err != nil {
			t.Fatal(err)
		}
		for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		cmd := exec.Command(bin, "-test.run=^TestTCPInfoHelperProcess$")
		cmd.Env = append(os.Environ(), cliEnv+"="+strings.Join([]string{"tcpinfo", "--pid", pid}, "\x1f"))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "CAP_SYS_PTRACE") {
			t.Errorf("as nobody: %v: %s", err, out)
		}
	})
}

// testSameAsSubflowList checks that tcpinfo's JSON and table (read by readTCPInfo) name and print
// every subflow figure as `subflow list` does, for the same subflows read through the BPF iterator
// in namespace ns. tcpinfo is read before and after subflow list: a figure that moved between the
// two reads (the connection is idle, but the kernel may still send a keepalive or an ACK) is not
// compared, and is logged; one that stayed put must be what subflow list read in between.
func testSameAsSubflowList(t *testing.T, ns string, readTCPInfo func() (jsonOut, table string)) {
	tcpinfoJSON, tcpinfoTable := readTCPInfo()
	listJSON, err := runCLI("--netns", ns, "subflow", "list", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	listTable, err := runCLI("--netns", ns, "subflow", "list")
	if err != nil {
		t.Fatal(err)
	}
	afterJSON, afterTable := readTCPInfo()
	type tcpinfoOut struct {
		Connections []struct {
			Subflows []map[string]any `json:"subflows"`
		} `json:"connections"`
	}
	var ti, after tcpinfoOut
	if err := json.Unmarshal([]byte(tcpinfoJSON), &ti); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(afterJSON), &after); err != nil {
		t.Fatal(err)
	}
	var sl struct {
		Subflows []map[string]any `json:"subflows"`
	}
	if err := json.Unmarshal([]byte(listJSON), &sl); err != nil {
		t.Fatal(err)
	}
	key := func(m map[string]any) string {
		l, _ := m["local"].(string)
		r, _ := m["remote"].(string)
		return normAddr(l) + " " + normAddr(r)
	}
	listed := map[string]map[string]any{}
	for _, m := range sl.Subflows {
		listed[key(m)] = m
	}
	later := map[string]map[string]any{}
	for _, c := range after.Connections {
		for _, m := range c.Subflows {
			later[key(m)] = m
		}
	}
	compared, moved := 0, 0
	// Quantities that stay put on an idle connection: both reads must agree on them.
	stable := []string{"state", "cwnd", "ssthresh", "mss", "bytes_sent", "bytes_acked", "bytes_received",
		"bytes_retrans", "total_retrans", "retrans", "lost"}
	n := 0
	for _, c := range ti.Connections {
		for _, m := range c.Subflows {
			n++
			l, ok := listed[key(m)]
			if !ok {
				t.Errorf("subflow %s: not in subflow list", key(m))
				continue
			}
			for k := range m {
				if _, ok := l[k]; !ok {
					t.Errorf("subflow %s: tcpinfo field %q is not a subflow list field", key(m), k)
				}
			}
			for _, k := range stable {
				if a, ok := later[key(m)]; !ok || fmt.Sprint(a[k]) != fmt.Sprint(m[k]) {
					moved++
					t.Logf("subflow %s %s moved between the two tcpinfo reads (%v, then %v): not compared", key(m), k, m[k], a[k])
					continue
				}
				compared++
				if fmt.Sprint(m[k]) != fmt.Sprint(l[k]) {
					t.Errorf("subflow %s %s: tcpinfo %v, subflow list %v", key(m), k, m[k], l[k])
				}
			}
			if id, ok := m["id"]; ok && fmt.Sprint(id) != fmt.Sprint(l["id"]) {
				t.Errorf("subflow %s id: tcpinfo %v, subflow list %v", key(m), id, l["id"])
			}
			if _, ok := m["retransmits"]; ok {
				t.Errorf("subflow %s: the old name retransmits is back", key(m))
			}
		}
	}
	if n == 0 {
		t.Fatal("tcpinfo listed no subflows")
	}
	if compared == 0 || moved > compared {
		t.Errorf("%d figures compared, %d moved between the reads: the connections are not idle", compared, moved)
	}

	// The tables: the same figure columns, and the same cells for the same subflow.
	tiRows, tiCols := tableRows(tcpinfoTable, "ID")
	laterRows, _ := tableRows(afterTable, "ID")
	slRows, slCols := tableRows(listTable, "TOKEN")
	figures := strings.Split(figuresHeader, "\t")
	if !containsRun(tiCols, figures) || !containsRun(slCols, figures) {
		t.Fatalf("figure columns %v:\n tcpinfo %v\n subflow list %v", figures, tiCols, slCols)
	}
	if len(tiRows) != n {
		t.Errorf("tcpinfo table has %d subflow rows, JSON %d subflows", len(tiRows), n)
	}
	for k, row := range tiRows {
		other, ok := slRows[k]
		if !ok {
			t.Errorf("table row %s: not in subflow list's table", k)
			continue
		}
		for _, col := range []string{"CWND", "SSTHRESH", "MSS", "SENT", "ACKED", "RECEIVED", "RETRANS", "RETRANS(segs)", "LOST"} {
			if laterRows[k][col] != row[col] {
				t.Logf("table row %s %s moved between the two tcpinfo reads (%q, then %q): not compared", k, col, row[col], laterRows[k][col])
				continue
			}
			if row[col] != other[col] {
				t.Errorf("table row %s %s: tcpinfo %q, subflow list %q", k, col, row[col], other[col])
			}
		}
		for _, col := range []string{"SRTT(ms)", "RTTVAR(ms)", "MINRTT(ms)"} {
			if !regexp.MustCompile(`^\d+\.\d{3}$`).MatchString(row[col]) || !regexp.MustCompile(`^\d+\.\d{3}$`).MatchString(other[col]) {
				t.Errorf("table row %s %s: tcpinfo %q, subflow list %q, want milliseconds as 0.000", k, col, row[col], other[col])
			}
		}
		for _, col := range []string{"DELIVERY", "PACING"} {
			rate := regexp.MustCompile(`^(\d+\.\d[kMGT]?bit/s|unlimited)$`)
			if !rate.MatchString(row[col]) || !rate.MatchString(other[col]) {
				t.Errorf("table row %s %s: tcpinfo %q, subflow list %q, want a bit rate", k, col, row[col], other[col])
			}
		}
	}
}

// tableRows parses every table in out whose header line starts with first: one map per row, by
// column name, keyed by "LOCAL REMOTE" (normalised); it returns the last header's columns.
func tableRows(out, first string) (map[string]map[string]string, []string) {
	rows := map[string]map[string]string{}
	var cols, last []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
			cols = nil
		case f[0] == first:
			cols, last = f, f
		case cols != nil && len(f) == len(cols):
			row := map[string]string{}
			for i, c := range cols {
				row[c] = f[i]
			}
			rows[normAddr(row["LOCAL"])+" "+normAddr(row["REMOTE"])] = row
		}
	}
	return rows, last
}

// containsRun reports whether run appears in s as consecutive elements.
func containsRun(s, run []string) bool {
	for i := 0; i+len(run) <= len(s); i++ {
		if slices.Equal(s[i:i+len(run)], run) {
			return true
		}
	}
	return false
}
