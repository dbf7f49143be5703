// Package lb is the Go side of the MPTCP-aware load balancer's datapath (bpf/lb_xdp.c) and of the
// decapsulator its ipip-mode backends run (bpf/lb_decap.c): loading the objects, and typed views of
// their maps — VIPs, backends, Maglev rings, flows, tokens, per-CPU stats, ring-buffer events —
// converted to domain types (netip, net.HardwareAddr, time.Duration) at this edge. The control plane
// (pkg/control) owns attaching, policy, Maglev table construction and garbage collection.
//
// Needs Linux 5.8 (BPF ring buffer; the objects are built for BPF ISA v3) and root (CAP_BPF,
// CAP_NET_ADMIN). Times in the maps are CLOCK_MONOTONIC: the datapath reads bpf_ktime_get_ns once
// per CPU per timer tick, so its stamps lag the clock by less than a tick and are never ahead of
// it; Monotonic reads the clock for the control plane's stamps and comparisons (a control-plane
// stamp up to a tick ahead of the datapath's clock is age 0 to the datapath).
package lb
