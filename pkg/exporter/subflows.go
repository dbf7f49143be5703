package exporter

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/stats"
)

// nsConns are the connections read in one namespace.
type nsConns struct {
	label string
	conns []stats.Connection
}

// sfRef points at one live subflow of the read.
type sfRef struct {
	ns    int // index in the []nsConns
	conn  int
	sf    int
	bytes uint64
}

// collectSubflows reads the subflows of every selected namespace, then exports the totals and
// histograms of each and the per-connection and per-subflow series of the largest subflows.
func (e *Exporter) collectSubflows(ch chan<- prometheus.Metric) {
	var all []nsConns
	for _, ns := range e.nss {
		start := time.Now()
		sfs, err := e.cfg.Subflows.Subflows(ns.name)
		e.report(ch, SourceSubflows, ns.label, err, time.Since(start))
		if err != nil {
			continue
		}
		all = append(all, nsConns{label: ns.label, conns: stats.Group(sfs)})
	}
	e.exportConnections(ch, all)
}

// exportConnections sends everything the subflow source gives, for connections already grouped.
func (e *Exporter) exportConnections(ch chan<- prometheus.Metric, all []nsConns) {
	var live []sfRef
	for ni, n := range all {
		var (
			nConns, nLive int
			srtt          = newHist(SRTTBuckets)
			perConn       = newHist(SubflowsPerConnBuckets)
		)
		for ci := range n.conns {
			c := &n.conns[ci]
			k := 0
			for si := range c.Subflows {
				s := &c.Subflows[si]
				if s.Closed {
					continue
				}
				k++
				srtt.observe(s.SRTT.Seconds())
				live = append(live, sfRef{ns: ni, conn: ci, sf: si, bytes: s.BytesSent + s.BytesReceived})
			}
			if k > 0 {
				nConns++
				nLive += k
				perConn.observe(float64(k))
			}
		}
		ch <- prometheus.MustNewConstMetric(descConnections, prometheus.GaugeValue, float64(nConns), n.label)
		ch <- prometheus.MustNewConstMetric(descSubflows, prometheus.GaugeValue, float64(nLive), n.label)
		ch <- srtt.metric(descSRTTHist, n.label)
		ch <- perConn.metric(descSubflowsPerConn, n.label)
	}

	keep := Largest(live, e.cfg.MaxSubflowSeries)
	d := e.conn
	type connKey struct{ ns, conn int }
	shown := map[connKey]bool{}
	for _, r := range keep {
		n := &all[r.ns]
		c := &n.conns[r.conn]
		s := &c.Subflows[r.sf]
		shown[connKey{r.ns, r.conn}] = true
		role := "join"
		if s.Initial() {
			role = "initial"
		}
		lv := append(e.connLabels(n.label, c.Token), SubflowLabel(s))
		ch <- prometheus.MustNewConstMetric(d.sfInfo, prometheus.GaugeValue, 1, append(lv,
			strconv.Itoa(int(s.LocalID)), strconv.Itoa(int(s.RemoteID)), unmapped(s.Local), unmapped(s.Remote),
			role, strconv.FormatBool(s.Backup()))...)
		ch <- prometheus.MustNewConstMetric(d.sfSRTT, prometheus.GaugeValue, s.SRTT.Seconds(), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfCwnd, prometheus.GaugeValue, float64(s.Cwnd), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfSent, prometheus.CounterValue, float64(s.BytesSent), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfRecv, prometheus.CounterValue, float64(s.BytesReceived), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfRetransB, prometheus.CounterValue, float64(s.BytesRetrans), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfRetransSeg, prometheus.CounterValue, float64(s.TotalRetrans), lv...)
		ch <- prometheus.MustNewConstMetric(d.sfDeliv, prometheus.GaugeValue, float64(s.DeliveryRate), lv...)
	}
	ch <- prometheus.MustNewConstMetric(descSubflowOmitted, prometheus.GaugeValue, float64(len(live)-len(keep)))

	omittedConns := 0
	for ni, n := range all {
		for ci := range n.conns {
			c := &n.conns[ci]
			liveN := c.Live()
			if liveN == 0 {
				continue
			}
			if !shown[connKey{ni, ci}] {
				omittedConns++
				continue
			}
			t := c.Totals()
			lv := e.connLabels(n.label, c.Token)
			ch <- prometheus.MustNewConstMetric(d.connSubflows, prometheus.GaugeValue, float64(liveN), lv...)
			ch <- prometheus.MustNewConstMetric(d.connSent, prometheus.CounterValue, float64(t.BytesSent), lv...)
			ch <- prometheus.MustNewConstMetric(d.connRecv, prometheus.CounterValue, float64(t.BytesReceived), lv...)
			ch <- prometheus.MustNewConstMetric(d.connRetrans, prometheus.CounterValue, float64(t.BytesRetrans), lv...)
		}
	}
	ch <- prometheus.MustNewConstMetric(descConnOmitted, prometheus.GaugeValue, float64(omittedConns))
}

// connLabels are the label values that identify a connection of namespace ns: the namespace, the
// connection id and, with Config.TokenLabel, the token.
func (e *Exporter) connLabels(ns string, tok stats.Token) []string {
	lv := make([]string, 0, 4)
	lv = append(lv, ns, e.connID(ns, tok))
	if e.cfg.TokenLabel {
		lv = append(lv, tok.String())
	}
	return lv
}

// connID is the connection label of a connection: 16 hex digits of an HMAC-SHA256, under a key
// drawn when the exporter was made, of its namespace and token. It is stable for the connection's
// life (as its token is) and for the exporter's, unique in practice (64 bits), and tells nothing
// about the token to anyone without the key, so that serving it does not publish what an MP_JOIN
// needs. A new exporter (serve restarted) names every connection anew.
func (e *Exporter) connID(ns string, tok stats.Token) string {
	h := hmac.New(sha256.New, e.idKey)
	h.Write([]byte(ns))
	h.Write([]byte{0})
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(tok)))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Largest returns the (at most) max subflows with the most bytes sent + received, most first; ties
// go by namespace, connection and subflow order, so that the choice is stable between scrapes.
func Largest(live []sfRef, max int) []sfRef {
	if max >= len(live) {
		return live
	}
	s := slices.Clone(live)
	slices.SortFunc(s, func(a, b sfRef) int {
		return cmp.Or(cmp.Compare(b.bytes, a.bytes), cmp.Compare(a.ns, b.ns), cmp.Compare(a.conn, b.conn), cmp.Compare(a.sf, b.sf))
	})
	return s[:max]
}

// SubflowLabel is the subflow label of a subflow: the kernel's subflow id (1 is the initial
// subflow), or "cookie-<socket cookie>" on kernels before 6.8, which have no ids.
func SubflowLabel(s *stats.Subflow) string {
	if s.ID != 0 {
		return strconv.FormatUint(uint64(s.ID), 10)
	}
	return "cookie-" + strconv.FormatUint(s.Cookie, 10)
}

// unmapped writes an address:port, an IPv4-mapped IPv6 address (a dual-stack socket's IPv4
// subflow) as plain IPv4.
func unmapped(a netip.AddrPort) string {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()).String()
}

// hist accumulates a const histogram.
type hist struct {
	bounds []float64
	counts []uint64 // per bucket, not cumulative
	n      uint64
	sum    float64
}

func newHist(bounds []float64) *hist {
	return &hist{bounds: bounds, counts: make([]uint64, len(bounds))}
}

func (h *hist) observe(v float64) {
	h.n++
	h.sum += v
	if i, _ := slices.BinarySearch(h.bounds, v); i < len(h.bounds) {
		h.counts[i]++ // bounds[i] is the first bound >= v: le is inclusive
	}
}

func (h *hist) metric(d *prometheus.Desc, labels ...string) prometheus.Metric {
	b := make(map[float64]uint64, len(h.bounds))
	var cum uint64
	for i, ub := range h.bounds {
		cum += h.counts[i]
		b[ub] = cum
	}
	return prometheus.MustNewConstHistogram(d, h.n, h.sum, b, labels...)
}
