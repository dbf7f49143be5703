package loader

// In-place upgrades of the balancer's pinned maps. When a new mptcp-xdp changes the layout of a map
// (a field added to a flow, a counter added to the stats), the pinned map cannot be reused, and
// detaching would drop every flow and token. Instead each such map is copied into a new map of the
// new layout, entry by entry, converted through both layouts' BTF: members matched by name, an
// integer zero-extended (or truncated), an array element by element, what the new layout adds
// zeroed. The new program is loaded with the new maps and the links are updated in place (the
// interfaces never go without a program); then what the old program wrote meanwhile is copied
// again (entries it added, counter increments), and the new maps replace the old pins.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// migrationSettle is how long an upgrade waits, once the links run the new program, before it
// copies what the old program wrote last.
const migrationSettle = 50 * time.Millisecond

// migration is one pinned map being upgraded.
type migration struct {
	name, path string
	old, new   *ebpf.Map
	from, to   [2]btf.Type // key, value
	first      map[string][]byte
	perCPU     bool
	// rekey, when set, completes a converted key from the old one (ok false: the entry is
	// dropped): what the new key holds that no member of the old one does.
	rekey func(old, nk []byte) (ok bool, err error)
	// dropped counts the entries rekey dropped.
	dropped int
}

// migratable is the error for a pinned map that cannot be reused and cannot be migrated.
func migratable(ms *ebpf.MapSpec, old *ebpf.Map, key, value btf.Type) error {
	switch {
	case old.Type() != ms.Type:
		return fmt.Errorf("its type changed from %s to %s", old.Type(), ms.Type)
	case ms.Type == ebpf.RingBuf:
		return nil
	case key == nil || value == nil || ms.Key == nil || ms.Value == nil:
		return errors.New("it has no BTF to convert its entries by")
	}
	return nil
}

// planMigrations opens every map of spec pinned in dir and, for each that the new program cannot
// reuse (another size, entry count or layout), creates its new map and copies the entries into it.
// It returns the migrations, whose maps the collection is to be loaded with (MapReplacements).
func planMigrations(spec *ebpf.CollectionSpec, dir string) (_ []*migration, err error) {
	var out []*migration
	defer func() {
		if err != nil {
			for _, m := range out {
				m.close()
			}
		}
	}()
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(dir, name)
		if _, err := os.Lstat(path); err != nil {
			continue
		}
		old, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
		key, value, err := mapBTFTypes(old)
		if err != nil {
			old.Close()
			return nil, fmt.Errorf("read the BTF of pinned map %s: %w", path, err)
		}
		same := old.Type() == ms.Type && old.KeySize() == ms.KeySize && old.ValueSize() == ms.ValueSize &&
			old.MaxEntries() == ms.MaxEntries && old.Flags() == ms.Flags &&
			(key == nil || ms.Key == nil || typeLayout(key) == typeLayout(ms.Key)) &&
			(value == nil || ms.Value == nil || typeLayout(value) == typeLayout(ms.Value))
		if same {
			old.Close()
			continue
		}
		if err := migratable(ms, old, key, value); err != nil {
			old.Close()
			return nil, fmt.Errorf("%w: %s cannot be upgraded in place: %v", ErrLayoutChanged, name, err)
		}
		fresh := ms.Copy()
		fresh.Pinning = ebpf.PinNone
		nm, err := ebpf.NewMap(fresh)
		if err != nil {
			old.Close()
			return nil, fmt.Errorf("create the upgraded %s: %w", name, err)
		}
		m := &migration{name: name, path: path, old: old, new: nm, from: [2]btf.Type{key, value}, to: [2]btf.Type{ms.Key, ms.Value},
			perCPU: ms.Type == ebpf.PerCPUArray || ms.Type == ebpf.PerCPUHash || ms.Type == ebpf.LRUCPUHash}
		out = append(out, m)
		if isFlowID(ms.Key) && hasMember(key, "dst") {
			if m.rekey, err = flowRekey(dir, key, ms.Key); err != nil {
				return nil, fmt.Errorf("upgrade %s: %w", name, err)
			}
		}
		if ms.Type == ebpf.RingBuf {
			continue // events in flight are the old program's: the control plane has read them or reads the new ring
		}
		if m.first, err = m.copy(nil); err != nil {
			return nil, fmt.Errorf("upgrade %s: %w", name, err)
		}
	}
	return out, nil
}

// replacements are the new maps, by name, for CollectionOptions.MapReplacements.
func replacements(ms []*migration) map[string]*ebpf.Map {
	if len(ms) == 0 {
		return nil
	}
	out := map[string]*ebpf.Map{}
	for _, m := range ms {
		out[m.name] = m.new
	}
	return out
}

// copy copies every entry of the old map into the new one, converted, and returns the old entries
// it read (key → value bytes, per-CPU values concatenated). With since (a second pass, after the
// links were updated), an entry already copied is updated only by what changed in the old map
// since: keys the old program added are inserted, and in an array (counters) the integers are grown
// by what the old program added to them.
func (m *migration) copy(since map[string][]byte) (map[string][]byte, error) {
	seen := map[string][]byte{}
	ncpu := 1
	if m.perCPU {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, err
		}
		ncpu = n
	}
	var key []byte
	vals := make([][]byte, ncpu)
	var single []byte
	it := m.old.Iterate()
	for {
		var ok bool
		if m.perCPU {
			ok = it.Next(&key, vals)
		} else {
			ok = it.Next(&key, &single)
			vals[0] = single
		}
		if !ok {
			break
		}
		var raw []byte
		for _, v := range vals {
			raw = append(raw, v...)
		}
		seen[string(key)] = raw
		nk, err := convert(key, m.from[0], m.to[0])
		if err != nil {
			return nil, fmt.Errorf("key: %w", err)
		}
		if m.rekey != nil {
			ok, err := m.rekey(key, nk)
			if err != nil {
				return nil, fmt.Errorf("key: %w", err)
			}
			if !ok {
				if since == nil {
					m.dropped++
				}
				continue
			}
		}
		out := make([][]byte, ncpu)
		for c, v := range vals {
			if out[c], err = convert(v, m.from[1], m.to[1]); err != nil {
				return nil, fmt.Errorf("value: %w", err)
			}
		}
		if before, ok := since[string(key)]; ok {
			cur := make([][]byte, ncpu)
			if err := m.lookupNew(nk, cur); err != nil || !m.isArray() {
				// A table entry copied before: the new program's is the fresher (or it deleted
				// the entry, and knows better).
				continue
			}
			// A counter slot: add what the old program counted since the first copy.
			stride := len(before) / ncpu
			for c := range out {
				prev, err := convert(before[c*stride:(c+1)*stride], m.from[1], m.to[1])
				if err != nil {
					return nil, err
				}
				out[c] = addDelta(cur[c], out[c], prev, m.to[1])
			}
		}
		flags := ebpf.UpdateAny
		if since != nil && !m.isArray() {
			flags = ebpf.UpdateNoExist // the new program may have made the entry meanwhile
		}
		var err2 error
		if m.perCPU {
			err2 = m.new.Update(nk, out, flags)
		} else {
			err2 = m.new.Update(nk, out[0], flags)
		}
		if errors.Is(err2, ebpf.ErrKeyExist) {
			continue
		}
		if err2 != nil {
			return nil, fmt.Errorf("put %x: %w", nk, err2)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate: %w", err)
	}
	return seen, nil
}

func (m *migration) isArray() bool {
	return m.old.Type() == ebpf.Array || m.old.Type() == ebpf.PerCPUArray
}

func (m *migration) lookupNew(key []byte, out [][]byte) error {
	if m.perCPU {
		return m.new.Lookup(key, out)
	}
	var v []byte
	if err := m.new.Lookup(key, &v); err != nil {
		return err
	}
	out[0] = v
	return nil
}

// finish copies what the old program wrote since the first copy (the links run the new program
// now), then pins the new map in place of the old.
func (m *migration) finish() error {
	if m.old.Type() != ebpf.RingBuf {
		if _, err := m.copy(m.first); err != nil {
			return fmt.Errorf("upgrade %s: %w", m.name, err)
		}
	}
	tmp := m.path + "_upgrading" // bpffs refuses names with a dot
	_ = os.Remove(tmp)
	if err := m.new.Pin(tmp); err != nil {
		return fmt.Errorf("pin the upgraded %s: %w", m.name, err)
	}
	if err := os.Rename(tmp, m.path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace the pin of %s: %w", m.name, err)
	}
	if m.dropped > 0 {
		slog.Info("upgrade: flows of addresses that are no VIP any more dropped", "map", m.name, "flows", m.dropped)
	}
	return nil
}

func (m *migration) close() {
	m.old.Close()
	m.new.Close()
}

// convert lays b, of type from, out as type to.
func convert(b []byte, from, to btf.Type) ([]byte, error) {
	if from == nil || to == nil {
		return b, nil
	}
	size, err := btf.Sizeof(to)
	if err != nil {
		return nil, err
	}
	out := make([]byte, size)
	if err := convertInto(out, to, b, from, 0); err != nil {
		return nil, err
	}
	return out, nil
}

func convertInto(dst []byte, to btf.Type, src []byte, from btf.Type, depth int) error {
	if depth > 16 {
		return errors.New("types nested too deep")
	}
	to, from = btf.UnderlyingType(to), btf.UnderlyingType(from)
	if typeLayout(to) == typeLayout(from) {
		copy(dst, src)
		return nil
	}
	switch t := to.(type) {
	case *btf.Int, *btf.Enum:
		n, _ := btf.Sizeof(from)
		switch from.(type) {
		case *btf.Int, *btf.Enum:
		default:
			return fmt.Errorf("%s became an integer", typeLayout(from))
		}
		copy(dst, src[:min(n, len(dst))]) // little-endian: zero-extended or truncated
		return nil
	case *btf.Array:
		f, ok := from.(*btf.Array)
		if !ok {
			return fmt.Errorf("%s became an array", typeLayout(from))
		}
		ts, err := btf.Sizeof(t.Type)
		if err != nil {
			return err
		}
		fs, err := btf.Sizeof(f.Type)
		if err != nil {
			return err
		}
		for i := 0; i < int(min(t.Nelems, f.Nelems)); i++ {
			if err := convertInto(dst[i*ts:(i+1)*ts], t.Type, src[i*fs:(i+1)*fs], f.Type, depth+1); err != nil {
				return err
			}
		}
		return nil
	case *btf.Struct:
		f, ok := from.(*btf.Struct)
		if !ok {
			return fmt.Errorf("%s became a struct", typeLayout(from))
		}
		for _, tm := range t.Members {
			if tm.BitfieldSize != 0 {
				return fmt.Errorf("bit field %s", tm.Name)
			}
			for _, fm := range f.Members {
				if fm.Name != tm.Name || tm.Name == "" {
					continue
				}
				ts, err := btf.Sizeof(tm.Type)
				if err != nil {
					return err
				}
				fs, err := btf.Sizeof(fm.Type)
				if err != nil {
					return err
				}
				to, fo := int(tm.Offset.Bytes()), int(fm.Offset.Bytes())
				if err := convertInto(dst[to:to+ts], tm.Type, src[fo:fo+fs], fm.Type, depth+1); err != nil {
					return fmt.Errorf("%s: %w", tm.Name, err)
				}
			}
		}
		return nil
	}
	return fmt.Errorf("cannot convert %s into %s", typeLayout(from), typeLayout(to))
}

// addDelta returns cur with every integer leaf grown by now-prev (each of type t): what the old
// program counted after the first copy, added to what the new program counted since.
func addDelta(cur, now, prev []byte, t btf.Type) []byte {
	out := append([]byte(nil), cur...)
	intLeaves(t, 0, func(off, size int) {
		if off+size > len(out) || size > 8 {
			return
		}
		get := func(b []byte) uint64 {
			var v uint64
			for i := size - 1; i >= 0; i-- {
				v = v<<8 | uint64(b[off+i])
			}
			return v
		}
		v := get(cur) + get(now) - get(prev)
		for i := 0; i < size; i++ {
			out[off+i] = byte(v >> (8 * i))
		}
	})
	return out
}

// intLeaves calls fn with the offset and size of every integer within t.
func intLeaves(t btf.Type, off int, fn func(off, size int)) {
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		fn(off, int(v.Size))
	case *btf.Array:
		es, err := btf.Sizeof(v.Type)
		if err != nil {
			return
		}
		for i := 0; i < int(v.Nelems); i++ {
			intLeaves(v.Type, off+i*es, fn)
		}
	case *btf.Struct:
		for _, m := range v.Members {
			intLeaves(m.Type, off+int(m.Offset.Bytes()), fn)
		}
	}
}

// isFlowID reports whether t is the flow tables' key of a balancer that keys flows by VIP id
// (struct lb_flow_id).
func isFlowID(t btf.Type) bool {
	st, ok := btf.UnderlyingType(t).(*btf.Struct)
	return ok && st.Name == "lb_flow_id"
}

func hasMember(t btf.Type, name string) bool {
	_, _, ok := member(t, name)
	return ok
}

// member is the offset and size of member name of struct t.
func member(t btf.Type, name string) (off, size int, ok bool) {
	st, isStruct := btf.UnderlyingType(t).(*btf.Struct)
	if !isStruct {
		return 0, 0, false
	}
	for _, m := range st.Members {
		if m.Name == name {
			n, err := btf.Sizeof(m.Type)
			if err != nil {
				return 0, 0, false
			}
			return int(m.Offset.Bytes()), n, true
		}
	}
	return 0, 0, false
}

// flowRekey upgrades a flow table keyed by the 5-tuple (struct lb_flow_key, before the balancer
// keyed flows by their VIP's id): the new key's vip_id is the id of the VIP the old key's
// destination address and port name in the pinned VIP table (dir/mptcpx_vips, read through its
// own BTF), and a flow to an address that is no VIP any more is dropped (its packets pass to the
// stack now anyway).
func flowRekey(dir string, from, to btf.Type) (func(old, nk []byte) (bool, error), error) {
	dstOff, dstSize, ok1 := member(from, "dst")
	dportOff, _, ok2 := member(from, "dport")
	vidOff, vidSize, ok3 := member(to, "vip_id")
	if !ok1 || !ok2 || !ok3 || dstSize != 16 || vidSize != 4 {
		return nil, errors.New("flow keys of an unknown layout")
	}
	vips, err := ebpf.LoadPinnedMap(filepath.Join(dir, "mptcpx_vips"), &ebpf.LoadPinOptions{ReadOnly: true})
	if errors.Is(err, os.ErrNotExist) {
		return func([]byte, []byte) (bool, error) { return false, nil }, nil // no VIPs: no flow is any VIP's
	}
	if err != nil {
		return nil, fmt.Errorf("open the pinned VIP table: %w", err)
	}
	// Read once: the VIP table is the control plane's, which the upgrading attach holds the lock of.
	vk, vv, err := mapBTFTypes(vips)
	if err == nil && (vk == nil || vv == nil) {
		err = errors.New("it has no BTF")
	}
	if err != nil {
		vips.Close()
		return nil, fmt.Errorf("the pinned VIP table: %w", err)
	}
	addrOff, _, okA := member(vk, "addr")
	portOff, _, okP := member(vk, "port")
	protoOff, _, okR := member(vk, "proto")
	idOff, _, okI := member(vv, "id")
	if !okA || !okP || !okR || !okI {
		vips.Close()
		return nil, errors.New("the pinned VIP table has an unknown layout")
	}
	ids := map[[18]byte]uint32{} // address and port (network order) -> id
	var k, v []byte
	it := vips.Iterate()
	for it.Next(&k, &v) {
		if k[protoOff] != 6 {
			continue
		}
		var a [18]byte
		copy(a[:16], k[addrOff:addrOff+16])
		copy(a[16:], k[portOff:portOff+2])
		ids[a] = binary.NativeEndian.Uint32(v[idOff:])
	}
	err = it.Err()
	vips.Close()
	if err != nil {
		return nil, fmt.Errorf("read the pinned VIP table: %w", err)
	}
	return func(old, nk []byte) (bool, error) {
		var a [18]byte
		copy(a[:16], old[dstOff:dstOff+16])
		copy(a[16:], old[dportOff:dportOff+2])
		id, ok := ids[a]
		if !ok {
			return false, nil
		}
		binary.NativeEndian.PutUint32(nk[vidOff:], id)
		return true, nil
	}, nil
}
