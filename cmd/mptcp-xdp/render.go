package main

import (
	"fmt"
	"math"
	"strconv"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// The renderings every table of subflow figures shares (`subflow list`, `conn show`, `tcpinfo`),
// so that a quantity prints the same way whichever command shows it (docs/conn.md, Figures).

// figuresHeader heads the tcp_info columns of a subflow table; figuresCells fills them.
const figuresHeader = "SRTT(ms)\tRTTVAR(ms)\tMINRTT(ms)\tCWND\tSSTHRESH\tMSS\tSENT\tACKED\tRECEIVED\tRETRANS\tRETRANS(segs)\tLOST\tSEGS_IN\tSEGS_OUT\tDELIVERY\tPACING"

// figuresCells prints a subflow's figures under figuresHeader, tab-separated, without a final tab.
func figuresCells(f *stats.Figures) string {
	return fmt.Sprintf("%s\t%s\t%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s",
		renderMs(f.SRTTUs), renderMs(f.RTTVarUs), renderMs(f.MinRTTUs), f.Cwnd, renderSsthresh(f.Ssthresh), f.MSS,
		f.BytesSent, f.BytesAcked, f.BytesReceived, f.BytesRetrans, f.TotalRetrans, f.Lost,
		f.SegsIn, f.SegsOut, renderBitRate(f.DeliveryRate), renderPacing(f.PacingRate))
}

// renderDash prints an empty string as "-".
func renderDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// renderMs prints microseconds as milliseconds with microsecond resolution, as ss does ("0.071").
func renderMs(us int64) string {
	return strconv.FormatFloat(float64(us)/1000, 'f', 3, 64)
}

// renderSsthresh prints TCP_INFINITE_SSTHRESH (no loss yet) as "inf".
func renderSsthresh(v uint32) string {
	if v >= 0x7fffffff {
		return "inf"
	}
	return strconv.FormatUint(uint64(v), 10)
}

// renderBitRate prints a rate in bytes per second as bits per second with an SI prefix, as ss does
// in bps ("128.7Mbit/s").
func renderBitRate(bytesPerSec uint64) string {
	v := float64(bytesPerSec) * 8
	for _, u := range []string{"bit/s", "kbit/s", "Mbit/s", "Gbit/s"} {
		if v < 1000 {
			return strconv.FormatFloat(v, 'f', 1, 64) + u
		}
		v /= 1000
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "Tbit/s"
}

// renderPacing is renderBitRate with the kernel's "no pacing" (~0) printed as "unlimited".
func renderPacing(bytesPerSec uint64) string {
	if bytesPerSec == math.MaxUint64 {
		return "unlimited"
	}
	return renderBitRate(bytesPerSec)
}
