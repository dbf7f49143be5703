package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

func newTCPInfoCmd(g *globalFlags) *cobra.Command {
	var pid, fd int
	cmd := &cobra.Command{
		Use:   "tcpinfo --pid PID [--fd FD]",
		Short: "Show a process's MPTCP connections: mptcp_info, then each subflow's addresses and tcp_info",
		Long: `tcpinfo reads the MPTCP connections of a running process: for each of its MPTCP sockets (or
only --fd) it takes a copy of the socket with pidfd_getfd(2) and asks the kernel for MPTCP_FULL_INFO
(MPTCP_INFO, MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS before Linux 6.5). Sockets that are not MPTCP are
skipped; a connection that fell back to plain TCP is shown as such, with its one subflow's tcp_info.

Reading another user's process needs CAP_SYS_PTRACE. A socket carries its own network namespace,
so --netns changes nothing here. See docs/sockopt.md for the -o json fields.`,
		Example: "  mptcp-xdp tcpinfo --pid $(pidof myserver)\n  mptcp-xdp tcpinfo --pid 1234 --fd 7 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			only := -1
			if cmd.Flags().Changed("fd") {
				if fd < 0 {
					return fmt.Errorf("--fd %d: want a file descriptor number (0 or more)", fd)
				}
				only = fd
			}
			if pid <= 0 {
				return fmt.Errorf("--pid %d: want a process id", pid)
			}
			rep, err := tcpinfoOfProcess(pid, only)
			if err != nil {
				return err
			}
			return render(cmd, g, rep, rep.table)
		},
	}
	cmd.Flags().IntVar(&pid, "pid", 0, "process whose MPTCP sockets to read (required)")
	cmd.Flags().IntVar(&fd, "fd", 0, "only this file descriptor of the process (default: every MPTCP socket)")
	_ = cmd.MarkFlagRequired("pid")
	return cmd
}

// tcpinfoReport is the output of `mptcp-xdp tcpinfo`; its JSON form is documented in
// docs/sockopt.md.
type tcpinfoReport struct {
	PID         int           `json:"pid"`
	Connections []tcpinfoConn `json:"connections"`
}

// tcpinfoConn is one MPTCP socket of the process.
type tcpinfoConn struct {
	FD        int    `json:"fd"`
	Inode     uint64 `json:"inode"`               // socket inode, as in /proc/PID/fd and ss -e
	Family    string `json:"family"`              // "ipv4" or "ipv6" (the socket's family)
	Local     string `json:"local"`               // getsockname
	Remote    string `json:"remote,omitempty"`    // getpeername; absent when not connected
	Listening bool   `json:"listening,omitempty"` // a listener: no connection, no subflows
	Fallback  bool   `json:"fallback"`            // fell back to plain TCP: no mptcp_info
	// Token is the local connection token as ss -M prints it (8 hex digits).
	Token    string           `json:"token,omitempty"`
	MPTCP    *tcpinfoMPTCP    `json:"mptcp,omitempty"`
	Subflows []tcpinfoSubflow `json:"subflows"`
	Missing  []string         `json:"missing_fields,omitempty"` // kernel did not return these fields
	Error    string           `json:"error,omitempty"`          // reading this socket failed
}

// tcpinfoMPTCP is the connection-level mptcp_info.
type tcpinfoMPTCP struct {
	Subflows           uint8  `json:"subflows"`       // extra subflows (the initial one not counted), as ss -M
	SubflowsTotal      uint8  `json:"subflows_total"` // all subflows (6.8+)
	SubflowsMax        uint8  `json:"subflows_max"`
	AddAddrSignal      uint8  `json:"add_addr_signal"`
	AddAddrAccepted    uint8  `json:"add_addr_accepted"`
	AddAddrSignalMax   uint8  `json:"add_addr_signal_max"`
	AddAddrAcceptedMax uint8  `json:"add_addr_accepted_max"`
	LocalAddrUsed      uint8  `json:"local_addr_used"`
	LocalAddrMax       uint8  `json:"local_addr_max"`
	CsumEnabled        bool   `json:"csum_enabled"`
	RemoteKey          bool   `json:"remote_key_received"`
	Flags              uint32 `json:"flags"`
	WriteSeq           uint64 `json:"write_seq"`
	SndUna             uint64 `json:"snd_una"`
	RcvNxt             uint64 `json:"rcv_nxt"`
	Retransmits        uint32 `json:"retransmits"`
	BytesSent          uint64 `json:"bytes_sent"`
	BytesReceived      uint64 `json:"bytes_received"`
	BytesAcked         uint64 `json:"bytes_acked"`
	BytesRetrans       uint64 `json:"bytes_retrans"`
	LastDataSentMs     uint32 `json:"last_data_sent_ms"`
	LastDataRecvMs     uint32 `json:"last_data_recv_ms"`
	LastAckRecvMs      uint32 `json:"last_ack_recv_ms"`
}

// tcpinfoSubflow is one subflow: addresses and the main tcp_info fields.
type tcpinfoSubflow struct {
	ID            uint32 `json:"id,omitempty"` // kernel subflow id (MPTCP_FULL_INFO); absent when unknown
	Local         string `json:"local"`
	Remote        string `json:"remote"`
	State         string `json:"state"`
	SrttUs        uint32 `json:"srtt_us"`
	RttvarUs      uint32 `json:"rttvar_us"`
	MinRttUs      uint32 `json:"min_rtt_us"`
	Cwnd          uint32 `json:"cwnd"`
	Ssthresh      uint32 `json:"ssthresh"`
	MSS           uint32 `json:"mss"`
	BytesSent     uint64 `json:"bytes_sent"`
	BytesAcked    uint64 `json:"bytes_acked"`
	BytesReceived uint64 `json:"bytes_received"`
	BytesRetrans  uint64 `json:"bytes_retrans"`
	Retransmits   uint32 `json:"retransmits"`   // tcpi_total_retrans: segments retransmitted
	DeliveryRate  uint64 `json:"delivery_rate"` // bytes/s
	PacingRate    uint64 `json:"pacing_rate"`   // bytes/s
}

// tcpinfoOfProcess reads every MPTCP socket of pid, or only fd when fd >= 0.
func tcpinfoOfProcess(pid, fd int) (*tcpinfoReport, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("no such process: %d", pid)
		}
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)

	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	var fds []int
	if fd >= 0 {
		fds = []int{fd}
	} else {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, tcpinfoProcError(pid, "list "+dir, err)
		}
		for _, e := range ents {
			if n, err := strconv.Atoi(e.Name()); err == nil {
				fds = append(fds, n)
			}
		}
		slices.Sort(fds)
	}

	rep := &tcpinfoReport{PID: pid, Connections: []tcpinfoConn{}}
	for _, n := range fds {
		target, err := os.Readlink(filepath.Join(dir, strconv.Itoa(n)))
		if err != nil {
			if fd < 0 && errors.Is(err, os.ErrNotExist) {
				continue // closed since the listing
			}
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("process %d has no file descriptor %d", pid, n)
			}
			return nil, tcpinfoProcError(pid, "read "+filepath.Join(dir, strconv.Itoa(n)), err)
		}
		ino, isSock := tcpinfoSocketInode(target)
		if !isSock {
			if fd >= 0 {
				return nil, fmt.Errorf("file descriptor %d of process %d is not a socket (%s)", n, pid, target)
			}
			continue
		}
		c, ok, err := tcpinfoOfFD(pidfd, pid, n)
		if err != nil {
			if fd < 0 && errors.Is(err, unix.EBADF) {
				continue // closed since the listing
			}
			return nil, err
		}
		if !ok {
			if fd >= 0 {
				return nil, fmt.Errorf("file descriptor %d of process %d is not an MPTCP socket", n, pid)
			}
			continue
		}
		c.Inode = ino
		rep.Connections = append(rep.Connections, *c)
	}
	return rep, nil
}

// tcpinfoSocketInode parses a /proc/PID/fd link target "socket:[12345]".
func tcpinfoSocketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
	return ino, err == nil
}

// tcpinfoProcError words a failure to read /proc/PID or to take a descriptor, naming the capability
// when permission is the cause.
func tcpinfoProcError(pid int, what string, err error) error {
	switch {
	case errors.Is(err, unix.ESRCH), errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("no such process: %d", pid)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: permission denied: reading the sockets of process %d needs CAP_SYS_PTRACE "+
			"(ptrace access to it; a non-dumpable process or a security module can refuse even then): %w", what, pid, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// tcpinfoOfFD copies fd out of the process and reads it; ok is false for a socket that is not MPTCP.
func tcpinfoOfFD(pidfd, pid, fd int) (_ *tcpinfoConn, ok bool, _ error) {
	local, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return nil, false, fmt.Errorf("process %d has no file descriptor %d: %w", pid, fd, err)
		}
		return nil, false, tcpinfoProcError(pid, fmt.Sprintf("pidfd_getfd %d", fd), err)
	}
	defer unix.Close(local)
	sock := sockopt.FD(local)
	if p, err := sockopt.Protocol(sock); err != nil || p != sockopt.IPProtoMPTCP {
		return nil, false, nil
	}
	c := &tcpinfoConn{FD: fd, Subflows: []tcpinfoSubflow{}}
	if sa, err := unix.Getsockname(local); err == nil {
		c.Local, c.Family = tcpinfoSockaddr(sa)
	}
	if sa, err := unix.Getpeername(local); err == nil {
		c.Remote, _ = tcpinfoSockaddr(sa)
	}
	if acc, err := unix.GetsockoptInt(local, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && acc == 1 {
		c.Listening = true
		return c, true, nil
	}
	f, err := sockopt.FullInfo(sock)
	switch {
	case errors.Is(err, sockopt.ErrFallback):
		c.Fallback = true
		ti, err := sockopt.SocketTCPInfo(sock)
		if err != nil {
			c.Error = err.Error()
			return c, true, nil
		}
		c.Subflows = append(c.Subflows, tcpinfoSubflowOf(0, c.Local, c.Remote, ti))
		c.Missing = ti.Missing()
		return c, true, nil
	case err != nil:
		c.Error = err.Error()
		return c, true, nil
	}
	m := &f.Info
	c.Token = fmt.Sprintf("%08x", m.Token)
	c.MPTCP = &tcpinfoMPTCP{
		Subflows: m.Subflows, SubflowsTotal: m.SubflowsTotal, SubflowsMax: m.SubflowsMax,
		AddAddrSignal: m.AddAddrSignal, AddAddrAccepted: m.AddAddrAccepted,
		AddAddrSignalMax: m.AddAddrSignalMax, AddAddrAcceptedMax: m.AddAddrAcceptedMax,
		LocalAddrUsed: m.LocalAddrUsed, LocalAddrMax: m.LocalAddrMax, CsumEnabled: m.CsumEnabled != 0,
		RemoteKey: m.Flags&sockopt.FlagRemoteKeyReceived != 0, Flags: m.Flags,
		WriteSeq: m.WriteSeq, SndUna: m.SndUna, RcvNxt: m.RcvNxt, Retransmits: m.Retransmits,
		BytesSent: m.BytesSent, BytesReceived: m.BytesReceived, BytesAcked: m.BytesAcked,
		BytesRetrans: m.BytesRetrans, LastDataSentMs: m.LastDataSent, LastDataRecvMs: m.LastDataRecv,
		LastAckRecvMs: m.LastAckRecv,
	}
	if m.Flags&sockopt.FlagFallback != 0 {
		c.Fallback = true
	}
	missing := m.Missing()
	for i := range f.Subflows {
		s := &f.Subflows[i]
		c.Subflows = append(c.Subflows, tcpinfoSubflowOf(s.ID, tcpinfoAddr(s.Addr.Local), tcpinfoAddr(s.Addr.Remote), &s.TCP))
		if i == 0 {
			missing = append(missing, s.TCP.Missing()...)
		}
	}
	c.Missing = missing
	return c, true, nil
}

func tcpinfoSubflowOf(id uint32, local, remote string, t *sockopt.SubflowTCPInfo) tcpinfoSubflow {
	return tcpinfoSubflow{
		ID: id, Local: local, Remote: remote, State: t.StateName(),
		SrttUs: t.RTT, RttvarUs: t.RTTVar, MinRttUs: t.MinRTT, Cwnd: t.SndCwnd, Ssthresh: t.SndSsthresh,
		MSS: t.SndMSS, BytesSent: t.BytesSent, BytesAcked: t.BytesAcked, BytesReceived: t.BytesReceived,
		BytesRetrans: t.BytesRetrans, Retransmits: t.TotalRetrans, DeliveryRate: t.DeliveryRate,
		PacingRate: t.PacingRate,
	}
}

func tcpinfoAddr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func tcpinfoSockaddr(sa unix.Sockaddr) (addr, family string) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String(), "ipv4"
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String(), "ipv6"
	}
	return "", ""
}

// table prints one block per connection: a summary line (no tabs, so it does not widen the
// columns), then one row per subflow.
func (r *tcpinfoReport) table(w io.Writer) error {
	if len(r.Connections) == 0 {
		_, err := fmt.Fprintf(w, "process %d has no MPTCP sockets\n", r.PID)
		return err
	}
	for i, c := range r.Connections {
		if i > 0 {
			fmt.Fprintln(w)
		}
		switch {
		case c.Listening:
			fmt.Fprintf(w, "fd %d  %s  listening\n", c.FD, c.Local)
			continue
		case c.Error != "":
			fmt.Fprintf(w, "fd %d  %s -> %s  error: %s\n", c.FD, c.Local, c.Remote, c.Error)
			continue
		case c.MPTCP == nil:
			fmt.Fprintf(w, "fd %d  %s -> %s  fallback to TCP\n", c.FD, c.Local, c.Remote)
		default:
			m := c.MPTCP
			fb := ""
			if c.Fallback {
				fb = "  fallback"
			}
			fmt.Fprintf(w, "fd %d  %s -> %s  token %s  subflows %d (extra %d, max %d)  sent %d  acked %d  received %d  retrans %d%s\n",
				c.FD, c.Local, c.Remote, c.Token, len(c.Subflows), m.Subflows, m.SubflowsMax,
				m.BytesSent, m.BytesAcked, m.BytesReceived, m.BytesRetrans, fb)
		}
		fmt.Fprintln(w, "  ID\tLOCAL\tREMOTE\tSTATE\tSRTT\tRTTVAR\tCWND\tSSTHRESH\tSENT\tACKED\tRECEIVED\tRETRANS\tDELIVERY\tPACING")
		for _, s := range c.Subflows {
			id := "-"
			if s.ID != 0 {
				id = strconv.FormatUint(uint64(s.ID), 10)
			}
			ssthresh := "-" // TCP_INFINITE_SSTHRESH: not yet set
			if s.Ssthresh < 0x7fffffff {
				ssthresh = strconv.FormatUint(uint64(s.Ssthresh), 10)
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n",
				id, s.Local, s.Remote, s.State, tcpinfoMicros(s.SrttUs), tcpinfoMicros(s.RttvarUs), s.Cwnd, ssthresh,
				s.BytesSent, s.BytesAcked, s.BytesReceived, s.Retransmits,
				tcpinfoRate(s.DeliveryRate), tcpinfoRate(s.PacingRate))
		}
	}
	return nil
}

// tcpinfoMicros prints a duration in microseconds as milliseconds, as ss does (rtt:0.049).
func tcpinfoMicros(us uint32) string { return strconv.FormatFloat(float64(us)/1000, 'f', 3, 64) + "ms" }

// tcpinfoRate prints a rate given in bytes per second in bits per second with a unit; the
// kernel's "no limit" (~0, e.g. pacing before the handshake completes) prints as "-".
func tcpinfoRate(bytesPerSec uint64) string {
	if bytesPerSec == ^uint64(0) {
		return "-"
	}
	bps := float64(bytesPerSec) * 8
	for _, u := range []struct {
		div  float64
		unit string
	}{{1e9, "Gbit/s"}, {1e6, "Mbit/s"}, {1e3, "kbit/s"}} {
		if bps >= u.div {
			return strconv.FormatFloat(bps/u.div, 'f', 1, 64) + u.unit
		}
	}
	return strconv.FormatFloat(bps, 'f', 0, 64) + "bit/s"
}
