// Command table writes the README's kernel table from what the kernel matrix ran: each leg's
// summary (build/kernels/leg-<kernel>/summary.json, written by vmtest) and the guest's
// `mptcp-xdp features -o json` (leg-<kernel>/results/features.json). With -readme FILE it replaces
// the lines between "<!-- kernels:begin -->" and "<!-- kernels:end -->" in FILE; else it prints
// the table. With -benchmarks FILE it also writes, between "<!-- verifier:begin -->" and
// "<!-- verifier:end -->", the verifier's statistics of every program on every leg's kernel and
// on this machine's (loaded here with pkg/features, so it needs root).
//
//	go run ./test/kernels/table -readme README.md -benchmarks docs/benchmarks.md   (make kernels-table)
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/features"
)

type summary struct {
	Kernel   string `json:"kernel"`
	Release  string `json:"release"`
	Packages []struct {
		Package string   `json:"package"`
		Tests   string   `json:"tests"`
		Passed  bool     `json:"passed"`
		Seconds float64  `json:"seconds"`
		Failed  []string `json:"failed"`
		Missing bool     `json:"missing"`
	} `json:"packages"`
	Demo *struct {
		Passed bool   `json:"passed"`
		Error  string `json:"error"`
	} `json:"demo"`
}

type featureDoc struct {
	Features []struct {
		Name      string `json:"name"`
		Kernel    string `json:"kernel"`
		Available bool   `json:"available"`
		Without   string `json:"without"`
	} `json:"features"`
	Programs []features.Program `json:"programs"`
}

const begin, end = "<!-- kernels:begin -->", "<!-- kernels:end -->"
const vbegin, vend = "<!-- verifier:begin -->", "<!-- verifier:end -->"

func main() {
	cache := flag.String("cache", "build/kernels", "vmtest's cache and output directory")
	readme := flag.String("readme", "", "rewrite the table between the markers in this file")
	bench := flag.String("benchmarks", "", "rewrite the verifier table between its markers in this file")
	flag.Parse()
	table, err := render(*cache)
	if err == nil && *readme != "" {
		err = rewrite(*readme, begin, end, table)
	} else if err == nil {
		fmt.Print(table)
	}
	if err == nil && *bench != "" {
		var vt string
		if vt, err = verifierTable(*cache); err == nil {
			err = rewrite(*bench, vbegin, vend, vt)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "table:", err)
		os.Exit(1)
	}
}

func render(cache string) (string, error) {
	paths, _ := filepath.Glob(filepath.Join(cache, "leg-*", "summary.json"))
	if len(paths) == 0 {
		return "", fmt.Errorf("no leg summaries under %s: run make test-kernels first", cache)
	}
	var legs []summary
	for _, p := range paths {
		var s summary
		if err := readJSON(p, &s); err != nil {
			return "", err
		}
		legs = append(legs, s)
	}
	// Newest kernel first.
	slices.SortFunc(legs, func(a, b summary) int { return compareVersions(b.Kernel, a.Kernel) })
	var w strings.Builder
	fmt.Fprintln(&w, "| kernel | passes there | fallbacks taken | fails there |")
	fmt.Fprintln(&w, "|---|---|---|---|")
	fmt.Fprintln(&w, "| 6.18 (this machine) | everything (`make test`) | none: every feature is there | |")
	for _, s := range legs {
		var passed, failed []string
		for _, p := range s.Packages {
			name := "`" + strings.TrimPrefix(p.Package, "./") + "`"
			if p.Tests != "" {
				name += " (" + strconv.Itoa(strings.Count(p.Tests, "|")+1) + " tests)"
			}
			switch {
			case p.Passed:
				passed = append(passed, name)
			case p.Missing:
				failed = append(failed, name+": no result")
			default:
				failed = append(failed, name+": "+strings.Join(p.Failed, ", "))
			}
		}
		if s.Demo != nil {
			if s.Demo.Passed {
				passed = append(passed, "`demo` (counts equal `MPTcpExt`)")
			} else {
				failed = append(failed, "`demo`: "+s.Demo.Error)
			}
		}
		var f featureDoc
		fallbacks := "none"
		if err := readJSON(filepath.Join(cache, "leg-"+s.Kernel, "results", "features.json"), &f); err == nil {
			var fb []string
			for _, x := range f.Features {
				if !x.Available {
					fb = append(fb, fmt.Sprintf("no `%s` (%s): %s", x.Name, x.Kernel, x.Without))
				}
			}
			if len(fb) > 0 {
				fallbacks = strings.Join(fb, "; ")
			}
			for _, p := range f.Programs {
				if p.Program == "mptcpx_lb" {
					passed = append(passed, fmt.Sprintf("the balancer loads (%d instructions verified)", p.InsnsProcessed))
				}
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		} else {
			fallbacks = "not probed"
		}
		fmt.Fprintf(&w, "| %s (`%s`) | %s | %s | %s |\n", s.Kernel, s.Release, strings.Join(passed, ", "),
			strings.ReplaceAll(fallbacks, "|", "/"), strings.Join(failed, "; "))
	}
	return w.String(), nil
}

// verifierTable is one row per program and one column per kernel: the legs' (from their
// features.json), oldest first, and this machine's.
func verifierTable(cache string) (string, error) {
	paths, _ := filepath.Glob(filepath.Join(cache, "leg-*", "results", "features.json"))
	type column struct {
		kernel string
		progs  []features.Program
	}
	var cols []column
	for _, p := range paths {
		var f featureDoc
		if err := readJSON(p, &f); err != nil {
			return "", err
		}
		leg := filepath.Base(filepath.Dir(filepath.Dir(p)))
		kernel := strings.TrimPrefix(leg, "leg-")
		if rel, err := os.ReadFile(filepath.Join(cache, leg, "uname")); err == nil {
			kernel = strings.TrimSpace(string(rel))
		}
		cols = append(cols, column{kernel, f.Programs})
	}
	slices.SortFunc(cols, func(a, b column) int { return compareVersions(a.kernel, b.kernel) })
	here, err := features.ProbePrograms()
	if err != nil {
		return "", fmt.Errorf("load the programs on this machine: %w", err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", err
	}
	cols = append(cols, column{unix.ByteSliceToString(u.Release[:]) + " (this machine)", here})

	var w strings.Builder
	fmt.Fprint(&w, "| program |")
	for _, c := range cols {
		fmt.Fprintf(&w, " %s |", c.kernel)
	}
	fmt.Fprint(&w, "\n|---|")
	for range cols {
		fmt.Fprint(&w, "---:|")
	}
	fmt.Fprintln(&w)
	for _, p := range here {
		fmt.Fprintf(&w, "| `%s` (%s) |", p.Program, p.Object)
		for _, c := range cols {
			i := slices.IndexFunc(c.progs, func(q features.Program) bool { return q.Object == p.Object && q.Program == p.Program })
			switch {
			case i < 0:
				fmt.Fprint(&w, " not probed |")
			case !c.progs[i].Loaded:
				fmt.Fprintf(&w, " refused at %s: %s |", thousands(c.progs[i].InsnsProcessed), strings.ReplaceAll(c.progs[i].Error, "|", "/"))
			default:
				fmt.Fprintf(&w, " %s (%s states) |", thousands(c.progs[i].InsnsProcessed), thousands(c.progs[i].TotalStates))
			}
		}
		fmt.Fprintln(&w)
	}
	return w.String(), nil
}

// thousands writes 201986 as 201,986.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func rewrite(path, begin, end, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i, j := bytes.Index(b, []byte(begin)), bytes.Index(b, []byte(end))
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s ... %s markers", path, begin, end)
	}
	out := append(append(append([]byte(nil), b[:i+len(begin)]...), "\n"+table...), b[j:]...)
	return os.WriteFile(path, out, 0o644)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// compareVersions orders "6.1" before "6.12".
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x - y
		}
	}
	return len(pa) - len(pb)
}
