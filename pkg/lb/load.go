package lb

import (
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Config is what is fixed when the balancer's program is loaded.
type Config struct {
	// HashSeed of the 5-tuple hash; 0 keeps DefaultHashSeed. Every balancer in front of the same
	// backends must use the same seed (and the same rings) to place a flow alike.
	HashSeed uint32
	// CollisionIdle: a token mapping whose connection has been silent this long is taken over by
	// another backend's new connection with the same token; before that the newcomer is a
	// collision. 0 keeps 120 s.
	CollisionIdle time.Duration
	// TokenRefresh: how stale a token's LastSeen may get before a packet of one of its flows
	// refreshes it. 0 keeps 1 s.
	TokenRefresh time.Duration
	// NewFlowRate is the new-flow rate guard: at most this many new flows per second per CPU are
	// stored in the flow table; the rest are forwarded by Maglev, not stored (StatGuarded). 0 keeps
	// DefaultNewFlowRate; NewFlowRateUnlimited turns the guard off (every new flow stored).
	NewFlowRate uint32
	// Table sizes; 0 keeps the compiled-in size. MaxVIPs sizes the ring map (MaxVIPs * RingSize
	// slots); VIP IDs must stay below it.
	MaxVIPs, MaxFlows, MaxTokens uint32
	// PinPath: when set, every map is pinned by name in this bpffs directory, and maps already
	// pinned there are reused, so that programs loaded later (and restarted control planes) share
	// one balancer state.
	PinPath string
}

// The new-flow rate guard's settings (Config.NewFlowRate).
const (
	// DefaultNewFlowRate is Katran's MAX_CONN_RATE: new flows stored per second per CPU.
	DefaultNewFlowRate = 125000
	// NewFlowRateUnlimited turns the guard off.
	NewFlowRateUnlimited = ^uint32(0)
)

// Maps are the balancer's maps.
type Maps struct {
	VIPs, Backends, Ring, Flows, Tokens, Stats, Events *ebpf.Map
	// VIPStats and BackendStats are the per-VIP-id and per-backend counters (stats.go).
	VIPStats, BackendStats *ebpf.Map
	// PFlows holds the flows Maglev cannot find again (steered joins, flows of draining backends),
	// out of the flow table's LRU.
	PFlows *ebpf.Map
	// PHint is the protected table's hint (RefreshProtectHint); nil for a balancer pinned by a
	// mptcp-xdp without it, whose datapath has none.
	PHint *ebpf.Map
}

// Spec returns the balancer's collection spec with cfg applied.
func Spec(cfg Config) (*ebpf.CollectionSpec, error) {
	spec, err := datapath.LoadLb()
	if err != nil {
		return nil, fmt.Errorf("load balancer spec: %w", err)
	}
	set := func(name string, v any) error {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
		return nil
	}
	if cfg.HashSeed != 0 {
		if err := set(datapath.LbVarLbHashSeed, cfg.HashSeed); err != nil {
			return nil, err
		}
	}
	if cfg.CollisionIdle != 0 {
		if err := set(datapath.LbVarLbCollisionIdleNs, uint64(cfg.CollisionIdle)); err != nil {
			return nil, err
		}
	}
	if cfg.TokenRefresh != 0 {
		if err := set(datapath.LbVarLbTokenRefreshNs, uint64(cfg.TokenRefresh)); err != nil {
			return nil, err
		}
	}
	switch cfg.NewFlowRate {
	case 0:
	case NewFlowRateUnlimited:
		if err := set(datapath.LbVarLbNewFlowRate, uint32(0)); err != nil {
			return nil, err
		}
	default:
		if err := set(datapath.LbVarLbNewFlowRate, cfg.NewFlowRate); err != nil {
			return nil, err
		}
	}
	if cfg.MaxVIPs > MaxVIPs {
		return nil, fmt.Errorf("at most %d VIPs, not %d", MaxVIPs, cfg.MaxVIPs)
	}
	if cfg.MaxVIPs != 0 {
		spec.Maps[MapRing].MaxEntries = cfg.MaxVIPs * RingSize
	}
	if cfg.MaxFlows != 0 {
		spec.Maps[MapFlows].MaxEntries = cfg.MaxFlows
	}
	if cfg.MaxTokens != 0 {
		spec.Maps[MapTokens].MaxEntries = cfg.MaxTokens
	}
	if cfg.PinPath != "" {
		for _, m := range spec.Maps {
			if m.Name == MapVIPs || m.Name == MapBackends || m.Name == MapRing || m.Name == MapFlows ||
				m.Name == MapTokens || m.Name == MapStats || m.Name == MapEvents || m.Name == MapVIPStats ||
				m.Name == MapBEStats || m.Name == MapPFlows || m.Name == MapPHint {
				m.Pinning = ebpf.PinByName
			}
		}
	}
	return spec, nil
}

// OpenPinnedMaps opens the maps a balancer pinned in dir (Config.PinPath).
func OpenPinnedMaps(dir string) (*Maps, error) {
	m := &Maps{}
	for _, p := range []struct {
		name string
		m    **ebpf.Map
	}{
		{MapVIPs, &m.VIPs}, {MapBackends, &m.Backends}, {MapRing, &m.Ring}, {MapFlows, &m.Flows},
		{MapTokens, &m.Tokens}, {MapStats, &m.Stats}, {MapEvents, &m.Events},
		{MapVIPStats, &m.VIPStats}, {MapBEStats, &m.BackendStats}, {MapPFlows, &m.PFlows}, {MapPHint, &m.PHint},
	} {
		mp, err := ebpf.LoadPinnedMap(dir+"/"+p.name, nil)
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

// Close closes every map that is open.
func (m *Maps) Close() error {
	var errs []error
	for _, mp := range []*ebpf.Map{m.VIPs, m.Backends, m.Ring, m.Flows, m.Tokens, m.Stats, m.Events, m.VIPStats, m.BackendStats, m.PFlows, m.PHint} {
		if mp != nil {
			errs = append(errs, mp.Close())
		}
	}
	return errors.Join(errs...)
}
