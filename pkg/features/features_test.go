package features

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// names are the stable feature names docs/cli.md lists, in order.
var names = []string{"xdp", "tc_bpf", "ringbuf", "bpf_check_mtu", "iter_tcp", "sock_ops_history",
	"bpf_link_xdp", "tcx", "clsact", "mptcp", "mptcp_info", "mptcp_full_info",
	"allow_join_initial_addr_port", "port_endpoints"}

// On the kernel the tests run on (6.18, which has every feature), every probe succeeds, the
// socket options report the sizes the kernel writes back, and the probe's namespace is gone.
func TestProbe(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the probes attach programs and make a network namespace: run as root (make test does)")
	}
	r, err := Probe()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range r.Features {
		got = append(got, f.Name)
		if !f.Available {
			t.Errorf("%s: not available on %s: %s", f.Name, r.Kernel, f.Error)
		}
		if f.What == "" || f.Kernel == "" || f.Without == "" {
			t.Errorf("%s: %+v: want what it is, the kernel that has it and what happens without it", f.Name, f)
		}
	}
	if !slices.Equal(got, names) {
		t.Errorf("features %v, want %v", got, names)
	}
	for _, f := range r.Features {
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
