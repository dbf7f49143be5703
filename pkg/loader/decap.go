package loader

// The backends' decapsulator's allowlist (lb.DecapAllow): written at every attach through
// lb.DecapMaps.SetAllow, the one writer of its maps, and read back for `lb decap`.

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// ErrDecapAllowEmpty is returned by AttachDecap when no balancer source address or no VIP is
// given: the decapsulator would accept nothing (and the safe default is not to guess).
var ErrDecapAllowEmpty = errors.New("the decapsulator needs the balancers' source addresses and the VIPs it may receive")

// writeDecapAllow makes the decapsulator's maps in coll accept exactly o's balancers and VIPs, to
// every address of the namespace it runs in (the caller's, inside netns.Do).
func writeDecapAllow(coll *ebpf.Collection, o LBAttachOptions) error {
	maps, err := lb.DecapMapsOf(coll)
	if err != nil {
		return err
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	allow := lb.DecapAllow{Balancers: o.DecapBalancers, VIPs: o.DecapVIPs}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			allow.Local = append(allow.Local, ip.Unmap())
		}
	}
	if err := maps.SetAllow(allow); err != nil {
		return fmt.Errorf("decapsulator allowlist: %w", err)
	}
	return nil
}

// DecapStatus is what `lb decap -o json` prints; field names are part of the JSON contract
// (docs/lb.md).
type DecapStatus struct {
	Netns      string        `json:"netns"`
	PinDir     string        `json:"pin_dir"`
	Interfaces []LBLink      `json:"decap"`     // the interfaces it is attached to
	Local      []string      `json:"local"`     // outer destinations decapsulated: the namespace's addresses at the last attach
	Balancers  []string      `json:"balancers"` // outer sources accepted (--balancer)
	VIPs       []string      `json:"vips"`      // inner TCP destinations accepted (--vip): ADDR:PORT, or ADDR for every port
	Stats      lb.DecapStats `json:"stats"`
}

// ErrDecapNotAttached is returned by DecapStatus for a namespace with no decapsulator.
var ErrDecapNotAttached = errors.New("no decapsulator attached")

// DecapStatus reads the decapsulator of a namespace: its interfaces, allowlist and counters.
func (l *Loader) DecapStatus(netnsName string) (*DecapStatus, error) {
	nsDir, err := NetnsDir(netnsName)
	if err != nil {
		return nil, err
	}
	dir := l.DecapDir(nsDir)
	links, err := l.LBLinks(netnsName, true)
	if errors.Is(err, ErrLBNotAttached) {
		return nil, fmt.Errorf("%w in network namespace %s", ErrDecapNotAttached, nsDir)
	}
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, lb.MapDecapVIPs)); err != nil {
		return nil, fmt.Errorf("decapsulator pinned in %s has no %s: attach it again with this version", dir, lb.MapDecapVIPs)
	}
	maps, err := lb.OpenPinnedDecap(dir)
	if err != nil {
		return nil, err
	}
	defer maps.Close()
	allow, err := maps.Allow()
	if err != nil {
		return nil, err
	}
	st, err := maps.ReadStats()
	if err != nil {
		return nil, err
	}
	out := &DecapStatus{Netns: nsDir, PinDir: dir, Interfaces: links, Stats: st,
		Local: []string{}, Balancers: []string{}, VIPs: []string{}}
	for _, a := range allow.Local {
		out.Local = append(out.Local, a.String())
	}
	for _, a := range allow.Balancers {
		out.Balancers = append(out.Balancers, a.String())
	}
	for _, v := range allow.VIPs {
		out.VIPs = append(out.VIPs, lb.DecapVIPString(v))
	}
	return out, nil
}
