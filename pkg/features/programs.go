package features

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
)

// Program is one of mptcp-xdp's eBPF programs loaded into the running kernel, as its verifier saw
// it. The JSON names are stable (docs/cli.md, `features -o json`).
type Program struct {
	Object  string `json:"object"`  // the object it comes from: xdp, tc_ingress, tc_egress, iter_tcp, sock_ops, lb, lb_decap
	Program string `json:"program"` // its function name in the object, e.g. mptcpx_lb
	Type    string `json:"type"`    // its program type
	Loaded  bool   `json:"loaded"`  // the verifier accepted it
	// InsnsProcessed is what the verifier reports as "processed N insns" (for a refused program, as
	// far as it got); InsnsLimit the limit it names (1,000,000 since Linux 5.2). Zero when the
	// verifier did not say (a program refused before verification).
	InsnsProcessed int `json:"insns_processed"`
	InsnsLimit     int `json:"insns_limit"`
	// TotalStates and PeakStates are the verifier's state counts; VerifyMicros its verification
	// time in microseconds (Linux 5.19 and later print it).
	TotalStates  int    `json:"total_states"`
	PeakStates   int    `json:"peak_states"`
	VerifyMicros int    `json:"verify_us,omitempty"`
	Error        string `json:"error,omitempty"` // why it was refused, when it was: the verifier's last line
}

// objects are mptcp-xdp's eBPF objects, in the order features shows them.
var objects = []struct {
	name string
	load func() (*ebpf.CollectionSpec, error)
}{
	{"xdp", datapath.LoadXdp},
	{"tc_ingress", datapath.LoadTcIngress},
	{"tc_egress", datapath.LoadTcEgress},
	{"iter_tcp", datapath.LoadIterTcp},
	{"sock_ops", datapath.LoadSockOps},
	{"lb", datapath.LoadLb},
	{"lb_decap", datapath.LoadLbDecap},
}

// smallMaps is the number of entries the probe gives each hash map: the verifier's work does not
// depend on it, and a preallocated table of the balancer's size would cost the probe hundreds of
// megabytes. Arrays keep their size (a constant index is checked against it).
const smallMaps = 1024

// ProbePrograms loads each of mptcp-xdp's programs into the running kernel, on its own (with the
// maps of its object, hash maps made small), and reports what the verifier said of it; each is
// unloaded again. Needs CAP_BPF (root).
func ProbePrograms() ([]Program, error) {
	var out []Program
	for _, o := range objects {
		spec, err := o.load()
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", o.name, err)
		}
		for _, m := range spec.Maps {
			switch m.Type {
			case ebpf.Hash, ebpf.LRUHash, ebpf.PerCPUHash, ebpf.LRUCPUHash:
				m.MaxEntries = min(m.MaxEntries, smallMaps)
			}
		}
		names := make([]string, 0, len(spec.Programs))
		for n := range spec.Programs {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			out = append(out, loadOne(o.name, spec, n))
		}
	}
	return out, nil
}

// loadOne loads program name of spec, without the object's other programs.
func loadOne(object string, spec *ebpf.CollectionSpec, name string) Program {
	one := spec.Copy()
	for n := range one.Programs {
		if n != name {
			delete(one.Programs, n)
		}
	}
	p := Program{Object: object, Program: name, Type: one.Programs[name].Type.String()}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats, LogSizeStart: 1 << 16},
	})
	var log []string
	if err != nil {
		p.Error = err.Error()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			log = ve.Log
			if l := refusal(ve.Log); l != "" {
				p.Error = l
			}
		}
	} else {
		defer coll.Close()
		p.Loaded = true
		log = strings.Split(coll.Programs[name].VerifierLog, "\n")
	}
	parseStats(&p, log)
	return p
}

var (
	processedRE = regexp.MustCompile(`processed (\d+) insns \(limit (\d+)\) max_states_per_insn \d+ total_states (\d+) peak_states (\d+)`)
	timeRE      = regexp.MustCompile(`^verification time (\d+) usec`)
)

// parseStats fills in the verifier's statistics from its log (LogLevelStats' last lines).
func parseStats(p *Program, log []string) {
	for _, l := range log {
		if m := processedRE.FindStringSubmatch(l); m != nil {
			p.InsnsProcessed, _ = strconv.Atoi(m[1])
			p.InsnsLimit, _ = strconv.Atoi(m[2])
			p.TotalStates, _ = strconv.Atoi(m[3])
			p.PeakStates, _ = strconv.Atoi(m[4])
		}
		if m := timeRE.FindStringSubmatch(l); m != nil {
			p.VerifyMicros, _ = strconv.Atoi(m[1])
		}
	}
}

// refusal is the line of a refusing verifier's log that says why: the last one before its
// statistics.
func refusal(log []string) string {
	for i := len(log) - 1; i >= 0; i-- {
		l := strings.TrimSpace(log[i])
		if l == "" || processedRE.MatchString(l) || timeRE.MatchString(l) || strings.HasPrefix(l, "stack depth ") {
			continue
		}
		return l
	}
	return ""
}
