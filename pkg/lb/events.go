package lb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// EventType is what a datapath event reports (enum lb_event_type).
type EventType uint32

const (
	EventConnLearned   EventType = 1 // a token learned for a connection (Backend holds it)
	EventJoinSteered   EventType = 2 // an MP_JOIN SYN steered by its token to Backend
	EventJoinUnknown   EventType = 3 // an MP_JOIN SYN whose token no backend holds
	EventCollision     EventType = 4 // Backend's new connection computed the token Other holds
	EventTokenReplaced EventType = 5 // Other's idle mapping taken over by Backend
)

func (t EventType) String() string {
	switch t {
	case EventConnLearned:
		return "conn_learned"
	case EventJoinSteered:
		return "join_steered"
	case EventJoinUnknown:
		return "join_unknown"
	case EventCollision:
		return "collision"
	case EventTokenReplaced:
		return "token_replaced"
	}
	return fmt.Sprintf("event(%d)", uint32(t))
}

// Event is one datapath event.
type Event struct {
	Type    EventType
	Token   uint32
	Backend uint32
	Other   uint32  // collision, replacement: the backend that held the token
	Flow    FlowKey // the flow whose packet caused it
	Time    time.Duration
}

var eventSize = int(unsafe.Sizeof(datapath.LbLbEvent{}))

// DecodeEvent reads one raw ring-buffer record.
func DecodeEvent(raw []byte) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("event of %d bytes, want %d", len(raw), eventSize)
	}
	var e datapath.LbLbEvent
	if err := binary.Read(bytes.NewReader(raw[:eventSize]), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	return Event{
		Type: EventType(e.Type), Token: e.Token, Backend: e.Backend, Other: e.Other,
		Flow: fromFlowKey(e.Flow), Time: timeNs(e.TsNs),
	}, nil
}

// EventReader reads the balancer's events.
type EventReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record
}

// NewEventReader opens a reader on the events map. Events the datapath could not queue because
// the ring was full are counted in StatEventLost; traffic is never held back for them.
func NewEventReader(m *Maps) (*EventReader, error) {
	r, err := ringbuf.NewReader(m.Events)
	if err != nil {
		return nil, fmt.Errorf("open event ring buffer: %w", err)
	}
	return &EventReader{r: r}, nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t (zero: block).
func (r *EventReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Read blocks for the next event. After Close it returns an error wrapping ringbuf.ErrClosed.
func (r *EventReader) Read() (Event, error) {
	if err := r.r.ReadInto(&r.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, err
		}
		return Event{}, fmt.Errorf("read event: %w", err)
	}
	return DecodeEvent(r.rec.RawSample)
}

// Close stops the reader; a blocked Read returns.
func (r *EventReader) Close() error { return r.r.Close() }
