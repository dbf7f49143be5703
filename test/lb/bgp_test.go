package lb

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/labbgp"
	"github.com/mptcp-xdp/mptcp-xdp/internal/lablb"
)

// TestLBRunAnnounces: `lb run --config` with a bgp section, BIRD 2 in the client's namespace as
// the router (a v4 and a v6 session to the balancer's first path), the router's kernel FIB as the
// ground truth. The VIPs (v4, v6 over MP-BGP) appear there through the balancer's addresses once
// it serves; `lb backend drain` of every backend withdraws them and `lb backend add` brings them
// back; the health check failing for every backend withdraws them and its recovery brings them
// back; lb status shows the sessions and the announcements; a reload that removes a peer takes
// only what that session carried, the other route staying in the FIB throughout; SIGTERM
// withdraws them before lb run exits, leaving the datapath pinned; a SIGKILLed lb run takes its
// sessions with it, and a killed speaker process is started again; and `lb detach` under a running lb run has it withdraw them first.
// Every latency is logged (docs/lb.md, "BGP", quotes them).
func TestLBRunAnnounces(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
	defer cancel()
	s := newConfigSetup(ctx, t, lablb.Config{Prefix: fmt.Sprintf("bg%06x", time.Now().UnixNano()&0xffffff), NoEndpoints: true})
	l := s.Lab
	port := s.vip.Port()
	var hl []*healthListener
	for _, b := range l.Backends {
		hl = append(hl, listenHealth(ctx, t, b, port))
	}
	p0 := l.Paths[0]
	r, err := labbgp.New(l.Client, labbgp.Config{RouterID: p0.ClientIP4, ASN: 65000, Peers: []labbgp.Peer{
		{Addr: p0.LBIP4, ASN: 65001}, {Addr: p0.LBIP6, ASN: 65001},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("bird log:\n%s", r.Log())
		}
		r.Close()
	})
	vip4 := netip.PrefixFrom(l.VIP4, 32)
	vip6 := netip.PrefixFrom(l.VIP6, 128)
	file := filepath.Join(t.TempDir(), "lb.yaml")
	write := func(v6Peer bool) {
		t.Helper()
		var cfg strings.Builder
		cfg.WriteString(s.configInterfaces())
		cfg.WriteString("health_check:\n  interval: 200ms\n  timeout: 100ms\n  rise: 2\n  fall: 2\n")
		fmt.Fprintf(&cfg, "vips:\n  - addr: %s\n  - addr: \"[%s]:%d\"\nbackends:\n", s.vip, l.VIP6, port)
		for _, b := range l.Backends {
			fmt.Fprintf(&cfg, "  - addr: %s\n", b.IP4)
		}
		fmt.Fprintf(&cfg, "bgp:\n  local_asn: 65001\n  router_id: %s\n  peers:\n", p0.LBIP4)
		fmt.Fprintf(&cfg, "    - address: %s\n      asn: 65000\n      hold_time: 9s\n", p0.ClientIP4)
		if v6Peer {
			fmt.Fprintf(&cfg, "    - address: %s\n      asn: 65000\n      hold_time: 9s\n", p0.ClientIP6)
		}
		if err := os.WriteFile(file, []byte(cfg.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(true)
	t.Cleanup(func() { _, _ = mxErr("--netns", l.LB, "lb", "detach") })

	wait := func(what string, since time.Time, hops4, hops6 []netip.Addr, cp *controlPlane) time.Duration {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		defer wcancel()
		for _, w := range []struct {
			p    netip.Prefix
			hops []netip.Addr
		}{{vip4, hops4}, {vip6, hops6}} {
			got, err := r.WaitNextHops(wctx, w.p, len(w.hops))
			if err != nil {
				t.Fatalf("%s: %v\nlb run:\n%s", what, err, cp.logs)
			}
			for i := range w.hops {
				if got[i] != w.hops[i] {
					t.Fatalf("%s: %s via %v, want %v", what, w.p, got, w.hops)
				}
			}
		}
		d := time.Since(since)
		t.Logf("%s: %s", what, d.Round(time.Millisecond))
		return d
	}
	up4, up6 := []netip.Addr{p0.LBIP4}, []netip.Addr{p0.LBIP6}

	t0 := time.Now()
	cp := startControlPlane(t, l.LB, "--config", file, "--refresh-interval", "1s")
	wait("lb run start -> VIPs in the router's FIB", t0, up4, up6, cp)

	// lb status: both sessions established (the state file is rewritten every second), from the
	// balancer's addresses.
	st := lbStatus(t, l.LB)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); st = lbStatus(t, l.LB) {
		if st.BGP != nil && len(st.BGP.Peers) == 2 && st.BGP.Peers[0].State == "established" && st.BGP.Peers[1].State == "established" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.BGP == nil || st.BGP.LocalASN != 65001 || len(st.BGP.Peers) != 2 || len(st.BGP.VIPs) != 2 {
		t.Fatalf("lb status bgp: %+v", st.BGP)
	}
	for _, p := range st.BGP.Peers {
		if p.State != "established" || (p.Local != p0.LBIP4 && p.Local != p0.LBIP6) {
			t.Fatalf("lb status peer %+v: want established from the balancer's namespace\n%s", p, cp.logs)
		}
	}
	if strings.Count(cp.logs.String(), "state=established") != 2 {
		t.Logf("a session went down and up again after the first announcements:\n%s", cp.logs)
	}
	for _, v := range st.BGP.VIPs {
		if !v.Announced || v.Reason != "serving" || v.Backends != 3 {
			t.Fatalf("lb status vip %+v", v)
		}
	}
	text := mx(t, "--netns", l.LB, "lb", "status")
	if !strings.Contains(text, "VIP ADDRESS") || !strings.Contains(text, "established") {
		t.Fatalf("lb status has no BGP table:\n%s", text)
	}

	// Drain every backend: withdrawn. Active again: announced.
	var addrs []string
	for _, b := range l.Backends {
		addrs = append(addrs, b.IP4.String())
	}
	t0 = time.Now()
	mx(t, append([]string{"--netns", l.LB, "lb", "backend", "drain"}, addrs...)...)
	wait("lb backend drain of every backend -> VIPs gone from the FIB", t0, nil, nil, cp)
	st = lbStatus(t, l.LB)
	if st.BGP == nil || st.BGP.VIPs[0].Announced || st.BGP.VIPs[0].Reason != "no backend serves" {
		t.Fatalf("lb status after the drain: %+v", st.BGP)
	}
	t0 = time.Now()
	mx(t, append([]string{"--netns", l.LB, "lb", "backend", "add"}, addrs...)...)
	wait("lb backend add (active again) -> VIPs back in the FIB", t0, up4, up6, cp)

	// Every backend fails its health check: withdrawn (fall 2 x 200ms); back: announced.
	t0 = time.Now()
	for _, h := range hl {
		h.ln.Close()
	}
	wait("health check failing on every backend (interval 200ms, fall 2) -> VIPs gone", t0, nil, nil, cp)
	t0 = time.Now()
	for _, b := range l.Backends {
		listenHealth(ctx, t, b, port)
	}
	wait("health check passing again (rise 2) -> VIPs back", t0, up4, up6, cp)

	// A reload that removes the v6 session takes the v6 route (only that session carries it) and
	// leaves the v4 one, which stays in the FIB throughout; adding it back brings the v6 route back.
	gaps := make(chan int, 1)
	watchCtx, endWatch := context.WithCancel(ctx)
	go func() {
		n := 0
		for watchCtx.Err() == nil {
			if h, err := r.Routes(vip4); err != nil || len(h) != 1 {
				n++
			}
			time.Sleep(10 * time.Millisecond)
		}
		gaps <- n
	}()
	write(false)
	t0 = time.Now()
	mx(t, "--netns", l.LB, "lb", "reload", "--config", file)
	wait("reload without the v6 peer -> v6 VIP gone, v4 stays", t0, up4, nil, cp)
	write(true)
	t0 = time.Now()
	mx(t, "--netns", l.LB, "lb", "reload", "--config", file)
	wait("reload with the v6 peer again -> v6 VIP back", t0, up4, up6, cp)
	endWatch()
	if n := <-gaps; n != 0 {
		t.Fatalf("the v4 route was missing from the FIB at %d samples during the reloads\n%s", n, cp.logs)
	}

	// The speaker process killed under lb run: its sessions close (routes gone), lb run starts it
	// again within a second and it announces again.
	child := speakerChild(t, cp.cmd.Process.Pid)
	t0 = time.Now()
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wait("SIGKILL of the speaker child -> VIPs gone", t0, nil, nil, cp)
	wait("SIGKILL of the speaker child -> started again, VIPs back", t0, up4, up6, cp)
	if n := speakerChild(t, cp.cmd.Process.Pid); n == child {
		t.Fatalf("the speaker is still pid %d", n)
	}

	// SIGTERM: withdrawn before lb run exits; the datapath stays pinned.
	t0 = time.Now()
	if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	wait("SIGTERM -> VIPs gone", t0, nil, nil, cp)
	if !cp.waitExit(30 * time.Second) {
		t.Fatalf("lb run still running after SIGTERM:\n%s", cp.logs)
	}
	t.Logf("SIGTERM -> lb run exited: %s", time.Since(t0).Round(time.Millisecond))
	logs := cp.logs.String()
	w, stopped := strings.Index(logs, "bgp: vip withdrawn"), strings.Index(logs, "balancer loop stopped")
	if w < 0 || stopped < 0 || w > stopped {
		t.Fatalf("want the withdrawal logged before the loop stops (at %d, %d):\n%s", w, stopped, logs)
	}
	if st := lbStatus(t, l.LB); len(st.VIPs) != 2 || st.BGP != nil {
		t.Fatalf("after lb run's exit: the datapath should stay (and no bgp state): %+v", st)
	}

	// SIGKILL of lb run: its speaker sees its stdin close, withdraws and closes the sessions.
	t0 = time.Now()
	cp = startControlPlane(t, l.LB, "--config", file, "--refresh-interval", "1s")
	wait("lb run restarted -> VIPs in the FIB", t0, up4, up6, cp)
	t0 = time.Now()
	cp.kill(t)
	wait("SIGKILL of lb run -> VIPs gone (its speaker child follows it)", t0, nil, nil, cp)

	// lb detach under a running lb run: withdrawn.
	t0 = time.Now()
	cp = startControlPlane(t, l.LB, "--config", file, "--refresh-interval", "1s")
	wait("lb run restarted -> VIPs in the FIB", t0, up4, up6, cp)
	t0 = time.Now()
	mx(t, "--netns", l.LB, "lb", "detach")
	wait("lb detach -> VIPs gone", t0, nil, nil, cp)
	// lb detach asked lb run first (SIGUSR1): the withdrawal came before the datapath went, not
	// from lb run noticing the pins gone.
	if !strings.Contains(cp.logs.String(), `msg="bgp: vip withdrawn" vip=`+l.VIP4.String()+` reason=detaching`) {
		t.Fatalf("no withdrawal for the detach in lb run's log:\n%s", cp.logs)
	}
	if !cp.waitExit(60 * time.Second) {
		t.Fatalf("lb run still running after lb detach:\n%s", cp.logs)
	}
}

// speakerChild is the pid of lb run's speaker process (`mptcp-xdp lb bgp-speaker`, a child of
// parent).
func speakerChild(t *testing.T, parent int) int {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		cmdline, err2 := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil || err2 != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, the fields after its ')' do not.
		_, rest, _ := strings.Cut(string(stat), ") ")
		f := strings.Fields(rest)
		if len(f) > 1 && f[1] == strconv.Itoa(parent) && strings.Contains(string(cmdline), "bgp-speaker") {
			return pid
		}
	}
	t.Fatalf("no bgp-speaker child of lb run (pid %d)", parent)
	return 0
}
