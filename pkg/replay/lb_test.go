package replay

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// TestRunLB runs one connection, its join, a join with a token no connection holds, a flow seen
// only from its middle and a frame to no VIP through the balancer, under each unknown-join policy
// and without join steering, and checks every decision and its reason.
func TestRunLB(t *testing.T) {
	const clientKey, serverKey = 0x0102030405060708, 0x1112131415161718
	st, _ := lb.ServerToken(serverKey)
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	a := netip.MustParseAddrPort("10.1.0.1:40000")   // the connection's initial subflow
	b := netip.MustParseAddrPort("10.1.1.1:50000")   // its join
	u := netip.MustParseAddrPort("10.1.0.1:40002")   // a join with an unknown token
	mid := netip.MustParseAddrPort("10.1.0.1:40003") // a flow whose SYN the capture missed
	other := netip.MustParseAddrPort("10.0.0.11:80") // not a VIP
	keys := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64([]byte{0x01, 0x81}, clientKey), serverKey)
	join := func(tok uint32) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{0x10, 1}, tok), 0, 0, 0, 1)
	}
	dss := []byte{0x20, 0x01, 0, 0, 0, 1}
	file := writePcap(t, layers.LinkTypeEthernet, [][]byte{
		tcpFrame(t, a, vip, true, false, []byte{0x01, 0x81}),
		tcpFrame(t, a, vip, false, true, keys),
		tcpFrame(t, a, vip, false, true, dss),
		tcpFrame(t, b, vip, true, false, join(st)),
		tcpFrame(t, b, vip, false, true, dss),
		tcpFrame(t, u, vip, true, false, join(st^1)),
		tcpFrame(t, mid, vip, false, true, dss),
		tcpFrame(t, netip.MustParseAddrPort("10.1.0.1:40004"), other, true, false, nil),
	}, func(f []byte) []byte { return f })
	backends := []control.BackendSpec{
		{Addr: netip.MustParseAddr("10.2.0.2"), Weight: 1},
		{Addr: netip.MustParseAddr("10.2.1.2"), Weight: 1},
	}
	slot := func(src netip.AddrPort) uint32 {
		return lb.FlowHash(lb.FlowKey{Src: src, Dst: vip}, lb.DefaultHashSeed) % lb.RingSize
	}
	for _, tc := range []struct {
		name     string
		policy   control.PolicyUpdate
		join     string // the reason of b's join
		unknown  string // action/reason of u's join
		vipFrame uint64
	}{
		{"drop", control.PolicyUpdate{}, "token", "drop/unknown_token_drop", 7},
		{"hash", control.PolicyUpdate{UnknownJoin: ptr(lb.JoinHash)}, "token", "forward/unknown_token_hash", 7},
		{"pass", control.PolicyUpdate{UnknownJoin: ptr(lb.JoinPass)}, "token", "pass/unknown_token_pass", 7},
		{"no-steering", control.PolicyUpdate{JoinSteering: ptr(false)}, "maglev", "forward/maglev", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := RunLB(file, control.Spec{VIPs: []netip.AddrPort{vip}, Policy: tc.policy, Backends: backends}.Desired())
			if err != nil {
				t.Fatal(err)
			}
			if r.Frames != 8 || r.VIPFrames != tc.vipFrame || r.Stats["vip"] != tc.vipFrame {
				t.Errorf("frames %d, to the VIP %d (counter %d), want 8 and %d", r.Frames, r.VIPFrames, r.Stats["vip"], tc.vipFrame)
			}
			sfs := map[netip.AddrPort]*Subflow{}
			for _, c := range r.Conns {
				for _, sf := range c.Subflows {
					sfs[sf.Src] = sf
				}
			}
			for _, sf := range r.Orphan {
				sfs[sf.Src] = sf
			}
			get := func(src netip.AddrPort) *Decision {
				t.Helper()
				sf := sfs[src]
				if sf == nil || sf.LB == nil {
					t.Fatalf("subflow from %s: %+v, no balancer decision", src, sf)
				}
				return sf.LB
			}
			ini := get(a)
			if ini.Action != "forward" || ini.Reason != "maglev" || ini.Slot == nil || *ini.Slot != slot(a) || ini.Frames != 3 || ini.Elsewhere != 0 {
				t.Errorf("initial subflow: %+v (slot %v), want forward by maglev slot %d, 3 frames, none elsewhere", *ini, ini.Slot, slot(a))
			}
			if tc.join == "token" && (ini.Token == nil || uint32(*ini.Token) != st) {
				t.Errorf("initial subflow: token %v, want the server's %08x", ini.Token, st)
			}
			j := get(b)
			if j.Reason != tc.join || j.Action != "forward" || j.Frames != 2 || j.Elsewhere != 0 {
				t.Errorf("join: %+v, want forward by %s, 2 frames", *j, tc.join)
			}
			if tc.join == "token" && (j.Backend != ini.Backend || j.Slot != nil || j.Token == nil || uint32(*j.Token) != st) {
				t.Errorf("join: backend %s token %v slot %v, want its connection's backend %s by token %08x", j.Backend, j.Token, j.Slot, ini.Backend, st)
			}
			if tc.join == "maglev" && (j.Slot == nil || *j.Slot != slot(b)) {
				t.Errorf("join without steering: slot %v, want %d", j.Slot, slot(b))
			}
			uj := get(u)
			if got := uj.Action + "/" + uj.Reason; got != tc.unknown || (uj.Action == "forward") != (uj.Backend != "") {
				t.Errorf("unknown-token join: %+v, want %s", *uj, tc.unknown)
			}
			if m := get(mid); m.Reason != "maglev_unstored" || m.Slot == nil || *m.Slot != slot(mid) || m.Backend == "" {
				t.Errorf("mid-flow frame: %+v, want maglev_unstored slot %d", *m, slot(mid))
			}
			if sf := sfs[netip.MustParseAddrPort("10.1.0.1:40004")]; sf == nil || sf.LB != nil {
				t.Errorf("the subflow to no VIP: %+v, want it seen and without a balancer decision", sf)
			}
			var placed uint64
			for _, be := range r.Backends {
				placed += be.Subflows
			}
			want := uint64(3) // a, b, mid
			if uj.Action == "forward" {
				want++
			}
			if placed != want {
				t.Errorf("backends %+v: %d subflows placed, want %d", r.Backends, placed, want)
			}
		})
	}
}

// Without a VIP or a backend there is nothing to run; with a backend's address as the VIP, the
// control plane's own check refuses.
func TestRunLBBadConfig(t *testing.T) {
	file := writePcap(t, layers.LinkTypeEthernet, nil, func(f []byte) []byte { return f })
	be := []control.BackendSpec{{Addr: netip.MustParseAddr("10.2.0.2"), Weight: 1}}
	for _, tc := range []struct {
		spec control.Spec
		want string
	}{
		{control.Spec{Backends: be}, "--vip"},
		{control.Spec{VIPs: []netip.AddrPort{netip.MustParseAddrPort("10.0.0.10:80")}}, "--backend"},
		{control.Spec{VIPs: []netip.AddrPort{netip.MustParseAddrPort("10.2.0.2:80")}, Backends: be}, "backend"},
	} {
		if _, err := RunLB(file, tc.spec.Desired()); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %s", tc.spec, err, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// A join to a backend's join port goes to that backend, named join_port, whatever its token: the
// balancer needs no state for it (and here has none: its connection's first subflow is not in the
// capture).
func TestRunLBJoinPort(t *testing.T) {
	vip := netip.MustParseAddrPort("10.0.0.10:80")
	owner := netip.MustParseAddr("10.2.1.2")
	jp := netip.AddrPortFrom(vip.Addr(), 20001)
	join := append(binary.BigEndian.AppendUint32([]byte{0x10, 1}, 0xdeadbeef), 0, 0, 0, 1)
	src := netip.MustParseAddrPort("10.1.1.1:50000")
	file := writePcap(t, layers.LinkTypeEthernet, [][]byte{
		tcpFrame(t, src, jp, true, false, join),
		tcpFrame(t, src, jp, false, true, []byte{0x20, 0x01, 0, 0, 0, 1}),
	}, func(f []byte) []byte { return f })
	d, err := control.ParseConfig([]byte("interfaces: [lo]\nvips:\n  - addr: 10.0.0.10:80\nbackends:\n  - addr: 10.2.0.2\n    join_port: 20000\n  - addr: 10.2.1.2\n    join_port: 20001\n"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := RunLB(file, d)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Orphan) != 1 || r.Orphan[0].LB == nil {
		t.Fatalf("subflows %+v, want the join with a decision", r.Orphan)
	}
	dec := r.Orphan[0].LB
	if dec.Reason != "join_port" || dec.Backend != owner.String() || dec.Action != "forward" || dec.Frames != 2 || dec.Elsewhere != 0 {
		t.Errorf("join to %s: %+v, want forward to %s by join_port, 2 frames", jp, *dec, owner)
	}
	if r.Stats["join_unknown"] != 0 || r.Stats["join_dropped"] != 0 {
		t.Errorf("the join port's join was judged by token: %v", r.Stats)
	}
}
