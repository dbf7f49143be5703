package lb

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The walk of a table that the datapath changes meanwhile (the flow and token LRUs, the protected
// flows): one helper, in batches.
//
// Iterate walks a hash map with BPF_MAP_GET_NEXT_KEY from the key it stands on; when the datapath
// (or an LRU eviction) deletes that key in between, the kernel starts again from the first key, so
// a walk of a churning table returns entries twice and, past max_entries steps, gives up
// (ErrIterationAborted). BPF_MAP_LOOKUP_BATCH (Linux 5.6, for hash and LRU hash maps) walks the
// table bucket by bucket, copying each bucket whole under its lock, and its cursor is a bucket
// index: every entry that stays in the table for the whole walk is returned exactly once, and no
// entry twice, however the table churns.

// walkBatch is the number of entries a batch holds: large enough that a hash bucket always fits
// (the kernel refuses a batch smaller than a bucket: walk grows it then), small enough to stay a
// few hundred KiB.
const walkBatch = 4096

// batchLookup is (*ebpf.Map).BatchLookup; a test replaces it to take the fallback.
var batchLookup = (*ebpf.Map).BatchLookup

// walk calls fn on every entry of hash map mp, each key once, in batches of walkBatch. A kernel
// without batch lookups for the map's type (ErrNotSupported) gets Iterate instead, whose repeats
// are dropped by key (every key the walk returned is kept until it ends). fn's arguments are
// reused: copy what it keeps. An error of fn stops the walk and is returned.
func walk[K comparable, V any](mp *ebpf.Map, fn func(k *K, v *V) error) error {
	return walkN(mp, walkBatch, fn)
}

func walkN[K comparable, V any](mp *ebpf.Map, batch int, fn func(k *K, v *V) error) error {
	keys, vals := make([]K, batch), make([]V, batch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := batchLookup(mp, &cursor, keys, vals, nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return walkIterate(mp, fn)
		}
		if errors.Is(err, unix.ENOSPC) && n == 0 {
			// A bucket holds more entries than the batch: the cursor stays on it, so read it
			// again with room for it.
			batch *= 2
			keys, vals = make([]K, batch), make([]V, batch)
			continue
		}
		for i := range n {
			if ferr := fn(&keys[i], &vals[i]); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the end of the table (with the last entries, if any)
		}
		if err != nil {
			return fmt.Errorf("walk %s: %w", mapName(mp), err)
		}
	}
}

// walkIterate is walk with Iterate, dropping repeated keys.
func walkIterate[K comparable, V any](mp *ebpf.Map, fn func(k *K, v *V) error) error {
	var (
		k K
		v V
	)
	seen := map[K]struct{}{}
	it := mp.Iterate()
	for it.Next(&k, &v) {
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		if err := fn(&k, &v); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate %s: %w", mapName(mp), err)
	}
	return nil
}

// mapName is the kernel's name of mp, for errors.
func mapName(mp *ebpf.Map) string {
	if info, err := mp.Info(); err == nil && info.Name != "" {
		return info.Name
	}
	return mp.String()
}
