package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/features"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

func newFeaturesCmd(g *globalFlags) *cobra.Command {
	var programs bool
	cmd := &cobra.Command{
		Use:   "features",
		Short: "Probe the running kernel for every feature mptcp-xdp uses, and say what it does without each",
		Long: `Features probes the running kernel, as bpftool feature probe does, for what mptcp-xdp uses: XDP,
TC BPF, bpf_link for XDP, tcx, clsact and cls_bpf, the BPF ring buffer, bpf_check_mtu, the TCP socket
iterator, sock_ops with the helpers the history needs, MPTCP, its socket options (with the sizes of
mptcp_info and tcp_info the kernel returns), MPTCP_FULL_INFO, the allow_join_initial_addr_port
sysctl and endpoints with a port. Each is tried for real: attachments on the loopback device of a
network namespace made for the probe and deleted after it. Each line names the first kernel that
has the feature and what mptcp-xdp does on a kernel without it.

Then it loads each of mptcp-xdp's own eBPF programs into the kernel, one at a time (hash maps made
small), and shows what the verifier said: accepted or refused (with its reason), the instructions
it processed against its limit, its states and verification time. A program near the limit is one
an older verifier may refuse. --programs=false skips this. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := loader.CheckPrivileges(true); err != nil {
				return err
			}
			r, err := features.Probe()
			if err != nil {
				return err
			}
			if programs {
				if r.Programs, err = features.ProbePrograms(); err != nil {
					return err
				}
			}
			return render(cmd, g, r, func(w io.Writer) error {
				fmt.Fprintf(w, "KERNEL\t%s\n\n", r.Kernel)
				fmt.Fprintln(w, "FEATURE\tAVAILABLE\tSINCE\tDETAIL / WITHOUT IT")
				for _, f := range r.Features {
					avail, text := "yes", f.Detail
					if !f.Available {
						avail, text = "no", f.Without
						if f.Error != "" {
							text += " (" + f.Error + ")"
						}
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", f.Name, avail, f.Kernel, text)
				}
				if len(r.Programs) == 0 {
					return nil
				}
				fmt.Fprintln(w, "\nOBJECT\tPROGRAM\tTYPE\tLOADED\tINSNS PROCESSED\tLIMIT\tSTATES\tVERIFY TIME\tERROR")
				for _, p := range r.Programs {
					loaded := "yes"
					if !p.Loaded {
						loaded = "no"
					}
					vt := "-"
					if p.VerifyMicros > 0 {
						vt = fmt.Sprintf("%.1fms", float64(p.VerifyMicros)/1000)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", p.Object, p.Program, p.Type, loaded,
						p.InsnsProcessed, p.InsnsLimit, p.TotalStates, vt, p.Error)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&programs, "programs", true, "also load each of mptcp-xdp's programs and show the verifier's statistics")
	return cmd
}
