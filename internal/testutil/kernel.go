package testutil

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// KernelAtLeast reports whether the running kernel's release (uname -r, e.g. 6.1.0-50-amd64) is
// major.minor or later.
func KernelAtLeast(major, minor int) (bool, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false, err
	}
	rel := unix.ByteSliceToString(u.Release[:])
	var ma, mi int
	if _, err := fmt.Sscanf(rel, "%d.%d", &ma, &mi); err != nil {
		return false, fmt.Errorf("kernel release %q: %w", rel, err)
	}
	return ma > major || ma == major && mi >= minor, nil
}

// KernelHasStruct reports whether the running kernel's BTF (/sys/kernel/btf/vmlinux) has a struct
// of that name: what a test asks of a feature that came with its struct (mptcp_full_info and
// MPTCP_FULL_INFO, 6.5).
func KernelHasStruct(name string) (bool, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false, fmt.Errorf("load kernel BTF: %w", err)
	}
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		if errors.Is(err, btf.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
