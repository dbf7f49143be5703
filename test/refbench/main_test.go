package refbench

import (
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

func TestMain(m *testing.M) {
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Fprintln(os.Stderr, "remove memlock rlimit:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
