package bench

// BenchmarkReplay: the throughput and peak memory of `mptcp-xdp replay` on a large capture of
// realistic MPTCP traffic (internal/capgen), with both engines, beside `tshark -q -z io,stat,0` on the
// same file in the same run (`make bench-replay`).

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/capgen"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
)

var (
	replayBytes = flag.Int64("replay-bytes", 0, "BenchmarkReplay: bytes of the generated capture (0 skips the benchmark; make bench-replay gives REPLAY_BYTES, 1 GiB)")
	replayRuns  = flag.Int("replay-runs", 3, "BenchmarkReplay: runs of each tool, interleaved (bpf, go, tshark, bpf, ...)")
	replayDir   = flag.String("replay-dir", "", "BenchmarkReplay: directory the capture is written to and removed from (default: a temporary directory)")
	replayBin   = flag.String("replay-bin", "", "BenchmarkReplay: the mptcp-xdp binary (default: built from this tree)")
	replaySeed  = flag.Uint64("replay-seed", 1, "BenchmarkReplay: the generator's seed")
)

// replayRun is one run of one tool over the file.
type replayRun struct {
	wall   time.Duration
	maxRSS int64 // KiB
}

// replayTool is one command measured over the file, with the check of its output.
type replayTool struct {
	name  string
	args  []string
	check func(stdout string) error
	runs  []replayRun
}

func BenchmarkReplay(b *testing.B) {
	if *replayBytes == 0 {
		b.Skip("-replay-bytes not given (make bench-replay)")
	}
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		b.Fatal("BenchmarkReplay needs tshark (Wireshark's command line; apt install tshark): it is the baseline")
	}
	bin := *replayBin
	if bin == "" {
		bin = filepath.Join(b.TempDir(), "mptcp-xdp")
		if out, err := exec.Command("go", "build", "-o", bin, "github.com/mptcp-xdp/mptcp-xdp/cmd/mptcp-xdp").CombinedOutput(); err != nil {
			b.Fatalf("build mptcp-xdp: %v\n%s", err, out)
		}
	}
	dir := *replayDir
	if dir == "" {
		dir = b.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(dir, fmt.Sprintf("replay-bench-%d.pcap", *replayBytes))
	start := time.Now()
	want, err := capgen.WriteFile(file, capgen.Config{Bytes: *replayBytes, Seed: *replaySeed})
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(file)
	b.Logf("capture: %s, %d bytes (%.2f GiB), %d frames, written in %v: %d full-size data segments, %d pure ACKs, %d IPv4 / %d IPv6 frames, %d VLAN-tagged, %d UDP; %d TCP connections (%d MPTCP, %d fallbacks), %d MP_JOIN subflows; counters %s",
		file, want.Bytes, float64(want.Bytes)/(1<<30), want.Frames, time.Since(start).Round(time.Millisecond), want.Data, want.PureAcks, want.IPv4, want.IPv6, want.VLAN, want.UDP,
		want.Conns, want.MPTCPConns, want.Fallbacks, want.Joins, counterString(want.Counters))

	checkReplay := func(out string) error {
		var got struct {
			Frames   uint64        `json:"frames"`
			Counters maps.Counters `json:"counters"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			return fmt.Errorf("-o json: %v", err)
		}
		if got.Frames != want.Frames || got.Counters != want.Counters {
			return fmt.Errorf("counted %d frames, %s; the generator wrote %d frames, %s", got.Frames, counterString(got.Counters), want.Frames, counterString(want.Counters))
		}
		return nil
	}
	tools := []*replayTool{
		{name: "replay-bpf", args: []string{bin, "replay", file, "-o", "json"}, check: checkReplay},
		{name: "replay-go", args: []string{bin, "replay", file, "--engine", "go", "-o", "json"}, check: checkReplay},
		{name: "tshark", args: []string{tshark, "-q", "-z", "io,stat,0", "-r", file}, check: func(out string) error {
			frames, err := ioStatFrames(out)
			if err == nil && frames != want.Frames {
				err = fmt.Errorf("io,stat counted %d frames, the generator wrote %d", frames, want.Frames)
			}
			return err
		}},
	}
	for b.Loop() {
		for range *replayRuns {
			for _, tl := range tools {
				r, err := measureReplay(b, tl)
				if err != nil {
					b.Fatalf("%s: %v", strings.Join(tl.args, " "), err)
				}
				tl.runs = append(tl.runs, r)
			}
		}
	}

	b.Logf("%d runs of each, interleaved; file in the page cache; %s", *replayRuns, loadAverage())
	b.Logf("%-10s %10s %10s %12s %12s %10s %10s %14s", "tool", "time min", "time med", "frames/s med", "frames/s max", "MB/s med", "MB/s max", "max RSS min/med")
	medianFPS := map[string]float64{}
	for _, tl := range tools {
		walls := make([]time.Duration, len(tl.runs))
		rss := make([]int64, len(tl.runs))
		for i, r := range tl.runs {
			walls[i], rss[i] = r.wall, r.maxRSS
		}
		slices.Sort(walls)
		slices.Sort(rss)
		lo, med := walls[0], walls[len(walls)/2]
		fps := func(d time.Duration) float64 { return float64(want.Frames) / d.Seconds() }
		mbs := func(d time.Duration) float64 { return float64(want.Bytes) / d.Seconds() / 1e6 }
		medianFPS[tl.name] = fps(med)
		b.Logf("%-10s %10v %10v %12.0f %12.0f %10.1f %10.1f %7.1f/%.1f MiB", tl.name, lo.Round(time.Millisecond), med.Round(time.Millisecond),
			fps(med), fps(lo), mbs(med), mbs(lo), float64(rss[0])/1024, float64(rss[len(rss)/2])/1024)
		b.ReportMetric(fps(med), tl.name+"-frames/s")
		b.ReportMetric(float64(rss[len(rss)/2])/1024, tl.name+"-maxRSS-MiB")
	}
	for _, n := range []string{"replay-bpf", "replay-go"} {
		b.Logf("%s / tshark io,stat: %.2f (median frames/s over median frames/s, same run)", n, medianFPS[n]/medianFPS["tshark"])
		b.ReportMetric(medianFPS[n]/medianFPS["tshark"], "x-tshark-"+strings.TrimPrefix(n, "replay-"))
	}
	b.ReportMetric(0, "ns/op")
}

// measureReplay runs tl once and checks its output; the peak resident memory is testutil.PeakRSS's.
func measureReplay(b *testing.B, tl *replayTool) (replayRun, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	args, rss := testutil.WithPeakRSS(b.TempDir(), tl.args)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := replayRun{wall: time.Since(start)}
	if err != nil {
		return r, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := tl.check(stdout.String()); err != nil {
		return r, err
	}
	r.maxRSS, err = rss.KiB(cmd.ProcessState)
	return r, err
}

// ioStatFrames reads the frame count of `tshark -q -z io,stat,0`: the one interval's row,
// "| 0.000 <> 9.871 | 1069034 | 1066390528 |".
func ioStatFrames(out string) (uint64, error) {
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "<>") {
			continue
		}
		f := strings.Split(line, "|")
		if len(f) < 4 {
			break
		}
		return strconv.ParseUint(strings.TrimSpace(f[2]), 10, 64)
	}
	return 0, errors.New("no interval row in tshark's io,stat output:\n" + out)
}

func counterString(c maps.Counters) string {
	j, _ := json.Marshal(c)
	return string(j)
}

// loadAverage is the machine's load average, as /proc/loadavg has it.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load unknown"
	}
	return "load average " + strings.Join(f[:3], " ")
}
