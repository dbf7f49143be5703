/* mx_iter.h — kernel constants the socket iterator and the history need that vmlinux.h (BTF) cannot
 * carry: macros. (TCP states are an enum in the kernel: vmlinux.h has them, TCP_CLOSE and so on.) */
#pragma once

#define MX_AF_INET 2
#define MX_AF_INET6 10

#define MX_USEC_PER_SEC 1000000ULL
