package lb

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

const (
	testSeedA = "8f1c2a9d4b7e6035a1d2c3b4e5f60718"
	testSeedB = "0b5e3c7a91f2d846e0a1b2c3d4e5f6a7"
)

func mustSeed(t *testing.T, text string) HashSeed {
	t.Helper()
	s, err := ParseHashSeed([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseHashSeed(t *testing.T) {
	for _, c := range []struct {
		name, text string
		ok         bool
	}{
		{"32 hex digits", testSeedA, true},
		{"with a trailing newline", testSeedA + "\n", true},
		{"upper case, surrounded by blanks", "  " + strings.ToUpper(testSeedA) + " \r\n", true},
		{"empty", "", false},
		{"blank", " \n\t\n", false},
		{"31 digits", testSeedA[:31], false},
		{"33 digits", testSeedA + "0", false},
		{"64 digits", testSeedA + testSeedB, false},
		{"16 raw bytes", "0123456789abcdef", false},
		{"not hex", strings.Repeat("g", 32), false},
		{"two lines", testSeedA[:16] + "\n" + testSeedA[16:], false},
		{"all zero", strings.Repeat("0", 32), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := ParseHashSeed([]byte(c.text))
			if c.ok {
				want, _ := hex.DecodeString(strings.ToLower(strings.TrimSpace(c.text)))
				if err != nil || string(s[:]) != string(want) {
					t.Errorf("ParseHashSeed(%q) = %x, %v; want %x", c.text, s[:], err, want)
				}
				return
			}
			if !errors.Is(err, ErrBadHashSeed) {
				t.Errorf("ParseHashSeed(%q): %v, want an ErrBadHashSeed", c.text, err)
			}
		})
	}
}

// A seed file must exist, hold a seed, be a regular file (a link to one is followed), and not be
// readable by every user.
func TestReadHashSeedFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not the umask's
			t.Fatal(err)
		}
		return p
	}
	good := write("good", testSeedA+"\n", 0o600)
	if s, err := ReadHashSeedFile(good); err != nil || s != mustSeed(t, testSeedA) {
		t.Errorf("%s: %v", good, err)
	}
	if s, err := ReadHashSeedFile(write("group", testSeedA, 0o640)); err != nil || s != mustSeed(t, testSeedA) {
		t.Errorf("a group-readable file: %v", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadHashSeedFile(link); err != nil || s != mustSeed(t, testSeedA) {
		t.Errorf("a link to a seed file: %v", err)
	}
	for _, c := range []struct {
		name, path, want string
		is               error
	}{
		{"missing", filepath.Join(dir, "missing"), "no such file", fs.ErrNotExist},
		{"empty", write("empty", "", 0o600), "empty", ErrBadHashSeed},
		{"too short", write("short", testSeedA[:8]+"\n", 0o600), "8 characters, want 32 hexadecimal digits", ErrBadHashSeed},
		{"too long", write("long", testSeedA+testSeedA, 0o600), "64 characters", ErrBadHashSeed},
		{"world-readable", write("public", testSeedA, 0o644), "readable by every user", nil},
		{"a directory", dir, "not a regular file", nil},
	} {
		_, err := ReadHashSeedFile(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) && c.is != fs.ErrNotExist {
			t.Errorf("%s seed file: %v, want an error naming %s that says %q", c.name, err, c.path, c.want)
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%s seed file: %v, want errors.Is %v", c.name, err, c.is)
		}
		if err != nil && strings.Contains(err.Error(), testSeedA[:8]) {
			t.Errorf("%s seed file: the error %q shows the seed", c.name, err)
		}
	}
}

// No formatting or encoding writes a seed's bytes out.
func TestHashSeedNotPrinted(t *testing.T) {
	s := mustSeed(t, testSeedA)
	type holder struct{ Seed HashSeed }
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q"} {
		for _, v := range []any{s, holder{s}, &holder{s}} {
			out := fmt.Sprintf(f, v)
			if strings.Contains(strings.ToLower(out), testSeedA[:8]) || strings.Contains(out, "143 28 42") {
				t.Errorf("Sprintf(%q) shows the seed: %s", f, out)
			}
		}
	}
	if b, err := json.Marshal(holder{s}); err == nil {
		t.Errorf("json.Marshal wrote a seed: %s", b)
	}
	if s.Datapath() == DefaultHashSeed || s.Datapath() == mustSeed(t, testSeedB).Datapath() {
		t.Errorf("seeds A and B give datapath seeds %08x and %08x (default %08x)", s.Datapath(), mustSeed(t, testSeedB).Datapath(), DefaultHashSeed)
	}
}

// placements sends SYNs of n client 5-tuples through b and returns the backend each reached (by
// its MAC) with the 5-tuples.
func placements(t *testing.T, b *Balancer, n int) ([]FlowKey, []uint32) {
	t.Helper()
	r := rand.New(rand.NewPCG(97, 98))
	var keys []FlowKey
	var ids []uint32
	for range n {
		s := segment{src: clientAddr(r, vip4), dst: vip4, syn: true, opts: []layers.TCPOption{optMPCapableSYN()}}
		ret, out := run(t, b.Program, s.frame(t))
		if ret != xdpTX || out[0] != 0x02 || out[1] != 0xbe {
			t.Fatalf("SYN %s: verdict %d, frame to % x", s.src, ret, out[:6])
		}
		keys = append(keys, s.key())
		ids = append(ids, uint32(out[4])<<8|uint32(out[5]))
	}
	return keys, ids
}

// seededBalancer loads a balancer of its own configured with seed (0: none) in front of 8 backends.
func seededBalancer(t *testing.T, seed uint32) (*Balancer, []uint32) {
	t.Helper()
	cfg := testConfig
	cfg.HashSeed = seed
	b := loadBalancer(t, cfg)
	balancer(t) // the shared fixture finds loIfindex, the backends' interface in setup
	return b, setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 8)
}

// Balancers loaded from one seed file place every flow alike, a pure function of the seed and the
// packet; another seed places them differently; the published default seed is not what a
// configured balancer runs, and the running program says which seed it has.
func TestHashSeedPlacement(t *testing.T) {
	const n = 400
	dir := t.TempDir()
	file := filepath.Join(dir, "seed")
	if err := os.WriteFile(file, []byte(testSeedA+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	seedOf := func(path string) uint32 {
		s, err := ReadHashSeedFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return s.Datapath()
	}
	a1, ring := seededBalancer(t, seedOf(file))
	a2, _ := seededBalancer(t, seedOf(file))
	bb, _ := seededBalancer(t, mustSeed(t, testSeedB).Datapath())
	def, _ := seededBalancer(t, 0)

	keys, p1 := placements(t, a1, n)
	_, p2 := placements(t, a2, n)
	_, pb := placements(t, bb, n)
	_, pd := placements(t, def, n)
	same, diffB, diffDefault := 0, 0, 0
	for i, k := range keys {
		if p1[i] == p2[i] {
			same++
		}
		if p1[i] != pb[i] {
			diffB++
		}
		if p1[i] != pd[i] {
			diffDefault++
		}
		if want := ring[FlowHash(k, seedOf(file))%RingSize]; p1[i] != want {
			t.Errorf("%s: backend %d, want %d (the seed file's hash)", k.Src, p1[i], want)
		}
		if want := ring[FlowHash(k, DefaultHashSeed)%RingSize]; pd[i] != want {
			t.Errorf("%s: unconfigured balancer's backend %d, want %d (the default seed's hash)", k.Src, pd[i], want)
		}
	}
	t.Logf("%d flows over 8 backends: %d placed alike by two balancers of one seed file, %d differently by another seed, %d differently by the default seed", n, same, diffB, diffDefault)
	if same != n {
		t.Errorf("two balancers of one seed file placed %d of %d flows alike", same, n)
	}
	// 8 backends: another hash agrees on about 1 in 8.
	if diffB < n/2 || diffDefault < n/2 {
		t.Errorf("another seed placed %d of %d flows differently, the default seed %d: want most", diffB, n, diffDefault)
	}

	for _, c := range []struct {
		name string
		b    *Balancer
		want uint32
	}{{"seed file", a1, seedOf(file)}, {"seed B", bb, mustSeed(t, testSeedB).Datapath()}, {"no seed", def, DefaultHashSeed}} {
		got, err := ProgramHashSeed(c.b.Program)
		if err != nil || got != c.want {
			t.Errorf("%s: the program runs seed %08x (%v), want %08x", c.name, got, err, c.want)
		}
	}
	if got, _ := ProgramHashSeed(a1.Program); got == DefaultHashSeed {
		t.Error("a configured balancer runs the published default seed")
	}
}

// The seed of a configured balancer is in no pinned map (only in the program's .rodata, which is
// not pinned), so nothing that reads the pins (the exporter, lb status, map dump) can publish it.
func TestHashSeedNotPinned(t *testing.T) {
	seed := mustSeed(t, testSeedA).Datapath()
	dir, err := os.MkdirTemp("/sys/fs/bpf", "mxh4-seed-")
	if err != nil {
		t.Fatalf("bpffs directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := testConfig
	cfg.PinPath, cfg.MaxVIPs, cfg.HashSeed = dir, 1, seed
	b := loadBalancer(t, cfg)
	balancer(t) // the shared fixture finds loIfindex, the backends' interface in setup
	setup(t, b.Maps, vip4, 0, true, ForwardL2, JoinDrop, 3)
	placements(t, b, 50) // flows in the table, counters moved
	if got, err := ProgramHashSeed(b.Program); err != nil || got != seed {
		t.Fatalf("the program runs seed %08x (%v), want the configured one", got, err)
	}
	var le, be [4]byte
	binary.LittleEndian.PutUint32(le[:], seed)
	binary.BigEndian.PutUint32(be[:], seed)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(dir, e.Name()), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			t.Fatalf("open pinned %s: %v", e.Name(), err)
		}
		if mp.Type() != ebpf.RingBuf {
			for _, raw := range rawEntries(t, mp) {
				if bytes.Contains(raw, le[:]) || bytes.Contains(raw, be[:]) {
					t.Errorf("pinned map %s holds the hash seed in entry % x", e.Name(), raw)
				}
			}
		}
		mp.Close()
	}
}
