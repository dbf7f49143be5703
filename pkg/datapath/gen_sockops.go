package datapath

// The subflow history (bpf/sockops.c), a sock_ops program, is built against bpf/include/vmlinux.h
// (CO-RE) like the socket iterator, with which it shares bpf/include/mx_tcpinfo.h.

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type mx_sf_hist -type mx_hist_cfg -type mx_subflow_rec SockOps ../../bpf/sockops.c
