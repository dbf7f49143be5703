package lb

// The decapsulator loaded on its own, for the packet tests of this package; programs attach
// through pkg/loader, which writes its maps through the same DecapMaps.SetAllow.

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// DecapConfig is what is fixed when a test loads the decapsulator.
type DecapConfig struct {
	// AnyDst decapsulates whatever the outer destination (lb_decap_any_dst, which the loader
	// never sets); otherwise only packets to a DecapAllow.Local address.
	AnyDst bool
}

// Decap is the decapsulator loaded without pins, for packet tests; its maps are written through
// DecapMaps.SetAllow, as the loader writes them.
type Decap struct {
	Program *ebpf.Program
	*DecapMaps
}

// LoadDecap loads the decapsulator, with an empty allowlist.
func LoadDecap(cfg DecapConfig) (*Decap, error) {
	spec, err := DecapSpec(false)
	if err != nil {
		return nil, err
	}
	if cfg.AnyDst {
		if err := spec.Variables[datapath.LbDecapVarLbDecapAnyDst].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set lb_decap_any_dst: %w", err)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load decap program: %+v", ve)
		}
		return nil, fmt.Errorf("load decap program: %w", err)
	}
	maps, err := DecapMapsOf(coll)
	if err != nil {
		coll.Close()
		return nil, err
	}
	d := &Decap{Program: coll.Programs[DecapProg], DecapMaps: maps}
	delete(coll.Programs, DecapProg) // d owns them now
	for _, name := range []string{MapDecapAddr, MapDecapVIPs, MapDecapStat} {
		delete(coll.Maps, name)
	}
	coll.Close() // the .rodata map, held by the program
	return d, nil
}

// Close releases the program and its maps.
func (d *Decap) Close() error { return errors.Join(d.Program.Close(), d.DecapMaps.Close()) }
