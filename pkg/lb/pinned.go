package lb

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/cilium/ebpf"
)

// OpenPinnedMapsReadOnly opens the maps a balancer pinned in dir as OpenPinnedMaps does, each
// through a read-only file descriptor (BPF_F_RDONLY): the kernel refuses every update and delete
// through them with EPERM, whatever the pin's mode or its mount allows (a read-only mount does not
// stop BPF_OBJ_GET from returning a writable fd). The exporter reads balancers through it.
func OpenPinnedMapsReadOnly(dir string) (*Maps, error) {
	return openPinnedMaps(dir, &ebpf.LoadPinOptions{ReadOnly: true})
}

// openPinnedMaps opens the maps pinned in dir with opts (nil: read-write).
func openPinnedMaps(dir string, opts *ebpf.LoadPinOptions) (*Maps, error) {
	m := &Maps{}
	for _, p := range m.pinned() {
		mp, err := ebpf.LoadPinnedMap(dir+"/"+p.name, opts)
		if errors.Is(err, fs.ErrNotExist) && p.name == MapPHint {
			continue // pinned by an older mptcp-xdp: its datapath keeps no hint
		}
		if err != nil {
			m.Close()
			if errors.Is(err, fs.ErrNotExist) && (p.name == MapVIPStats || p.name == MapBEStats || p.name == MapPFlows) {
				return nil, fmt.Errorf("open pinned map %s: %w (a balancer attached by an older mptcp-xdp: attach it again to add the map)", p.name, err)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", p.name, err)
		}
		*p.m = mp
	}
	return m, nil
}

// pinned pairs each map of m with the name it is pinned under.
func (m *Maps) pinned() []struct {
	name string
	m    **ebpf.Map
} {
	return []struct {
		name string
		m    **ebpf.Map
	}{
		{MapVIPs, &m.VIPs}, {MapBackends, &m.Backends}, {MapRing, &m.Ring}, {MapFlows, &m.Flows},
		{MapTokens, &m.Tokens}, {MapStats, &m.Stats}, {MapEvents, &m.Events},
		{MapVIPStats, &m.VIPStats}, {MapBEStats, &m.BackendStats}, {MapPFlows, &m.PFlows}, {MapPHint, &m.PHint},
	}
}
