// Package lb is the Go side of the MPTCP-aware load balancer's datapath (bpf/lb_xdp.c) and of the
// decapsulator its ipip-mode backends run (bpf/lb_decap.c): loading the objects, and typed views of
// their maps — VIPs, backends, Maglev rings, flows, tokens, per-CPU stats, ring-buffer events —
// converted to domain types (netip, net.HardwareAddr, time.Duration) at this edge. The control plane
// (pkg/control) owns attaching, policy, Maglev table construction and garbage collection.
//
// Needs Linux 5.8 (BPF ring buffer; the objects are built for BPF ISA v3) and root (CAP_BPF,
// CAP_NET_ADMIN). Times in the maps are CLOCK_MONOTONIC (bpf_ktime_get_ns); Monotonic reads that
// clock for comparisons.
package lb
