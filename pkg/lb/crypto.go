package lb

import (
	"crypto/sha256"
	"encoding/binary"
)

// ServerToken is what the datapath computes from a server's 64-bit MPTCP key
// (net/mptcp/crypto.c): D = SHA-256(key as 8 bytes big-endian), token = D[0:4] big-endian, and
// keyHash = D[4:12] big-endian, kept to tell a repeated key from a token collision (not D[24:32],
// the server's initial data sequence number, which the balancer does not store).
func ServerToken(key uint64) (token uint32, keyHash uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], key)
	d := sha256.Sum256(b[:])
	return binary.BigEndian.Uint32(d[0:4]), binary.BigEndian.Uint64(d[4:12])
}

// DefaultHashSeed is the datapath's 5-tuple hash seed unless Config.HashSeed sets another.
const DefaultHashSeed = 0x6d707463

// FlowHash is the datapath's 5-tuple hash (lb_flow_hash: Linux's jhash2 over the ten 32-bit words
// of struct lb_flow_key in host order). A new flow takes slot FlowHash % RingSize of its VIP's ring;
// IPv6 outer headers carry its low 20 bits as flow label.
func FlowHash(k FlowKey, seed uint32) uint32 {
	raw := marshalFlowKey(k)
	var w [10]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(raw[4*i:])
	}
	rol := func(x uint32, s uint) uint32 { return x<<s | x>>(32-s) }
	mix := func(a, b, c uint32) (uint32, uint32, uint32) {
		a -= c
		a ^= rol(c, 4)
		c += b
		b -= a
		b ^= rol(a, 6)
		a += c
		c -= b
		c ^= rol(b, 8)
		b += a
		a -= c
		a ^= rol(c, 16)
		c += b
		b -= a
		b ^= rol(a, 19)
		a += c
		c -= b
		c ^= rol(b, 4)
		b += a
		return a, b, c
	}
	a := uint32(0xdeadbeef) + 10<<2 + seed
	b, c := a, a
	for i := 0; i < 9; i += 3 {
		a += w[i]
		b += w[i+1]
		c += w[i+2]
		a, b, c = mix(a, b, c)
	}
	a += w[9]
	c ^= b
	c -= rol(b, 14)
	a ^= c
	a -= rol(c, 11)
	b ^= a
	b -= rol(a, 25)
	c ^= b
	c -= rol(b, 16)
	a ^= c
	a -= rol(c, 4)
	b ^= a
	b -= rol(a, 14)
	c ^= b
	c -= rol(b, 24)
	return c
}
