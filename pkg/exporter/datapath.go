package exporter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// collectDatapath exports the counters of every attachment under the loader's root, read under
// the loader's shared lock. One attachment that cannot be read fails the source but not the others.
func (e *Exporter) collectDatapath(ch chan<- prometheus.Metric) error {
	if _, err := os.Stat(e.loader.Root); errors.Is(err, fs.ErrNotExist) {
		return nil // nothing attached (and nothing to lock)
	}
	// Shared with other readers, exclusive of attach and detach: no attachment is seen half made.
	unlock, err := e.loader.RLock()
	if err != nil {
		return err
	}
	defer unlock()
	atts, err := e.loader.List("")
	if err != nil {
		return fmt.Errorf("list attachments: %w", err)
	}
	var errs []error
	for _, a := range atts {
		c, err := maps.ReadPinnedCounters(a.PinDir)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", a.Netns, a.Interface, err))
			continue
		}
		ch <- prometheus.MustNewConstMetric(descAttachInfo, prometheus.GaugeValue, 1,
			a.Netns, a.Interface, a.Ingress, a.XDPMode, strconv.FormatBool(a.Egress))
		ch <- prometheus.MustNewConstMetric(descAttachProblems, prometheus.GaugeValue, float64(len(a.Problems)), a.Netns, a.Interface)
		dirs := []struct {
			name string
			c    *maps.Counters
		}{{"ingress", &c.Ingress}, {"egress", &c.Egress}}
		if !a.Egress {
			dirs = dirs[:1] // nothing counts egress: its zeros would read as "no traffic"
		}
		for _, d := range dirs {
			for i, v := range d.c.Packets {
				ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(v),
					a.Netns, a.Interface, d.name, mptcp.PacketCounter(i).String())
			}
			for _, cl := range mptcp.Classes() {
				ch <- prometheus.MustNewConstMetric(descOptions, prometheus.CounterValue, float64(d.c.Options[cl]),
					a.Netns, a.Interface, d.name, cl.String())
			}
		}
	}
	return joinErrs(errs)
}
