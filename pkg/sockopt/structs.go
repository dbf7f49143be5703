package sockopt

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MPTCPInfo is struct mptcp_info, the connection-level state (MPTCP_INFO), laid out as Linux 6.18
// has it (96 bytes). Len is how many bytes the running kernel returned: a field is valid only when
// Has says so (older kernels return fewer bytes). Raw holds the returned bytes, including any
// field newer than this package.
type MPTCPInfo struct {
	Subflows           uint8   `kernel:"mptcpi_subflows"`              // established subflows beyond the initial one
	AddAddrSignal      uint8   `kernel:"mptcpi_add_addr_signal"`       // addresses announced with ADD_ADDR
	AddAddrAccepted    uint8   `kernel:"mptcpi_add_addr_accepted"`     // peer's ADD_ADDR accepted
	SubflowsMax        uint8   `kernel:"mptcpi_subflows_max"`          // limit: extra subflows (in-kernel PM)
	AddAddrSignalMax   uint8   `kernel:"mptcpi_add_addr_signal_max"`   // signal endpoints (in-kernel PM)
	AddAddrAcceptedMax uint8   `kernel:"mptcpi_add_addr_accepted_max"` // limit: ADD_ADDR accepted (in-kernel PM)
	_                  [2]byte //
	Flags              uint32  `kernel:"mptcpi_flags"`           // FlagFallback, FlagRemoteKeyReceived
	Token              uint32  `kernel:"mptcpi_token"`           // local token
	WriteSeq           uint64  `kernel:"mptcpi_write_seq"`       // next data sequence number to write
	SndUna             uint64  `kernel:"mptcpi_snd_una"`         // oldest unacknowledged data sequence number
	RcvNxt             uint64  `kernel:"mptcpi_rcv_nxt"`         // next data sequence number expected
	LocalAddrUsed      uint8   `kernel:"mptcpi_local_addr_used"` // local endpoints in use (5.12+)
	LocalAddrMax       uint8   `kernel:"mptcpi_local_addr_max"`  // subflow endpoints (in-kernel PM, 5.12+)
	CsumEnabled        uint8   `kernel:"mptcpi_csum_enabled"`    // DSS checksums in use (5.14+)
	_                  uint8   //
	Retransmits        uint32  `kernel:"mptcpi_retransmits" after:"48"` // data-level retransmissions (6.5+; padding of the 48-byte struct before)
	BytesRetrans       uint64  `kernel:"mptcpi_bytes_retrans"`          // data-level bytes retransmitted (6.5+)
	BytesSent          uint64  `kernel:"mptcpi_bytes_sent"`             // data-level bytes sent, retransmissions included (6.5+)
	BytesReceived      uint64  `kernel:"mptcpi_bytes_received"`         // data-level bytes received (6.5+)
	BytesAcked         uint64  `kernel:"mptcpi_bytes_acked"`            // data-level bytes acknowledged by the peer (6.5+)
	SubflowsTotal      uint8   `kernel:"mptcpi_subflows_total"`         // all subflows, the initial one included (6.8+)
	EndpLaminarMax     uint8   `kernel:"mptcpi_endp_laminar_max"`       // laminar endpoints (6.18+; a reserved zero byte on 6.10–6.17)
	_                  [2]byte //
	LastDataSent       uint32  `kernel:"mptcpi_last_data_sent"` // ms since data was last sent (6.10+)
	LastDataRecv       uint32  `kernel:"mptcpi_last_data_recv"` // ms since data was last received (6.10+)
	LastAckRecv        uint32  `kernel:"mptcpi_last_ack_recv"`  // ms since a data-level ack was last received (6.10+)

	// Len is the number of bytes of struct mptcp_info the kernel returned.
	Len int
	// Raw is a copy of those bytes.
	Raw []byte
}

// mptcp_info flags (MPTCP_INFO_FLAG_*).
const (
	FlagFallback          = 1 << 0 // the connection fell back to TCP
	FlagRemoteKeyReceived = 1 << 1 // the peer's key was received (the connection can ack at data level)
)

// mptcpInfoSize is how much of struct mptcp_info this package knows.
const mptcpInfoSize = int(unsafe.Offsetof(MPTCPInfo{}.Len))

// Has reports whether the kernel returned the named field ("mptcpi_token"), by its C name.
func (m *MPTCPInfo) Has(field string) bool { return mptcpInfoFields.has(field, m.Len) }

// Fields lists the C names of the fields the kernel returned, in layout order.
func (m *MPTCPInfo) Fields() []string { return mptcpInfoFields.present(m.Len) }

// Missing lists the C names of the fields this package knows but the kernel did not return.
func (m *MPTCPInfo) Missing() []string { return mptcpInfoFields.missing(m.Len) }

func (m *MPTCPInfo) decode(b []byte) {
	*m = MPTCPInfo{}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(m)), mptcpInfoSize), b)
	m.Len = len(b)
}

// SubflowTCPInfo is struct tcp_info of one subflow, laid out as Linux 6.18 has it (280 bytes).
// Len is how many bytes the kernel returned for it; a field is valid only when Has says so. Raw
// holds the returned bytes, including any field newer than this package. Times are in
// microseconds unless noted; rates in bytes per second.
type SubflowTCPInfo struct {
	State            uint8  `kernel:"tcpi_state"` // TCP state (TCP_ESTABLISHED = 1 ...), see StateName
	CAState          uint8  `kernel:"tcpi_ca_state"`
	Retransmits      uint8  `kernel:"tcpi_retransmits"` // current consecutive RTO retransmissions
	Probes           uint8  `kernel:"tcpi_probes"`
	Backoff          uint8  `kernel:"tcpi_backoff"`
	Options          uint8  `kernel:"tcpi_options"`
	Wscale           uint8  `kernel:"tcpi_snd_wscale,tcpi_rcv_wscale"`                          // bit fields: see SndWscale, RcvWscale
	Flags7           uint8  `kernel:"tcpi_delivery_rate_app_limited,tcpi_fastopen_client_fail"` // bit fields: see DeliveryRateAppLimited, FastopenClientFail
	RTO              uint32 `kernel:"tcpi_rto"`
	ATO              uint32 `kernel:"tcpi_ato"`
	SndMSS           uint32 `kernel:"tcpi_snd_mss"`
	RcvMSS           uint32 `kernel:"tcpi_rcv_mss"`
	Unacked          uint32 `kernel:"tcpi_unacked"`
	Sacked           uint32 `kernel:"tcpi_sacked"`
	Lost             uint32 `kernel:"tcpi_lost"`
	Retrans          uint32 `kernel:"tcpi_retrans"`
	Fackets          uint32 `kernel:"tcpi_fackets"`
	LastDataSent     uint32 `kernel:"tcpi_last_data_sent"` // ms
	LastAckSent      uint32 `kernel:"tcpi_last_ack_sent"`  // ms (not filled by Linux)
	LastDataRecv     uint32 `kernel:"tcpi_last_data_recv"` // ms
	LastAckRecv      uint32 `kernel:"tcpi_last_ack_recv"`  // ms
	PMTU             uint32 `kernel:"tcpi_pmtu"`
	RcvSsthresh      uint32 `kernel:"tcpi_rcv_ssthresh"`
	RTT              uint32 `kernel:"tcpi_rtt"` // smoothed RTT (srtt)
	RTTVar           uint32 `kernel:"tcpi_rttvar"`
	SndSsthresh      uint32 `kernel:"tcpi_snd_ssthresh"`
	SndCwnd          uint32 `kernel:"tcpi_snd_cwnd"` // segments
	AdvMSS           uint32 `kernel:"tcpi_advmss"`
	Reordering       uint32 `kernel:"tcpi_reordering"`
	RcvRTT           uint32 `kernel:"tcpi_rcv_rtt"`
	RcvSpace         uint32 `kernel:"tcpi_rcv_space"`
	TotalRetrans     uint32 `kernel:"tcpi_total_retrans"`
	PacingRate       uint64 `kernel:"tcpi_pacing_rate"`
	MaxPacingRate    uint64 `kernel:"tcpi_max_pacing_rate"`
	BytesAcked       uint64 `kernel:"tcpi_bytes_acked"`
	BytesReceived    uint64 `kernel:"tcpi_bytes_received"`
	SegsOut          uint32 `kernel:"tcpi_segs_out"`
	SegsIn           uint32 `kernel:"tcpi_segs_in"`
	NotsentBytes     uint32 `kernel:"tcpi_notsent_bytes"`
	MinRTT           uint32 `kernel:"tcpi_min_rtt"`
	DataSegsIn       uint32 `kernel:"tcpi_data_segs_in"`
	DataSegsOut      uint32 `kernel:"tcpi_data_segs_out"`
	DeliveryRate     uint64 `kernel:"tcpi_delivery_rate"`
	BusyTime         uint64 `kernel:"tcpi_busy_time"`
	RwndLimited      uint64 `kernel:"tcpi_rwnd_limited"`
	SndbufLimited    uint64 `kernel:"tcpi_sndbuf_limited"`
	Delivered        uint32 `kernel:"tcpi_delivered"`
	DeliveredCE      uint32 `kernel:"tcpi_delivered_ce"`
	BytesSent        uint64 `kernel:"tcpi_bytes_sent"` // retransmissions included
	BytesRetrans     uint64 `kernel:"tcpi_bytes_retrans"`
	DSACKDups        uint32 `kernel:"tcpi_dsack_dups"`
	ReordSeen        uint32 `kernel:"tcpi_reord_seen"`
	RcvOOOPack       uint32 `kernel:"tcpi_rcv_ooopack"`
	SndWnd           uint32 `kernel:"tcpi_snd_wnd"`
	RcvWnd           uint32 `kernel:"tcpi_rcv_wnd"`
	Rehash           uint32 `kernel:"tcpi_rehash"`
	TotalRTO         uint16 `kernel:"tcpi_total_rto"`
	TotalRTORecov    uint16 `kernel:"tcpi_total_rto_recoveries"`
	TotalRTOTime     uint32 `kernel:"tcpi_total_rto_time"` // ms
	ReceivedCE       uint32 `kernel:"tcpi_received_ce"`
	DeliveredE1Bytes uint32 `kernel:"tcpi_delivered_e1_bytes"`
	DeliveredE0Bytes uint32 `kernel:"tcpi_delivered_e0_bytes"`
	DeliveredCEBytes uint32 `kernel:"tcpi_delivered_ce_bytes"`
	ReceivedE1Bytes  uint32 `kernel:"tcpi_received_e1_bytes"`
	ReceivedE0Bytes  uint32 `kernel:"tcpi_received_e0_bytes"`
	ReceivedCEBytes  uint32 `kernel:"tcpi_received_ce_bytes"`
	AccECNFailMode   uint16 `kernel:"tcpi_accecn_fail_mode"`
	AccECNOptSeen    uint16 `kernel:"tcpi_accecn_opt_seen"`

	// Len is the number of bytes of struct tcp_info the kernel returned for this subflow.
	Len int
	// Raw is a copy of those bytes.
	Raw []byte
}

// tcpInfoSize is how much of struct tcp_info this package knows.
const tcpInfoSize = int(unsafe.Offsetof(SubflowTCPInfo{}.Len))

// SndWscale is the send window scale (tcpi_snd_wscale, 4 bits).
func (t *SubflowTCPInfo) SndWscale() uint8 { return t.Wscale & 0x0f }

// RcvWscale is the receive window scale (tcpi_rcv_wscale, 4 bits).
func (t *SubflowTCPInfo) RcvWscale() uint8 { return t.Wscale >> 4 }

// DeliveryRateAppLimited reports tcpi_delivery_rate_app_limited.
func (t *SubflowTCPInfo) DeliveryRateAppLimited() bool { return t.Flags7&1 != 0 }

// FastopenClientFail is tcpi_fastopen_client_fail (2 bits).
func (t *SubflowTCPInfo) FastopenClientFail() uint8 { return (t.Flags7 >> 1) & 3 }

// Has reports whether the kernel returned the named field ("tcpi_bytes_sent"), by its C name.
func (t *SubflowTCPInfo) Has(field string) bool { return tcpInfoFields.has(field, t.Len) }

// Fields lists the C names of the fields the kernel returned, in layout order.
func (t *SubflowTCPInfo) Fields() []string { return tcpInfoFields.present(t.Len) }

// Missing lists the C names of the fields this package knows but the kernel did not return.
func (t *SubflowTCPInfo) Missing() []string { return tcpInfoFields.missing(t.Len) }

// StateName is the TCP state's name as ss prints it ("ESTAB", "SYN-SENT", ...).
func (t *SubflowTCPInfo) StateName() string { return StateName(t.State) }

func (t *SubflowTCPInfo) decode(b []byte) {
	*t = SubflowTCPInfo{}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(t)), tcpInfoSize), b)
	t.Len = len(b)
}

// StateName names a TCP state (include/net/tcp_states.h) as ss does.
func StateName(s uint8) string {
	names := [...]string{1: "ESTAB", "SYN-SENT", "SYN-RECV", "FIN-WAIT-1", "FIN-WAIT-2", "TIME-WAIT",
		"UNCONN", "CLOSE-WAIT", "LAST-ACK", "LISTEN", "CLOSING", "NEW-SYN-RECV", "BOUND-INACTIVE"}
	if int(s) < len(names) && names[s] != "" {
		return names[s]
	}
	return fmt.Sprintf("state-%d", s)
}

// SubflowAddr is struct mptcp_subflow_addrs: the local and remote address of one subflow, as
// getsockname and getpeername of the subflow would give them. An address is invalid when the
// kernel returned too few bytes for it (a short size_user).
type SubflowAddr struct {
	Local  netip.AddrPort
	Remote netip.AddrPort
	// Len is the number of bytes of struct mptcp_subflow_addrs the kernel returned.
	Len int
}

// subflowAddrsSize is the size of struct mptcp_subflow_addrs: two sockaddr_storage.
const subflowAddrsSize = 2 * sockaddrStorageSize

const sockaddrStorageSize = 128

func (a *SubflowAddr) decode(b []byte) {
	*a = SubflowAddr{Len: len(b)}
	a.Local = parseSockaddr(b)
	if len(b) > sockaddrStorageSize {
		a.Remote = parseSockaddr(b[sockaddrStorageSize:])
	}
}

// parseSockaddr decodes a sockaddr_in or sockaddr_in6 at the start of b, if b holds all of it.
func parseSockaddr(b []byte) netip.AddrPort {
	if len(b) < 4 {
		return netip.AddrPort{}
	}
	family := binary.NativeEndian.Uint16(b)
	port := uint16(b[2])<<8 | uint16(b[3]) // network order
	switch family {
	case afInet:
		if len(b) >= 8 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port)
		}
	case afInet6:
		if len(b) >= 24 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), port)
		}
	}
	return netip.AddrPort{}
}

// Address families of the kernel's records.
const (
	afInet  = unix.AF_INET
	afInet6 = unix.AF_INET6
)

// subflowInfoSize is the size of struct mptcp_subflow_info: a u32 id, then (8-aligned) the addrs.
const (
	subflowInfoAddrsOff = 8
	subflowInfoSize     = subflowInfoAddrsOff + subflowAddrsSize
)

// fieldTable maps the C names of a mirrored struct's fields to their place in it. A field came with
// the kernel whose struct first reached its end, unless it took the place of an older struct's
// trailing padding: its tag `after:"N"` then says that a struct of N bytes lacks it (mptcp_info of
// 5.16-6.4 is 48 bytes, its last 5 padding where mptcpi_retransmits went in 6.5).
type fieldTable struct {
	names []string
	off   map[string]int // byte offset of the field
	end   map[string]int // offset + size
	after map[string]int // the field is present only when more than this many bytes came back
}

func newFieldTable(v any) fieldTable {
	t := fieldTable{off: map[string]int{}, end: map[string]int{}, after: map[string]int{}}
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		f := rt.Field(i)
		tag := f.Tag.Get("kernel")
		if tag == "" {
			continue
		}
		for name := range strings.SplitSeq(tag, ",") {
			t.names = append(t.names, name)
			t.off[name] = int(f.Offset)
			t.end[name] = int(f.Offset + f.Type.Size())
			if a := f.Tag.Get("after"); a != "" {
				n, err := strconv.Atoi(a)
				if err != nil {
					panic(fmt.Sprintf("sockopt: field %s: after tag %q", name, a))
				}
				t.after[name] = n
			}
		}
	}
	return t
}

func (t fieldTable) has(name string, n int) bool {
	end, ok := t.end[name]
	return ok && end <= n && n > t.after[name]
}

func (t fieldTable) present(n int) []string {
	return slices.DeleteFunc(slices.Clone(t.names), func(s string) bool { return !t.has(s, n) })
}

func (t fieldTable) missing(n int) []string {
	return slices.DeleteFunc(slices.Clone(t.names), func(s string) bool { return t.has(s, n) })
}

var (
	mptcpInfoFields = newFieldTable(MPTCPInfo{})
	tcpInfoFields   = newFieldTable(SubflowTCPInfo{})
)
