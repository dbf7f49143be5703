// Package features probes the running kernel for every feature mptcp-xdp uses, as `bpftool feature
// probe` does for BPF in general: each one is tried for real (a program type or helper loaded, a
// map created, a link attached to the loopback device of a network namespace made for the probe
// and removed after it, a socket option asked), never guessed from the kernel's version. Each
// result names the kernel that has the feature and what mptcp-xdp does without it.
package features

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcppm"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// Feature is one probed feature. The JSON names are stable (docs/cli.md, `features -o json`).
type Feature struct {
	Name      string `json:"name"`      // stable identifier, e.g. "tcx"
	What      string `json:"what"`      // what it is, in words
	Kernel    string `json:"kernel"`    // the first Linux release that has it
	Available bool   `json:"available"` // the probe succeeded on this kernel
	Detail    string `json:"detail,omitempty"`
	// Without is what mptcp-xdp does on a kernel that lacks it: the fallback it takes, or what
	// stops working.
	Without string `json:"without"`
	Error   string `json:"error,omitempty"` // why the probe failed, when it did
}

// Report is a kernel's features.
type Report struct {
	Kernel   string    `json:"kernel"` // uname -r
	Features []Feature `json:"features"`
	// Programs is mptcp-xdp's own programs as this kernel's verifier sees them (ProbePrograms);
	// absent when not probed (features --programs=false).
	Programs []Program `json:"programs,omitempty"`
}

// Probe probes the running kernel. Probes that attach something do so in a network namespace made
// for them and deleted before Probe returns; they need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
// A probe that cannot run reports the feature unavailable with its error.
func Probe() (*Report, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, err
	}
	r := &Report{Kernel: unix.ByteSliceToString(u.Release[:])}
	add := func(f Feature, err error) {
		f.Available = err == nil
		if err != nil {
			f.Error = err.Error()
		}
		r.Features = append(r.Features, f)
	}

	add(Feature{Name: "xdp", What: "XDP programs", Kernel: "4.8",
		Without: "attach --ingress tc counts received frames with a TC ingress program instead"}, loader.ProbeXDP())
	add(Feature{Name: "tc_bpf", What: "TC BPF programs (sched_cls, direct action)", Kernel: "4.5",
		Without: "no egress counting (attach --no-egress) and no TC ingress"}, loader.ProbeTC())
	add(Feature{Name: "ringbuf", What: "BPF ring buffer maps", Kernel: "5.8",
		Without: "the balancer does not load (its events go through a ring buffer)"}, features.HaveMapType(ebpf.RingBuf))
	add(Feature{Name: "bpf_check_mtu", What: "the bpf_check_mtu helper in XDP", Kernel: "5.12",
		Without: "the balancer does not load (it checks the egress MTU of ipip frames and GRO aggregates)"},
		features.HaveProgramHelper(ebpf.XDP, asm.FnCheckMtu))
	add(Feature{Name: "iter_tcp", What: "BTF, MPTCP and BPF iterators over TCP sockets (iter/tcp)", Kernel: "5.9",
		Without: "no per-subflow figures (conn list, subflow list, the exporter's subflow metrics)"}, stats.Probe())
	add(Feature{Name: "sock_ops_history", What: "cgroup sock_ops with bpf_get_netns_cookie and bpf_skc_to_mptcp_sock", Kernel: "5.19",
		Without: "history enable is refused: closed subflows are not kept"}, loader.ProbeHistory())

	// Attachments, tried on the loopback device of a namespace of their own.
	lf := probeLinks()
	add(Feature{Name: "bpf_link_xdp", What: "XDP attached through bpf_link", Kernel: "5.9",
		Without: "XDP is attached through netlink (XDP_FLAGS_UPDATE_IF_NOEXIST), never replacing another program"}, lf.xdpLink)
	add(Feature{Name: "tcx", What: "tcx (TC attached through bpf_link)", Kernel: "6.6",
		Without: "TC programs go into a clsact qdisc with a direct-action cls_bpf filter (status shows tc: clsact)"}, lf.tcx)
	add(Feature{Name: "clsact", What: "the clsact qdisc (CONFIG_NET_SCH_INGRESS, module sch_ingress) and cls_bpf (CONFIG_NET_CLS_BPF)", Kernel: "4.5",
		Without: "on a kernel without tcx, no TC program attaches: attach --ingress xdp --no-egress"}, lf.clsact)

	// MPTCP.
	_, err := os.Stat("/proc/sys/net/mptcp/enabled")
	add(Feature{Name: "mptcp", What: "MPTCP (CONFIG_MPTCP)", Kernel: "5.6",
		Without: "nothing to observe: the counters still count MPTCP options of forwarded traffic"}, err)
	info, infoErr := probeInfo()
	add(Feature{Name: "mptcp_info", What: "MPTCP_INFO, MPTCP_TCPINFO and MPTCP_SUBFLOW_ADDRS socket options", Kernel: "5.16",
		Detail: info, Without: "pkg/sockopt and tcpinfo return the kernel's error; the socket iterator still gives subflow figures"}, infoErr)
	full, fullErr := probeFullInfo()
	add(Feature{Name: "mptcp_full_info", What: "the MPTCP_FULL_INFO socket option", Kernel: "6.5",
		Detail: full, Without: "sockopt.Reader.FullInfo falls back to MPTCP_INFO + MPTCP_TCPINFO + MPTCP_SUBFLOW_ADDRS"}, fullErr)
	_, err = os.Stat("/proc/sys/net/mptcp/allow_join_initial_addr_port")
	add(Feature{Name: "allow_join_initial_addr_port", What: "the net.mptcp.allow_join_initial_addr_port sysctl (the C flag)", Kernel: "5.14",
		Without: "a server cannot tell clients not to join its initial address and port: balancers rely on token steering"}, err)
	add(Feature{Name: "port_endpoints", What: "MPTCP endpoints with a port (ADD_ADDR with a port)", Kernel: "5.12",
		Without: "backends cannot announce a join port: balancers rely on token steering"}, lf.portEndpoint)
	return r, nil
}

type linkFeatures struct{ xdpLink, tcx, clsact, portEndpoint error }

// probeLinks attaches a trivial XDP program with bpf_link, a trivial TC program with tcx, a
// clsact qdisc with a cls_bpf filter and an MPTCP endpoint with a port in a network namespace made
// for the probes.
func probeLinks() (lf linkFeatures) {
	fail := func(err error) linkFeatures { return linkFeatures{err, err, err, err} }
	name := fmt.Sprintf("mxfeat-%d", os.Getpid())
	if err := netns.Create(name); err != nil {
		return fail(fmt.Errorf("make a network namespace for the probe: %w", err))
	}
	defer netns.Delete(name)
	xdp, err := trivial(ebpf.XDP, 2) // XDP_PASS
	if err != nil {
		return fail(err)
	}
	defer xdp.Close()
	tc, err := trivial(ebpf.SchedCLS, -1) // TC_ACT_UNSPEC
	if err != nil {
		return fail(err)
	}
	defer tc.Close()
	err = netns.Do(name, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		idx := lo.Attrs().Index
		if l, err := link.AttachXDP(link.XDPOptions{Program: xdp, Interface: idx, Flags: link.XDPGenericMode}); err != nil {
			lf.xdpLink = err
		} else {
			l.Close()
		}
		if l, err := link.AttachTCX(link.TCXOptions{Program: tc, Attach: ebpf.AttachTCXIngress, Interface: idx}); err != nil {
			lf.tcx = err
		} else {
			l.Close()
		}
		lf.clsact = probeClsact(lo, tc)
		lf.portEndpoint = probePortEndpoint()
		return nil
	})
	if err != nil {
		return fail(err)
	}
	return lf
}

func probeClsact(lo netlink.Link, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: lo.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(q); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: lo.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Handle: 1, Priority: 1, Protocol: unix.ETH_P_ALL},
		Fd:          prog.FD(), Name: "mxfeat", DirectAction: true,
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("add cls_bpf filter: %w", err)
	}
	return nil
}

// probePortEndpoint adds an MPTCP signal endpoint with a port in the probe's namespace (the
// caller's thread is in it). The address is TEST-NET-1's, given to lo first.
func probePortEndpoint() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	a, _ := netlink.ParseAddr("192.0.2.1/32")
	if err := netlink.AddrAdd(lo, a); err != nil {
		return err
	}
	const port = 10000
	e, err := mptcppm.Add(mptcppm.Endpoint{Addr: netip.MustParseAddr("192.0.2.1"), Port: port, Flags: mptcppm.FlagSignal})
	if err != nil {
		return err
	}
	if e.Port != port {
		return fmt.Errorf("endpoint %s added, but listed without its port %d", e.Addr, port)
	}
	return nil
}

// trivial loads a program of type t that returns ret.
func trivial(t ebpf.ProgramType, ret int32) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: t, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load a trivial %s program: %w", t, err)
	}
	return p, nil
}

// mptcpSocket opens an unconnected MPTCP socket.
func mptcpSocket() (sockopt.FD, func(), error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_MPTCP)
	if err != nil {
		return 0, nil, fmt.Errorf("MPTCP socket: %w", err)
	}
	return sockopt.FD(fd), func() { unix.Close(fd) }, nil
}

// probeInfo asks MPTCP_INFO and MPTCP_TCPINFO of an unconnected socket and reports the sizes the
// kernel returns.
func probeInfo() (string, error) {
	fd, done, err := mptcpSocket()
	if err != nil {
		return "", err
	}
	defer done()
	buf := make([]byte, 512)
	n, err := sockopt.Raw(fd, sockopt.OptInfo, buf)
	if err != nil {
		return "", err
	}
	hdr := make([]byte, sockopt.SubflowDataLen)
	sockopt.SubflowData{SizeSubflowData: sockopt.SubflowDataLen}.Put(hdr)
	if _, err := sockopt.Raw(fd, sockopt.OptTCPInfo, hdr); err != nil {
		return "", err
	}
	h := sockopt.ParseSubflowData(hdr)
	return fmt.Sprintf("mptcp_info %d bytes, tcp_info %d bytes", n, h.SizeKernel), nil
}

// probeFullInfo asks MPTCP_FULL_INFO of an unconnected socket.
func probeFullInfo() (string, error) {
	fd, done, err := mptcpSocket()
	if err != nil {
		return "", err
	}
	defer done()
	buf := make([]byte, sockopt.FullInfoHeaderLen+512)
	sockopt.FullInfoHeader{}.Put(buf)
	n, err := sockopt.Raw(fd, sockopt.OptFullInfo, buf)
	if err != nil {
		var se *sockopt.Error
		if errors.As(err, &se) && se.Errno == syscall.EOPNOTSUPP {
			return "", fmt.Errorf("unknown option (EOPNOTSUPP): %w", err)
		}
		return "", err
	}
	h := sockopt.ParseFullInfoHeader(buf)
	return fmt.Sprintf("%d bytes, tcp_info %d bytes, mptcp_subflow_info %d bytes", n, h.SizeTCPInfoKernel, h.SizeSfInfoKernel), nil
}
