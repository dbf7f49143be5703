package exporter

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
)

// The exporter reads backend health from the pinned health map that lb run writes, from its own
// process: a series per checked (backend, VIP id) pair of a backend in the table, 1 up and 0 down;
// none for a pair not checked, for an entry of a backend or a VIP that is gone, or for a balancer
// without a health map.
func TestBalancerHealthMetrics(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(testutil.TempBPFFS(t, "mxhc-exporter-"), "mptcp-xdp")
	ld, err := loader.New(root)
	if err != nil {
		t.Fatal(err)
	}
	dir := ld.LBDir("mxhc-ns")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	spec, err := lb.Spec(lb.Config{MaxVIPs: 2, MaxFlows: 1024, MaxTokens: 1024, PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	spec.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	m, err := lb.OpenPinnedMaps(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	for _, v := range []lb.VIP{{Addr: netip.MustParseAddrPort("10.0.0.10:80"), ID: 0}, {Addr: netip.MustParseAddrPort("10.0.0.10:443"), ID: 1}} {
		if err := m.PutVIP(v); err != nil {
			t.Fatal(err)
		}
	}
	for id, a := range []string{"10.2.0.2", "10.2.1.2", "10.2.2.2"} {
		if err := m.PutBackend(lb.Backend{ID: uint32(id), Addr: netip.MustParseAddr(a), MAC: mac, SrcMAC: mac, Ifindex: 1}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := New(Config{Root: root, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if mf := gather(t, e)["mptcp_xdp_lb_backend_healthy"]; mf != nil {
		t.Errorf("series without a health map: %v", mf)
	}
	h, err := ebpf.NewMapWithOptions(loader.LBHealthSpec(lb.MaxBackends), ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for k, state := range map[loader.HealthKey]uint32{
		{VIP: 0, Backend: 0}: loader.HealthUp, {VIP: 0, Backend: 1}: loader.HealthDown, {VIP: 1, Backend: 1}: loader.HealthUp,
		{VIP: 0, Backend: 7}: loader.HealthDown, // a backend not in the table
	} {
		if err := h.Put(k, loader.NewHealthEntry(state, 1, "")); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]float64{}
	for _, s := range gather(t, e)["mptcp_xdp_lb_backend_healthy"].GetMetric() {
		got[label(s, "netns")+" "+label(s, "backend")+"/"+label(s, "backend_id")+" vip "+label(s, "vip_id")] = value(s)
	}
	want := map[string]float64{"mxhc-ns 10.2.0.2/0 vip 0": 1, "mxhc-ns 10.2.1.2/1 vip 0": 0, "mxhc-ns 10.2.1.2/1 vip 1": 1}
	if len(got) != len(want) {
		t.Errorf("health series %v, want %v", got, want)
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s: %v (present %v), want %v", k, g, ok, v)
		}
	}
}
