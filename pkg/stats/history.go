package stats

// Closed subflows from the subflow history (bpf/sockops.c, enabled with `mptcp-xdp history
// enable`): Reader.Subflows adds them to the live ones the iterator reads.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/loader"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

type histEntry = datapath.SockOpsMxSfHist

// SetHistoryDir makes the reader take closed subflows from the history pinned in dir (a
// loader.Loader's HistoryRoot; by default the one of loader.DefaultRoot). An empty dir turns the
// history off for this reader. Without pins in dir, Subflows returns live subflows only.
func (r *Reader) SetHistoryDir(dir string) {
	r.mu.Lock()
	r.histDir = dir
	r.mu.Unlock()
}

func defaultHistoryDir() string { return (&loader.Loader{Root: loader.DefaultRoot}).HistoryRoot() }

// netnsCookie is the cookie of network namespace ns (SO_NETNS_COOKIE, 5.14), the value the sock_ops
// program records with bpf_get_netns_cookie.
func netnsCookie(ns string) (uint64, error) {
	var cookie uint64
	err := netns.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var v uint64
		l := uint32(unsafe.Sizeof(v))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE,
			uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
		if e != 0 {
			return e
		}
		cookie = v
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cookie of %s (SO_NETNS_COOKIE, Linux 5.14): %w", nsName(ns), err)
	}
	return cookie, nil
}

// bootNow is CLOCK_BOOTTIME, the clock of the history's times.
func bootNow() (time.Duration, time.Time) {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, now
	}
	return time.Duration(ts.Nano()), now
}

// addHistory adds to live (the iterator's subflows of ns) the closed subflows of ns from the history,
// sets the establishment time of the live ones it knows, and deletes the closed entries older than the
// history's age limit (of every namespace: they are shown to no one).
func (r *Reader) addHistory(ns string, live []Subflow) ([]Subflow, error) {
	if r.histDir == "" {
		return live, nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(r.histDir, loader.PinHistoryMap), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return live, nil // history not enabled
		}
		return nil, fmt.Errorf("open subflow history: %w", err)
	}
	defer m.Close()
	maxAge := loader.DefaultHistoryMaxAge
	if cm, err := ebpf.LoadPinnedMap(filepath.Join(r.histDir, loader.PinHistoryCfg), nil); err == nil {
		var cfg datapath.SockOpsMxHistCfg
		if cm.Lookup(uint32(0), &cfg) == nil && cfg.MaxAgeNs != 0 {
			maxAge = time.Duration(cfg.MaxAgeNs)
		}
		cm.Close()
	}
	nsc, err := netnsCookie(ns)
	if err != nil {
		return nil, err
	}
	boot, now := bootNow()
	booted := now.Round(0).Add(-boot) // no monotonic reading: these are dates
	at := func(ns uint64) time.Time {
		if ns == 0 {
			return time.Time{}
		}
		return booted.Add(time.Duration(ns))
	}

	liveIdx := make(map[uint64]int, len(live))
	for i := range live {
		liveIdx[live[i].Cookie] = i
	}
	var (
		key   uint64
		h     histEntry
		stale []uint64
		out   = live
	)
	it := m.Iterate()
	for it.Next(&key, &h) {
		if h.ClosedNs != 0 && boot-time.Duration(h.ClosedNs) > maxAge {
			stale = append(stale, key)
			continue
		}
		if h.NetnsCookie != nsc {
			continue
		}
		if i, ok := liveIdx[key]; ok {
			live[i].Established = at(h.EstablishedNs)
			continue
		}
		if h.ClosedNs == 0 {
			continue // open, but not seen by the iterator (closing right now, or missed its close)
		}
		rec := record(h.Rec) // the same struct mx_subflow_rec, generated from both objects
		s := fromRecord(&rec)
		s.Closed = true
		s.Established, s.ClosedAt = at(h.EstablishedNs), at(h.ClosedNs)
		out = append(out, s)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read subflow history: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("age out subflow history entry: %w", err)
		}
	}
	return out, nil
}
