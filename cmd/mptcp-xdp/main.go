// Command mptcp-xdp attaches the MPTCP datapath to interfaces and inspects it: a bpftool-like CLI for
// Multipath TCP option counters, connections, subflows and their tcp_info.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// globalFlags are the flags every command takes.
type globalFlags struct {
	netns  string
	output string
}

func newRootCmd() *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:           "mptcp-xdp",
		Short:         "Multipath TCP datapath (XDP/TC) and observability",
		Long:          "mptcp-xdp parses Multipath TCP options at line rate with XDP and TC, and shows connections,\nsubflows and their tcp_info. Run `mptcp-xdp demo` for a self-contained lab.",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.netns != "" {
				if err := netns.Validate(g.netns); err != nil {
					return err
				}
				if !netns.Exists(g.netns) {
					return fmt.Errorf("network namespace %q does not exist (see `ip netns list`)", g.netns)
				}
			}
			return validateOutput(g.output)
		},
	}
	root.PersistentFlags().StringVar(&g.netns, "netns", "", "run against this named network namespace (a name from 'ip netns list'), entered with setns; pins stay in the host's bpffs")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	_ = root.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp
	})

	for _, c := range commands(g) {
		root.AddCommand(c)
	}
	return root
}

// commands lists every subcommand; each lives in its own file.
func commands(g *globalFlags) []*cobra.Command {
	return []*cobra.Command{
		newAttachCmd(g),
		newDetachCmd(g),
		newStatusCmd(g),
		newStatsCmd(g),
		newProgCmd(g),
		newMapCmd(g),
		newDemoCmd(g),
		newTCPInfoCmd(g),
		newServeCmd(g),
		newLBCmd(g),
		newConnCmd(g),
		newSubflowCmd(g),
		newHistoryCmd(g),
		newReplayCmd(g),
		newFeaturesCmd(g),
	}
}

func main() {
	if err := newRootCmd().Execute(); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintf(os.Stderr, "mptcp-xdp: %s\n", oneLine(err.Error()))
		os.Exit(1)
	}
}

// oneLine folds an error onto one line: cobra's "unknown command" error carries a multi-line
// "Did you mean this?" block.
func oneLine(msg string) string {
	if head, sugg, ok := strings.Cut(msg, "\n\nDid you mean this?\n"); ok {
		return head + " (did you mean " + strings.Join(strings.Fields(sugg), " or ") + "?)"
	}
	return strings.Join(strings.Fields(msg), " ")
}

// exitError ends the process with a given code after its message was printed.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }
