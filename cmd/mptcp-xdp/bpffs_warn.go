package main

import (
	"fmt"
	"io"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// warnPrivateBPFFS prints one line to w when the pins under dir landed on a bpffs of this mount
// namespace only (loader.PrivateBPFFS: `ip netns exec`), which goes, with the pins, when the
// command exits. When that cannot be told, it says nothing.
func warnPrivateBPFFS(w io.Writer, dir string) {
	if private, err := loader.PrivateBPFFS(dir); err == nil && private {
		fmt.Fprintf(w, "mptcp-xdp: warning: %s is on a bpffs private to this mount namespace (as under 'ip netns exec', which mounts its own /sys): the pins vanish and the programs detach when this command exits; run mptcp-xdp outside 'ip netns exec', with --netns NAME\n", dir)
	}
}
