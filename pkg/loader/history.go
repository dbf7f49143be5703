package loader

// The subflow history: one sock_ops program for the whole host (bpf/sockops.c), attached with a
// bpf_link to the root of the cgroup v2 hierarchy so that every TCP socket of every network namespace
// passes through it. Its pins sit beside <Root> (like the balancer's, see lb.go):
//
//	<Root>-history/link_sockops     bpf_link of the program to the cgroup v2 root
//	<Root>-history/mptcpx_sf_hist   LRU hash: socket cookie → struct mx_sf_hist
//	<Root>-history/mptcpx_hist_cfg  the readers' age limit (struct mx_hist_cfg)
//
// Needs cgroup sock_ops (4.13), bpf_link for cgroups (5.7), bpf_skc_to_mptcp_sock (5.19) and
// bpf_get_netns_cookie in sock_ops (5.15).

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// History pin names.
const (
	PinHistoryLink = "link_sockops"
	PinHistoryMap  = datapath.SockOpsMapMptcpxSfHist
	PinHistoryCfg  = datapath.SockOpsMapMptcpxHistCfg
)

// historyPins are the history's pins (the registry's, pins.go): its cgroup link and its maps.
func historyPins() []pinDef {
	return []pinDef{
		{PinHistoryLink, ObjectLink, "sock_ops", "bpf_link"},
		{PinHistoryMap, ObjectMap, "", ""},
		{PinHistoryCfg, ObjectMap, "", ""},
	}
}

// History defaults.
const (
	DefaultHistoryEntries = 16384
	DefaultHistoryMaxAge  = 10 * time.Minute
	// FallbackCgroup2 is where EnableHistory mounts a cgroup v2 hierarchy when none is mounted.
	FallbackCgroup2 = "/run/mptcp-xdp/cgroup2"
)

// HistoryRoot is the directory of the history pins: Root with "-history" appended.
func (l *Loader) HistoryRoot() string { return l.Root + "-history" }

// HistoryOptions configure `history enable`.
type HistoryOptions struct {
	// MaxEntries bounds the history map (LRU: the least recently touched entry goes when it is
	// full); 0 means DefaultHistoryEntries. Ignored when the map is already pinned (it is kept).
	MaxEntries uint32
	// MaxAge is how long a closed subflow is listed (and kept) after it closed; 0 means
	// DefaultHistoryMaxAge.
	MaxAge time.Duration
	// Cgroup is the cgroup v2 directory to attach to; empty means the root of the mounted cgroup v2
	// hierarchy (mounted at FallbackCgroup2 when none is).
	Cgroup string
}

// HistoryStatus describes the history's pins.
type HistoryStatus struct {
	Enabled    bool    `json:"enabled"`
	PinDir     string  `json:"pin_dir"`
	Cgroup     string  `json:"cgroup,omitempty"`    // the path attached to (when this process attached it)
	CgroupID   uint64  `json:"cgroup_id,omitempty"` // the cgroup the link is attached to
	LinkID     uint32  `json:"link_id,omitempty"`
	Program    Program `json:"program"`
	Map        MapInfo `json:"map"`
	MaxAge     string  `json:"max_age"`
	MaxAgeNs   uint64  `json:"max_age_ns"`
	MountedNow bool    `json:"mounted_cgroup2,omitempty"` // enable mounted a cgroup v2 hierarchy itself
}

// Cgroup2Root returns the mount point of the cgroup v2 hierarchy's root (from /proc/self/mountinfo).
// With mount set and none mounted, it mounts one at FallbackCgroup2 and reports mounted.
func Cgroup2Root(mount bool) (dir string, mounted bool, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false, fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || len(fields) < 5 || fields[sep+1] != "cgroup2" || fields[3] != "/" {
			continue
		}
		return unescapeMount(fields[4]), false, nil
	}
	if err := sc.Err(); err != nil {
		return "", false, fmt.Errorf("read /proc/self/mountinfo: %w", err)
	}
	if !mount {
		return "", false, errors.New("no cgroup v2 hierarchy is mounted")
	}
	if err := os.MkdirAll(FallbackCgroup2, 0o755); err != nil {
		return "", false, fmt.Errorf("create %s: %w", FallbackCgroup2, err)
	}
	if err := unix.Mount("cgroup2", FallbackCgroup2, "cgroup2", 0, ""); err != nil {
		return "", false, fmt.Errorf("mount cgroup2 on %s: %w", FallbackCgroup2, err)
	}
	return FallbackCgroup2, true, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// EnableHistory loads the sock_ops program and attaches it to the cgroup v2 root, pinning its link
// and maps. When it is already enabled, the program is replaced in place (the pinned map and its
// entries are kept) and the age limit updated. Subflows established before the program was attached
// are not followed.
func (l *Loader) EnableHistory(o HistoryOptions) (*HistoryStatus, error) {
	if o.MaxEntries == 0 {
		o.MaxEntries = DefaultHistoryEntries
	}
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultHistoryMaxAge
	}
	unlock, err := l.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock limit: %w", err)
	}
	mounted := false
	if o.Cgroup == "" {
		if o.Cgroup, mounted, err = Cgroup2Root(true); err != nil {
			return nil, err
		}
	}
	dir := l.HistoryRoot()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			l.removeHistoryIfUnused()
		}
	}()

	spec, err := datapath.LoadSockOps()
	if err != nil {
		return nil, fmt.Errorf("read embedded sock_ops object: %w", err)
	}
	spec.Maps[PinHistoryMap].MaxEntries = o.MaxEntries
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinHistoryMap), nil); err == nil {
		// Already enabled: keep the pinned map and its entries, at its size.
		spec.Maps[PinHistoryMap].MaxEntries = m.MaxEntries()
		m.Close()
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName // reuse the pinned maps when they exist
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	if err != nil && errors.Is(err, ebpf.ErrMapIncompatible) {
		// A map pinned by another build (other value layout or size): start the history afresh.
		_ = os.Remove(filepath.Join(dir, PinHistoryMap))
		_ = os.Remove(filepath.Join(dir, PinHistoryCfg))
		coll, err = ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: dir}})
	}
	if err != nil {
		if perr := ProbeHistory(); perr != nil {
			return nil, perr
		}
		return nil, fmt.Errorf("load sock_ops program: %w", err)
	}
	defer coll.Close()
	cfg := datapath.SockOpsMxHistCfg{MaxAgeNs: uint64(o.MaxAge)}
	if err := coll.Maps[PinHistoryCfg].Put(uint32(0), cfg); err != nil {
		return nil, fmt.Errorf("set history age limit: %w", err)
	}
	prog := coll.Programs[datapath.SockOpsProgMptcpxSockops]
	linkPin := filepath.Join(dir, PinHistoryLink)
	if old, err := link.LoadPinnedLink(linkPin, nil); err == nil {
		err = old.Update(prog)
		old.Close()
		if err != nil {
			return nil, fmt.Errorf("replace the pinned sock_ops program: %w", err)
		}
	} else {
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: o.Cgroup, Attach: ebpf.AttachCGroupSockOps, Program: prog})
		if err != nil {
			return nil, fmt.Errorf("attach sock_ops to cgroup %s: %w", o.Cgroup, err)
		}
		if err := lk.Pin(linkPin); err != nil {
			lk.Close()
			return nil, fmt.Errorf("pin sock_ops link: %w", err)
		}
		lk.Close()
	}
	ok = true
	st, err := l.historyStatus()
	if err != nil {
		return nil, err
	}
	st.Cgroup, st.MountedNow = o.Cgroup, mounted
	return st, nil
}

// DisableHistory detaches the sock_ops program and removes its pins (and its directory), forgetting
// the history. Disabling what is not enabled is not an error.
func (l *Loader) DisableHistory() error {
	unlock, err := l.Lock()
	if err != nil {
		return err
	}
	defer unlock()
	dir := l.HistoryRoot()
	unpinLink(filepath.Join(dir, PinHistoryLink))
	var errs []error
	for _, p := range []string{PinHistoryMap, PinHistoryCfg} {
		errs = append(errs, removePin(filepath.Join(dir, p)))
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// removeHistoryIfUnused removes the history directory after a failed enable that attached nothing.
func (l *Loader) removeHistoryIfUnused() {
	dir := l.HistoryRoot()
	if _, err := os.Stat(filepath.Join(dir, PinHistoryLink)); err == nil {
		return
	}
	for _, p := range []string{PinHistoryMap, PinHistoryCfg} {
		_ = os.Remove(filepath.Join(dir, p))
	}
	_ = os.Remove(dir)
}

// HistoryStatus describes the history's pins (Enabled false when there is no pinned link).
func (l *Loader) HistoryStatus() (*HistoryStatus, error) {
	unlock, err := l.RLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return l.historyStatus()
}

func (l *Loader) historyStatus() (*HistoryStatus, error) {
	dir := l.HistoryRoot()
	st := &HistoryStatus{PinDir: dir}
	lk, err := link.LoadPinnedLink(filepath.Join(dir, PinHistoryLink), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return st, nil
		}
		return nil, fmt.Errorf("open pinned sock_ops link: %w", err)
	}
	defer lk.Close()
	st.Enabled = true
	if info, err := lk.Info(); err == nil {
		st.LinkID = uint32(info.ID)
		st.Program = Program{Hook: "sock_ops", Mechanism: "bpf_link", Name: progName(uint32(info.Program)), ID: uint32(info.Program), LinkID: uint32(info.ID)}
		if c := info.Cgroup(); c != nil {
			st.CgroupID = c.CgroupId
		}
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinHistoryMap), nil); err == nil {
		st.Map = DescribeMap(m, filepath.Join(dir, PinHistoryMap))
		m.Close()
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, PinHistoryCfg), nil); err == nil {
		var cfg datapath.SockOpsMxHistCfg
		if m.Lookup(uint32(0), &cfg) == nil {
			st.MaxAgeNs = cfg.MaxAgeNs
			st.MaxAge = time.Duration(cfg.MaxAgeNs).String()
		}
		m.Close()
	}
	return st, nil
}

// ProbeHistory checks what the sock_ops program needs: sock_ops programs (4.13), and in them
// bpf_get_netns_cookie (5.15) and bpf_skc_to_mptcp_sock (5.19). The error is a *FeatureError.
func ProbeHistory() error {
	if err := features.HaveProgramType(ebpf.SockOps); err != nil {
		return &FeatureError{Feature: "cgroup sock_ops programs", Kernel: "4.13", Err: err}
	}
	if err := features.HaveProgramHelper(ebpf.SockOps, asm.FnGetNetnsCookie); err != nil {
		return &FeatureError{Feature: "bpf_get_netns_cookie in sock_ops programs", Kernel: "5.15", Err: err}
	}
	if err := features.HaveProgramHelper(ebpf.SockOps, asm.FnSkcToMptcpSock); err != nil {
		return &FeatureError{Feature: "bpf_skc_to_mptcp_sock (MPTCP with BPF)", Kernel: "5.19", Err: err}
	}
	return nil
}
