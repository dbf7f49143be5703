package bgp

import (
	"errors"
	"time"
)

// ClosePipe closes the child's stdin, as the death of its parent does.
func ClosePipe(c *Child) error { return c.in.Close() }

// WaitExit waits for the child to exit.
func WaitExit(c *Child, d time.Duration) error {
	select {
	case <-c.done:
		return nil
	case <-time.After(d):
		return errors.New("child still running")
	}
}
