package sockopt

// WithoutFullInfo makes r behave as on a kernel without MPTCP_FULL_INFO (before 6.5), so the
// fallback to the three separate calls can be tested on a kernel that has it.
func WithoutFullInfo(r *Reader) *Reader { r.noFullInfo = true; return r }

func table(v any) fieldTable {
	switch v.(type) {
	case MPTCPInfo:
		return mptcpInfoFields
	case SubflowTCPInfo:
		return tcpInfoFields
	}
	panic("no field table")
}

// Names lists the C names of v's fields in layout order.
func Names(v any) []string { return append([]string(nil), table(v).names...) }

// Present reports whether a kernel whose struct (of v's type) is n bytes returns the named field.
func Present(v any, name string, n int) bool { return table(v).has(name, n) }

// Layout exposes the field tables to the BTF layout test: C name → byte offset and size.
func Layout(v any) map[string][2]int {
	t := table(v)
	m := map[string][2]int{}
	for _, name := range t.names {
		m[name] = [2]int{t.off[name], t.end[name] - t.off[name]}
	}
	return m
}

// DecodeMPTCPInfo decodes b as the kernel's returned bytes of struct mptcp_info.
func DecodeMPTCPInfo(b []byte) *MPTCPInfo { m := &MPTCPInfo{}; m.decode(b); return m }

// DecodeTCPInfo decodes b as the kernel's returned bytes of struct tcp_info.
func DecodeTCPInfo(b []byte) *SubflowTCPInfo { t := &SubflowTCPInfo{}; t.decode(b); return t }
