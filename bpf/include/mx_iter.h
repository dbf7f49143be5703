/* mx_iter.h — kernel constants the socket iterator needs that vmlinux.h (BTF) cannot carry. */
#pragma once

#define MX_AF_INET 2
#define MX_AF_INET6 10

/* include/net/tcp_states.h */
#define MX_TCP_CLOSE 7
#define MX_TCP_LISTEN 10
#define MX_TCP_NEW_SYN_RECV 12

#define MX_USEC_PER_SEC 1000000ULL
