package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// The balancer's health map (pinned beside the weights, the control plane's own: no program reads
// it): the state of each checked (VIP, backend) pair, written by the health checker of `lb run`
// (pkg/control, health.go) and read by every process that computes a VIP's Maglev table (a backend
// that is down takes no slot of that VIP's), by `lb status` and by the exporter. A pair without
// an entry is not checked, and counts as up.

// PinLBHealth is the control plane's map of backend health, per VIP.
const PinLBHealth = "mptcpx_lb_health"

// HealthKey is one (VIP, backend) pair of the health map: the VIP's ring id and the backend's id.
type HealthKey struct {
	VIP     uint32
	Backend uint32
}

// Health states of a HealthEntry.
const (
	HealthUp   uint32 = 1
	HealthDown uint32 = 2
)

// HealthReasonLen bounds the reason a HealthEntry keeps (the check's error, truncated).
const HealthReasonLen = 112

// HealthEntry is the state of one pair: up or down, since when (Unix nanoseconds), and the result
// of the check that made it so ("" for a success).
type HealthEntry struct {
	State  uint32
	_      uint32
	Since  int64
	Reason [HealthReasonLen]byte
}

// NewHealthEntry is an entry with reason truncated to fit.
func NewHealthEntry(state uint32, since int64, reason string) HealthEntry {
	e := HealthEntry{State: state, Since: since}
	copy(e.Reason[:], reason)
	return e
}

// ReasonString is the entry's reason.
func (e HealthEntry) ReasonString() string {
	return strings.TrimRight(string(e.Reason[:]), "\x00")
}

// LBHealthSpec is the health map of a balancer of that many backends: one entry per checked
// pair, allocated on update.
func LBHealthSpec(backends uint32) *ebpf.MapSpec {
	return &ebpf.MapSpec{
		Name: PinLBHealth, Type: ebpf.Hash, KeySize: 8, ValueSize: 16 + HealthReasonLen,
		MaxEntries: lb.MaxVIPs * backends, Flags: unix.BPF_F_NO_PREALLOC, Pinning: ebpf.PinByName,
	}
}

// createLBHealth creates (or opens) the health map pinned in dir. A pinned one of another layout
// (an older mptcp-xdp's) is replaced: its states are soft, the checks learn them again (every
// backend counts as up meanwhile).
func createLBHealth(dir string, backends uint32) error {
	spec := LBHealthSpec(backends)
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		if err := os.Remove(filepath.Join(dir, PinLBHealth)); err != nil {
			return fmt.Errorf("replace the health map of another layout: %w", err)
		}
		m, err = ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: dir})
	}
	if err != nil {
		return fmt.Errorf("create the health map: %w", err)
	}
	return m.Close()
}

// OpenLBHealth opens the health map pinned in a balancer's directory, read-only if asked; a
// balancer attached by an mptcp-xdp without it has none (nil, no error): nothing is checked there.
func OpenLBHealth(dir string, readOnly bool) (*ebpf.Map, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinLBHealth), &ebpf.LoadPinOptions{ReadOnly: readOnly})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned map %s: %w", PinLBHealth, err)
	}
	return m, nil
}

// ReadHealth reads every entry of a health map (nil: none).
func ReadHealth(m *ebpf.Map) (map[HealthKey]HealthEntry, error) {
	out := map[HealthKey]HealthEntry{}
	if m == nil {
		return out, nil
	}
	var k HealthKey
	var v HealthEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", PinLBHealth, err)
	}
	return out, nil
}
