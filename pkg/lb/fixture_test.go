package lb

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// The tests share one balancer (verifying the program takes a while on a loaded machine) and
// reset its maps before each test.
var (
	sharedOnce sync.Once
	shared     *Balancer
	sharedEvts *EventReader
	sharedErr  error
	loIfindex  int
)

func balancer(t *testing.T) *Balancer {
	t.Helper()
	sharedOnce.Do(func() {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			sharedErr = err
			return
		}
		loIfindex = lo.Index
		if shared, sharedErr = Load(testConfig); sharedErr != nil {
			return
		}
		sharedEvts, sharedErr = NewEventReader(shared.Maps)
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	m := shared.Maps
	vips, err := m.ListVIPs()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vips {
		if err := m.DeleteVIP(v.Addr); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint32(0); id < 16; id++ {
		if err := m.DeleteBackend(id); err != nil {
			t.Fatal(err)
		}
	}
	clearMap := func(name string, list func() ([]any, error), del func(any) error) {
		ks, err := list()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if err := del(k); err != nil {
				t.Fatalf("clear %s: %v", name, err)
			}
		}
	}
	clearMap("flows", func() ([]any, error) {
		var (
			k    datapath.LbLbFlowId
			v    datapath.LbLbFlow
			keys []any
		)
		it := m.Flows.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		return keys, it.Err()
	}, func(k any) error { return m.Flows.Delete(k) })
	clearMap("protected flows", func() ([]any, error) {
		var (
			k    datapath.LbLbFlowId
			v    datapath.LbLbFlow
			keys []any
		)
		it := m.PFlows.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		return keys, it.Err()
	}, func(k any) error { return m.PFlows.Delete(k) })
	clearMap("tokens", func() ([]any, error) {
		var (
			k    datapath.LbLbTokenKey
			v    datapath.LbLbToken
			keys []any
		)
		it := m.Tokens.Iterate()
		for it.Next(&k, &v) {
			keys = append(keys, k)
		}
		return keys, it.Err()
	}, func(k any) error { return m.Tokens.Delete(k) })
	// The rate guard starts afresh too: a test's SYN flood engages it (it lets a third ACK of no
	// flow teach a token for two seconds), which the next test must not inherit.
	if err := shared.guardOn.Put(uint32(0), uint64(0)); err != nil {
		t.Fatal(err)
	}
	if err := shared.guard.Put(uint32(0), make([]datapath.LbLbGuard, ebpf.MustPossibleCPU())); err != nil {
		t.Fatal(err)
	}
	drainEvents(t)
	return shared
}

// drainEvents returns the events queued so far.
func drainEvents(t *testing.T) []Event {
	t.Helper()
	var out []Event
	for {
		sharedEvts.SetDeadline(time.Now())
		e, err := sharedEvts.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}
