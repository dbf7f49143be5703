package exporter

import "github.com/prometheus/client_golang/prometheus"

// The metrics. docs/metrics.md documents each; a test keeps the two in step.

func name(n string) string { return Namespace + "_" + n }

// Label names.
const (
	lNetns     = "netns"
	lInterface = "interface"
	lDirection = "direction"
	lKind      = "kind"
	lClass     = "class"
	lCounter   = "counter"
	lToken     = "token"
	lSubflow   = "subflow"
	lSource    = "source"
)

var (
	descBuildInfo = prometheus.NewDesc(name("build_info"),
		"Build of the running mptcp-xdp: always 1; version, Go version and kernel release in labels.",
		[]string{"version", "goversion", "kernel"}, nil)

	descScrapeUp = prometheus.NewDesc(name("scrape_up"),
		"1 when the last read of a source (datapath, mptcpext, subflows) in a namespace succeeded, else 0 (its metrics are then missing or partial).",
		[]string{lSource, lNetns}, nil)
	descScrapeErrors = prometheus.NewDesc(name("scrape_errors_total"),
		"Failed reads of a source in a namespace since the exporter started.",
		[]string{lSource, lNetns}, nil)
	descScrapeDuration = prometheus.NewDesc(name("scrape_duration_seconds"),
		"Time the last read of a source in a namespace took.",
		[]string{lSource, lNetns}, nil)

	// Datapath.
	descAttachInfo = prometheus.NewDesc(name("datapath_attachment_info"),
		"An interface the datapath is attached to: always 1; ingress hook (xdp or tc), XDP mode (native, generic or empty) and whether egress is counted in labels.",
		[]string{lNetns, lInterface, "ingress", "xdp_mode", "egress"}, nil)
	descAttachProblems = prometheus.NewDesc(name("datapath_attachment_problems"),
		"Problems `mptcp-xdp status` reports for an attachment (a vanished interface or namespace, a defunct link); 0 when healthy.",
		[]string{lNetns, lInterface}, nil)
	descPackets = prometheus.NewDesc(name("datapath_packets_total"),
		"Frames the datapath saw on an interface and direction, by kind: total (every frame), tcp (TCP, non-first fragments excluded), mptcp (TCP carrying at least one MPTCP option).",
		[]string{lNetns, lInterface, lDirection, lKind}, nil)
	descOptions = prometheus.NewDesc(name("datapath_options_total"),
		"MPTCP options the datapath classified on an interface and direction, by class (docs/cli.md); malformed counts options it refused to trust.",
		[]string{lNetns, lInterface, lDirection, lClass}, nil)

	// Kernel MIB.
	descMPTCPExt = prometheus.NewDesc(name("kernel_mptcpext_total"),
		"The kernel's MPTcpExt counters (/proc/net/netstat) of a network namespace, one series per counter, named as the kernel names it (MPJoinSynRx, ...). MPCurrEstab, a gauge, is mptcp_xdp_kernel_mptcp_current_established instead.",
		[]string{lNetns, lCounter}, nil)
	descMPCurrEstab = prometheus.NewDesc(name("kernel_mptcp_current_established"),
		"MPTCP connections currently established in a network namespace, as the kernel counts them (MPTcpExt MPCurrEstab).",
		[]string{lNetns}, nil)

	// Connections and subflows: totals that cover everything.
	descConnections = prometheus.NewDesc(name("connections"),
		"MPTCP connections in a network namespace that have at least one live subflow.",
		[]string{lNetns}, nil)
	descSubflows = prometheus.NewDesc(name("subflows"),
		"Live MPTCP subflows in a network namespace, initial and joined.",
		[]string{lNetns}, nil)
	descSRTTHist = prometheus.NewDesc(name("srtt_seconds"),
		"Distribution of the smoothed round-trip time of every live subflow of a network namespace (never capped).",
		[]string{lNetns}, nil)
	descSubflowsPerConn = prometheus.NewDesc(name("subflows_per_connection"),
		"Distribution of the number of live subflows of every MPTCP connection of a network namespace (never capped).",
		[]string{lNetns}, nil)
	descSubflowOmitted = prometheus.NewDesc(name("subflow_series_omitted"),
		"Live subflows left without per-subflow series by --max-subflow-series (the largest by bytes are kept).",
		nil, nil)
	descConnOmitted = prometheus.NewDesc(name("connection_series_omitted"),
		"Connections left without per-connection series because none of their subflows kept per-subflow series.",
		nil, nil)

	// Per connection (capped).
	connLabels          = []string{lNetns, lToken}
	descConnSubflows    = prometheus.NewDesc(name("connection_subflows"), "Live subflows of a connection.", connLabels, nil)
	descConnSentBytes   = prometheus.NewDesc(name("connection_sent_bytes_total"), "Bytes a connection sent, retransmissions included, summed over its subflows, closed ones included when known (never decreases while the connection lives).", connLabels, nil)
	descConnRecvBytes   = prometheus.NewDesc(name("connection_received_bytes_total"), "Bytes a connection received, summed over its subflows, closed ones included when known.", connLabels, nil)
	descConnRetransByte = prometheus.NewDesc(name("connection_retransmitted_bytes_total"), "Bytes a connection retransmitted, summed over its subflows, closed ones included when known.", connLabels, nil)

	// Per subflow (capped).
	sfLabels        = []string{lNetns, lToken, lSubflow}
	descSubflowInfo = prometheus.NewDesc(name("subflow_info"),
		"A live subflow with per-subflow series: always 1; address ids, addresses, role (initial or join) and backup flag in labels.",
		append(append([]string{}, sfLabels...), "local_id", "remote_id", "local", "remote", "role", "backup"), nil)
	descSubflowSRTT       = prometheus.NewDesc(name("subflow_srtt_seconds"), "Smoothed round-trip time of a subflow (tcpi_rtt).", sfLabels, nil)
	descSubflowCwnd       = prometheus.NewDesc(name("subflow_cwnd_segments"), "Congestion window of a subflow, in segments.", sfLabels, nil)
	descSubflowSent       = prometheus.NewDesc(name("subflow_sent_bytes_total"), "Bytes a subflow sent, retransmissions included (tcpi_bytes_sent).", sfLabels, nil)
	descSubflowRecv       = prometheus.NewDesc(name("subflow_received_bytes_total"), "Bytes a subflow received (tcpi_bytes_received).", sfLabels, nil)
	descSubflowRetransB   = prometheus.NewDesc(name("subflow_retransmitted_bytes_total"), "Bytes a subflow retransmitted (tcpi_bytes_retrans).", sfLabels, nil)
	descSubflowRetransSeg = prometheus.NewDesc(name("subflow_retransmitted_segments_total"), "Segments a subflow retransmitted over its life (tcpi_total_retrans).", sfLabels, nil)
	descSubflowDelivery   = prometheus.NewDesc(name("subflow_delivery_rate_bytes_per_second"), "Delivery rate of a subflow's last sample (tcpi_delivery_rate); 0 before the first.", sfLabels, nil)
)

// allDescs lists every descriptor, for Describe and the documentation test.
func allDescs() []*prometheus.Desc {
	return []*prometheus.Desc{
		descBuildInfo, descScrapeUp, descScrapeErrors, descScrapeDuration,
		descAttachInfo, descAttachProblems, descPackets, descOptions,
		descMPTCPExt, descMPCurrEstab,
		descConnections, descSubflows, descSRTTHist, descSubflowsPerConn, descSubflowOmitted, descConnOmitted,
		descConnSubflows, descConnSentBytes, descConnRecvBytes, descConnRetransByte,
		descSubflowInfo, descSubflowSRTT, descSubflowCwnd, descSubflowSent, descSubflowRecv,
		descSubflowRetransB, descSubflowRetransSeg, descSubflowDelivery,
	}
}

// Histogram buckets.
var (
	// SRTTBuckets span 50 µs (a LAN or veth) to 5 s (a satellite link under load).
	SRTTBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// SubflowsPerConnBuckets cover the kernel's limit of 8 subflows per connection.
	SubflowsPerConnBuckets = []float64{1, 2, 3, 4, 5, 6, 7, 8}
)
