package datapath

// The load balancer (bpf/lb_xdp.c) and the backends' decapsulator (bpf/lb_decap.c). Built for BPF
// ISA v3 (32-bit ALU, JMP32: kernel 5.1+; the programs need 5.8+ for the ring buffer anyway), which
// keeps the in-datapath SHA-256 about half as long as v1 would. pkg/lb wraps both.

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type lb_vip_key -type lb_vip -type lb_backend -type lb_flow_key -type lb_flow_id -type lb_flow -type lb_token_key -type lb_token -type lb_stats -type lb_vip_stats -type lb_backend_stats -type lb_event -type lb_guard -type lb_phint Lb ../../bpf/lb_xdp.c
//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type lb_decap_stats -type lb_dc_addr_flags -type lb_vip_key LbDecap ../../bpf/lb_decap.c
