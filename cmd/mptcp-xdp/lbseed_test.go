package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

// lb attach refuses a bad --hash-seed-file before it opens or attaches anything (the interface
// does not exist: an attach would fail on it, not on the seed; and the pins would go to a private
// bpffs directory).
func TestLBAttachBadSeedFile(t *testing.T) {
	saved := bpffsRoot
	bpffsRoot = filepath.Join(testutil.TempBPFFS(t, "mxh4-cli-"), "mptcp-xdp")
	defer func() { bpffsRoot = saved }()
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const seed = "8f1c2a9d4b7e6035a1d2c3b4e5f60718"
	for _, c := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "missing"), "no such file or directory"},
		{"empty", write("empty", "", 0o600), "empty (want 32 hexadecimal digits"},
		{"blank", write("blank", "\n", 0o600), "empty (want 32 hexadecimal digits"},
		{"too short", write("short", seed[:31]+"\n", 0o600), "31 characters, want 32 hexadecimal digits"},
		{"too long", write("long", seed+"ab\n", 0o600), "34 characters, want 32 hexadecimal digits"},
		{"raw bytes", write("raw", "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10", 0o600), "16 characters, want 32 hexadecimal digits"},
		{"not hex", write("nothex", strings.Repeat("z", 32), 0o600), "not 32 hexadecimal digits"},
		{"world-readable", write("public", seed, 0o644), "readable by every user"},
	} {
		root := newRootCmd()
		root.SetArgs([]string{"lb", "attach", "mxh4-nosuch0", "--vip", "10.0.0.10:80", "--hash-seed-file", c.path})
		var out, errOut strings.Builder
		root.SetOut(&out)
		root.SetErr(&errOut)
		err := root.Execute()
		if err == nil || !strings.HasPrefix(err.Error(), "--hash-seed-file: ") || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("%s seed file: %v, want --hash-seed-file: ... %s ... %q", c.name, err, c.path, c.want)
		}
		if strings.Contains(err.Error()+out.String()+errOut.String(), seed[:8]) {
			t.Errorf("%s seed file: the seed is shown: %v %s %s", c.name, err, out.String(), errOut.String())
		}
	}
}
