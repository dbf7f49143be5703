package loader

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// objects are the programs and maps of one interface, loaded for one attach.
type objects struct {
	counters  *ebpf.Map
	meta      *ebpf.Map
	xdp       *ebpf.Program
	tcIngress *ebpf.Program
	tcEgress  *ebpf.Program
	closers   []func()
}

func (o *objects) Close() {
	for _, c := range o.closers {
		c()
	}
}

// loadObjects loads the maps (reusing the ones pinned in dir) and only the programs asked for.
func loadObjects(dir string, xdp, tcIngress, tcEgress bool) (*objects, error) {
	o := &objects{}
	spec, err := datapath.LoadXdp()
	if err != nil {
		return nil, fmt.Errorf("read embedded XDP object: %w", err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	if !xdp {
		delete(spec.Programs, datapath.XdpProgMptcpxXdpIn)
	}
	if err := checkPinnedLayouts(spec, dir); err != nil {
		return nil, fmt.Errorf("%w: detach first", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("maps pinned in %s come from an incompatible mptcp-xdp version: detach first: %w", dir, err)
		}
		return nil, fmt.Errorf("load XDP object: %w", err)
	}
	o.closers = append(o.closers, coll.Close)
	o.counters = coll.Maps[datapath.XdpMapMptcpxCounters]
	o.meta = coll.Maps[datapath.XdpMapMptcpxMeta]
	o.xdp = coll.Programs[datapath.XdpProgMptcpxXdpIn]

	replace := map[string]*ebpf.Map{
		datapath.XdpMapMptcpxCounters: o.counters,
		datapath.XdpMapMptcpxMeta:     o.meta,
	}
	load := func(name string, get func() (*ebpf.CollectionSpec, error), prog string) (*ebpf.Program, error) {
		s, err := get()
		if err != nil {
			return nil, fmt.Errorf("read embedded %s object: %w", name, err)
		}
		c, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{MapReplacements: replace})
		if err != nil {
			return nil, fmt.Errorf("load %s object: %w", name, err)
		}
		o.closers = append(o.closers, c.Close)
		return c.Programs[prog], nil
	}
	if tcIngress {
		if o.tcIngress, err = load("TC ingress", datapath.LoadTcIngress, datapath.TcIngressProgMptcpxTcIn); err != nil {
			o.Close()
			return nil, err
		}
	}
	if tcEgress {
		if o.tcEgress, err = load("TC egress", datapath.LoadTcEgress, datapath.TcEgressProgMptcpxTcOut); err != nil {
			o.Close()
			return nil, err
		}
	}
	return o, nil
}

// Meta is the attach state kept in the pinned meta map.
type Meta = datapath.XdpMxMeta

// Flags of Meta.Flags (enum mx_meta_flags, generated).
const (
	metaClsactAdded = datapath.XdpMxMetaFlagsMX_META_CLSACT_ADDED
	metaXDPNetlink  = datapath.XdpMxMetaFlagsMX_META_XDP_NETLINK
	metaTCNetlink   = datapath.XdpMxMetaFlagsMX_META_TC_NETLINK
	// Why the ingress hook is what it is (IngressAuto): chosen by attach, and for TC the reason.
	metaIngressAuto = datapath.XdpMxMetaFlagsMX_META_INGRESS_AUTO
	metaAutoVeth    = datapath.XdpMxMetaFlagsMX_META_AUTO_VETH
	metaAutoNoNativ = datapath.XdpMxMetaFlagsMX_META_AUTO_NO_NATIVE
)

// XDP modes as stored in Meta.XdpMode (enum mx_xdp_mode; the field stays a uint32, so the values are
// held by pkg/datapath's BTF layout test).
const (
	metaModeNone    = datapath.MetaXDPModeNone
	metaModeNative  = datapath.MetaXDPModeNative
	metaModeGeneric = datapath.MetaXDPModeGeneric
)

// Ingress hooks as stored in Meta.Ingress (enum mx_ingress, held by the same test).
const (
	metaIngressXDP = datapath.MetaIngressXDP
	metaIngressTC  = datapath.MetaIngressTC
)

func readMeta(m *ebpf.Map) (Meta, error) {
	var meta Meta
	if err := m.Lookup(uint32(0), &meta); err != nil {
		return meta, fmt.Errorf("read attach state: %w", err)
	}
	return meta, nil
}

func writeMeta(m *ebpf.Map, meta Meta) error {
	if err := m.Put(uint32(0), meta); err != nil {
		return fmt.Errorf("write attach state: %w", err)
	}
	return nil
}

// loadPinnedMeta reads the meta map pinned in dir, if any.
func loadPinnedMeta(dir string) (Meta, bool) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, pinMeta), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return Meta{}, false
	}
	defer m.Close()
	meta, err := readMeta(m)
	return meta, err == nil
}
