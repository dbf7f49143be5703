package exporter

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// currEstab is the one MPTcpExt entry that is a gauge.
const currEstab = "MPCurrEstab"

// collectMPTCPExt exports the MPTcpExt counters of one namespace, read from inside it.
func (e *Exporter) collectMPTCPExt(ch chan<- prometheus.Metric, ns nsRef) error {
	var b []byte
	err := netns.Do(ns.name, func() error {
		var err error
		// thread-self: the file of the namespace this locked thread is in, not the process's.
		b, err = os.ReadFile("/proc/thread-self/net/netstat")
		return err
	})
	if err != nil {
		return fmt.Errorf("read netstat: %w", err)
	}
	m, err := ParseMPTCPExt(b)
	if err != nil {
		return err
	}
	for _, k := range sortedKeys(m) {
		if k == currEstab {
			ch <- prometheus.MustNewConstMetric(descMPCurrEstab, prometheus.GaugeValue, float64(m[k]), ns.label)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descMPTCPExt, prometheus.CounterValue, float64(m[k]), ns.label, k)
	}
	return nil
}

// ParseMPTCPExt returns the MPTcpExt counters of a /proc/net/netstat file, by the kernel's names.
func ParseMPTCPExt(b []byte) (map[string]uint64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var names []string
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MPTcpExt:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if names == nil {
			names = fields
			continue
		}
		if len(fields) != len(names) {
			return nil, fmt.Errorf("netstat MPTcpExt: %d names, %d values", len(names), len(fields))
		}
		m := make(map[string]uint64, len(names))
		for i, n := range names {
			v, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("netstat MPTcpExt %s: %w", n, err)
			}
			m[n] = v
		}
		return m, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("netstat has no MPTcpExt counters (kernel without MPTCP?)")
}
