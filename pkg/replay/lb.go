package replay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/control"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// LBFeedMax is the longest frame run through the balancer. The balancer, unlike the counting
// programs, rewrites and measures whole frames, so they are not cut; BPF_PROG_TEST_RUN takes a page
// less its head and tail room. A longer frame is a GRO/GSO aggregate of the capturing host, which a
// live balancer passes to its stack (the aggregate counter): it is not run, and is counted apart.
const LBFeedMax = 3072

// Decision is what the balancer did with one subflow's frames to a VIP: where the first one went
// and why, and how many of the later ones went elsewhere.
type Decision struct {
	// Backend is the address of the backend the first frame was forwarded to; empty when it was
	// not forwarded.
	Backend string `json:"backend"`
	// Action: forward, drop (the unknown-join policy), pass (to the balancer's own stack) or icmp
	// (answered with an ICMP "fragmentation needed" / "packet too big").
	Action string `json:"action"`
	// Reason: maglev (a new flow placed by its slot), token (an MP_JOIN SYN steered by the token
	// the balancer learned), unknown_token_drop, unknown_token_hash (placed by its slot) and
	// unknown_token_pass (a join whose token the balancer does not hold, by policy), flow_table (a
	// flow the balancer already held: the capture began after its SYN), maglev_unstored (a non-SYN
	// frame of no known flow, placed by its slot and not stored), no_backend, mtu, icmp_too_big,
	// fwd_error, malformed; join_port (to a backend's join port: its owner, statelessly).
	Reason string `json:"reason"`
	// Slot is the flow's slot in the VIP's Maglev table (reasons maglev, unknown_token_hash,
	// maglev_unstored).
	Slot *uint32 `json:"maglev_slot,omitempty"`
	// Token: an initial subflow's server token once the balancer learned it from the MP_CAPABLE
	// third ACK (its token table's key), a join's the token its MP_JOIN SYN named.
	Token *stats.Token `json:"token,omitempty"`
	// Frames are the subflow's frames to a VIP; Elsewhere those not sent where the first was
	// (another backend, or not forwarded).
	Frames    uint64 `json:"frames"`
	Elsewhere uint64 `json:"frames_elsewhere"`
}

// LBBackend is one backend of the replayed balancer and what reached it.
type LBBackend struct {
	Addr     string `json:"addr"`
	ID       uint32 `json:"id"`
	Weight   uint32 `json:"weight"`
	Subflows uint64 `json:"subflows"` // subflows whose first frame to the VIP went to it
	Frames   uint64 `json:"frames"`
}

// LBResult is a capture run through the balancer.
type LBResult struct {
	File        string            `json:"file"`
	FrameCounts                   // Cut: the balancer saw less than the wire had
	Aggregate   uint64            `json:"aggregates"` // longer than LBFeedMax: not run (a live balancer passes them)
	VIPFrames   uint64            `json:"vip_frames"` // frames to a VIP
	Stats       map[string]uint64 `json:"stats"`      // the balancer's counters over the whole capture, as `lb status` names them
	Backends    []LBBackend       `json:"backends"`
	Conns       []*Connection     `json:"connections"`
	Orphan      []*Subflow        `json:"unmatched_subflows"`
}

// lbMAC is the MAC address the replayed balancer writes for backend i: how a forwarded frame
// names its backend, in both forwarding modes.
func lbMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x6d, 0x78, 0x00, byte(i >> 8), byte(i)}
}

// RunLB runs the capture at path through the balancer spec describes (its VIPs and their policy,
// backends and hash seed: from lb attach's flags, Spec.Desired, or a config file, LoadConfig), one frame at a time in capture order, with
// maps of its own: nothing is attached and nothing forwarded. Frames are grouped by connection as
// with --per-connection, each subflow carrying the balancer's decision.
func RunLB(path string, spec *control.Desired) (*LBResult, error) {
	if len(spec.VIPs) == 0 || len(spec.Backends) == 0 {
		return nil, errors.New("replay --lb: give at least one --vip and one --backend, as to lb attach")
	}
	c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return nil, fmt.Errorf("replay --lb: the loopback interface: %w", err)
	}
	// Each backend gets a next hop of its own on lo (BPF_PROG_TEST_RUN runs frames as received on
	// lo, so a forwarded frame is transmitted back there, never sent), named by its MAC.
	hops := make([]control.NextHop, len(spec.Backends))
	byMAC := map[string]netip.Addr{}
	for i, b := range spec.Backends {
		src := netip.MustParseAddr("192.0.2.1") // TEST-NET-1: the outer source of ipip
		if b.Addr.Is6() {
			src = netip.MustParseAddr("2001:db8::1")
		}
		hops[i] = control.NextHop{Addr: b.Addr, Ifindex: lo.Index, Iface: lo.Name, SrcMAC: lbMAC(0xffff),
			DstMAC: lbMAC(i), SrcAddr: src, State: "permanent"}
		byMAC[lbMAC(i).String()] = b.Addr.Unmap()
	}
	off, err := control.NewOfflineConfig(spec, hops...)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("replay --lb: %w", ErrNoPrivilege)
		}
		return nil, fmt.Errorf("replay --lb: %w", err)
	}
	defer off.Close()
	joinPorts := map[netip.AddrPort]bool{}
	for _, jp := range spec.JoinPorts {
		joinPorts[jp.Addr] = true
	}
	r := &LBResult{File: path}
	track := newTracker()
	prev, err := off.Maps.ReadStats()
	if err != nil {
		return nil, err
	}
	start := prev
	perBackend := map[netip.Addr]*LBBackend{}
	for _, be := range off.List() {
		perBackend[be.Addr] = &LBBackend{Addr: be.Addr.String(), ID: be.ID, Weight: be.Weight}
	}
	out := make([]byte, LBFeedMax+256)
	opts := ebpf.RunOptions{Repeat: 1}
	err = c.each(&r.FrameCounts, func(f Frame) error {
		if len(f.Data) > LBFeedMax {
			r.Aggregate++
			track.frame(f)
			return nil
		}
		// The tracker reads the frame before the program sees it (the program works on a copy).
		sf := track.frame(f)
		opts.Data, opts.DataOut = f.Data, out
		ret, err := off.Program.Run(&opts)
		if err != nil {
			return fmt.Errorf("%s: frame %d: %w", path, r.Frames, err)
		}
		now, err := off.Maps.ReadStats()
		if err != nil {
			return err
		}
		d := now.Sub(prev)
		prev = now
		if d[lb.StatVIP] == 0 {
			return nil
		}
		r.VIPFrames++
		backend, action, to := netip.Addr{}, "pass", ""
		switch ret {
		case 1:
			action = "drop"
		case 3, 4: // XDP_TX, XDP_REDIRECT
			action = "forward"
			if d[lb.StatICMPTooBig] != 0 {
				action = "icmp"
			} else if len(opts.DataOut) >= 6 {
				backend = byMAC[net.HardwareAddr(opts.DataOut[:6]).String()]
			}
		}
		if pb := perBackend[backend]; pb != nil {
			pb.Frames++
			to = backend.String()
		}
		if sf == nil {
			return nil // a VIP frame the tracker could not read (the balancer counted it malformed)
		}
		dec := sf.LB
		if dec == nil {
			dec = &Decision{Action: action, Reason: reason(d, action)}
			if joinPorts[sf.Dst] && action == "forward" {
				dec.Reason = "join_port" // the port's owner, whoever holds the token
			}
			dec.Backend = to
			if pb := perBackend[backend]; pb != nil {
				pb.Subflows++
			}
			switch dec.Reason {
			case "maglev", "unknown_token_hash", "maglev_unstored":
				slot := lb.FlowHash(lb.FlowKey{Src: sf.Src, Dst: sf.Dst}, off.Seed) % lb.RingSize
				dec.Slot = &slot
			}
			if sf.Kind == "join" && sf.Token != nil {
				t := *sf.Token
				dec.Token = &t
			}
			sf.LB = dec
		} else if to != dec.Backend || action != dec.Action {
			dec.Elsewhere++
		}
		dec.Frames++
		if d[lb.StatTokenLearned] != 0 {
			if fl, ok, err := off.Maps.LookupFlow(lb.FlowKey{Src: sf.Src, Dst: sf.Dst}); err == nil && ok && fl.Token != 0 {
				t := stats.Token(fl.Token)
				dec.Token = &t
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.Stats = prev.Sub(start).Map()
	r.Conns, r.Orphan = track.result()
	for _, pb := range perBackend {
		r.Backends = append(r.Backends, *pb)
	}
	sort.Slice(r.Backends, func(i, j int) bool { return r.Backends[i].ID < r.Backends[j].ID })
	if r.Conns == nil {
		r.Conns = []*Connection{}
	}
	if r.Orphan == nil {
		r.Orphan = []*Subflow{}
	}
	return r, nil
}

// reason names why the balancer sent a subflow's first VIP frame where it did, from the counters
// that frame moved.
func reason(d lb.Stats, action string) string {
	switch {
	case d[lb.StatMalformed] != 0:
		return "malformed"
	case d[lb.StatJoinSteered] != 0:
		return "token"
	case d[lb.StatJoinUnknown] != 0 && d[lb.StatJoinDropped] != 0:
		return "unknown_token_drop"
	case d[lb.StatJoinUnknown] != 0 && action == "pass":
		return "unknown_token_pass"
	case d[lb.StatJoinUnknown] != 0:
		return "unknown_token_hash"
	case d[lb.StatNewFlow] != 0:
		return "maglev"
	case d[lb.StatNonSYNMiss] != 0:
		return "maglev_unstored"
	case d[lb.StatFlowHit] != 0:
		return "flow_table"
	case d[lb.StatNoBackend] != 0:
		return "no_backend"
	case d[lb.StatICMPTooBig] != 0:
		return "icmp_too_big"
	case d[lb.StatMTU] != 0:
		return "mtu"
	case d[lb.StatFwdError] != 0:
		return "fwd_error"
	}
	return "unknown"
}
