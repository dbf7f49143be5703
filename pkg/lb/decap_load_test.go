package lb

// The decapsulator loaded on its own, for the packet tests of this package; programs attach
// through pkg/loader.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// DecapConfig is what is fixed when a backend's decapsulator is loaded.
type DecapConfig struct {
	// AnyDst decapsulates whatever the outer destination; otherwise only packets to an address
	// added with AddAddr.
	AnyDst bool
}

// Decap is the backend-side XDP program of ipip mode (attach it to the backend's interfaces
// facing the balancer): it strips the outer header and passes the inner packet up the stack.
type Decap struct {
	Program *ebpf.Program
	Addrs   *ebpf.Map
	Stats   *ebpf.Map
}

// LoadDecap loads the decapsulator.
func LoadDecap(cfg DecapConfig) (*Decap, error) {
	spec, err := datapath.LoadLbDecap()
	if err != nil {
		return nil, fmt.Errorf("load decap spec: %w", err)
	}
	if cfg.AnyDst {
		if err := spec.Variables[datapath.LbDecapVarLbDecapAnyDst].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set lb_decap_any_dst: %w", err)
		}
	}
	var objs datapath.LbDecapObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load decap program: %+v", ve)
		}
		return nil, fmt.Errorf("load decap program: %w", err)
	}
	return &Decap{Program: objs.MptcpxDecap, Addrs: objs.MptcpxDcAddrs, Stats: objs.MptcpxDcStats}, nil
}

// AddAddr makes packets to a decapsulated (an address of this backend, the outer destination the
// balancer uses).
func (d *Decap) AddAddr(a netip.Addr) error { return PutDecapAddr(d.Addrs, a) }

// DeleteAddr stops decapsulating packets to a.
func (d *Decap) DeleteAddr(a netip.Addr) error {
	if err := d.Addrs.Delete(addr16(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete decap address %s: %w", a, err)
	}
	return nil
}

// ReadStats sums the per-CPU counters (StatPackets, StatDecap, StatMalformed move).
func (d *Decap) ReadStats() (Stats, error) { return readStats(d.Stats) }

// Close releases the program and its maps.
func (d *Decap) Close() error {
	return errors.Join(d.Program.Close(), d.Addrs.Close(), d.Stats.Close())
}
