package testutil

import (
	"os"
	"time"
)

// Emulated reports whether the tests run inside the kernel matrix's guest (test/kernels/vmtest sets
// MPTCP_XDP_VMTEST=1), where qemu emulates the CPU (TCG) and everything runs about ten times
// slower than on the host.
func Emulated() bool { return os.Getenv("MPTCP_XDP_VMTEST") == "1" }

// Scaled returns d on the host and 5·d in the emulated guest: for the intervals a test configures
// (a health check's interval and timeout) and the slack it allows the control plane (a Maglev
// table rewrite took 2.7 s there, 20 ms here), so that what it asserts in units of them (down
// within fall intervals) stays the same claim on a machine ten times slower.
func Scaled(d time.Duration) time.Duration {
	if Emulated() {
		return 5 * d
	}
	return d
}
