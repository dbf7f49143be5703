package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// PeakRSS measures the peak resident memory of a child process. GNU time (-f %M) gives the true
// figure: a child of a Go process starts with vfork, and the kernel records the parent's peak as
// the child's at exec, so Rusage.Maxrss is at least the parent's own peak. Without /usr/bin/time
// that upper bound is what there is.
type PeakRSS struct{ file string }

// WithPeakRSS returns args to run under `/usr/bin/time -f %M -o FILE` (FILE in dir) when GNU time
// is there, else args unchanged, and what reads the figure once the process has run.
func WithPeakRSS(dir string, args []string) ([]string, *PeakRSS) {
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		return args, &PeakRSS{}
	}
	p := &PeakRSS{file: filepath.Join(dir, "maxrss")}
	return append([]string{"/usr/bin/time", "-f", "%M", "-o", p.file}, args...), p
}

// KiB returns the peak in KiB of the process that ran, whose state is ps.
func (p *PeakRSS) KiB(ps *os.ProcessState) (int64, error) {
	if p.file == "" {
		return ps.SysUsage().(*syscall.Rusage).Maxrss, nil
	}
	b, err := os.ReadFile(p.file)
	if err != nil {
		return 0, err
	}
	kib, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/usr/bin/time -f %%M wrote %q", b)
	}
	return kib, nil
}
