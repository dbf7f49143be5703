package exporter

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// The metrics. docs/metrics.md documents each; a test keeps the two in step.

func name(n string) string { return Namespace + "_" + n }

// Label names.
const (
	lNetns      = "netns"
	lInterface  = "interface"
	lDirection  = "direction"
	lKind       = "kind"
	lClass      = "class"
	lCounter    = "counter"
	lToken      = "token"
	lConnection = "connection"
	lSubflow    = "subflow"
	lSource     = "source"
	lVIPID      = "vip_id"
	lBackend    = "backend"
	lBackendID  = "backend_id"
	lOutcome    = "outcome"
	lReason     = "reason"
	lState      = "state"
	lTable      = "table"
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

	// The per-connection and per-subflow descriptors (capped) are in connDescs: with or without
	// the token label.
)

// Load balancer (every balancer pinned under the loader's LB root).
var (
	vipLabels     = []string{lNetns, lVIPID}
	backendLabels = []string{lNetns, lBackend, lBackendID}

	descLBCounter = prometheus.NewDesc(name("lb_datapath_total"),
		"The balancer datapath's global counters (`mptcp-xdp lb status` stats), one series per counter, named as lb status names them.",
		[]string{lNetns, lCounter}, nil)
	descLBTableEntries = prometheus.NewDesc(name("lb_table_entries"),
		"Entries in one of the balancer's tables: vips, backends (active or draining), flows, tokens.",
		[]string{lNetns, lTable}, nil)
	descLBTableCapacity = prometheus.NewDesc(name("lb_table_capacity"),
		"Capacity of one of the balancer's tables (its map's max entries); flows and tokens are LRU maps that evict their oldest entry when full.",
		[]string{lNetns, lTable}, nil)

	descLBVIPInfo = prometheus.NewDesc(name("lb_vip_info"),
		"A VIP of the balancer: always 1; its id (shared by VIPs that share a Maglev table and tokens), forwarding mode, unknown-join policy and join steering in labels.",
		[]string{lNetns, lVIPID, "vip", "forward", "unknown_join", "join_steering"}, nil)
	descLBVIPPackets      = prometheus.NewDesc(name("lb_vip_packets_total"), "Frames to the VIPs of a VIP id.", vipLabels, nil)
	descLBVIPNewFlows     = prometheus.NewDesc(name("lb_vip_new_flows_total"), "New flows (connections, and the first packets of flows the table does not know) placed by Maglev for a VIP id.", vipLabels, nil)
	descLBVIPGuarded      = prometheus.NewDesc(name("lb_vip_guarded_flows_total"), "New flows of a VIP id over the new-flow rate guard's limit: forwarded by Maglev, not stored in the flow table.", vipLabels, nil)
	descLBVIPLearned      = prometheus.NewDesc(name("lb_vip_tokens_learned_total"), "MPTCP server tokens learned for a VIP id's connections.", vipLabels, nil)
	descLBVIPSteered      = prometheus.NewDesc(name("lb_vip_joins_steered_total"), "MP_JOIN SYNs to a VIP id steered by token to the backend holding their connection.", vipLabels, nil)
	descLBVIPUnknown      = prometheus.NewDesc(name("lb_vip_unknown_joins_total"), "MP_JOIN SYNs to a VIP id whose token no usable backend holds, by what the VIP's policy did: drop, hash (placed by Maglev) or pass (to the balancer's stack).", append(append([]string{}, vipLabels...), lOutcome), nil)
	descLBVIPCollisions   = prometheus.NewDesc(name("lb_vip_token_collisions_total"), "Tokens of a VIP id's new connections already held by another backend's live connection (the newcomer runs on one subflow).", vipLabels, nil)
	descLBVIPTakeovers    = prometheus.NewDesc(name("lb_vip_token_takeovers_total"), "Idle token mappings of a VIP id taken over by another backend's new connection.", vipLabels, nil)
	descLBVIPPassed       = prometheus.NewDesc(name("lb_vip_passed_packets_total"), "Frames to a VIP id passed to the balancer's stack instead of forwarded, by reason: no_backend, mtu (ipip: too long once encapsulated), fwd_error.", append(append([]string{}, vipLabels...), lReason), nil)
	descLBBackendState    = prometheus.NewDesc(name("lb_backend_state"), "State of a backend: 1 on its current state (active: takes new connections; draining: only its existing flows and their joins), 0 on the other.", append(append([]string{}, backendLabels...), lState), nil)
	descLBBackendFlows    = prometheus.NewDesc(name("lb_backend_flows"), "Flow table entries that point at a backend.", backendLabels, nil)
	descLBBackendTokens   = prometheus.NewDesc(name("lb_backend_tokens"), "Token table entries that point at a backend.", backendLabels, nil)
	descLBBackendNewFlows = prometheus.NewDesc(name("lb_backend_new_flows_total"), "New flows placed on a backend by Maglev.", backendLabels, nil)
	descLBBackendLearned  = prometheus.NewDesc(name("lb_backend_tokens_learned_total"), "MPTCP server tokens learned for a backend's connections.", backendLabels, nil)
	descLBBackendSteered  = prometheus.NewDesc(name("lb_backend_joins_steered_total"), "MP_JOIN SYNs steered to a backend by token.", backendLabels, nil)
	descLBBackendHashed   = prometheus.NewDesc(name("lb_backend_unknown_joins_hashed_total"), "Unknown-token MP_JOIN SYNs placed on a backend by Maglev (unknown-join policy hash).", backendLabels, nil)
	descLBBackendColl     = prometheus.NewDesc(name("lb_backend_token_collisions_total"), "New connections of a backend whose token another backend's live connection held.", backendLabels, nil)
	descLBBackendTakeover = prometheus.NewDesc(name("lb_backend_token_takeovers_total"), "Idle token mappings of another backend that a backend's new connection took over.", backendLabels, nil)
	descLBBackendFwd      = prometheus.NewDesc(name("lb_backend_forwarded_packets_total"), "Frames forwarded to a backend (l2 or ipip).", backendLabels, nil)
	descLBBackendPassed   = prometheus.NewDesc(name("lb_backend_passed_packets_total"), "Frames for a backend passed to the balancer's stack instead, by reason: mtu (ipip: too long once encapsulated), fwd_error.", append(append([]string{}, backendLabels...), lReason), nil)
	descLBBackendHealthy  = prometheus.NewDesc(name("lb_backend_healthy"), "Health of a backend for a VIP id that checks it (lb run --config health_check): 1 up, 0 down (out of that VIP's Maglev table; its connections still reach it). No series for a pair not checked.", append(append([]string{}, backendLabels...), lVIPID), nil)
)

// allDescs lists every descriptor, the per-connection and per-subflow ones with the token label
// (every label a metric can have), for the documentation test.
func allDescs() []*prometheus.Desc { return descList(tokenDescs) }

// descList lists every descriptor, with those of c for connections and subflows.
func descList(c *connDescs) []*prometheus.Desc {
	return append([]*prometheus.Desc{
		descBuildInfo, descScrapeUp, descScrapeErrors, descScrapeDuration,
		descAttachInfo, descAttachProblems, descPackets, descOptions,
		descMPTCPExt, descMPCurrEstab,
		descConnections, descSubflows, descSRTTHist, descSubflowsPerConn, descSubflowOmitted, descConnOmitted,
		descLBCounter, descLBTableEntries, descLBTableCapacity,
		descLBVIPInfo, descLBVIPPackets, descLBVIPNewFlows, descLBVIPGuarded, descLBVIPLearned, descLBVIPSteered, descLBVIPUnknown,
		descLBVIPCollisions, descLBVIPTakeovers, descLBVIPPassed,
		descLBBackendState, descLBBackendFlows, descLBBackendTokens, descLBBackendNewFlows, descLBBackendLearned,
		descLBBackendSteered, descLBBackendHashed, descLBBackendColl, descLBBackendTakeover, descLBBackendFwd,
		descLBBackendPassed, descLBBackendHealthy,
	}, c.list()...)
}

// connDescs are the per-connection and per-subflow descriptors (capped). A connection is
// identified by its connection label (an opaque id, Exporter.connID) and, with Config.TokenLabel,
// also by its MPTCP token; a subflow by its connection and its subflow label.
type connDescs struct {
	connSubflows, connSent, connRecv, connRetrans                             *prometheus.Desc
	sfInfo, sfSRTT, sfCwnd, sfSent, sfRecv, sfRetransB, sfRetransSeg, sfDeliv *prometheus.Desc
}

var (
	plainDescs = newConnDescs(false)
	tokenDescs = newConnDescs(true)
)

func newConnDescs(token bool) *connDescs {
	conn := []string{lNetns, lConnection}
	if token {
		conn = append(conn, lToken)
	}
	sf := append(slices.Clone(conn), lSubflow)
	d := func(n, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(name(n), help, labels, nil)
	}
	return &connDescs{
		connSubflows: d("connection_subflows", "Live subflows of a connection.", conn),
		connSent:     d("connection_sent_bytes_total", "Bytes a connection sent, retransmissions included, summed over its subflows, closed ones included when known (never decreases while the connection lives).", conn),
		connRecv:     d("connection_received_bytes_total", "Bytes a connection received, summed over its subflows, closed ones included when known.", conn),
		connRetrans:  d("connection_retransmitted_bytes_total", "Bytes a connection retransmitted, summed over its subflows, closed ones included when known.", conn),
		sfInfo: d("subflow_info", "A live subflow with per-subflow series: always 1; address ids, addresses, role (initial or join) and backup flag in labels.",
			append(slices.Clone(sf), "local_id", "remote_id", "local", "remote", "role", "backup")),
		sfSRTT:       d("subflow_srtt_seconds", "Smoothed round-trip time of a subflow (tcpi_rtt).", sf),
		sfCwnd:       d("subflow_cwnd_segments", "Congestion window of a subflow, in segments.", sf),
		sfSent:       d("subflow_sent_bytes_total", "Bytes a subflow sent, retransmissions included (tcpi_bytes_sent).", sf),
		sfRecv:       d("subflow_received_bytes_total", "Bytes a subflow received (tcpi_bytes_received).", sf),
		sfRetransB:   d("subflow_retransmitted_bytes_total", "Bytes a subflow retransmitted (tcpi_bytes_retrans).", sf),
		sfRetransSeg: d("subflow_retransmitted_segments_total", "Segments a subflow retransmitted over its life (tcpi_total_retrans).", sf),
		sfDeliv:      d("subflow_delivery_rate_bytes_per_second", "Delivery rate of a subflow's last sample (tcpi_delivery_rate); 0 before the first.", sf),
	}
}

func (c *connDescs) list() []*prometheus.Desc {
	return []*prometheus.Desc{c.connSubflows, c.connSent, c.connRecv, c.connRetrans,
		c.sfInfo, c.sfSRTT, c.sfCwnd, c.sfSent, c.sfRecv, c.sfRetransB, c.sfRetransSeg, c.sfDeliv}
}

// Histogram buckets.
var (
	// SRTTBuckets span 50 µs (a LAN or veth) to 5 s (a satellite link under load).
	SRTTBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
	// SubflowsPerConnBuckets cover the kernel's limit of 8 subflows per connection.
	SubflowsPerConnBuckets = []float64{1, 2, 3, 4, 5, 6, 7, 8}
)
