package test

// replay streams: a capture several times larger than the memory replay may use is replayed with
// counters exactly those the generator wrote, and the process's peak resident memory stays bounded.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mptcp-xdp/mptcp-xdp/internal/capgen"
	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/maps"
)

// Bounds of replay's peak resident memory, in MiB. It uses about 23 MiB (Linux 6.18, amd64: the Go
// runtime, the loaded programs, one frame) whatever the file's size. largeReplayMaxRSS is a fifth of
// the 256 MiB pcap: a replay that held the file in memory fails it. largeReplayMaxGrowth is what the
// peak may grow from the 32 MiB file to the larger ones (8 times and 3 times as many frames): a
// replay that kept something per frame fails it.
const (
	largeReplayMaxRSS    = 48
	largeReplayMaxGrowth = 8
)

// TestReplayLarge replays a 32 MiB and a 256 MiB pcap and a 96 MiB pcapng of realistic MPTCP traffic
// (internal/capgen) with both engines.
func TestReplayLarge(t *testing.T) {
	smallRSS := map[string]int64{} // engine: peak RSS (KiB) on the first, smallest file
	for _, tc := range []struct {
		format capgen.Format
		bytes  int64
	}{
		{capgen.PCAP, 32 << 20},
		{capgen.PCAP, 256 << 20},
		{capgen.PCAPNG, 96 << 20},
	} {
		t.Run(fmt.Sprintf("%s-%dMiB", tc.format, tc.bytes>>20), func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "large."+tc.format.String())
			want, err := capgen.WriteFile(file, capgen.Config{Bytes: tc.bytes, Seed: 12, Format: tc.format})
			if err != nil {
				t.Fatal(err)
			}
			defer os.Remove(file) // the space, before the next subtest writes its file
			for _, engine := range []string{"bpf", "go"} {
				out, rss, took := largeReplay(t, "replay", file, "--engine", engine, "-o", "json")
				var got struct {
					Frames   uint64        `json:"frames"`
					Cut      uint64        `json:"cut"`
					Short    uint64        `json:"short"`
					Counters maps.Counters `json:"counters"`
				}
				if err := json.Unmarshal([]byte(out), &got); err != nil {
					t.Fatalf("replay --engine %s -o json: %v\n%s", engine, err, out)
				}
				if got.Frames != want.Frames || got.Cut != 0 || got.Short != 0 || got.Counters != want.Counters {
					t.Errorf("replay --engine %s of %s: %d frames (%d cut, %d short), counters %s; the generator wrote %d frames, counters %s",
						engine, file, got.Frames, got.Cut, got.Short, jsonString(got.Counters), want.Frames, jsonString(want.Counters))
				}
				if rss > largeReplayMaxRSS<<10 {
					t.Errorf("replay --engine %s of a %d MiB %s used %d MiB resident at its peak, want under %d MiB: it does not stream", engine, want.Bytes>>20, tc.format, rss>>10, largeReplayMaxRSS)
				}
				if small, ok := smallRSS[engine]; !ok {
					smallRSS[engine] = rss
				} else if rss-small > largeReplayMaxGrowth<<10 {
					t.Errorf("replay --engine %s: peak RSS %.1f MiB on the %d MiB %s, %.1f MiB on the 32 MiB pcap: it grows with the file (by more than %d MiB)", engine, float64(rss)/1024, want.Bytes>>20, tc.format, float64(small)/1024, largeReplayMaxGrowth)
				}
				t.Logf("replay --engine %s: %d MiB %s, %d frames (%d data, %d pure ACKs, %d joins) in %v (%.0f frames/s), peak RSS %.1f MiB",
					engine, want.Bytes>>20, tc.format, got.Frames, want.Data, want.PureAcks, want.Joins, took.Round(time.Millisecond), float64(got.Frames)/took.Seconds(), float64(rss)/1024)
			}
		})
	}
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// largeReplay runs the binary with args and returns its stdout, its peak resident memory in KiB
// (testutil.PeakRSS) and how long it ran.
func largeReplay(t *testing.T, args ...string) (string, int64, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	argv, rss := testutil.WithPeakRSS(t.TempDir(), append([]string{bin}, args...))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	start := time.Now()
	r := runCmd(t, cmd)
	took := time.Since(start)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%v", r)
	}
	kib, err := rss.KiB(cmd.ProcessState)
	if err != nil {
		t.Fatal(err)
	}
	return r.stdout, kib, took
}
