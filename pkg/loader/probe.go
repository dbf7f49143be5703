package loader

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// Capability numbers (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

var capNames = map[int]string{capNetAdmin: "CAP_NET_ADMIN", capSysAdmin: "CAP_SYS_ADMIN", capPerfmon: "CAP_PERFMON", capBPF: "CAP_BPF"}

// effectiveCaps reads the effective capability set of this process.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// CheckPrivileges returns an error naming the capabilities that changing the datapath needs and
// this process lacks: CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load programs, CAP_NET_ADMIN to attach them,
// CAP_SYS_ADMIN to enter a network namespace or mount bpffs.
func CheckPrivileges(needNetns bool) error {
	caps, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c int) bool { return caps&(1<<uint(c)) != 0 }
	var missing []string
	if !has(capBPF) && !has(capSysAdmin) {
		missing = append(missing, capNames[capBPF])
	}
	if !has(capPerfmon) && !has(capSysAdmin) {
		// The verifier refuses the parser's packet-pointer arithmetic without it.
		missing = append(missing, capNames[capPerfmon])
	}
	if !has(capNetAdmin) {
		missing = append(missing, capNames[capNetAdmin])
	}
	if needNetns && !has(capSysAdmin) {
		missing = append(missing, capNames[capSysAdmin]+" (for --netns)")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing capabilities %s: run as root or grant them", strings.Join(missing, ", "))
	}
	return nil
}

// FeatureError says which kernel feature is missing and which kernel has it.
type FeatureError struct {
	Feature string
	Kernel  string
	Err     error
}

func (e *FeatureError) Error() string {
	return fmt.Sprintf("kernel lacks %s (needs Linux %s or newer)", e.Feature, e.Kernel)
}

func (e *FeatureError) Unwrap() error { return e.Err }

// ProbeXDP checks that the kernel can run XDP programs.
func ProbeXDP() error {
	if err := features.HaveProgramType(ebpf.XDP); err != nil {
		return &FeatureError{Feature: "XDP programs", Kernel: "4.8", Err: err}
	}
	return nil
}

// ProbeTC checks that the kernel can run TC (sched_cls) programs.
func ProbeTC() error {
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		return &FeatureError{Feature: "TC BPF programs (sched_cls)", Kernel: "4.1", Err: err}
	}
	return nil
}
