package loader_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The library's entry points refuse names that are not an interface's or a namespace's with a
// *NameError before they touch anything, so a program using pkg/loader is protected as the CLI
// is: a victim outside bpffs, which Detach with a climbing interface name used to remove, survives.
func TestLoaderRefusesBadNames(t *testing.T) {
	ld := tempLoader(t)
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "victim")
	if err := os.WriteFile(victim, []byte("keep me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nsDir, err := loader.NetnsDir("")
	if err != nil {
		t.Fatal(err)
	}
	climb, err := filepath.Rel(filepath.Join(ld.Root, nsDir), victimDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"Detach(climb)":     func() error { return ld.Detach("", climb) },
		"Detach(..)":        func() error { return ld.Detach("", "..") },
		"Detach(netns /)":   func() error { return ld.Detach("/", "eth0") },
		"Detach(netns NUL)": func() error { return ld.Detach("a\x00b", "eth0") },
		"DetachLB(netns /)": func() error { return ld.DetachLB("/") },
		"DetachDecap(a/b)":  func() error { return ld.DetachDecap("", []string{"a/" + climb}) },
		"AttachLB(a/b)": func() error {
			_, err := ld.AttachLB(loader.LBAttachOptions{Ifaces: []string{"a/" + climb}})
			return err
		},
		"AttachLB(netns ..)": func() error {
			_, err := ld.AttachLB(loader.LBAttachOptions{Netns: "..", Ifaces: []string{"eth0"}})
			return err
		},
		"AttachDecap(a b)": func() error { return ld.AttachDecap(loader.LBAttachOptions{Ifaces: []string{"a b"}}) },
	} {
		var ne *loader.NameError
		if err := call(); !errors.As(err, &ne) {
			t.Errorf("%s: %v, want a *loader.NameError", name, err)
		}
		if b, err := os.ReadFile(victim); err != nil || string(b) != "keep me\n" {
			t.Fatalf("after %s the victim outside bpffs is gone or changed: %v", name, err)
		}
	}
}
