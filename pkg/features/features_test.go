package features

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// names are the stable feature names docs/cli.md lists, in order.
var names = []string{"xdp", "tc_bpf", "ringbuf", "bpf_check_mtu", "iter_tcp", "sock_ops_history",
	"bpf_link_xdp", "tcx", "clsact", "mptcp", "mptcp_info", "mptcp_full_info",
	"allow_join_initial_addr_port", "port_endpoints"}

// On the kernel the tests run on, every probe agrees with what that kernel has: 6.18 has every
// feature; the kernel matrix's 6.1 lacks tcx (6.6) and MPTCP_FULL_INFO (6.5, and its struct in
// the kernel's BTF). The socket options report the sizes the kernel writes back, and the probe's
// namespace is gone.
func TestProbe(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the probes attach programs and make a network namespace: run as root (make test does)")
	}
	r, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	tcx, err := testutil.KernelAtLeast(6, 6)
	if err != nil {
		t.Fatal(err)
	}
	fullInfo, err := testutil.KernelHasStruct("mptcp_full_info")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"tcx": tcx, "mptcp_full_info": fullInfo}
	var got []string
	for _, f := range r.Features {
		got = append(got, f.Name)
		w, ok := want[f.Name]
		if !ok {
			w = true // every kernel of the matrix (6.1 and later) has it
		}
		if f.Available != w {
			t.Errorf("%s: available %v on %s, want %v (%s)", f.Name, f.Available, r.Kernel, w, f.Error)
		}
		if !f.Available && f.Error == "" {
			t.Errorf("%s: unavailable without the probe's error", f.Name)
		}
		if f.What == "" || f.Kernel == "" || f.Without == "" {
			t.Errorf("%s: %+v: want what it is, the kernel that has it and what happens without it", f.Name, f)
		}
	}
	if !slices.Equal(got, names) {
		t.Errorf("features %v, want %v", got, names)
	}
	for _, f := range r.Features {
		if !f.Available {
			continue
		}
		switch f.Name {
		case "mptcp_info":
			if !strings.HasPrefix(f.Detail, "mptcp_info ") || !strings.Contains(f.Detail, "tcp_info ") {
				t.Errorf("mptcp_info detail %q: want the sizes", f.Detail)
			}
		case "mptcp_full_info":
			if !strings.Contains(f.Detail, "mptcp_subflow_info ") {
				t.Errorf("mptcp_full_info detail %q: want the sizes", f.Detail)
			}
		}
	}
	entries, err := os.ReadDir(netns.Dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "mxfeat-") {
			t.Errorf("the probe's namespace %s is left behind", e.Name())
		}
	}
}

// Every program of every object loads on the running kernel, and the verifier's statistics are
// read from its log: a program the verifier refuses fails here, naming its reason.
func TestProbePrograms(t *testing.T) {
	progs, err := ProbePrograms()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, p := range progs {
		seen[p.Object] = true
		t.Logf("%s/%s: loaded %v, %d of %d instructions, %d states, %d µs", p.Object, p.Program, p.Loaded,
			p.InsnsProcessed, p.InsnsLimit, p.TotalStates, p.VerifyMicros)
		if !p.Loaded {
			t.Errorf("%s/%s refused by the verifier: %s", p.Object, p.Program, p.Error)
		}
		if p.InsnsProcessed <= 0 || p.InsnsLimit < p.InsnsProcessed || p.TotalStates <= 0 {
			t.Errorf("%s/%s: statistics %+v: want the verifier's", p.Object, p.Program, p)
		}
	}
	for _, o := range objects {
		if !seen[o.name] {
			t.Errorf("object %s: no program probed", o.name)
		}
	}
}

// A refused program's reason is the verifier's last line before its statistics.
func TestRefusal(t *testing.T) {
	log := []string{"0: (b7) r0 = 0", "BPF program is too large. Processed 1000001 insn",
		"verification time 16272027 usec", "stack depth 288+4", "processed 1000001 insns (limit 1000000) max_states_per_insn 78 total_states 26355 peak_states 1868 mark_read 43", ""}
	if got, want := refusal(log), "BPF program is too large. Processed 1000001 insn"; got != want {
		t.Errorf("refusal = %q, want %q", got, want)
	}
	var p Program
	parseStats(&p, log)
	if p.InsnsProcessed != 1000001 || p.InsnsLimit != 1000000 || p.TotalStates != 26355 || p.PeakStates != 1868 || p.VerifyMicros != 16272027 {
		t.Errorf("parseStats: %+v", p)
	}
}
