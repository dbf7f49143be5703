package datapath

// The programs are built with Debian's clang by `make generate`; the generated .go and .o files are
// committed so that `go build` and `go test` need no C toolchain.

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type mx_counters -type mx_meta -type mx_meta_flags Xdp ../../bpf/xdp_ingress.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel TcIngress ../../bpf/tc_ingress.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel TcEgress ../../bpf/tc_egress.c
