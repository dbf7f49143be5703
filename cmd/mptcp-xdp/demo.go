package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/internal/demo"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/exporter"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

func newDemoCmd(g *globalFlags) *cobra.Command {
	var (
		duration time.Duration
		rates    []int
		conns    int
		mode     string
		ingress  string
		keep     bool
		listen   string
		lbDemo   bool
		forward  string
		balancer int
		static   bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a self-contained lab: two namespaces, two paths, real MPTCP traffic, live figures",
		Long: `Demo builds two network namespaces (client and server) joined by two veth paths shaped with
tbf to different rates, configures MPTCP endpoints and limits so the client opens a second subflow,
attaches the datapath to the server's interfaces, runs a real MPTCP transfer between Go programs
with live per-path throughput, then prints the datapath counters beside the server kernel's own
MPTcpExt counters. Everything it creates is removed at the end, on failure and on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if g.netns != "" {
				return fmt.Errorf("demo makes its own namespaces: --netns does not apply")
			}
			if err := loader.CheckPrivileges(true); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			var live io.Writer = cmd.OutOrStdout()
			if g.output == "json" {
				live = cmd.ErrOrStderr()
			}
			// finish renders a lab's result (the figures went to live already).
			finish := func(res any, err error) error {
				if err != nil {
					if ctx.Err() != nil {
						return fmt.Errorf("interrupted; lab removed")
					}
					return err
				}
				if g.output == "json" {
					return render(cmd, g, res, nil)
				}
				return nil
			}
			if balancer != 1 && !lbDemo {
				return fmt.Errorf("--balancers needs --lb")
			}
			if lbDemo && balancer > 1 {
				bin, err := os.Executable()
				if err != nil {
					return err
				}
				n := conns
				if !cmd.Flags().Changed("conns") {
					n = 0
				}
				fwd := forward
				if !cmd.Flags().Changed("forward") {
					fwd = "ipip"
				}
				res, err := demo.RunFleet(ctx, demo.FleetOptions{Balancers: balancer, Conns: n, Forward: fwd, Binary: bin, Static: static}, live)
				return finish(res, err)
			}
			if balancer < 1 {
				return fmt.Errorf("--balancers %d: give 1 or more", balancer)
			}
			if lbDemo {
				res, err := demo.RunLB(ctx, demo.LBOptions{Conns: conns, Forward: forward, Mode: loader.XDPMode(mode), Root: bpffsRoot}, live)
				return finish(res, err)
			}
			res, err := demo.Run(ctx, demo.Options{
				Duration: duration, RatesMbit: rates, Conns: conns,
				Mode: loader.XDPMode(mode), Ingress: loader.IngressHook(ingress), Root: bpffsRoot,
				Keep: keep,
				Serve: func(ctx context.Context, namespaces []string) error {
					fmt.Fprintf(live, "metrics of the lab on http://%s/metrics (mptcp-xdp serve); point Prometheus at it\n", listen)
					return runServe(ctx, cmd.ErrOrStderr(), serveOptions{
						listen: listen, netns: namespaces, maxSubflowSeries: exporter.DefaultMaxSubflowSeries, logLevel: "warn",
					})
				},
			}, live)
			return finish(res, err)
		},
	}
	cmd.Flags().DurationVar(&duration, "duration", 5*time.Second, "how long to send")
	cmd.Flags().IntSliceVar(&rates, "rates", []int{200, 50}, "tbf rate of each path in Mbit/s (one per path, at least two)")
	cmd.Flags().IntVar(&conns, "conns", 1, "parallel MPTCP connections")
	cmd.Flags().StringVar(&mode, "mode", "auto", "XDP mode: auto, native or generic")
	cmd.Flags().StringVar(&ingress, "ingress", "auto", "ingress hook: auto (as attach: tc on the lab's veths), xdp or tc")
	cmd.Flags().BoolVar(&lbDemo, "lb", false, "the load-balancer lab instead: a client with two paths, the balancer, three backends; the same MPTCP connections with join steering off, then on (--conns per phase, default 60)")
	cmd.Flags().StringVar(&forward, "forward", "l2", "with --lb: l2 or ipip forwarding (with --balancers: ipip unless given)")
	cmd.Flags().IntVar(&balancer, "balancers", 1, "with --lb: balancer instances behind a router's ECMP (the fleet lab: BGP from BIRD when installed, token steering then join ports; --conns per phase, default 60)")
	cmd.Flags().BoolVar(&static, "static-routes", false, "with --balancers: the router's ECMP route is static, no BGP")
	cmd.Flags().BoolVar(&keep, "keep", false, "after the summary, keep the lab and traffic running and serve its metrics until Ctrl-C")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:9464", "with --keep: where to serve /metrics")
	return cmd
}
