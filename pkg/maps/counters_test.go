package maps

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// A counters map whose value is laid out as an older (counters only) or newer (counters, then
// scratch) mptcp-xdp pinned it reads the same.
func TestReadCountersAnyLayout(t *testing.T) {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range []uint32{uint32(countersSize), uint32(countersSize + 24), uint32(countersSize + 4)} {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: vs, MaxEntries: 2})
		if err != nil {
			t.Fatal(err)
		}
		vals := make([][]byte, ncpu)
		for cpu := range vals {
			v := make([]byte, vs)
			for i := 0; i < mptcp.NumPacketCounters+mptcp.NumClasses; i++ {
				binary.NativeEndian.PutUint64(v[8*i:], uint64(1000*cpu+i+1))
			}
			for i := countersSize; i < int(vs); i++ {
				v[i] = 0xff // scratch must not leak into the counters
			}
			vals[cpu] = v
		}
		if err := m.Put(uint32(Egress), vals); err != nil {
			t.Fatal(err)
		}
		got, err := ReadCounters(m, Egress)
		m.Close()
		if err != nil {
			t.Fatalf("value size %d: %v", vs, err)
		}
		var want Counters
		for cpu := 0; cpu < ncpu; cpu++ {
			for i := range want.Packets {
				want.Packets[i] += uint64(1000*cpu + i + 1)
			}
			for i := range want.Options {
				want.Options[i] += uint64(1000*cpu + mptcp.NumPacketCounters + i + 1)
			}
		}
		if got != want {
			t.Errorf("value size %d: got %+v, want %+v", vs, got, want)
		}
	}

	small, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: uint32(countersSize - 8), MaxEntries: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	if _, err := ReadCounters(small, Ingress); err == nil {
		t.Error("a value too small for the counters read without error")
	}
}

func TestCountersJSONRoundTrip(t *testing.T) {
	var c Counters
	for i := range c.Packets {
		c.Packets[i] = uint64(i + 1)
	}
	for i := range c.Options {
		c.Options[i] = uint64(100 + i)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]map[string]uint64
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw["packets"]) != mptcp.NumPacketCounters || len(raw["options"]) != mptcp.NumClasses {
		t.Fatalf("JSON %s has %d packet and %d option fields", b, len(raw["packets"]), len(raw["options"]))
	}
	if raw["options"]["mp_join_syn"] != 100+uint64(mptcp.MPJoinSYN) || raw["packets"]["mptcp"] != 3 {
		t.Errorf("JSON %s misnames fields", b)
	}
	var back Counters
	if err := json.Unmarshal(b, &back); err != nil || back != c {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}
