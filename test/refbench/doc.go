// Package refbench measures mptcp-xdp's balancer (bpf/lb_xdp.c) against a reference XDP L4
// balancer written for the comparison (bpf/ref_lb.c: parse, VIP, LRU flow table, consistent-hash
// ring on a SYN, MAC rewrite or IP-in-IP, XDP_TX), on the same frames, sent as real frames through
// a veth pair with both programs in native XDP mode; a sink program on the sender's end counts
// what comes back per backend (BenchmarkVsReference). BenchmarkLBThroughputSwap compares their
// forwarding throughput in the balancer lab (internal/lablb) with real MPTCP connections, the two
// programs swapped in place on the balancer's interfaces. Nothing here is part of the mptcp-xdp
// binary. Needs root, Linux 5.9+ (XDP links) and native XDP on veth.
package refbench
