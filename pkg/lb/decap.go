package lb

import (
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// PutDecapAddr makes the decapsulator whose address map is m decapsulate outer packets to a (an
// address of the backend, the outer destination the balancer uses). It is the one writer of that
// map: the loader's attach and the tests use it.
func PutDecapAddr(m *ebpf.Map, a netip.Addr) error {
	if err := m.Put(addr16(a), uint32(1)); err != nil {
		return fmt.Errorf("add decap address %s: %w", a, err)
	}
	return nil
}
