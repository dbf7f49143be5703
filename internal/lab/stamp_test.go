package lab

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// stream builds n bytes as sendSource writes them: random data with the stream offset stamped at
// every 4 KiB.
func stream(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for off := 0; off+8 <= n; off += stampEvery {
		binary.BigEndian.PutUint64(b[off:], uint64(off))
	}
	return b
}

// feed checks s in reads of random sizes, as serveSink does.
func feed(s []byte) stampCheck {
	sc := stampCheck{firstBad: -1}
	r := rand.New(rand.NewPCG(5, 6))
	for at := 0; at < len(s); {
		k := min(1+r.IntN(3*stampEvery), len(s)-at)
		sc.check(s[at:at+k], uint64(at))
		at += k
	}
	return sc
}

func TestStampCheck(t *testing.T) {
	good := stream(64 * stampEvery)
	if sc := feed(good); sc.firstBad != -1 {
		t.Fatalf("intact stream: first bad stamp at %d (value %d)", sc.firstBad, sc.value)
	}
	// Bytes from 10 blocks later land 100 bytes into block 10: the first stamp they overwrite is
	// block 11's, and it carries the offset it was copied from, block 21's.
	bad := append([]byte(nil), good...)
	copy(bad[10*stampEvery+100:], good[20*stampEvery+100:22*stampEvery])
	sc := feed(bad)
	if sc.firstBad != 11*stampEvery || sc.value != 21*stampEvery {
		t.Fatalf("misplaced bytes: first bad stamp at %d value %d, want %d value %d", sc.firstBad, sc.value, 11*stampEvery, 21*stampEvery)
	}
	// Corruption between stamps is not seen by them (the checksum catches it).
	bad = append([]byte(nil), good...)
	bad[5*stampEvery+9] ^= 0xff
	if sc := feed(bad); sc.firstBad != -1 {
		t.Fatalf("a byte between stamps: first bad stamp at %d", sc.firstBad)
	}
}
