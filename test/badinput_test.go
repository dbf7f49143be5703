package test

import (
	"context"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/lab"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// TestBadInput: every mistake gets one line on stderr naming what is wrong, a non-zero exit, and
// leaves nothing behind.
func TestBadInput(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	srv := l.Paths[0].ServerIf
	for _, tc := range []struct {
		args  []string
		parts []string
	}{
		{[]string{"--netns", l.Server, "attach", "nosuch0"}, []string{`"nosuch0"`, "not found", l.Server}},
		{[]string{"--netns", l.Server, "detach", "nosuch0"}, []string{"nosuch0", "not attached"}},
		{[]string{"--netns", l.Server, "detach", srv}, []string{srv, "not attached"}},
		{[]string{"--netns", l.Server, "stats", srv}, []string{srv, "not attached"}},
		{[]string{"--netns", "mx-nosuch-ns", "attach", srv}, []string{`"mx-nosuch-ns"`, "does not exist"}},
		{[]string{"--netns", "mx-nosuch-ns", "detach", srv}, []string{`"mx-nosuch-ns"`, "does not exist"}},
		{[]string{"--netns", "mx-nosuch-ns", "status"}, []string{`"mx-nosuch-ns"`, "does not exist"}},
		{[]string{"--netns", "mx-nosuch-ns", "stats"}, []string{`"mx-nosuch-ns"`, "does not exist"}},
		{[]string{"--netns", "../etc", "status"}, []string{`"../etc"`, "invalid"}},
		{[]string{"--netns", l.Server, "attach", srv, "--mode", "turbo"}, []string{`"turbo"`, "auto, native or generic"}},
		{[]string{"--netns", l.Server, "attach", srv, "--ingress", "nic"}, []string{`"nic"`, "xdp or tc"}},
		{[]string{"--netns", l.Server, "attach", srv, "--tc", "ingress"}, []string{`"ingress"`, "auto, tcx or clsact"}},
		{[]string{"--netns", l.Server, "-o", "yaml", "status"}, []string{`"yaml"`, "table or json"}},
		{[]string{"--netns", l.Server, "-o", "yaml", "attach", srv}, []string{`"yaml"`, "table or json"}},
		{[]string{"--netns", l.Server, "attach"}, []string{"1 arg"}},
		{[]string{"--netns", l.Server, "attach", srv, "srv1"}, []string{"1 arg"}},
		{[]string{"--netns", l.Server, "attach", srv, "--bogus"}, []string{"--bogus"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			requireCleanError(t, mx(t, tc.args...), tc.parts...)
		})
	}
	// Nothing was attached or left behind by any of them.
	requireDetached(t, l.Server, srv, attachment{}, false)
}

// TestPrivileges: without the capabilities it needs, the CLI names the missing ones and changes
// nothing.
func TestPrivileges(t *testing.T) {
	t.Parallel()
	l := testutil.NewLab(t, lab.Config{Paths: 1})
	srv := l.Paths[0].ServerIf
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// setpriv keeps uid 0 but empties the bounding set, so the binary runs with no capability
	// but those listed as kept.
	dropAllBut := func(keep []string, args ...string) *exec.Cmd {
		var bset []string
		for _, c := range []string{"bpf", "net_admin", "sys_admin", "perfmon", "dac_override"} {
			if !slices.Contains(keep, c) {
				bset = append(bset, "-"+c)
			}
		}
		if len(keep) == 0 {
			bset = []string{"-all"}
		}
		return exec.CommandContext(ctx, "setpriv", append([]string{"--bounding-set=" + strings.Join(bset, ","), "--inh-caps=-all", bin}, args...)...)
	}
	nobody := func(args ...string) *exec.Cmd {
		c := exec.CommandContext(ctx, bin, args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return c
	}
	attachArgs := []string{"--netns", l.Server, "attach", srv}
	for _, tc := range []struct {
		name    string
		cmd     *exec.Cmd
		names   []string // capabilities the message must name
		unnamed []string // and must not
	}{
		{"no capabilities", dropAllBut(nil, attachArgs...), []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}, nil},
		{"no capabilities, detach", dropAllBut(nil, "--netns", l.Server, "detach", srv), []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}, nil},
		{"no CAP_NET_ADMIN", dropAllBut([]string{"bpf", "sys_admin", "perfmon"}, attachArgs...), []string{"CAP_NET_ADMIN"}, []string{"CAP_BPF", "CAP_SYS_ADMIN"}},
		{"no CAP_SYS_ADMIN for --netns", dropAllBut([]string{"bpf", "net_admin", "perfmon"}, attachArgs...), []string{"CAP_SYS_ADMIN"}, []string{"CAP_BPF", "CAP_NET_ADMIN"}},
		{"nobody", nobody(attachArgs...), []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCmd(t, tc.cmd)
			requireCleanError(t, r, append([]string{"missing capabilities"}, tc.names...)...)
			for _, c := range tc.unnamed {
				if strings.Contains(r.stderr, c) {
					t.Errorf("message %q names %s, which the process has", r.stderr, c)
				}
			}
		})
	}
	requireDetached(t, l.Server, srv, attachment{}, false)

	// Readers: the pins are root's (mode 0700); nobody is told what it lacks. (With nothing
	// attached anywhere there is nothing to read and no error, so attach something first.)
	attach(t, l.Server, srv)
	for _, args := range [][]string{{"status"}, {"stats"}, {"--netns", l.Server, "stats", "-o", "json"}} {
		t.Run("nobody "+strings.Join(args, " "), func(t *testing.T) {
			requireCleanError(t, runCmd(t, nobody(args...)), "permission denied", "CAP_DAC_OVERRIDE")
		})
	}
}
