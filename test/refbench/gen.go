package refbench

// The reference balancer and the sink (bpf/ref_lb.c), built with the flags of pkg/datapath's
// balancer (BPF ISA v3).

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type rb_vip_key -type rb_vip -type rb_backend -type rb_flow_key -type rb_sink_key Ref bpf/ref_lb.c
