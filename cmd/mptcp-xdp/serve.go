package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/exporter-toolkit/web"
	"github.com/spf13/cobra"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/exporter"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// serveOptions are the flags of `serve`.
type serveOptions struct {
	listen           string
	webConfig        string
	healthListen     string
	netns            []string
	maxSubflowSeries int
	tokenLabel       bool
	logLevel         string
	bpffsRoot        string
}

func newServeCmd(_ *globalFlags) *cobra.Command {
	o := serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve Prometheus metrics: datapath counters, kernel MPTcpExt counters, connections and subflows",
		Long: `Serve runs until SIGTERM or SIGINT and serves /metrics (and a landing page on /). Everything is
read when Prometheus scrapes: the counters of every interface the datapath is attached to, the
MPTcpExt counters and the MPTCP connections and subflows (with their tcp_info) of each --netns
namespace (default: serve's own). Per-subflow series are limited to the --max-subflow-series largest
subflows by bytes; histograms and totals always cover every subflow. TLS and basic authentication
come from --web.config.file (the Prometheus exporter-toolkit format); --health-listen serves
/healthz for probes on an address of its own, plain HTTP: 200 while the pin directories are live,
503 otherwise. Every pinned map is opened read-only. docs/metrics.md lists every metric.`,
		Example: "  mptcp-xdp serve\n  mptcp-xdp serve --listen :9464 --web.config.file /etc/mptcp-xdp/web.yml\n  mptcp-xdp serve --netns blue --netns red --max-subflow-series 500",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, cmd.ErrOrStderr(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:9464", "address to serve on (host:port; port 0 picks one, logged at start)")
	f.StringVar(&o.webConfig, "web.config.file", "", "exporter-toolkit web config file enabling TLS and/or basic authentication")
	f.StringVar(&o.healthListen, "health-listen", "", "also serve "+exporter.HealthPath+" on this address, plain HTTP without --web.config.file's TLS or authentication, for liveness and readiness probes (host:port; it serves no metric); default off")
	// Shadows the global --netns: serve reads several namespaces at once.
	f.StringArrayVar(&o.netns, "netns", nil, "network namespace (an 'ip netns' name) whose MPTcpExt counters and subflows to export; repeat for several; default serve's own")
	f.IntVar(&o.maxSubflowSeries, "max-subflow-series", exporter.DefaultMaxSubflowSeries, "most subflows with per-subflow series (largest by bytes first; the rest are counted in mptcp_xdp_subflow_series_omitted); 0 for none")
	f.BoolVar(&o.tokenLabel, "token-label", false, "add the token label (each connection's MPTCP token, what an MP_JOIN names) to the per-connection and per-subflow series; they are told apart by the connection label without it")
	f.StringVar(&o.logLevel, "log.level", "info", "log level: debug, info, warn or error")
	f.StringVar(&o.bpffsRoot, "bpffs-root", "", "bpffs directory of the datapath's pins (default that of attach)")
	_ = f.MarkHidden("bpffs-root") // for tests; operators keep the default
	_ = cmd.RegisterFlagCompletionFunc("log.level", fixedCompletion([]string{"debug", "info", "warn", "error"}))
	_ = cmd.RegisterFlagCompletionFunc("netns", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return netnsNames(), cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}

// runServe serves metrics until ctx is done (serve, and demo --keep).
func runServe(ctx context.Context, logOut io.Writer, o serveOptions) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log.level %q: want debug, info, warn or error", o.logLevel)
	}
	logger := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: level}))
	if err := web.Validate(o.webConfig); err != nil {
		return fmt.Errorf("web config %s: %w", o.webConfig, err)
	}
	for _, n := range o.netns {
		if err := netns.Validate(n); err != nil {
			return err
		}
		if !netns.Exists(n) {
			logger.Warn("network namespace does not exist yet: its sources fail until it does", "netns", n)
		}
	}
	root := o.bpffsRoot
	if root == "" {
		root = bpffsRoot
	}

	// The socket iterator, loaded once. Without it the datapath and kernel counters still work and
	// every scrape reports the subflow source down.
	var reader exporter.SubflowReader
	if sr, err := stats.NewReader(); err != nil {
		logger.Warn("subflows will not be exported", "err", err)
		reader = failedReader{err}
	} else {
		defer sr.Close()
		reader = sr
	}

	exp, err := exporter.New(exporter.Config{
		Root: root, Netns: o.netns, Subflows: reader, MaxSubflowSeries: o.maxSubflowSeries,
		TokenLabel: o.tokenLabel,
		Version:    version, Logger: logger,
	})
	if err != nil {
		return err
	}
	reg, err := exporter.Registry(exp)
	if err != nil {
		return err
	}
	handler, err := exporter.Handler(reg, version, logger)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", o.listen, err)
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	var health *http.Server
	if o.healthListen != "" {
		hln, err := net.Listen("tcp", o.healthListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen on %s (--health-listen): %w", o.healthListen, err)
		}
		l := &loader.Loader{Root: root}
		health = &http.Server{Handler: exporter.HealthHandler(l.Root, l.LBRoot(), l.HistoryRoot()),
			ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second}
		logger.Info("serving health", "address", hln.Addr().String(), "path", exporter.HealthPath)
		go func() {
			if err := health.Serve(hln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve health on %s: %w", hln.Addr(), err)
			}
		}()
	}
	logger.Info("serving metrics", "address", ln.Addr().String(), "path", exporter.MetricsPath,
		"netns", exp.Namespaces(), "max_subflow_series", o.maxSubflowSeries, "version", version)
	served := make(chan error, 1)
	go func() {
		noSystemd := false
		err := web.Serve(ln, srv, &web.FlagConfig{
			WebListenAddresses: &[]string{o.listen}, WebSystemdSocket: &noSystemd, WebConfigFile: &o.webConfig,
		}, logger)
		served <- err
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve on %s: %w", ln.Addr(), err)
		}
	}()
	select {
	case err := <-errc:
		if health != nil {
			health.Close()
		}
		srv.Close()
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if health != nil {
		if err := health.Shutdown(sctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down health: %w", err))
		}
	}
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("shut down: %w", err))
	} else if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("serve on %s: %w", ln.Addr(), err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// netnsNames lists the named network namespaces, for completion.
func netnsNames() []string {
	ents, err := os.ReadDir(netns.Dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// failedReader stands for a subflow reader that could not be made.
type failedReader struct{ err error }

func (f failedReader) Subflows(string) ([]stats.Subflow, error) { return nil, f.err }
