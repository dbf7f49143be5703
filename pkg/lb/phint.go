package lb

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// The protected table's hint (bpf/include/mx_lb.h, mptcpx_lb_phint, struct lb_phint): an epoch, and
// per slot the low byte of the epoch in which a key of that slot was last marked. A new SYN skips
// the protected table's lookup when its key's slot is older than the epoch before the current
// one: every key the table holds is marked before it is stored (by the datapath and by PutFlows
// and ProtectFlows), and RefreshProtectHint marks them all again before it moves to the next
// epoch. The map is memory-mapped, and the control plane writes single bytes into it (and the
// epoch, which only it writes), never a whole value over the datapath's marks.
const (
	phintMarking = 1 // keys are marked, the hint is not trusted yet
	phintTrusted = 2 // LB_PHINT_TRUSTED: the first epoch that is
)

var (
	phintSlots   = uint32(len(datapath.LbLbPhint{}.Slot))
	phintSlotOff = int64(unsafe.Offsetof(datapath.LbLbPhint{}.Slot))
)

// protectHintSettle is how long RefreshProtectHint waits, once the datapath marks keys, before it
// marks what the table holds: longer than any program run that read the epoch before.
const protectHintSettle = 10 * time.Millisecond

// protectHintSlot is lb_phint_slot: key k's slot.
func protectHintSlot(k datapath.LbLbFlowId) uint32 {
	var b [24]byte
	copy(b[:16], k.Src[:])
	binary.NativeEndian.PutUint16(b[16:], k.Sport)
	binary.NativeEndian.PutUint16(b[18:], k.Dport)
	binary.NativeEndian.PutUint32(b[20:], k.VipId)
	w := func(i int) uint32 { return binary.NativeEndian.Uint32(b[4*i:]) }
	h := (w(0) ^ w(1) ^ w(2) ^ w(3)) * 0x9e3779b1
	h ^= w(4) * 0x85ebca6b
	h ^= w(5) * 0xc2b2ae35
	h ^= h >> 15
	h *= 0x2c1b3c6d
	h ^= h >> 12
	return h & (phintSlots - 1)
}

// protectHint is the hint's memory, nil for a balancer without the map (pinned by an older
// mptcp-xdp, whose datapath keeps no hint).
func (m *Maps) protectHint() (*ebpf.Memory, error) {
	if m.PHint == nil {
		return nil, nil
	}
	mem, err := m.PHint.Memory()
	if err != nil {
		return nil, fmt.Errorf("map the protected table's hint: %w", err)
	}
	return mem, nil
}

func hintEpoch(mem *ebpf.Memory) (uint32, error) {
	var b [4]byte
	if _, err := mem.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("read the protected table's hint: %w", err)
	}
	return binary.NativeEndian.Uint32(b[:]), nil
}

func setHintEpoch(mem *ebpf.Memory, e uint32) error {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], e)
	if _, err := mem.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("write the protected table's hint: %w", err)
	}
	return nil
}

// protectHintMarks reads the epoch and the slot of key k (tests).
func (m *Maps) protectHintMarks(k datapath.LbLbFlowId) (epoch uint32, slot uint8, err error) {
	mem, err := m.protectHint()
	if err != nil || mem == nil {
		return 0, 0, err
	}
	if epoch, err = hintEpoch(mem); err != nil {
		return 0, 0, err
	}
	var b [1]byte
	if _, err := mem.ReadAt(b[:], phintSlotOff+int64(protectHintSlot(k))); err != nil {
		return 0, 0, err
	}
	return epoch, b[0], nil
}

// markProtected marks keys, to be put into the protected table, with the hint's epoch.
func (m *Maps) markProtected(keys []datapath.LbLbFlowId) error {
	mem, err := m.protectHint()
	if err != nil || mem == nil {
		return err
	}
	e, err := hintEpoch(mem)
	if err != nil || e == 0 {
		return err
	}
	return markIn(mem, keys, e)
}

func markIn(mem *ebpf.Memory, keys []datapath.LbLbFlowId, e uint32) error {
	b := []byte{byte(e)}
	for _, k := range keys {
		if _, err := mem.WriteAt(b, phintSlotOff+int64(protectHintSlot(k))); err != nil {
			return fmt.Errorf("mark a protected flow in the hint: %w", err)
		}
	}
	return nil
}

// RefreshProtectHint marks every key of the protected table with the hint's epoch and moves to the
// next, so that the slots of keys the table no longer holds grow old and new SYNs of those slots
// skip the table's lookup again (two calls after a key went). The first call on a balancer starts
// the hint: it marks (epoch 1) without trusting it, waits for programs that read the epoch
// before, marks the table, and trusts it from then on. lb run calls it at start and after every GC;
// callers that write the protected table hold the lock it holds. A balancer without the hint map
// (pinned by an older mptcp-xdp) has nothing to do.
func (m *Maps) RefreshProtectHint() error {
	mem, err := m.protectHint()
	if err != nil || mem == nil || m.PFlows == nil {
		return err
	}
	e, err := hintEpoch(mem)
	if err != nil {
		return err
	}
	if e < phintTrusted {
		e = phintMarking
		if err := setHintEpoch(mem, e); err != nil {
			return err
		}
		time.Sleep(protectHintSettle)
	}
	var keys []datapath.LbLbFlowId
	err = walk(m.PFlows, func(k *datapath.LbLbFlowId, _ *datapath.LbLbFlow) error {
		keys = append(keys, *k)
		return nil
	})
	if err != nil {
		return fmt.Errorf("refresh the protected table's hint: %w", err)
	}
	if err := markIn(mem, keys, e); err != nil {
		return err
	}
	next := e + 1
	if next < phintTrusted { // wrapped (after 2^32 refreshes): start again
		next = phintMarking
	}
	return setHintEpoch(mem, next)
}
