package main

import (
	"time"

	"golang.org/x/sys/unix"
)

// bootTime is the wall-clock time the system booted, for turning kernel boot-relative times
// (program load times) into dates.
func bootTime() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Time{}
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}
