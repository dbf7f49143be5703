package datapath

// The socket iterator (bpf/iter_tcp.c) is built against bpf/include/vmlinux.h (CO-RE), unlike the
// counting programs in gen.go which use the system's UAPI headers.

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target bpfel -type mx_subflow_rec -type mx_sf_flags IterTcp ../../bpf/iter_tcp.c
