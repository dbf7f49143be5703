package datapath

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// The objects whose BTF TestLayout walks.
var layoutObjects = []struct {
	name string
	load func() (*ebpf.CollectionSpec, error)
}{
	{"xdp", LoadXdp}, {"tc_ingress", LoadTcIngress}, {"tc_egress", LoadTcEgress},
	{"iter_tcp", LoadIterTcp}, {"sockops", LoadSockOps}, {"lb", LoadLb}, {"lb_decap", LoadLbDecap},
}

var counting = []string{"xdp", "tc_ingress", "tc_egress"}

// TestLayout holds the Go side of every C value shared with Go to the objects' BTF: each shared
// struct has, in every object that carries it, the size and member offsets of the Go type that
// mirrors it (so a struct generated from one object is right for the others too, as mx_meta
// generated from xdp is for the TC objects, and mx_subflow_rec for the iterator and the history);
// each shared enum has, in every object, exactly the enumerators and values of the Go constants
// (generated or written in meta.go). enum mx_dir, in no object's BTF, is read from the header.
func TestLayout(t *testing.T) {
	structs := []struct {
		c       string
		goTypes []any
		in      []string
	}{
		{"mx_counters", []any{XdpMxCounters{}}, counting},
		{"mx_meta", []any{XdpMxMeta{}}, counting},
		{"mx_subflow_rec", []any{IterTcpMxSubflowRec{}, SockOpsMxSubflowRec{}}, []string{"iter_tcp", "sockops"}},
		{"mx_sf_hist", []any{SockOpsMxSfHist{}}, []string{"sockops"}},
		{"mx_hist_cfg", []any{SockOpsMxHistCfg{}}, []string{"sockops"}},
	}
	enums := []struct {
		c    string
		want map[string]uint64
		in   []string
	}{
		{"mx_meta_flags", map[string]uint64{
			"MX_META_CLSACT_ADDED":   uint64(XdpMxMetaFlagsMX_META_CLSACT_ADDED),
			"MX_META_INGRESS_AUTO":   uint64(XdpMxMetaFlagsMX_META_INGRESS_AUTO),
			"MX_META_AUTO_VETH":      uint64(XdpMxMetaFlagsMX_META_AUTO_VETH),
			"MX_META_AUTO_NO_NATIVE": uint64(XdpMxMetaFlagsMX_META_AUTO_NO_NATIVE),
			"MX_META_XDP_NETLINK":    uint64(XdpMxMetaFlagsMX_META_XDP_NETLINK),
			"MX_META_TC_NETLINK":     uint64(XdpMxMetaFlagsMX_META_TC_NETLINK),
		}, counting},
		{"mx_xdp_mode", map[string]uint64{
			"MX_XDP_MODE_NONE":    uint64(MetaXDPModeNone),
			"MX_XDP_MODE_NATIVE":  uint64(MetaXDPModeNative),
			"MX_XDP_MODE_GENERIC": uint64(MetaXDPModeGeneric),
		}, counting},
		{"mx_ingress", map[string]uint64{
			"MX_INGRESS_XDP": uint64(MetaIngressXDP),
			"MX_INGRESS_TC":  uint64(MetaIngressTC),
		}, counting},
		{"mx_sf_flags", map[string]uint64{
			"MX_SF_MCAP_REM":          uint64(IterTcpMxSfFlagsMX_SF_MCAP_REM),
			"MX_SF_MCAP_LOC":          uint64(IterTcpMxSfFlagsMX_SF_MCAP_LOC),
			"MX_SF_JOIN_REM":          uint64(IterTcpMxSfFlagsMX_SF_JOIN_REM),
			"MX_SF_JOIN_LOC":          uint64(IterTcpMxSfFlagsMX_SF_JOIN_LOC),
			"MX_SF_BKUP_REM":          uint64(IterTcpMxSfFlagsMX_SF_BKUP_REM),
			"MX_SF_BKUP_LOC":          uint64(IterTcpMxSfFlagsMX_SF_BKUP_LOC),
			"MX_SF_FULLY_ESTABLISHED": uint64(IterTcpMxSfFlagsMX_SF_FULLY_ESTABLISHED),
			"MX_SF_CONNECTED":         uint64(IterTcpMxSfFlagsMX_SF_CONNECTED),
		}, []string{"iter_tcp", "sockops"}},
	}

	// Every struct named in several objects has one size in all of them.
	sizes := map[string]uint32{}
	for _, o := range layoutObjects {
		spec, err := o.load()
		if err != nil {
			t.Fatalf("%s: %v", o.name, err)
		}
		for _, s := range structs {
			if !slices.Contains(s.in, o.name) {
				continue
			}
			var st *btf.Struct
			if err := spec.Types.TypeByName(s.c, &st); err != nil {
				t.Errorf("%s: struct %s: %v", o.name, s.c, err)
				continue
			}
			for _, g := range s.goTypes {
				compareStruct(t, o.name+": struct "+s.c, st, reflect.TypeOf(g))
			}
		}
		for _, e := range enums {
			if !slices.Contains(e.in, o.name) {
				continue
			}
			var en *btf.Enum
			if err := spec.Types.TypeByName(e.c, &en); err != nil {
				t.Errorf("%s: enum %s: %v", o.name, e.c, err)
				continue
			}
			got := map[string]uint64{}
			for _, v := range en.Values {
				got[v.Name] = v.Value
			}
			if !reflect.DeepEqual(got, e.want) {
				t.Errorf("%s: enum %s is %v in BTF, Go has %v", o.name, e.c, got, e.want)
			}
		}
		for typ, err := range spec.Types.All() {
			if err != nil {
				t.Fatalf("%s: %v", o.name, err)
			}
			st, ok := typ.(*btf.Struct)
			if !ok || !(strings.HasPrefix(st.Name, "mx_") || strings.HasPrefix(st.Name, "lb_")) {
				continue
			}
			if n, seen := sizes[st.Name]; seen && n != st.Size {
				t.Errorf("%s: struct %s is %d bytes, %d in another object", o.name, st.Name, st.Size, n)
			}
			sizes[st.Name] = st.Size
		}
		if m := spec.Maps[XdpMapMptcpxCounters]; slices.Contains(counting, o.name) && (m == nil || m.MaxEntries != NumDirs) {
			t.Errorf("%s: counters map %+v, want %d entries (one per direction)", o.name, m, NumDirs)
		}
	}

	src, err := os.ReadFile(typesHeader)
	if err != nil {
		t.Fatal(err)
	}
	names, values := enumerators(t, string(src), "mx_dir")
	want := []struct {
		n string
		v uint32
	}{{"MX_DIR_INGRESS", DirIngress}, {"MX_DIR_EGRESS", DirEgress}, {"MX_DIR_MAX", NumDirs}}
	if len(names) != len(want) {
		t.Fatalf("enum mx_dir is %v, Go has %v", names, want)
	}
	for i, w := range want {
		if names[i] != w.n || uint32(values[i]) != w.v {
			t.Errorf("enum mx_dir[%d]: C %s = %d, Go %s = %d", i, names[i], values[i], w.n, w.v)
		}
	}
}

// compareStruct checks that Go type g has st's size and, member by member, its offsets, sizes and
// names (as bpf2go spells them), nested structs and arrays included.
func compareStruct(t *testing.T, what string, st *btf.Struct, g reflect.Type) {
	t.Helper()
	if g.Kind() != reflect.Struct {
		t.Errorf("%s: Go %s is not a struct", what, g)
		return
	}
	if uintptr(st.Size) != g.Size() {
		t.Errorf("%s: %d bytes, Go %s %d", what, st.Size, g, g.Size())
	}
	var fields []reflect.StructField
	for i := range g.NumField() {
		if f := g.Field(i); f.Name != "_" {
			fields = append(fields, f)
		}
	}
	if len(fields) != len(st.Members) {
		t.Errorf("%s: %d members, Go %s %d fields", what, len(st.Members), g, len(fields))
		return
	}
	for i, m := range st.Members {
		f := fields[i]
		if m.BitfieldSize != 0 {
			t.Errorf("%s: member %s is a bit field", what, m.Name)
			continue
		}
		if f.Name != goName(m.Name) || uintptr(m.Offset.Bytes()) != f.Offset {
			t.Errorf("%s: member %s at %d, Go %s at %d", what, m.Name, m.Offset.Bytes(), f.Name, f.Offset)
			continue
		}
		compareType(t, what+"."+m.Name, m.Type, f.Type)
	}
}

func compareType(t *testing.T, what string, c btf.Type, g reflect.Type) {
	t.Helper()
	switch c := btf.UnderlyingType(c).(type) {
	case *btf.Struct:
		compareStruct(t, what, c, g)
	case *btf.Array:
		if g.Kind() != reflect.Array || uint32(g.Len()) != c.Nelems {
			t.Errorf("%s: %d elements, Go %s", what, c.Nelems, g)
			return
		}
		compareType(t, what+"[]", c.Type, g.Elem())
	default:
		n, err := btf.Sizeof(c)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if uintptr(n) != g.Size() {
			t.Errorf("%s: %d bytes, Go %s %d", what, n, g, g.Size())
		}
	}
}

// goName is a C member name as bpf2go writes it in Go: snake_case to CamelCase.
func goName(c string) string {
	var b strings.Builder
	for _, p := range strings.Split(c, "_") {
		if p != "" {
			b.WriteString(strings.ToUpper(p[:1]) + p[1:])
		}
	}
	return b.String()
}
