package control

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcppm"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// This file is the backend's side of stateless join routing (RFC 8684's C flag): a backend behind
// balancers tells its clients not to open subflows to the VIP's own address and port
// (net.mptcp.allow_join_initial_addr_port=0 makes its MP_CAPABLE SYN-ACK carry the C flag), and
// announces the VIP with a port of its own (an MPTCP signal endpoint with a port: ADD_ADDR VIP:P,
// and the kernel accepts joins on it), so that every join reaches VIP:P, which the balancers map
// to this backend statically.

const joinSysctl = "/proc/sys/net/mptcp/allow_join_initial_addr_port"

// BackendSetupResult says what BackendSetup or BackendUndo found and did.
type BackendSetupResult struct {
	Netns    string            `json:"netns"`
	VIP      string            `json:"vip"`
	JoinPort uint16            `json:"join_port"`
	Sysctl   string            `json:"sysctl"`   // net.mptcp.allow_join_initial_addr_port as left
	Endpoint *mptcppm.Endpoint `json:"endpoint"` // the VIP's port endpoint as left (nil after undo)
	Changed  []string          `json:"changed"`  // what this call changed; empty when all was so already
}

// BackendSetup configures the kernel of network namespace ns (empty: the caller's) as a backend
// whose joins arrive on vip's address at joinPort: the C flag, and a signal endpoint for the VIP's
// address with joinPort. It is idempotent. The VIP's address must be local (a backend of a DSR
// balancer has it on lo). A kernel without the sysctl or without port endpoints is refused with
// a *loader.FeatureError naming it.
func BackendSetup(ns string, vip netip.AddrPort, joinPort uint16) (*BackendSetupResult, error) {
	return backendSetup(ns, vip, joinPort, false)
}

// BackendUndo undoes BackendSetup: the VIP's port endpoint is deleted and the sysctl set back to 1
// (the kernel's default). It is idempotent.
func BackendUndo(ns string, vip netip.AddrPort, joinPort uint16) (*BackendSetupResult, error) {
	return backendSetup(ns, vip, joinPort, true)
}

func backendSetup(ns string, vip netip.AddrPort, joinPort uint16, undo bool) (*BackendSetupResult, error) {
	if !vip.Addr().IsValid() || vip.Port() == 0 {
		return nil, fmt.Errorf("--vip %s: want ADDR:PORT", vip)
	}
	if joinPort == 0 || joinPort == vip.Port() {
		return nil, fmt.Errorf("--join-port %d: want a port other than 0 and the VIP's own (%d)", joinPort, vip.Port())
	}
	a := vip.Addr().Unmap()
	if !undo {
		res, err := NewResolver(ns)
		if err != nil {
			return nil, err
		}
		local, err := res.IsLocal(a)
		res.Close()
		if err != nil {
			return nil, err
		}
		if !local {
			return nil, fmt.Errorf("--vip %s: not an address of this host; a backend of a DSR balancer has the VIP on lo (ip addr add %s dev lo)", a, hostPrefix(a))
		}
	}
	r := &BackendSetupResult{Netns: ns, VIP: vip.String(), JoinPort: joinPort, Changed: []string{}}
	err := netns.Do(ns, func() error {
		cur, err := os.ReadFile(joinSysctl)
		if errors.Is(err, os.ErrNotExist) {
			return &loader.FeatureError{Feature: "the net.mptcp.allow_join_initial_addr_port sysctl (the C flag)", Kernel: "5.14", Err: err}
		}
		if err != nil {
			return err
		}
		r.Sysctl = strings.TrimSpace(string(cur))
		eps, err := mptcppm.List()
		if err != nil {
			return err
		}
		var have *mptcppm.Endpoint
		for i, e := range eps {
			if e.Addr == a {
				if e.Port != joinPort || e.Flags&mptcppm.FlagSignal == 0 {
					return fmt.Errorf("endpoint %d already holds %s (port %d, flags %#x): delete it first (ip mptcp endpoint delete id %d)", e.ID, a, e.Port, e.Flags, e.ID)
				}
				have = &eps[i]
			}
		}
		want := "0"
		if undo {
			want = "1"
			if have != nil {
				if err := mptcppm.Delete(have.ID); err != nil {
					return err
				}
				r.Changed = append(r.Changed, fmt.Sprintf("deleted endpoint %d (%s port %d)", have.ID, a, joinPort))
			}
		} else {
			if have == nil {
				e, err := mptcppm.Add(mptcppm.Endpoint{Addr: a, Port: joinPort, Flags: mptcppm.FlagSignal})
				if err != nil {
					return err
				}
				if e.Port != joinPort {
					_ = mptcppm.Delete(e.ID)
					return &loader.FeatureError{Feature: "MPTCP endpoints with a port", Kernel: "5.12", Err: fmt.Errorf("endpoint listed without its port")}
				}
				have = &e
				r.Changed = append(r.Changed, fmt.Sprintf("added signal endpoint %d (%s port %d)", e.ID, a, joinPort))
			}
			r.Endpoint = have
		}
		if r.Sysctl != want {
			if err := os.WriteFile(joinSysctl, []byte(want), 0o644); err != nil {
				return fmt.Errorf("set net.mptcp.allow_join_initial_addr_port=%s: %w", want, err)
			}
			r.Changed = append(r.Changed, fmt.Sprintf("net.mptcp.allow_join_initial_addr_port %s -> %s", r.Sysctl, want))
			r.Sysctl = want
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

func hostPrefix(a netip.Addr) string {
	if a.Is4() {
		return a.String() + "/32"
	}
	return a.String() + "/128"
}
