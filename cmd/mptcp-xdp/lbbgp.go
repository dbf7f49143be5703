package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/bgp"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// newLBBGPSpeakerCmd is the BGP speaker lb run --config starts as a child, inside its network
// namespace (pkg/bgp, child.go). Hidden: it speaks JSON lines on stdin and stdout.
func newLBBGPSpeakerCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "bgp-speaker",
		Short:  "The BGP speaker of lb run --config (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The parent withdraws on SIGINT/SIGTERM (a terminal's ^C reaches the whole process
			// group): this process ends when the parent closes its stdin, or dies.
			signal.Ignore(os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)).With("component", "bgp-speaker", "pid", os.Getpid())
			return bgp.Serve(cmd.InOrStdin(), cmd.OutOrStdout(), log)
		},
	}
}

// bgpStateFile is where lb run --config keeps what it announces, for lb status.
func bgpStateFile(netnsName string) (string, error) {
	ns, err := loader.NetnsDir(netnsName)
	if err != nil {
		return "", err
	}
	return filepath.Join(runDir, "lb-bgp-"+ns+".json"), nil
}

// startSpeaker starts the speaker as a child process inside the balancer's namespace, so that its
// sessions are that namespace's and end with this process (its stdin closes when we die).
func startSpeaker(g *globalFlags, stderr io.Writer) func(*bgp.Config) (bgp.Announcer, error) {
	return func(cfg *bgp.Config) (bgp.Announcer, error) {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		c, err := bgp.StartChild([]string{exe, "lb", "bgp-speaker"}, g.netns, *cfg, stderr)
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

// lbBGPStatus reads the state file of the lb run --config of the namespace, if one runs.
func lbBGPStatus(g *globalFlags) *control.BGPStatus {
	pidFile, err := runPidFile(g.netns)
	if err != nil {
		return nil
	}
	pid, ok := runningLBRun(pidFile)
	if !ok {
		return nil
	}
	path, err := bgpStateFile(g.netns)
	if err != nil {
		return nil
	}
	st, err := control.ReadBGPStatus(path)
	if err != nil || st.Pid != pid {
		return nil
	}
	return st
}

func lbBGPTable(w io.Writer, st *control.BGPStatus) {
	fmt.Fprintf(w, "\nBGP\tAS %d\trouter id %s\tlb run pid %d\tupdated %s\n", st.LocalASN, st.RouterID, st.Pid, st.Updated.Format(time.RFC3339))
	fmt.Fprintln(w, "PEER\tASN\tSTATE\tLOCAL ADDRESS\tESTABLISHED SINCE")
	for _, p := range st.Peers {
		since := "-"
		if !p.Since.IsZero() {
			since = p.Since.Format(time.RFC3339)
		}
		local := "-"
		if p.Local.IsValid() {
			local = p.Local.String()
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", p.Addr, p.ASN, p.State, local, since)
	}
	fmt.Fprintln(w, "\nVIP ADDRESS\tANNOUNCED\tBACKENDS\tREASON")
	for _, v := range st.VIPs {
		fmt.Fprintf(w, "%s\t%v\t%d\t%s\n", v.Addr, v.Announced, v.Backends, v.Reason)
	}
}

// detachHold is how long lb run keeps its VIPs withdrawn for an lb detach that asked (SIGUSR1);
// still attached after it (the detach failed), it announces them again.
const detachHold = 10 * time.Second

// withdrawBeforeDetach asks the namespace's lb run --config, if it announces VIPs, to withdraw them
// (SIGUSR1) and waits up to 5 s until its state file says so: the router stops sending here
// before the datapath goes. Without an answer the detach goes ahead (lb run withdraws within a
// second of the pins' removal anyway).
func withdrawBeforeDetach(g *globalFlags) {
	st := lbBGPStatus(g)
	if st == nil || !announcesAny(st) {
		return
	}
	if err := syscall.Kill(st.Pid, syscall.SIGUSR1); err != nil {
		return
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st = lbBGPStatus(g); st == nil || !announcesAny(st) {
			return
		}
	}
}

func announcesAny(st *control.BGPStatus) bool {
	for _, v := range st.VIPs {
		if v.Announced {
			return true
		}
	}
	return false
}
