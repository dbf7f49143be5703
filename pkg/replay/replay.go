package replay

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/mptcp"
)

// Engine is what counts the frames.
type Engine string

const (
	// EngineBPF runs the committed eBPF programs (BPF_PROG_TEST_RUN; CAP_BPF and CAP_PERFMON, or root).
	EngineBPF Engine = "bpf"
	// EngineGo runs the Go reference parser; it needs no privilege.
	EngineGo Engine = "go"
)

// FeedMax is the most bytes of a frame handed to a program. The parser reads no deeper than
// mptcp.MaxL4Offset plus a 60-byte TCP header and uses no IP length field, so what it counts for
// a longer frame (a GRO or GSO aggregate in a capture) is what it counts for its first FeedMax
// bytes; BPF_PROG_TEST_RUN refuses frames longer than a page less its head and tail room.
const FeedMax = 2048

// ErrNoPrivilege is returned (wrapped) when the kernel refuses to load the programs.
var ErrNoPrivilege = errors.New("loading the datapath needs CAP_BPF and CAP_PERFMON (or root); --engine go counts with the Go reference parser instead")

// Options say how a capture is replayed.
type Options struct {
	Engine Engine
	// Dir is the direction the frames are counted in: maps.Ingress runs the XDP program (frames an
	// interface received), maps.Egress the TC egress program (frames it sent).
	Dir maps.Direction
}

// Result is a capture's counts.
type Result struct {
	File   string `json:"file"`
	Engine Engine `json:"engine"`
	Dir    string `json:"iface_dir"`
	FrameCounts
	Counts maps.Counters `json:"counters"` // what the programs counted, as `stats` shows them
	Conns  []*Connection `json:"connections,omitempty"`
	Orphan []*Subflow    `json:"unmatched_subflows,omitempty"`
	track  *tracker      `json:"-"`
}

// counter counts one frame at a time.
type counter interface {
	count(frame []byte) error
	counters() (maps.Counters, error)
	close()
}

// Run replays the capture at path. With perConnection, it also groups the frames by MPTCP
// connection (Result.Conns).
func Run(path string, o Options, perConnection bool) (*Result, error) {
	c, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var e counter
	switch o.Engine {
	case EngineBPF, "":
		o.Engine = EngineBPF
		if e, err = newBPF(o.Dir); err != nil {
			return nil, err
		}
	case EngineGo:
		e = &goEngine{}
	default:
		return nil, fmt.Errorf("unknown engine %q (bpf or go)", o.Engine)
	}
	defer e.close()
	r := &Result{File: path, Engine: o.Engine, Dir: dirName(o.Dir)}
	var track *tracker
	if perConnection {
		track = newTracker()
	}
	err = c.each(&r.FrameCounts, func(f Frame) error {
		feed := f.Data
		if len(feed) > FeedMax {
			feed = feed[:FeedMax]
		}
		if err := e.count(feed); err != nil {
			return fmt.Errorf("%s: frame %d: %w", path, r.Frames, err)
		}
		if track != nil {
			track.frame(f)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if r.Counts, err = e.counters(); err != nil {
		return nil, err
	}
	if track != nil {
		r.Conns, r.Orphan = track.result()
	}
	return r, nil
}

func dirName(d maps.Direction) string {
	if d == maps.Egress {
		return "out"
	}
	return "in"
}

// ParseDir reads --iface-dir: in or out.
func ParseDir(s string) (maps.Direction, error) {
	switch s {
	case "in":
		return maps.Ingress, nil
	case "out":
		return maps.Egress, nil
	}
	return 0, fmt.Errorf("--iface-dir %q: want in (frames the interface received) or out (frames it sent)", s)
}

// goEngine counts with the reference parser.
type goEngine struct{ c maps.Counters }

func (g *goEngine) count(frame []byte) error {
	r := mptcp.Parse(frame)
	p := r.Packets()
	for i := range p {
		g.c.Packets[i] += p[i]
	}
	for i := range r.Options {
		g.c.Options[i] += r.Options[i]
	}
	return nil
}

func (g *goEngine) counters() (maps.Counters, error) { return g.c, nil }
func (g *goEngine) close()                           {}

// bpfEngine runs one of the committed counting programs, loaded with maps of its own.
type bpfEngine struct {
	coll *ebpf.Collection
	prog *ebpf.Program
	dir  maps.Direction
	opts ebpf.RunOptions
}

func newBPF(dir maps.Direction) (*bpfEngine, error) {
	load, name := datapath.LoadXdp, datapath.XdpProgMptcpxXdpIn
	if dir == maps.Egress {
		load, name = datapath.LoadTcEgress, datapath.TcEgressProgMptcpxTcOut
	}
	spec, err := load()
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("replay: %w", ErrNoPrivilege)
		}
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	p := coll.Programs[name]
	if p == nil {
		coll.Close()
		return nil, fmt.Errorf("program %s missing from its object", name)
	}
	return &bpfEngine{coll: coll, prog: p, dir: dir}, nil
}

func (b *bpfEngine) count(frame []byte) error {
	b.opts.Data = frame
	b.opts.Repeat = 1
	_, err := b.prog.Run(&b.opts)
	return err
}

func (b *bpfEngine) counters() (maps.Counters, error) {
	return maps.ReadCounters(b.coll.Maps[datapath.XdpMapMptcpxCounters], b.dir)
}

func (b *bpfEngine) close() { b.coll.Close() }
