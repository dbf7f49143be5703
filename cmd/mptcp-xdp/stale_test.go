package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

var backquoted = regexp.MustCompile("`mptcp-xdp ([^`]*)`")

// TestDetachGoneNetns follows status's advice after a namespace is deleted under an attached
// datapath and balancer: status says the namespace is gone and which command removes the stale
// pins, that command (`--netns GONE detach s1`) works, so does `--netns GONE lb detach`, and
// nothing is left — no pin, no directory, nothing in status. (detach and lb detach used to refuse:
// "network namespace ... does not exist".)
func TestDetachGoneNetns(t *testing.T) {
	testutil.RequireRoot(t)
	root := useTempRoot(t, "mxh1gone-")
	ld, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	ns := vethNetns(t)
	if _, err := cliRun("--netns", ns, "attach", "s1"); err != nil {
		t.Fatal(err)
	}
	m, err := ld.AttachLB(loader.LBAttachOptions{Netns: ns, Ifaces: []string{"s2"}})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", ns, err, out)
	}

	var st statusJSON
	cliJSON(t, &st, "status")
	if len(st.Attachments) != 1 || st.Attachments[0].Netns != ns {
		t.Fatalf("status after ip netns del: %+v, want the attachment of %s", st.Attachments, ns)
	}
	var advice []string
	for _, p := range st.Attachments[0].Problems {
		if strings.Contains(p, "network namespace "+ns+" is gone") {
			if m := backquoted.FindStringSubmatch(p); m != nil {
				advice = strings.Fields(m[1])
			}
		}
	}
	if want := []string{"--netns", ns, "detach", "s1"}; strings.Join(advice, " ") != strings.Join(want, " ") {
		t.Fatalf("status's problems %q: want the advice `mptcp-xdp %s`", st.Attachments[0].Problems, strings.Join(want, " "))
	}
	if len(st.Balancers) != 1 || !strings.Contains(strings.Join(st.Balancers[0].Problems, "; "), "network namespace "+ns+" is gone") {
		t.Fatalf("status's balancers %+v: want the balancer of %s, gone", st.Balancers, ns)
	}

	if out, err := cliRun(advice...); err != nil {
		t.Fatalf("status's advice: %v", err)
	} else if !strings.Contains(out, "detached from s1") {
		t.Errorf("status's advice printed %q", out)
	}
	if _, err := cliRun("--netns", ns, "lb", "detach"); err != nil {
		t.Fatalf("lb detach of the gone namespace: %v", err)
	}
	for _, dir := range []string{filepath.Join(root, ns), filepath.Join(root+"-lb", ns), root, root + "-lb"} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left (%v)", dir, err)
		}
	}
	st = statusJSON{}
	cliJSON(t, &st, "status")
	if len(st.Attachments) != 0 || len(st.Balancers) != 0 {
		t.Errorf("status after the stale pins' removal: %+v", st)
	}
	// A second time there is nothing left to remove, and detach says so.
	if _, err := cliRun(advice...); err == nil || !strings.Contains(err.Error(), "not attached") {
		t.Errorf("detach again: %v, want not attached", err)
	}

	// With nothing left, a gone namespace reads as one that does not exist, to detach as to the rest.
	for _, args := range [][]string{
		{"--netns", ns, "detach", "s1"}, {"--netns", ns, "lb", "detach"}, {"--netns", ns, "lb", "decap", "--detach", "s1"},
		{"--netns", ns, "attach", "s1"}, {"--netns", ns, "lb", "decap", "s1"}, {"--netns", ns, "status"},
	} {
		if _, err := cliRun(args...); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("network namespace %q does not exist", ns)) {
			t.Errorf("mptcp-xdp %q: %v, want it to say the namespace does not exist", args, err)
		}
	}
}
