package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
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
			if pid <= 0 {
				return fmt.Errorf("--pid %d: want a process id", pid)
			}
			var socks []sockopt.ProcessSocket
			if cmd.Flags().Changed("fd") {
				if fd < 0 {
					return fmt.Errorf("--fd %d: want a file descriptor number (0 or more)", fd)
				}
				s, err := sockopt.ProcessFD(pid, fd)
				if err != nil {
					return err
				}
				socks = []sockopt.ProcessSocket{*s}
			} else {
				var err error
				if socks, err = sockopt.Process(pid); err != nil {
					return err
				}
			}
			rep := tcpinfoReportOf(pid, socks)
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

// tcpinfoSubflow is one subflow: addresses, state and the tcp_info figures, under the names
// `subflow list` gives them (stats.Figures).
type tcpinfoSubflow struct {
	ID     uint32 `json:"id,omitempty"` // kernel subflow id (MPTCP_FULL_INFO); absent when unknown
	Local  string `json:"local"`
	Remote string `json:"remote"`
	State  string `json:"state"`
	stats.Figures
}

// tcpinfoReportOf converts what sockopt.Process read into the command's JSON form.
func tcpinfoReportOf(pid int, socks []sockopt.ProcessSocket) *tcpinfoReport {
	rep := &tcpinfoReport{PID: pid, Connections: make([]tcpinfoConn, 0, len(socks))}
	for i := range socks {
		rep.Connections = append(rep.Connections, tcpinfoConnOf(&socks[i]))
	}
	return rep
}

func tcpinfoConnOf(s *sockopt.ProcessSocket) tcpinfoConn {
	c := tcpinfoConn{FD: s.FD, Inode: s.Inode, Local: tcpinfoAddr(s.Local), Remote: tcpinfoAddr(s.Remote),
		Listening: s.Listening, Fallback: s.Fallback, Subflows: []tcpinfoSubflow{}}
	switch s.Family {
	case unix.AF_INET:
		c.Family = "ipv4"
	case unix.AF_INET6:
		c.Family = "ipv6"
	}
	if s.Err != nil {
		c.Error = s.Err.Error()
	}
	if m := s.Info; m != nil {
		c.Token = stats.Token(m.Token).String()
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
		c.Missing = m.Missing()
	}
	for i := range s.Subflows {
		sf := &s.Subflows[i]
		id := uint32(0)
		if s.IDs {
			id = sf.ID
		}
		c.Subflows = append(c.Subflows, tcpinfoSubflow{ID: id, Local: tcpinfoAddr(sf.Addr.Local),
			Remote: tcpinfoAddr(sf.Addr.Remote), State: sf.TCP.StateName(), Figures: stats.FiguresOf(&sf.TCP)})
		if i == 0 {
			c.Missing = append(c.Missing, sf.TCP.Missing()...)
		}
	}
	return c
}

func tcpinfoAddr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
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
		fmt.Fprintln(w, "  ID\tLOCAL\tREMOTE\tSTATE\t"+figuresHeader)
		for _, s := range c.Subflows {
			id := "-"
			if s.ID != 0 {
				id = strconv.FormatUint(uint64(s.ID), 10)
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", id, s.Local, s.Remote, s.State, figuresCells(&s.Figures))
		}
	}
	return nil
}
