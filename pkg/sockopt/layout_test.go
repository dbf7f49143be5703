package sockopt_test

import (
	"testing"

	"github.com/cilium/ebpf/btf"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// kernelStruct returns a struct of the running kernel's BTF (/sys/kernel/btf/vmlinux).
func kernelStruct(t testing.TB, name string) *btf.Struct {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("load kernel BTF: %v", err)
	}
	var s *btf.Struct
	if err := spec.TypeByName(name, &s); err != nil {
		t.Fatalf("kernel BTF: struct %s: %v", name, err)
	}
	return s
}

// kernelHasFullInfo reports whether the running kernel has MPTCP_FULL_INFO (6.5+), by its BTF: the
// option's struct mptcp_full_info.
func kernelHasFullInfo(t testing.TB) bool {
	t.Helper()
	ok, err := testutil.KernelHasStruct("mptcp_full_info")
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// TestLayoutMatchesKernelBTF compares the hand-mirrored structs with the running kernel's own
// description of them: every field the kernel has must sit at the same offset with the same size
// (bit fields: in the byte this package reads them from), and every field this package knows must
// exist in the kernel unless the kernel is older (then it lies beyond the kernel's struct).
func TestLayoutMatchesKernelBTF(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    any
	}{
		{"mptcp_info", sockopt.MPTCPInfo{}},
		{"tcp_info", sockopt.SubflowTCPInfo{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ks := kernelStruct(t, tc.name)
			ours := sockopt.Layout(tc.v)
			seen := map[string]bool{}
			reserved := map[int]bool{} // offsets the kernel calls reserved (mptcpi_endp_laminar_max on 6.10-6.17)
			for _, m := range ks.Members {
				if m.Name == "reserved" {
					reserved[int(m.Offset.Bytes())] = true
				}
				if m.Name == "" || m.Name == "reserved" {
					continue
				}
				seen[m.Name] = true
				got, ok := ours[m.Name]
				if !ok {
					t.Errorf("kernel field %s (offset %d) is unknown to the package: add it", m.Name, m.Offset.Bytes())
					continue
				}
				size, err := btf.Sizeof(m.Type)
				if err != nil {
					t.Fatal(err)
				}
				off := int(m.Offset.Bytes())
				if m.BitfieldSize > 0 {
					off, size = int(m.Offset/8), 1 // the byte holding the bit field
					if uint32(m.Offset%8)+uint32(m.BitfieldSize) > 8 {
						t.Errorf("%s: bit field crosses a byte", m.Name)
					}
				}
				if got != [2]int{off, size} {
					t.Errorf("%s: package has offset %d size %d, kernel %d %d", m.Name, got[0], got[1], off, size)
				}
			}
			for name, got := range ours {
				if !seen[name] && !reserved[got[0]] && sockopt.Present(tc.v, name, int(ks.Size)) {
					t.Errorf("package field %s (offset %d) is inside the kernel's struct (%d bytes) but the kernel has no such field", name, got[0], ks.Size)
				}
			}
		})
	}
}

// TestBitFields checks the bit positions the accessors assume against the kernel's BTF.
func TestBitFields(t *testing.T) {
	want := map[string][2]uint32{ // bit offset within its byte, width: what the accessors use
		"tcpi_snd_wscale":                {0, 4},
		"tcpi_rcv_wscale":                {4, 4},
		"tcpi_delivery_rate_app_limited": {0, 1},
		"tcpi_fastopen_client_fail":      {1, 2},
	}
	for _, m := range kernelStruct(t, "tcp_info").Members {
		if w, ok := want[m.Name]; ok {
			if got := [2]uint32{uint32(m.Offset % 8), uint32(m.BitfieldSize)}; got != w {
				t.Errorf("%s: kernel bit %d width %d, accessor assumes %d %d", m.Name, got[0], got[1], w[0], w[1])
			}
			delete(want, m.Name)
		}
	}
	for name := range want {
		t.Errorf("kernel tcp_info has no bit field %s", name)
	}
}
