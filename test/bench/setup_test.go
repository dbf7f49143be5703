// Package bench holds the end-to-end benchmarks of mptcp-xdp: real MPTCP transfers between two
// network namespaces over veth paths, with no XDP, a trivial pass-through XDP program, or the
// mptcp-xdp datapath attached on the server's interfaces. They need root, network namespaces, veth,
// MPTCP and XDP (Linux 5.9 for bpf_link XDP, 6.6 for tcx).
package bench

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// variant is what runs on the server's interfaces during a transfer.
type variant struct {
	name    string
	trivial bool // a trivial XDP_PASS program, attached with link.AttachXDP
	// trivialTC: a trivial pass-through program on tcx ingress and egress, the baseline of the
	// datapath's --ingress tc.
	trivialTC bool
	// trivialEgress: also a trivial pass-through program on tcx egress.
	trivialEgress bool
	// busyEgress makes the trivial egress program spin this many loop iterations.
	busyEgress int
	// busy makes the trivial XDP program spin this many loop iterations before XDP_PASS: its cost
	// without its semantics.
	busy int
	mode loader.XDPMode
	// datapath: the mptcp-xdp programs through loader.Attach.
	datapath bool
	ingress  loader.IngressHook
	egress   bool
}

func (v variant) String() string { return v.name }

// attachment undoes what attach did.
type attachment func() error

// attach puts v on every server-side interface of l. bpffsRoot is the loader's pin root.
func attach(l *lab.Lab, v variant, bpffsRoot string) (attachment, error) {
	var undo []func() error
	detach := func() error {
		var first error
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	if v.trivialEgress {
		prog, err := trivialTC(v.busyEgress)
		if err != nil {
			return nil, err
		}
		undo = append(undo, prog.Close)
		for _, p := range l.Paths {
			var lk link.Link
			err := netns.Do(l.Server, func() error {
				ifc, err := interfaceIndex(p.ServerIf)
				if err != nil {
					return err
				}
				lk, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifc, Attach: ebpf.AttachTCXEgress})
				return err
			})
			if err != nil {
				_ = detach()
				return nil, fmt.Errorf("attach trivial tcx egress to %s: %w", p.ServerIf, err)
			}
			undo = append(undo, lk.Close)
		}
	}
	switch {
	case v.trivial:
		prog, err := trivialXDP(v.busy)
		if err != nil {
			return nil, err
		}
		undo = append(undo, prog.Close)
		flags := link.XDPDriverMode
		if v.mode == loader.ModeGeneric {
			flags = link.XDPGenericMode
		}
		for _, p := range l.Paths {
			var lk link.Link
			err := netns.Do(l.Server, func() error {
				ifc, err := interfaceIndex(p.ServerIf)
				if err != nil {
					return err
				}
				lk, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc, Flags: flags})
				return err
			})
			if err != nil {
				_ = detach()
				return nil, fmt.Errorf("attach trivial xdp (%s) to %s: %w", v.mode, p.ServerIf, err)
			}
			undo = append(undo, lk.Close)
		}
	case v.trivialTC:
		prog, err := trivialTC(0)
		if err != nil {
			return nil, err
		}
		undo = append(undo, prog.Close)
		for _, p := range l.Paths {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				var lk link.Link
				err := netns.Do(l.Server, func() error {
					ifc, err := interfaceIndex(p.ServerIf)
					if err != nil {
						return err
					}
					lk, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifc, Attach: at})
					return err
				})
				if err != nil {
					_ = detach()
					return nil, fmt.Errorf("attach trivial tcx (%s) to %s: %w", at, p.ServerIf, err)
				}
				undo = append(undo, lk.Close)
			}
		}
	case v.datapath:
		ld, err := loader.New(bpffsRoot)
		if err != nil {
			return nil, err
		}
		for _, p := range l.Paths {
			_, err := ld.Attach(loader.AttachOptions{Iface: p.ServerIf, Netns: l.Server, Mode: v.mode, Ingress: v.ingress, Egress: v.egress})
			if err != nil {
				_ = detach()
				return nil, err
			}
			iface := p.ServerIf
			undo = append(undo, func() error { return ld.Detach(l.Server, iface) })
		}
	}
	return detach, nil
}

// trivialXDP loads `return XDP_PASS`, after busy iterations of an empty loop.
func trivialXDP(busy int) (*ebpf.Program, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bench_xdp_pass",
		Type: ebpf.XDP,
		// As SEC("xdp") gives the datapath's program: an XDP link takes an update only to a program
		// of the same attach type.
		AttachType: ebpf.AttachXDP,
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.Add.Imm(asm.R1, 1).WithSymbol("loop"),
			asm.JLT.Imm(asm.R1, int32(busy), "loop"),
			asm.Mov.Imm(asm.R0, 2), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load trivial xdp: %w", err)
	}
	return prog, nil
}

// trivialTC loads `return TCX_NEXT` (pass, and let later programs run), after busy iterations of
// an empty loop.
func trivialTC(busy int) (*ebpf.Program, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise memlock limit: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "bench_tc_pass",
		Type:    ebpf.SchedCLS,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R1, 0),
			asm.Add.Imm(asm.R1, 1).WithSymbol("loop"),
			asm.JLT.Imm(asm.R1, int32(busy), "loop"),
			asm.Mov.Imm(asm.R0, -1), // TCX_NEXT
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load trivial tc: %w", err)
	}
	return prog, nil
}

// interfaceIndex reads the index of iface in the calling thread's network namespace (net uses a
// netlink socket, which belongs to the namespace of the thread that opens it).
func interfaceIndex(iface string) (int, error) {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}

// bpffsRoot returns a pin root of this process's own, so that benchmarks never wait on the lock of
// another mptcp-xdp invocation, and removes it when tb ends.
func bpffsRoot(tb testing.TB) string {
	tb.Helper()
	root := filepath.Join("/sys/fs/bpf", fmt.Sprintf("mptcp-xdp-bench-%d", os.Getpid()))
	tb.Cleanup(func() { _ = os.RemoveAll(root) })
	return root
}
