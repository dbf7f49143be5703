package demo

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// The demo end to end, as `make demo` runs it but shorter and on a private bpffs root: the stream
// arrives intact over two subflows, the datapath counts what the server kernel counts, the sender's
// subflows are listed, and nothing is left behind.
func TestDemo(t *testing.T) {
	testutil.RequireRoot(t)
	// A private directory on the host's bpffs, so that other tests' attachments never show here.
	dir := testutil.TempBPFFS(t, "mxdemo-test-")
	root := dir + "/mptcp-xdp"
	var out strings.Builder
	res, err := Run(context.Background(), Options{Duration: 2 * time.Second, Root: root}, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if KernelStreamFault(res) && !strings.Contains(out.String(), "docs/veth-lab.md") {
		t.Error("the summary does not explain the kernel's fault")
	}
	if !res.ChecksumOK || !res.MPTCP || res.SentBytes == 0 || res.SentBytes != res.RecvBytes {
		// Run once: a stream the kernel corrupted on the veth fails the test too, about once in 50
		// runs here (docs/veth-lab.md; TestVethStreamFault watches it), and says so.
		why := ""
		if KernelStreamFault(res) {
			why = " (the signature of the kernel's veth stream fault, docs/veth-lab.md)"
		}
		t.Errorf("transfer: sent %d, received %d, checksum ok %v, mptcp %v%s", res.SentBytes, res.RecvBytes, res.ChecksumOK, res.MPTCP, why)
	}
	for _, k := range res.Kernel {
		if int64(k.XDP) != k.Kernel || k.Kernel <= 0 {
			t.Errorf("%s: datapath %d, kernel %s %d", k.Class, k.XDP, k.MIB, k.Kernel)
		}
	}
	joins := uint64(0)
	for _, c := range res.Counters {
		joins += c.Ingress.Options[mptcp.MPJoinSYN]
	}
	if joins == 0 {
		t.Error("no MP_JOIN SYN counted: the second path carried no subflow")
	}
	if len(res.Subflows) != 2 {
		t.Errorf("sender's subflows: %d, want 2", len(res.Subflows))
	}
	for _, p := range res.Paths {
		if p.RxBytes == 0 {
			t.Errorf("path %d carried nothing", p.Index)
		}
	}
	for _, want := range []string{"t= ", "path0", "mp_join_syn", "MPTcpExtMPJoinSynRx", "removed namespaces"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	l, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	if atts, err := l.List(""); err != nil || len(atts) != 0 {
		t.Errorf("left behind: %v %v", atts, err)
	}
}
