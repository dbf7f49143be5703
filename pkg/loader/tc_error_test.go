package loader

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A kernel without sch_ingress (a module not loaded, as on Debian's 6.1 until modprobe) answers
// ENOENT to the clsact qdisc: the error names the qdisc, the option and the module, in one line.
// Other errors pass through unchanged.
func TestMissingModuleError(t *testing.T) {
	err := fmt.Errorf("add clsact qdisc to a0: %w", missingModule(unix.ENOENT, "the clsact qdisc (CONFIG_NET_SCH_INGRESS; as a module: modprobe sch_ingress)"))
	var fe *FeatureError
	if !errors.As(err, &fe) || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("%v: want a FeatureError wrapping ENOENT", err)
	}
	msg := err.Error()
	for _, want := range []string{"clsact", "CONFIG_NET_SCH_INGRESS", "modprobe sch_ingress", "a0"} {
		if !strings.Contains(msg, want) || strings.Contains(msg, "\n") {
			t.Errorf("%q: want one line naming %s", msg, want)
		}
	}
	if err := missingModule(unix.EPERM, "x"); err != unix.EPERM {
		t.Errorf("EPERM became %v", err)
	}
}
