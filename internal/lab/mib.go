package lab

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/netns"
)

// MIB holds a namespace's SNMP counters keyed "<Group>.<Name>": "MPTcpExt.MPJoinAckRx",
// "TcpExt.TCPTimeouts", "Tcp.ActiveOpens", "Ip.InReceives"... — every group of
// /proc/net/netstat and /proc/net/snmp (and "Ip6..."/"Udp6..." style names of /proc/net/snmp6, keyed
// "Ip6.InReceives"). A counter the kernel does not print reads 0.
type MIB map[string]uint64

// MPTCP returns the MPTcpExt counter name ("MPJoinAckRx").
func (m MIB) MPTCP(name string) uint64 { return m["MPTcpExt."+name] }

// Delta is the change of each counter between two readings. Signed, because a few entries are
// gauges that go down (MPTcpExt.MPCurrEstab, Tcp.CurrEstab).
type Delta map[string]int64

// MPTCP returns the change of MPTcpExt counter name.
func (d Delta) MPTCP(name string) int64 { return d["MPTcpExt."+name] }

// Sub returns m - old for every key in m (a key missing in old counts from 0).
func (m MIB) Sub(old MIB) Delta {
	d := make(Delta, len(m))
	for k, v := range m {
		d[k] = int64(v - old[k])
	}
	return d
}

// MIB reads the SNMP counters of network namespace ns, from inside it.
func (l *Lab) MIB(ns string) (MIB, error) { return ReadMIB(ns) }

// ReadMIB reads the SNMP counters of network namespace ns ("" is the caller's).
func ReadMIB(ns string) (MIB, error) {
	m := MIB{}
	err := netns.Do(ns, func() error {
		for _, f := range []string{"netstat", "snmp"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return err
			}
			if err := parsePairs(b, m); err != nil {
				return fmt.Errorf("parse %s: %w", f, err)
			}
		}
		b, err := os.ReadFile("/proc/thread-self/net/snmp6")
		if err == nil { // absent without IPv6
			parseSnmp6(b, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read mib in %s: %w", ns, err)
	}
	return m, nil
}

// parsePairs parses the "Group: names...\nGroup: values..." line pairs of /proc/net/{netstat,snmp}.
func parsePairs(b []byte, m MIB) error {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var names []string
	var group string
	for sc.Scan() {
		g, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if names == nil || g != group {
			group, names = g, fields
			continue
		}
		if len(fields) != len(names) {
			return fmt.Errorf("group %s: %d names, %d values", g, len(names), len(fields))
		}
		for i, n := range names {
			// Tcp MaxConn is -1: parse signed, keep the bits.
			v, err := strconv.ParseInt(fields[i], 10, 64)
			if err != nil {
				u, err2 := strconv.ParseUint(fields[i], 10, 64)
				if err2 != nil {
					return fmt.Errorf("%s.%s: %w", g, n, err)
				}
				v = int64(u)
			}
			m[g+"."+n] = uint64(v)
		}
		names = nil
	}
	return sc.Err()
}

// parseSnmp6 parses "Ip6InReceives  123" lines into "Ip6.InReceives".
func parseSnmp6(b []byte, m MIB) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			continue
		}
		name := f[0]
		for _, g := range []string{"Icmp6", "Ip6", "Udp6", "UdpLite6"} {
			if strings.HasPrefix(name, g) {
				name = g + "." + strings.TrimPrefix(name, g)
				break
			}
		}
		m[name] = v
	}
}
