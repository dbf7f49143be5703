package main

import (
	"strings"
	"testing"
)

// lb run refuses durations that would make it spin or forget live connections, before it opens
// anything.
func TestLBRunDurationFloors(t *testing.T) {
	for _, c := range []struct{ flag, val string }{
		{"--gc-interval", "1ms"}, {"--refresh-interval", "0s"}, {"--summary-interval", "10ms"},
		{"--flow-idle", "1s"}, {"--token-idle", "500ms"},
	} {
		root := newRootCmd()
		root.SetArgs([]string{"lb", "run", c.flag, c.val})
		root.SetOut(new(strings.Builder))
		root.SetErr(new(strings.Builder))
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), c.flag+" "+c.val) || !strings.Contains(err.Error(), "at least") {
			t.Errorf("lb run %s %s: %v, want a floor", c.flag, c.val, err)
		}
	}
}
