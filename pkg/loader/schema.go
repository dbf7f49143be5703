package loader

// The layout of pinned maps. cilium/ebpf reuses a pinned map when its type, key and value sizes,
// entries and flags match the spec; a change of layout that keeps the sizes (two fields swapped, a
// field renamed or retyped) would pass, and the new program would read the old entries wrong. So
// before a program is loaded over pinned maps, every pinned map's key and value types, as the
// kernel holds them in the map's BTF, are compared with the spec's, field by field.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// ErrLayoutChanged is returned when a pinned map's key or value layout is not the one the program
// about to be loaded expects.
var ErrLayoutChanged = errors.New("pinned map layout changed")

// checkPinnedLayouts compares the key and value layout of every map of spec that is pinned in dir
// with the spec's. A map not pinned yet, or pinned without BTF, is not compared (the sizes still
// are, by cilium/ebpf).
func checkPinnedLayouts(spec *ebpf.CollectionSpec, dir string) error {
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName || (ms.Key == nil && ms.Value == nil) {
			continue
		}
		path := filepath.Join(dir, name)
		if _, err := os.Lstat(path); err != nil {
			continue
		}
		m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("open pinned map %s: %w", path, err)
		}
		key, value, err := mapBTFTypes(m)
		m.Close()
		if err != nil {
			return fmt.Errorf("read the BTF of pinned map %s: %w", path, err)
		}
		for _, kv := range []struct {
			what       string
			have, want btf.Type
		}{{"key", key, ms.Key}, {"value", value, ms.Value}} {
			if kv.have == nil || kv.want == nil {
				continue
			}
			if h, w := typeLayout(kv.have), typeLayout(kv.want); h != w {
				return fmt.Errorf("%w: %s's %s is %s in the pin (%s), %s in this mptcp-xdp", ErrLayoutChanged, name, kv.what, h, dir, w)
			}
		}
	}
	return nil
}

// bpfMapInfo is the head of struct bpf_map_info (linux/bpf.h) up to the BTF type ids.
type bpfMapInfo struct {
	Type, ID, KeySize, ValueSize, MaxEntries, MapFlags uint32
	Name                                               [16]byte
	Ifindex, BTFVmlinuxValueTypeID                     uint32
	NetnsDev, NetnsIno                                 uint64
	BTFID, BTFKeyTypeID, BTFValueTypeID                uint32
	_                                                  uint32
}

// mapBTFTypes returns the key and value types of m as the kernel holds them (nil without BTF).
// cilium/ebpf's MapInfo has the map's BTF id but not the type ids within it.
func mapBTFTypes(m *ebpf.Map) (key, value btf.Type, err error) {
	var info bpfMapInfo
	attr := struct {
		fd, infoLen uint32
		info        uint64
	}{uint32(m.FD()), uint32(unsafe.Sizeof(info)), uint64(uintptr(unsafe.Pointer(&info)))}
	const bpfObjGetInfoByFD = 15
	if _, _, e := unix.Syscall(unix.SYS_BPF, bpfObjGetInfoByFD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)); e != 0 {
		return nil, nil, fmt.Errorf("BPF_OBJ_GET_INFO_BY_FD: %w", e)
	}
	if info.BTFID == 0 {
		return nil, nil, nil
	}
	h, err := btf.NewHandleFromID(btf.ID(info.BTFID))
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	s, err := h.Spec(nil)
	if err != nil {
		return nil, nil, err
	}
	get := func(id uint32) (btf.Type, error) {
		if id == 0 {
			return nil, nil
		}
		return s.TypeByID(btf.TypeID(id))
	}
	if key, err = get(info.BTFKeyTypeID); err != nil {
		return nil, nil, err
	}
	if value, err = get(info.BTFValueTypeID); err != nil {
		return nil, nil, err
	}
	return key, value, nil
}

// typeLayout spells out a type's layout: sizes, member names and offsets, array lengths, through
// typedefs and qualifiers. Two types with the same layout string are read alike.
func typeLayout(t btf.Type) string {
	var b strings.Builder
	writeLayout(&b, t, 0)
	return b.String()
}

func writeLayout(b *strings.Builder, t btf.Type, depth int) {
	if depth > 16 {
		b.WriteString("…")
		return
	}
	switch v := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		sign := "u"
		if v.Encoding&btf.Signed != 0 {
			sign = "s"
		}
		fmt.Fprintf(b, "%s%d", sign, v.Size*8)
	case *btf.Enum:
		fmt.Fprintf(b, "enum%d", v.Size*8)
	case *btf.Pointer:
		b.WriteString("ptr")
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", v.Nelems)
		writeLayout(b, v.Type, depth+1)
	case *btf.Struct:
		writeMembers(b, "struct", v.Size, v.Members, depth)
	case *btf.Union:
		writeMembers(b, "union", v.Size, v.Members, depth)
	default:
		fmt.Fprintf(b, "%T", v)
	}
}

func writeMembers(b *strings.Builder, kind string, size uint32, members []btf.Member, depth int) {
	fmt.Fprintf(b, "%s%d{", kind, size)
	for i, m := range members {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(b, "%s@%d", m.Name, m.Offset.Bytes())
		if m.BitfieldSize != 0 {
			fmt.Fprintf(b, ":%d", m.BitfieldSize)
		}
		b.WriteString(":")
		writeLayout(b, m.Type, depth+1)
	}
	b.WriteString("}")
}
