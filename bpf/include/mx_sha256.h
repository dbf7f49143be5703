/* mx_sha256.h — SHA-256 of one 64-bit MPTCP key (FIPS 180-4), for token derivation in the datapath.
 *
 * The message is always the key as 8 bytes big-endian, so it is always one 512-bit block: words 0-1
 * the key, word 2 the padding bit, words 3-14 zero, word 15 the length in bits (64). Every loop is
 * unrolled with constant bounds, so the round constants become immediates, the constant words of the
 * block fold away in the message schedule... in principle; clang 14 then spills past the 512-byte
 * stack. So: four passes of sixteen unrolled rounds, the schedule a ring of sixteen words at constant
 * indices, the round constants read from .rodata. net/mptcp/crypto.c: token = D[0:4], IDSN = D[24:32], both big-endian. */
#pragma once

#include <linux/types.h>

#define MX_ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

struct mx_sha256_digest {
	__u32 h[8]; /* the digest as eight big-endian words, in host order */
};

/* A global function: the verifier checks it once, not once per path that reaches a call. Include
 * this header in one compilation unit only. */
__noinline int mx_sha256_key(__u64 key, struct mx_sha256_digest *d)
{
	if (!d)
		return -1;
	static const __u32 k[64] = {
		0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
		0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
		0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
		0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
		0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
		0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
		0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
		0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
	};
	__u32 w[16];

	w[0] = (__u32)(key >> 32);
	w[1] = (__u32)key;
	w[2] = 0x80000000;
#pragma unroll
	for (int i = 3; i < 15; i++)
		w[i] = 0;
	w[15] = 64;

	__u32 a = 0x6a09e667, b = 0xbb67ae85, c = 0x3c6ef372, dd = 0xa54ff53a;
	__u32 e = 0x510e527f, f = 0x9b05688c, g = 0x1f83d9ab, h = 0x5be0cd19;

	/* Four passes of sixteen unrolled rounds: word j of the ring holds W[16r + j] in pass r. */
#pragma nounroll
	for (int r = 0; r < 4; r++) {
#pragma unroll
		for (int j = 0; j < 16; j++) {
			if (r > 0) {
				__u32 w15 = w[(j + 1) & 15], w2 = w[(j + 14) & 15];
				__u32 s0 = MX_ROR32(w15, 7) ^ MX_ROR32(w15, 18) ^ (w15 >> 3);
				__u32 s1 = MX_ROR32(w2, 17) ^ MX_ROR32(w2, 19) ^ (w2 >> 10);
				w[j] += s0 + w[(j + 9) & 15] + s1;
			}
			__u32 S1 = MX_ROR32(e, 6) ^ MX_ROR32(e, 11) ^ MX_ROR32(e, 25);
			__u32 ch = (e & f) ^ (~e & g);
			__u32 t1 = h + S1 + ch + k[(r * 16 + j) & 63] + w[j];
			__u32 S0 = MX_ROR32(a, 2) ^ MX_ROR32(a, 13) ^ MX_ROR32(a, 22);
			__u32 maj = (a & b) ^ (a & c) ^ (b & c);
			__u32 t2 = S0 + maj;
			h = g;
			g = f;
			f = e;
			e = dd + t1;
			dd = c;
			c = b;
			b = a;
			a = t1 + t2;
		}
	}

	d->h[0] = 0x6a09e667 + a;
	d->h[1] = 0xbb67ae85 + b;
	d->h[2] = 0x3c6ef372 + c;
	d->h[3] = 0xa54ff53a + dd;
	d->h[4] = 0x510e527f + e;
	d->h[5] = 0x9b05688c + f;
	d->h[6] = 0x1f83d9ab + g;
	d->h[7] = 0x5be0cd19 + h;
	return 0;
}
