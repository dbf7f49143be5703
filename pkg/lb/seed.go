package lb

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// The secret of the 5-tuple hash. With the published DefaultHashSeed anyone can compute which
// backend Maglev gives a 5-tuple, so a client can choose its backend by choosing its source port.
// A balancer given a secret places flows by a hash nobody outside can compute; every balancer of a
// fleet given the same secret (and the same backends) places every flow alike.
//
// The datapath's hash (jhash, as Linux and Katran use) takes a 32-bit seed: the secret's 128 bits
// are reduced to it (HashSeed.Datapath). That stops a client from computing its backend from the
// source code; it does not stop a determined observer who learns which backend many chosen
// 5-tuples reach (or reads the outer flow labels of ipip over IPv6, the hash's low 20 bits) and
// searches the 2^32 seeds. docs/lb.md says so.

// HashSeedSize is the size of a hash seed secret: 16 bytes, 32 hexadecimal digits in a seed file.
const HashSeedSize = 16

// HashSeed is a balancer's secret hash seed. It prints as "HashSeed(secret)" and refuses to be
// marshalled, so that it reaches no log, status or metric by accident.
type HashSeed [HashSeedSize]byte

// ErrBadHashSeed is wrapped by every error about a seed file's contents.
var ErrBadHashSeed = errors.New("bad hash seed")

// ParseHashSeed parses the contents of a seed file: exactly 32 hexadecimal digits (for example
// `openssl rand -hex 16`), surrounding white space (a trailing newline) ignored. An all-zero seed is
// refused: it is no secret.
func ParseHashSeed(text []byte) (HashSeed, error) {
	var s HashSeed
	t := bytes.TrimSpace(text)
	switch {
	case len(t) == 0:
		return s, fmt.Errorf("%w: empty (want %d hexadecimal digits, for example from `openssl rand -hex %d`)", ErrBadHashSeed, 2*HashSeedSize, HashSeedSize)
	case len(t) != 2*HashSeedSize:
		return s, fmt.Errorf("%w: %d characters, want %d hexadecimal digits", ErrBadHashSeed, len(t), 2*HashSeedSize)
	}
	if _, err := hex.Decode(s[:], t); err != nil {
		return HashSeed{}, fmt.Errorf("%w: not %d hexadecimal digits", ErrBadHashSeed, 2*HashSeedSize)
	}
	if s == (HashSeed{}) {
		return s, fmt.Errorf("%w: all zero", ErrBadHashSeed)
	}
	return s, nil
}

// ReadHashSeedFile reads a seed file (ParseHashSeed). It must be a regular file (a symbolic link
// to one is followed) that other users cannot read: a file with the o+r permission bit is refused,
// since a user who reads it can choose their backend.
func ReadHashSeedFile(path string) (HashSeed, error) {
	f, err := os.Open(path)
	if err != nil {
		return HashSeed{}, fmt.Errorf("hash seed file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return HashSeed{}, fmt.Errorf("hash seed file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return HashSeed{}, fmt.Errorf("hash seed file %s: not a regular file", path)
	}
	if st.Mode().Perm()&0o004 != 0 {
		return HashSeed{}, fmt.Errorf("hash seed file %s: readable by every user (mode %04o): chmod o-r it (keep it a secret)", path, st.Mode().Perm())
	}
	// A seed file is a line: read no more than a page of it.
	text, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return HashSeed{}, fmt.Errorf("hash seed file: %w", err)
	}
	s, err := ParseHashSeed(text)
	if err != nil {
		return HashSeed{}, fmt.Errorf("hash seed file %s: %w", path, err)
	}
	return s, nil
}

// hashSeedLabel separates the datapath seed's derivation from any other use of the secret.
const hashSeedLabel = "mptcp-xdp lb 5-tuple hash seed v1\x00"

// Datapath is the 32-bit seed the datapath's hash takes (Config.HashSeed): the first 4 bytes of
// SHA-256(label || secret), big-endian; never 0, which Config reads as unset (a digest of 0 gives 1).
func (s HashSeed) Datapath() uint32 {
	h := sha256.New()
	h.Write([]byte(hashSeedLabel))
	h.Write(s[:])
	v := binary.BigEndian.Uint32(h.Sum(nil))
	if v == 0 {
		v = 1
	}
	return v
}

// String hides the secret.
func (HashSeed) String() string { return "HashSeed(secret)" }

// GoString hides the secret from %#v.
func (HashSeed) GoString() string { return "lb.HashSeed(secret)" }

// MarshalText refuses, so that no encoder (JSON, YAML, text) writes the secret out.
func (HashSeed) MarshalText() ([]byte, error) {
	return nil, errors.New("a hash seed is a secret: not marshalled")
}

// ProgramHashSeed reads the 5-tuple hash seed a loaded balancer program runs with, from its
// read-only data (the .rodata map the verifier made constant) at the offset of lb_hash_seed that
// the map's own BTF gives, so that a program of another mptcp-xdp version is read right too.
func ProgramHashSeed(prog *ebpf.Program) (uint32, error) {
	return programU32(prog, datapath.LbVarLbHashSeed)
}

// ProgramNewFlowRate reads the new-flow rate guard's limit (lb_new_flow_rate: new flows stored per
// second per CPU, 0 no guard) a loaded balancer program runs with, as ProgramHashSeed.
func ProgramNewFlowRate(prog *ebpf.Program) (uint32, error) {
	return programU32(prog, datapath.LbVarLbNewFlowRate)
}

// programU32 reads the 32-bit read-only variable name of a loaded balancer program.
func programU32(prog *ebpf.Program, name string) (uint32, error) {
	info, err := prog.Info()
	if err != nil {
		return 0, fmt.Errorf("program info: %w", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return 0, errors.New("program info: the kernel gives no map ids")
	}
	for _, id := range ids {
		v, found, err := rodataU32(id, name)
		if err != nil {
			return 0, err
		}
		if found {
			return v, nil
		}
	}
	return 0, fmt.Errorf("program %s has no %s variable: not a balancer program (or one older than it)", info.Name, name)
}

// rodataU32 reads the 32-bit variable name from map id when it is a read-only data map that holds
// it.
func rodataU32(id ebpf.MapID, name string) (uint32, bool, error) {
	mp, err := ebpf.NewMapFromID(id)
	if err != nil {
		return 0, false, fmt.Errorf("open map %d: %w", id, err)
	}
	defer mp.Close()
	mi, err := mp.Info()
	if err != nil {
		return 0, false, fmt.Errorf("map %d info: %w", id, err)
	}
	if mp.Type() != ebpf.Array || mp.MaxEntries() != 1 || mi.Name != ".rodata" {
		return 0, false, nil
	}
	btfID, ok := mi.BTFID()
	if !ok {
		return 0, false, fmt.Errorf("map %d (%s) has no BTF: cannot find %s in it", id, mi.Name, name)
	}
	h, err := btf.NewHandleFromID(btfID)
	if err != nil {
		return 0, false, fmt.Errorf("BTF of map %d: %w", id, err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return 0, false, fmt.Errorf("BTF of map %d: %w", id, err)
	}
	var ds *btf.Datasec
	if err := spec.TypeByName(".rodata", &ds); err != nil {
		return 0, false, nil
	}
	for _, v := range ds.Vars {
		if v.Type.TypeName() != name {
			continue
		}
		if v.Size != 4 || v.Offset+4 > mp.ValueSize() {
			return 0, false, fmt.Errorf("map %d: %s is %d bytes at %d of %d, want a 32-bit value", id, name, v.Size, v.Offset, mp.ValueSize())
		}
		val := make([]byte, mp.ValueSize())
		if err := mp.Lookup(uint32(0), &val); err != nil {
			return 0, false, fmt.Errorf("read map %d: %w", id, err)
		}
		return binary.NativeEndian.Uint32(val[v.Offset:]), true, nil
	}
	return 0, false, nil
}
