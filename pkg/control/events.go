package control

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// EventCounts counts the datapath events consumed, by type.
type EventCounts struct {
	ConnLearned   atomic.Uint64
	JoinSteered   atomic.Uint64
	JoinUnknown   atomic.Uint64
	Collision     atomic.Uint64
	TokenReplaced atomic.Uint64
	Other         atomic.Uint64
}

// Snapshot returns the counts by event name.
func (c *EventCounts) Snapshot() map[string]uint64 {
	return map[string]uint64{
		lb.EventConnLearned.String():   c.ConnLearned.Load(),
		lb.EventJoinSteered.String():   c.JoinSteered.Load(),
		lb.EventJoinUnknown.String():   c.JoinUnknown.Load(),
		lb.EventCollision.String():     c.Collision.Load(),
		lb.EventTokenReplaced.String(): c.TokenReplaced.Load(),
		"other":                        c.Other.Load(),
	}
}

func (c *EventCounts) count(t lb.EventType) {
	switch t {
	case lb.EventConnLearned:
		c.ConnLearned.Add(1)
	case lb.EventJoinSteered:
		c.JoinSteered.Add(1)
	case lb.EventJoinUnknown:
		c.JoinUnknown.Add(1)
	case lb.EventCollision:
		c.Collision.Add(1)
	case lb.EventTokenReplaced:
		c.TokenReplaced.Add(1)
	default:
		c.Other.Add(1)
	}
}

// EventPoll is how often ConsumeEvents reads the ring buffer without being woken: the datapath
// submits events without waking the consumer until the ring is a quarter full
// (LB_EVENTS_WAKE_BYTES), so an event waits at most this long.
const EventPoll = 100 * time.Millisecond

// ConsumeEvents reads the balancer's ring buffer until ctx ends, counting every event in counts
// and logging it: collisions and take-overs at warning level (they cost a connection its joins),
// the rest at debug level (a flood of forged joins must not flood the log; the counts show it).
// onEvent, if set, sees every event. It returns nil when ctx ends.
func ConsumeEvents(ctx context.Context, maps *lb.Maps, counts *EventCounts, onEvent func(lb.Event)) error {
	r, err := lb.NewEventReader(maps)
	if err != nil {
		return err
	}
	defer r.Close()
	for ctx.Err() == nil {
		r.SetDeadline(time.Now().Add(EventPoll))
		ev, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			slog.Warn("undecodable balancer event", "err", err)
			counts.Other.Add(1)
			continue
		}
		counts.count(ev.Type)
		attrs := []any{"type", ev.Type, "token", tokenHex(ev.Token), "backend", ev.Backend,
			"src", ev.Flow.Src, "dst", ev.Flow.Dst}
		switch ev.Type {
		case lb.EventCollision:
			slog.Warn("token collision: the newer connection cannot be joined", append(attrs, "holder", ev.Other)...)
		case lb.EventTokenReplaced:
			slog.Warn("idle token taken over by another backend", append(attrs, "previous", ev.Other)...)
		default:
			slog.Debug("balancer event", attrs...)
		}
		if onEvent != nil {
			onEvent(ev)
		}
	}
	return nil
}

func tokenHex(t uint32) string {
	const hex = "0123456789abcdef"
	var b [8]byte
	for i := 7; i >= 0; i-- {
		b[i] = hex[t&0xf]
		t >>= 4
	}
	return string(b[:])
}
