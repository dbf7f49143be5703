package exporter

import (
	"fmt"
	"slices"
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// collectBalancers exports every balancer pinned under the loader's LB root (one per network
// namespace, labelled by its pin directory's name, as `lb status` names it), read from its pinned
// maps under the loader's shared lock. One balancer that cannot be read fails the source but not
// the others.
func (e *Exporter) collectBalancers(ch chan<- prometheus.Metric) error {
	unlock, err := e.loader.RLock()
	if err != nil {
		return err
	}
	defer unlock()
	bals, err := e.loader.Balancers()
	if err != nil {
		return fmt.Errorf("list balancers: %w", err)
	}
	var errs []error
	for _, b := range bals {
		if err := collectBalancer(ch, b.Netns, b.Dir); err != nil {
			errs = append(errs, fmt.Errorf("balancer %s: %w", b.Netns, err))
		}
	}
	return joinErrs(errs)
}

// collectBalancer exports the balancer pinned in dir, of namespace ns, through read-only map fds.
func collectBalancer(ch chan<- prometheus.Metric, ns, dir string) error {
	m, err := lb.OpenPinnedMapsReadOnly(dir)
	if err != nil {
		return err
	}
	defer m.Close()
	// Everything is read before anything is sent, so that a failed read sends nothing half made.
	st, err := m.ReadStats()
	if err != nil {
		return err
	}
	vips, err := m.ListVIPs()
	if err != nil {
		return err
	}
	backends, err := m.ListBackends()
	if err != nil {
		return err
	}
	occ, err := m.Occupancy()
	if err != nil {
		return err
	}
	vipStats := map[uint32]lb.VIPStats{}
	for _, v := range vips {
		if _, ok := vipStats[v.ID]; ok {
			continue
		}
		if vipStats[v.ID], err = m.ReadVIPStats(v.ID); err != nil {
			return err
		}
	}
	health, err := readHealth(dir)
	if err != nil {
		return err
	}
	beStats := make([]lb.BackendStats, len(backends))
	for i, b := range backends {
		if beStats[i], err = m.ReadBackendStats(b.ID); err != nil {
			return err
		}
	}

	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for i, v := range st {
		counter(descLBCounter, v, ns, lb.Stat(i).String())
	}
	for _, t := range []struct {
		name    string
		entries int
		cap     uint32
	}{
		{"vips", len(vips), m.VIPs.MaxEntries()},
		{"backends", len(backends), m.Backends.MaxEntries()},
		{"flows", occ.Flows, m.Flows.MaxEntries()},
		{"tokens", occ.Tokens, m.Tokens.MaxEntries()},
	} {
		gauge(descLBTableEntries, float64(t.entries), ns, t.name)
		gauge(descLBTableCapacity, float64(t.cap), ns, t.name)
	}

	for _, v := range vips {
		gauge(descLBVIPInfo, 1, ns, strconv.FormatUint(uint64(v.ID), 10), v.Addr.String(), v.Forward.String(),
			v.UnknownJoin.String(), strconv.FormatBool(v.JoinSteering))
	}
	ids := make([]uint32, 0, len(vipStats))
	for id := range vipStats {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s, l := vipStats[id], []string{ns, strconv.FormatUint(uint64(id), 10)}
		counter(descLBVIPPackets, s[lb.VIPStatPackets], l...)
		counter(descLBVIPNewFlows, s[lb.VIPStatNewFlow], l...)
		counter(descLBVIPGuarded, s[lb.VIPStatGuarded], l...)
		counter(descLBVIPLearned, s[lb.VIPStatTokenLearned], l...)
		counter(descLBVIPSteered, s[lb.VIPStatJoinSteered], l...)
		for _, o := range []struct {
			outcome string
			stat    lb.VIPStat
		}{{"drop", lb.VIPStatJoinUnknownDrop}, {"hash", lb.VIPStatJoinUnknownHash}, {"pass", lb.VIPStatJoinUnknownPass}} {
			counter(descLBVIPUnknown, s[o.stat], append(l, o.outcome)...)
		}
		counter(descLBVIPCollisions, s[lb.VIPStatCollision], l...)
		counter(descLBVIPTakeovers, s[lb.VIPStatTokenReplaced], l...)
		for _, r := range []struct {
			reason string
			stat   lb.VIPStat
		}{{"no_backend", lb.VIPStatNoBackend}, {"mtu", lb.VIPStatMTU}, {"fwd_error", lb.VIPStatFwdError}} {
			counter(descLBVIPPassed, s[r.stat], append(l, r.reason)...)
		}
	}

	for i, b := range backends {
		s, l := beStats[i], []string{ns, b.Addr.String(), strconv.FormatUint(uint64(b.ID), 10)}
		active, draining := 1.0, 0.0
		if b.Draining {
			active, draining = 0, 1
		}
		gauge(descLBBackendState, active, append(l, "active")...)
		gauge(descLBBackendState, draining, append(l, "draining")...)
		gauge(descLBBackendFlows, float64(occ.FlowsByBackend[b.ID]), l...)
		gauge(descLBBackendTokens, float64(occ.TokensByBackend[b.ID]), l...)
		counter(descLBBackendNewFlows, s[lb.BackendStatNewFlow], l...)
		counter(descLBBackendLearned, s[lb.BackendStatTokenLearned], l...)
		counter(descLBBackendSteered, s[lb.BackendStatJoinSteered], l...)
		counter(descLBBackendHashed, s[lb.BackendStatJoinHashed], l...)
		counter(descLBBackendColl, s[lb.BackendStatCollision], l...)
		counter(descLBBackendTakeover, s[lb.BackendStatTokenReplaced], l...)
		counter(descLBBackendFwd, s[lb.BackendStatForwarded], l...)
		counter(descLBBackendPassed, s[lb.BackendStatMTU], append(l, "mtu")...)
		counter(descLBBackendPassed, s[lb.BackendStatFwdError], append(l, "fwd_error")...)
	}
	ids = ids[:0]
	for k := range health {
		ids = append(ids, k.VIP)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	for _, b := range backends {
		for _, vid := range ids {
			h, ok := health[loader.HealthKey{VIP: vid, Backend: b.ID}]
			if _, vip := vipStats[vid]; !ok || !vip {
				continue
			}
			up := 0.0
			if h.State == loader.HealthUp {
				up = 1
			}
			gauge(descLBBackendHealthy, up, ns, b.Addr.String(), strconv.FormatUint(uint64(b.ID), 10), strconv.FormatUint(uint64(vid), 10))
		}
	}
	return nil
}

// readHealth reads the health map pinned in a balancer's directory through a read-only fd (none:
// nothing is checked there).
func readHealth(dir string) (map[loader.HealthKey]loader.HealthEntry, error) {
	m, err := loader.OpenLBHealth(dir, true)
	if err != nil || m == nil {
		return nil, err
	}
	defer m.Close()
	return loader.ReadHealth(m)
}
