package sockopt_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/sockopt"
)

// TestShortStructs: what an older kernel returns (fewer bytes) decodes into the fields it covers,
// and Has/Missing say which those are.
func TestShortStructs(t *testing.T) {
	// 5.9–5.11 returned mptcp_info up to mptcpi_rcv_nxt: 40 bytes.
	b := make([]byte, 40)
	binary.NativeEndian.PutUint32(b[12:], 0xcafe0001)
	m := sockopt.DecodeMPTCPInfo(b)
	if m.Token != 0xcafe0001 || !m.Has("mptcpi_rcv_nxt") || m.Has("mptcpi_local_addr_used") || m.Has("mptcpi_bytes_sent") {
		t.Errorf("40-byte mptcp_info: token %#x, has rcv_nxt %v, local_addr_used %v, bytes_sent %v",
			m.Token, m.Has("mptcpi_rcv_nxt"), m.Has("mptcpi_local_addr_used"), m.Has("mptcpi_bytes_sent"))
	}
	if miss := m.Missing(); !slices.Contains(miss, "mptcpi_last_ack_recv") || slices.Contains(miss, "mptcpi_token") {
		t.Errorf("missing %v", miss)
	}
	if got := m.Fields(); len(got) != 11 || got[10] != "mptcpi_rcv_nxt" {
		t.Errorf("fields %v, want the 11 up to mptcpi_rcv_nxt", got)
	}
	if m.Has("no_such_field") {
		t.Error("Has(unknown field) = true")
	}

	// 5.16–6.4 (Debian 12's 6.1): 48 bytes, up to mptcpi_csum_enabled and its padding, where 6.5
	// later put mptcpi_retransmits.
	m = sockopt.DecodeMPTCPInfo(make([]byte, 48))
	if !m.Has("mptcpi_csum_enabled") || m.Has("mptcpi_retransmits") || m.Has("mptcpi_bytes_retrans") {
		t.Errorf("48-byte mptcp_info: has csum_enabled %v, retransmits %v, bytes_retrans %v",
			m.Has("mptcpi_csum_enabled"), m.Has("mptcpi_retransmits"), m.Has("mptcpi_bytes_retrans"))
	}
	if m = sockopt.DecodeMPTCPInfo(make([]byte, 56)); !m.Has("mptcpi_retransmits") || !m.Has("mptcpi_bytes_retrans") {
		t.Errorf("56-byte mptcp_info: fields %v", m.Fields())
	}

	// tcp_info of a kernel before tcpi_bytes_sent (4.19): 192 bytes, up to tcpi_sndbuf_limited.
	tb := make([]byte, 192)
	tb[0], tb[6], tb[7] = 1, 0x7a, 0x05 // ESTABLISHED, snd_wscale 10 rcv_wscale 7, app limited + fastopen fail 2
	ti := sockopt.DecodeTCPInfo(tb)
	if ti.StateName() != "ESTAB" || ti.SndWscale() != 10 || ti.RcvWscale() != 7 || !ti.DeliveryRateAppLimited() || ti.FastopenClientFail() != 2 {
		t.Errorf("decoded %+v", ti)
	}
	if !ti.Has("tcpi_sndbuf_limited") || ti.Has("tcpi_delivered") || ti.Has("tcpi_bytes_sent") {
		t.Errorf("192-byte tcp_info: wrong presence")
	}
	// More bytes than the package knows (a newer kernel): decoded as far as known, Len says all.
	long := make([]byte, 400)
	long[0] = 1
	if ti := sockopt.DecodeTCPInfo(long); ti.Len != 400 || len(ti.Missing()) != 0 {
		t.Errorf("400-byte tcp_info: Len %d, missing %v", ti.Len, ti.Missing())
	}
}
