package loader_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// TestValidIfaceName holds the kernel's dev_valid_name rules: what it accepts is accepted, what it
// refuses is refused with a one-line *NameError naming the interface.
func TestValidIfaceName(t *testing.T) {
	for _, name := range []string{"e", "eth0", "veth-a.b_c@d", strings.Repeat("x", 15), "..a", ".a", "a..", "\xff"} {
		if err := loader.ValidIfaceName(name); err != nil {
			t.Errorf("ValidIfaceName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{
		"", ".", "..", strings.Repeat("x", 16), strings.Repeat("x", 200),
		"a/b", "/", "../../tmp/victim", "a b", " ", "a\tb", "a\nb", "a\vb", "a\fb", "a\rb", "a\xa0b",
		"a:b", "a\x00b",
	} {
		err := loader.ValidIfaceName(name)
		var ne *loader.NameError
		if !errors.As(err, &ne) {
			t.Errorf("ValidIfaceName(%q) = %v, want a *NameError", name, err)
			continue
		}
		if msg := err.Error(); strings.ContainsAny(msg, "\n\r") || !strings.HasPrefix(msg, "invalid interface name ") {
			t.Errorf("ValidIfaceName(%q): message %q is not one line naming the interface", name, msg)
		}
	}
}

// TestValidNetnsName holds the rules of a namespace name that becomes a pin directory.
func TestValidNetnsName(t *testing.T) {
	for _, name := range []string{"lab", "host", "ns-1", "a b", "a:b", "..a", strings.Repeat("n", 255)} {
		if err := loader.ValidNetnsName(name); err != nil {
			t.Errorf("ValidNetnsName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", "a/b", "../x", "/", "a\x00b", strings.Repeat("n", 256)} {
		var ne *loader.NameError
		if err := loader.ValidNetnsName(name); !errors.As(err, &ne) {
			t.Errorf("ValidNetnsName(%q) = %v, want a *NameError", name, err)
		}
		if _, err := loader.NetnsDir(name); err == nil && name != "" {
			t.Errorf("NetnsDir(%q) accepted it", name)
		}
	}
}
