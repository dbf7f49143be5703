// Package stats reads every MPTCP connection of a network namespace with its subflows and their
// tcp_info figures, from the kernel's sockets, with a BPF socket iterator (bpf/iter_tcp.c). It is
// the single source of these figures for the CLI (`conn`, `subflow`) and the Prometheus exporter.
//
// A [Reader] loads the iterator program once; each [Reader.Subflows] or [Reader.Connections] call
// opens the iterator inside the asked network namespace (the kernel walks the TCP sockets of the
// namespace of whoever opens it) and decodes one fixed record per subflow into [Subflow]. [Group]
// gathers subflows into [Connection]s by MPTCP connection (token); it also takes subflows that are
// no longer in the kernel (Closed, with their final counters, as a sock_ops program can keep them),
// so a connection's totals never go backwards when one of its subflows goes away.
//
// What is read: full TCP sockets that are MPTCP subflows and not listening. Request sockets,
// TIME_WAIT sockets, plain TCP and listeners are skipped; the MPTCP-level socket is in no TCP hash
// table and is seen only through its subflows (its token, state and cookie). MPTCP keys are never
// read.
//
// Kernel: Linux 5.12 (BPF iterators over TCP sockets came in 5.9, bpf_get_socket_cookie in them in
// 5.12), with BTF (CONFIG_DEBUG_INFO_BTF) and MPTCP. Each missing piece is reported as a
// [loader.FeatureError] naming the kernel that has it. The subflow id needs 6.8 (0 before).
// bpf_skc_to_mptcp_sock (5.19) is not used: it takes only non-BTF socket pointers, which
// iterators do not have; the program follows the subflow context's conn pointer instead, as the
// helper does. Reading needs CAP_BPF and
// CAP_PERFMON (or CAP_SYS_ADMIN), and CAP_SYS_ADMIN to enter another network namespace.
package stats
