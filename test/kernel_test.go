package test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// hookState is what the kernel itself says is attached to one interface, read with ip, tc and
// BPF_PROG_QUERY — never through mptcp-xdp.
type hookState struct {
	Ifindex    int
	XDPProg    uint32 // 0: none
	XDPMode    string // "native", "generic" or ""
	TCXIngress []uint32
	TCXEgress  []uint32
	Clsact     bool
	Filters    []tcFilter // cls_bpf filters at the clsact hooks
}

type tcFilter struct {
	Hook string // ingress or egress
	Pref int
	Name string
	Prog uint32
}

// kernelState reads the attachments of iface in network namespace ns.
func kernelState(t testing.TB, ns, iface string) hookState {
	t.Helper()
	var st hookState
	var links []struct {
		Ifindex int `json:"ifindex"`
		XDP     *struct {
			Mode int `json:"mode"`
			Prog *struct {
				ID uint32 `json:"id"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	out := sh(t, "ip", "-n", ns, "-d", "-j", "link", "show", "dev", iface)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -j link show %s: %v: %s", iface, err, out)
	}
	st.Ifindex = links[0].Ifindex
	if x := links[0].XDP; x != nil && x.Prog != nil {
		st.XDPProg = x.Prog.ID
		st.XDPMode = map[int]string{1: "native", 2: "generic", 3: "offload"}[x.Mode]
	}

	// A kernel without tcx (before 6.6) refuses the query (EINVAL): nothing can be attached there.
	tcx, err := testutil.KernelAtLeast(6, 6)
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Do(ns, func() error {
		if !tcx {
			return nil
		}
		for _, h := range []struct {
			typ ebpf.AttachType
			ids *[]uint32
		}{{ebpf.AttachTCXIngress, &st.TCXIngress}, {ebpf.AttachTCXEgress, &st.TCXEgress}} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: st.Ifindex, Attach: h.typ})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				*h.ids = append(*h.ids, uint32(p.ID))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query tcx programs of %s in %s: %v", iface, ns, err)
	}

	var qdiscs []struct {
		Kind string `json:"kind"`
	}
	out = sh(t, "tc", "-n", ns, "-j", "qdisc", "show", "dev", iface)
	if err := json.Unmarshal([]byte(out), &qdiscs); err != nil {
		t.Fatalf("tc -j qdisc show %s: %v: %s", iface, err, out)
	}
	for _, q := range qdiscs {
		st.Clsact = st.Clsact || q.Kind == "clsact"
	}
	if st.Clsact {
		for _, hook := range []string{"ingress", "egress"} {
			var fs []struct {
				Pref    int    `json:"pref"`
				Kind    string `json:"kind"`
				Options *struct {
					BPFName string `json:"bpf_name"`
					Prog    struct {
						ID uint32 `json:"id"`
					} `json:"prog"`
				} `json:"options"`
			}
			out = sh(t, "tc", "-n", ns, "-j", "filter", "show", "dev", iface, hook)
			if err := json.Unmarshal([]byte(out), &fs); err != nil {
				t.Fatalf("tc -j filter show %s %s: %v: %s", iface, hook, err, out)
			}
			for _, f := range fs {
				if f.Options == nil { // the per-priority header line
					continue
				}
				st.Filters = append(st.Filters, tcFilter{Hook: hook, Pref: f.Pref, Name: f.Options.BPFName, Prog: f.Options.Prog.ID})
			}
		}
	}
	return st
}

// filters returns the cls_bpf filters at one hook whose name starts with prefix.
func (s hookState) filters(hook, prefix string) []tcFilter {
	var out []tcFilter
	for _, f := range s.Filters {
		if f.Hook == hook && strings.HasPrefix(f.Name, prefix) {
			out = append(out, f)
		}
	}
	return out
}

// bpftoolIDs lists the ids `bpftool OBJ show -j` reports (OBJ: link, prog or map).
func bpftoolIDs(t testing.TB, obj string) map[uint32]bool {
	t.Helper()
	var objs []struct {
		ID uint32 `json:"id"`
	}
	out := sh(t, "bpftool", obj, "show", "-j")
	if err := json.Unmarshal([]byte(out), &objs); err != nil {
		t.Fatalf("bpftool %s show -j: %v", obj, err)
	}
	ids := map[uint32]bool{}
	for _, o := range objs {
		ids[o.ID] = true
	}
	return ids
}

// waitGone waits until none of ids is listed by bpftool (programs and maps are freed after an RCU
// grace period, not at once), and fails the test naming those still there.
func waitGone(t testing.TB, obj string, ids []uint32) {
	t.Helper()
	var left []uint32
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		have := bpftoolIDs(t, obj)
		left = left[:0]
		for _, id := range ids {
			if have[id] {
				left = append(left, id)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bpftool %s show still lists %v after detach", obj, left)
		}
	}
}

// requireNoPins checks that the pin directory of ns/iface is gone, and that no empty directory is
// left above it: the namespace's directory goes with its last interface, the tool's root with its
// last namespace.
func requireNoPins(t testing.TB, ns, iface string) {
	t.Helper()
	dir := filepath.Join(bpffsRoot, ns, iface)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		ents, _ := os.ReadDir(dir)
		t.Errorf("%s still exists after detach (%d entries)", dir, len(ents))
	}
	if ents, err := os.ReadDir(filepath.Join(bpffsRoot, ns)); err == nil && len(ents) == 0 {
		t.Errorf("%s is left empty", filepath.Join(bpffsRoot, ns))
	}
	// Other packages' tests share the root: an empty root may only be one that another
	// mptcp-xdp holds locked right now (it removes it when it is done), or has just created and
	// is about to lock: look again for a second before calling it left behind.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ents, err := os.ReadDir(bpffsRoot); err != nil || len(ents) > 0 || rootLocked(t) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s is left empty", bpffsRoot)
			break
		}
	}
}

// rootLocked reports whether another process holds the tool's lock on its root directory.
func rootLocked(t testing.TB) bool {
	fd, err := unix.Open(bpffsRoot, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	unix.Flock(fd, unix.LOCK_UN)
	return false
}

// passProgram loads a one-instruction program that returns ret, named name: another tool's.
func passProgram(t testing.TB, typ ebpf.ProgramType, name string, ret int64) *ebpf.Program {
	t.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: typ, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, int32(ret)), asm.Return()},
	})
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return p
}

// progID returns a program's kernel id.
func progID(t testing.TB, p *ebpf.Program) uint32 {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

// inNetns runs fn with a netlink handle of network namespace ns.
func inNetns(t testing.TB, ns string, fn func(h *netlink.Handle) error) {
	t.Helper()
	err := netns.Do(ns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer h.Close()
		return fn(h)
	})
	if err != nil {
		t.Fatal(err)
	}
}
