package stats_test

import (
	"bytes"
	"encoding/json"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

func TestToken(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want stats.Token
		ok   bool
	}{
		{"98dd7c13", 0x98dd7c13, true},
		{"0x98DD7C13", 0x98dd7c13, true},
		{"a", 0xa, true},        // ss prints tokens without leading zeros
		{"0000000a", 0xa, true}, // this package prints them with
		{"", 0, false},          //
		{"123456789", 0, false}, // 9 digits
		{"xyz", 0, false},       //
		{"-1", 0, false},        //
		{"0x", 0, false},        //
		{"1234567g", 0, false},  //
	} {
		got, err := stats.ParseToken(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseToken(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
	if s := stats.Token(0xa).String(); s != "0000000a" {
		t.Errorf("Token(0xa) = %q, want 0000000a", s)
	}
}

// TestFlagsMatchC: the Go flags are the C enum's values (and the kernel's MPTCP_SUBFLOW_FLAG_*).
func TestFlagsMatchC(t *testing.T) {
	for _, c := range []struct {
		g stats.Flags
		c datapath.IterTcpMxSfFlags
		s string
	}{
		{stats.FlagMPCapable, datapath.IterTcpMxSfFlagsMX_SF_MCAP_REM, "M"},
		{stats.FlagMPCapableLocal, datapath.IterTcpMxSfFlagsMX_SF_MCAP_LOC, "m"},
		{stats.FlagJoin, datapath.IterTcpMxSfFlagsMX_SF_JOIN_REM, "J"},
		{stats.FlagJoinLocal, datapath.IterTcpMxSfFlagsMX_SF_JOIN_LOC, "j"},
		{stats.FlagBackupRemote, datapath.IterTcpMxSfFlagsMX_SF_BKUP_REM, "B"},
		{stats.FlagBackupLocal, datapath.IterTcpMxSfFlagsMX_SF_BKUP_LOC, "b"},
		{stats.FlagFullyEstablished, datapath.IterTcpMxSfFlagsMX_SF_FULLY_ESTABLISHED, "e"},
		{stats.FlagConnected, datapath.IterTcpMxSfFlagsMX_SF_CONNECTED, "c"},
	} {
		if uint32(c.g) != uint32(c.c) || c.g.String() != c.s {
			t.Errorf("flag %s: Go %#x, C %#x", c.s, uint32(c.g), uint32(c.c))
		}
	}
	if s := (stats.FlagMPCapable | stats.FlagMPCapableLocal | stats.FlagFullyEstablished | stats.FlagConnected).String(); s != "Mmec" {
		t.Errorf("flags = %q, want Mmec (ss's order)", s)
	}
}

// TestRecordLayout: the record the Go side decodes has the size the object's BTF gives the C
// struct, and the object holds the iterator program under its name.
func TestRecordLayout(t *testing.T) {
	spec, err := datapath.LoadIterTcp()
	if err != nil {
		t.Fatal(err)
	}
	var st *btf.Struct
	if err := spec.Types.TypeByName("mx_subflow_rec", &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Size) != stats.RecordSize || stats.RecordSize != int(unsafe.Sizeof(datapath.IterTcpMxSubflowRec{})) {
		t.Fatalf("record: C %d bytes, Go %d", st.Size, stats.RecordSize)
	}
	if stats.RecordSize%8 != 0 {
		t.Errorf("record size %d is not a multiple of 8", stats.RecordSize)
	}
	if _, ok := spec.Programs[datapath.IterTcpProgMptcpxIterTcp]; !ok {
		t.Fatal("no mptcpx_iter_tcp program in the object")
	}
}

func TestDecode(t *testing.T) {
	rec := datapath.IterTcpMxSubflowRec{
		Cookie: 7, Token: 0x98dd7c13, Flags: uint32(datapath.IterTcpMxSfFlagsMX_SF_JOIN_REM),
		SubflowId: 2, SrttUs: 71, RttvarUs: 31, MinRttUs: math.MaxUint32, SndCwnd: 10,
		BytesAcked: 5, PacingRate: math.MaxUint64, Sport: 49075, Dport: 41379,
		Family: 10, State: 1, ConnState: 1, LocalId: 1, RemoteId: 2,
	}
	copy(rec.Saddr[:], netip.MustParseAddr("fd00:101::1").AsSlice())
	copy(rec.Daddr[:], netip.MustParseAddr("::ffff:10.100.0.2").AsSlice())
	b := unsafe.Slice((*byte)(unsafe.Pointer(&rec)), stats.RecordSize)
	got, err := stats.Decode(append(append([]byte{}, b...), b...))
	if err != nil {
		t.Fatal(err)
	}
	want := stats.Subflow{
		Token: 0x98dd7c13, Cookie: 7, ID: 2, LocalID: 1, RemoteID: 2, Flags: stats.FlagJoin,
		State: stats.StateEstablished, ConnState: stats.StateEstablished,
		Local:  netip.MustParseAddrPort("[fd00:101::1]:49075"),
		Remote: netip.MustParseAddrPort("[::ffff:10.100.0.2]:41379"),
		SRTT:   71 * time.Microsecond, RTTVar: 31 * time.Microsecond, MinRTT: 0, // no sample
		Cwnd: 10, BytesAcked: 5, PacingRate: math.MaxUint64,
	}
	if len(got) != 2 || got[0] != want || got[1] != want {
		t.Fatalf("decode:\n got %+v\nwant %+v", got, want)
	}
	rec.Family = 2
	copy(rec.Saddr[:], []byte{10, 101, 0, 1})
	got, _ = stats.Decode(b)
	if got[0].Local != netip.MustParseAddrPort("10.101.0.1:49075") {
		t.Errorf("IPv4 local = %v", got[0].Local)
	}
	if _, err := stats.Decode(b[:stats.RecordSize-1]); err == nil {
		t.Error("a partial record decoded without error")
	}
}

func sf(tok stats.Token, cookie uint64, id uint32, sent uint64, srtt time.Duration, closed bool) stats.Subflow {
	return stats.Subflow{Token: tok, Cookie: cookie, ID: id, BytesSent: sent, SRTT: srtt, Closed: closed,
		State: stats.StateEstablished, ConnState: stats.StateEstablished}
}

// TestGroup: grouping by token, ordering, and merging subflows that closed (final counters from
// elsewhere): totals count them, so they do not go backwards when a subflow leaves the kernel.
func TestGroup(t *testing.T) {
	before := stats.Group([]stats.Subflow{
		sf(2, 20, 2, 300, 3*time.Millisecond, false),
		sf(1, 10, 1, 100, 1*time.Millisecond, false),
		sf(2, 21, 1, 200, 2*time.Millisecond, false),
	})
	if len(before) != 2 || before[0].Token != 1 || before[1].Token != 2 {
		t.Fatalf("connections %+v", before)
	}
	c := before[1]
	if c.Live() != 2 || c.Subflows[0].ID != 1 || c.Subflows[1].ID != 2 {
		t.Fatalf("subflows of token 2: %+v", c.Subflows)
	}
	if lo, hi := c.SRTTRange(); lo != 2*time.Millisecond || hi != 3*time.Millisecond {
		t.Errorf("srtt range %v..%v", lo, hi)
	}
	if got := c.Totals().BytesSent; got != 500 {
		t.Errorf("bytes sent %d, want 500", got)
	}

	// Subflow 20 goes away with 350 bytes sent; the live one moves on to 250. A stale closed
	// record of the live subflow 21 is dropped in favour of the live figures.
	after := stats.Group([]stats.Subflow{
		sf(2, 21, 1, 250, 2*time.Millisecond, false),
		sf(2, 20, 2, 350, 3*time.Millisecond, true),
		sf(2, 21, 1, 1, 0, true),
		sf(2, 21, 1, 250, 2*time.Millisecond, false), // met twice by the walk
		sf(1, 10, 1, 100, 1*time.Millisecond, false),
	})
	c = *stats.Find(after, 2)
	if c.Live() != 1 || len(c.Subflows) != 2 || c.Subflows[1].Cookie != 20 || !c.Subflows[1].Closed {
		t.Fatalf("subflows after close: %+v", c.Subflows)
	}
	if got := c.Totals().BytesSent; got != 600 {
		t.Errorf("bytes sent after close %d, want 600 (never below the 500 before)", got)
	}
	if lo, hi := c.SRTTRange(); lo != 2*time.Millisecond || hi != 2*time.Millisecond {
		t.Errorf("srtt range over live subflows %v..%v", lo, hi)
	}
	if f := c.First(); f == nil || f.Cookie != 21 {
		t.Errorf("first subflow %+v", f)
	}

	// A connection known only from closed subflows.
	only := stats.Group([]stats.Subflow{sf(3, 30, 1, 9, 0, true)})
	if len(only) != 1 || only[0].Live() != 0 || only[0].First().Cookie != 30 {
		t.Errorf("closed-only connection %+v", only)
	}
	if stats.Find(after, 9) != nil {
		t.Error("Find found an absent token")
	}
}

func TestJSON(t *testing.T) {
	s := sf(0x98dd7c13, 4537, 2, 1, 71*time.Microsecond, false)
	s.Flags = stats.FlagJoin | stats.FlagJoinLocal | stats.FlagFullyEstablished | stats.FlagConnected | stats.FlagBackupLocal
	s.Local = netip.MustParseAddrPort("10.101.0.1:46739")
	s.Remote = netip.MustParseAddrPort("10.100.0.2:40139")
	s.RTTVar, s.MinRTT = 31*time.Microsecond, 69*time.Microsecond
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"token": "98dd7c13", "flags": "Jjbec", "srtt_us": 71.0, "rttvar_us": 31.0,
		"min_rtt_us": 69.0, "backup": true, "fully_established": true, "state": "ESTAB",
		"local": "10.101.0.1:46739", "bytes_sent": 1.0, "id": 2.0} {
		if !reflect.DeepEqual(m[k], v) {
			t.Errorf("%s = %#v, want %#v (in %s)", k, m[k], v, b)
		}
	}
	if _, ok := m["closed"]; ok {
		t.Errorf("closed present for a live subflow: %s", b)
	}
	// The field names and their order are a documented contract (docs/conn.md): the embedded
	// Figures must stay inline, where the figures always were.
	want := []string{"token", "cookie", "id", "local_id", "remote_id", "flags", "backup", "fully_established",
		"state", "conn_state", "local", "remote", "srtt_us", "rttvar_us", "min_rtt_us", "cwnd", "ssthresh", "mss",
		"bytes_sent", "bytes_acked", "bytes_received", "bytes_retrans", "total_retrans", "retrans", "lost",
		"segs_in", "segs_out", "data_segs_in", "data_segs_out", "delivery_rate", "pacing_rate", "role"}
	if got := jsonKeys(t, b); !slices.Equal(got, want) {
		t.Errorf("subflow JSON keys:\n got %v\nwant %v", got, want)
	}
	var back stats.Subflow
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != s {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, s)
	}

	c := stats.Group([]stats.Subflow{s})[0]
	b, err = json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	m = nil
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"token", "state", "local", "remote", "subflow_count", "closed_count", "totals", "srtt_min_us", "srtt_max_us", "subflows"} {
		if _, ok := m[k]; !ok {
			t.Errorf("connection JSON lacks %q: %s", k, b)
		}
	}
}

// jsonKeys lists the keys of a JSON object in the order they were written.
func jsonKeys(t *testing.T, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object: %s", b)
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, tok.(string))
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// TestFiguresOf converts a tcp_info as getsockopt returns it, with the iterator's conventions.
func TestFiguresOf(t *testing.T) {
	ti := &sockopt.SubflowTCPInfo{RTT: 71, RTTVar: 31, MinRTT: ^uint32(0), SndCwnd: 10, SndSsthresh: 0x7fffffff,
		SndMSS: 1448, BytesSent: 5, BytesAcked: 4, BytesReceived: 3, BytesRetrans: 2, TotalRetrans: 7, Retrans: 1,
		Lost: 1, SegsIn: 9, SegsOut: 8, DataSegsIn: 6, DataSegsOut: 5, DeliveryRate: 1000, PacingRate: ^uint64(0)}
	want := stats.Figures{SRTTUs: 71, RTTVarUs: 31, MinRTTUs: 0, Cwnd: 10, Ssthresh: 0x7fffffff, MSS: 1448,
		BytesSent: 5, BytesAcked: 4, BytesReceived: 3, BytesRetrans: 2, TotalRetrans: 7, Retrans: 1, Lost: 1,
		SegsIn: 9, SegsOut: 8, DataSegsIn: 6, DataSegsOut: 5, DeliveryRate: 1000, PacingRate: ^uint64(0)}
	if got := stats.FiguresOf(ti); got != want {
		t.Errorf("no min_rtt sample:\n got %+v\nwant %+v", got, want)
	}
	ti.MinRTT = 69
	if got := stats.FiguresOf(ti); got.MinRTTUs != 69 {
		t.Errorf("min_rtt_us %d, want 69", got.MinRTTUs)
	}
}
