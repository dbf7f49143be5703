package datapath

// Values of C enums that bpf2go -type does not generate: the enums of struct mx_meta's fields that
// every user in pkg/loader handles as uint32 (-type would change the fields' Go type), and enum mx_dir.
// TestLayout holds them to the C side.

// XDP modes of XdpMxMeta.XdpMode (enum mx_xdp_mode).
const (
	MetaXDPModeNone    uint32 = 0
	MetaXDPModeNative  uint32 = 1
	MetaXDPModeGeneric uint32 = 2
)

// Ingress hooks of XdpMxMeta.Ingress (enum mx_ingress).
const (
	MetaIngressXDP uint32 = 0
	MetaIngressTC  uint32 = 1
)

// Directions: the keys of the counters map (enum mx_dir). The programs use the enum only as
// constants, so no object's BTF carries it: TestLayout reads it from bpf/include/mx_types.h, and the
// packet tests check that each program counts under its key.
const (
	DirIngress uint32 = 0
	DirEgress  uint32 = 1
	NumDirs           = 2
)
