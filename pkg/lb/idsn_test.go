package lb

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// The server's initial data sequence number (RFC 8684 §3.1: the low 64 bits of SHA-256(key),
// digest bytes 24-31) of a known key, learned through a real handshake, appears in no pinned map
// of the balancer: not in the token table, not in the flow tables, not in any other pinned map,
// in neither byte order, not even 4 bytes of it. The token table's key hash (digest bytes 4-11)
// is found there, so the scan does see digest bytes where the datapath stores them.
func TestNoPinnedMapHoldsIDSN(t *testing.T) {
	const key = 0x0123456789abcdef
	// SHA-256 of the key's 8 big-endian bytes, computed once outside Go and checked here.
	const digest = "55c53f5d490297900cefa825d0c8e8e9532ee8a118abe7d8570762cd38be9818"
	var kb [8]byte
	binary.BigEndian.PutUint64(kb[:], key)
	d := sha256.Sum256(kb[:])
	if hex.EncodeToString(d[:]) != digest {
		t.Fatalf("SHA-256(%016x) = %x, want %s", uint64(key), d, digest)
	}
	idsn, keyHash := d[24:32], d[4:12]

	dir, err := os.MkdirTemp("/sys/fs/bpf", "mxh4-idsn-")
	if err != nil {
		t.Fatalf("bpffs directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testConfig
	cfg.PinPath, cfg.MaxVIPs = dir, 1 // one VIP's ring to scan
	b := loadBalancer(t, cfg)
	balancer(t) // the shared fixture finds loIfindex, the backends' interface in setup
	ring := setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)

	// A connection as a client opens it: SYN, then the third ACK and the first data carrying the
	// server's key, then a join that the learned token steers.
	s := segment{src: netip.MustParseAddrPort("192.0.2.77:40123"), dst: vip4}
	owner := ring[FlowHash(s.key(), DefaultHashSeed)%RingSize]
	if ret, _ := run(t, b.Program, segment{src: s.src, dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}.frame(t)); ret != xdpTX {
		t.Fatalf("SYN: verdict %d", ret)
	}
	learn(t, b, s, key)
	data := segment{src: s.src, dst: vip4, ack: true, payload: []byte("x"),
		opts: []layers.TCPOption{nop, nop, optMPCapableData(0x1122334455667788, key, 1)}}
	if ret, _ := run(t, b.Program, data.frame(t)); ret != xdpTX {
		t.Fatalf("MP_CAPABLE with data: verdict %d", ret)
	}
	token := binary.BigEndian.Uint32(d[0:4])
	join := segment{src: netip.MustParseAddrPort("192.0.2.78:40999"), dst: vip4, syn: true, opts: []layers.TCPOption{optJoinSYN(token, 5)}}
	expectL2(t, b, join, owner)
	if tk, ok, err := b.LookupToken(0, token); err != nil || !ok || tk.Backend != owner {
		t.Fatalf("token %08x: %+v ok %v err %v, want learned for backend %d", token, tk, ok, err, owner)
	}

	// Every 4-byte window of the IDSN, in both byte orders.
	var needles [][]byte
	for _, v := range [][]byte{idsn, reversed(idsn)} {
		for i := 0; i+4 <= len(v); i++ {
			needles = append(needles, v[i:i+4])
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	scanned, keyHashSeen := 0, false
	for _, e := range ents {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open pinned %s: %v", e.Name(), err)
		}
		if mp.Type() == ebpf.RingBuf {
			mp.Close()
			continue // events: type, token, backends, 5-tuple and time (struct lb_event), no key material
		}
		for _, raw := range rawEntries(t, mp) {
			scanned++
			for _, n := range needles {
				if bytes.Contains(raw, n) {
					t.Errorf("pinned map %s holds IDSN bytes % x in entry % x", e.Name(), n, raw)
				}
			}
			if e.Name() == MapTokens && (bytes.Contains(raw, keyHash) || bytes.Contains(raw, reversed(keyHash))) {
				keyHashSeen = true
			}
		}
		mp.Close()
	}
	if !keyHashSeen {
		t.Errorf("the token table's entries hold no key hash (digest bytes 4-11, % x): the scan sees nothing", keyHash)
	}
	t.Logf("%d pinned maps, %d entries scanned", len(ents), scanned)
}

// rawEntries reads every entry of mp as its key's bytes followed by its value's (every CPU's
// value, for a per-CPU map).
func rawEntries(t *testing.T, mp *ebpf.Map) [][]byte {
	t.Helper()
	var out [][]byte
	perCPU := mp.Type() == ebpf.PerCPUArray || mp.Type() == ebpf.PerCPUHash || mp.Type() == ebpf.LRUCPUHash
	k := make([]byte, mp.KeySize())
	if perCPU {
		var v [][]byte
		it := mp.Iterate()
		for it.Next(&k, &v) {
			out = append(out, append(slices.Clone(k), bytes.Join(v, nil)...))
		}
		if err := it.Err(); err != nil {
			t.Fatalf("read %v: %v", mp, err)
		}
		return out
	}
	v := make([]byte, mp.ValueSize())
	it := mp.Iterate()
	for it.Next(&k, &v) {
		out = append(out, append(slices.Clone(k), v...))
	}
	if err := it.Err(); err != nil {
		t.Fatalf("read %v: %v", mp, err)
	}
	return out
}

func reversed(b []byte) []byte {
	r := slices.Clone(b)
	slices.Reverse(r)
	return r
}
