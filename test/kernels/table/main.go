// Command table writes the README's kernel table from what the kernel matrix ran: each leg's
// summary (build/kernels/leg-<kernel>/summary.json, written by vmtest) and the guest's
// `mptcp-xdp features -o json` (leg-<kernel>/results/features.json). With -readme FILE it replaces
// the lines between "<!-- kernels:begin -->" and "<!-- kernels:end -->" in FILE; else it prints
// the table.
//
//	go run ./test/kernels/table -readme README.md   (make kernels-table)
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

type features struct {
	Features []struct {
		Name      string `json:"name"`
		Kernel    string `json:"kernel"`
		Available bool   `json:"available"`
		Without   string `json:"without"`
	} `json:"features"`
	Programs []struct {
		Program        string `json:"program"`
		Loaded         bool   `json:"loaded"`
		InsnsProcessed int    `json:"insns_processed"`
	} `json:"programs"`
}

const begin, end = "<!-- kernels:begin -->", "<!-- kernels:end -->"

func main() {
	cache := flag.String("cache", "build/kernels", "vmtest's cache and output directory")
	readme := flag.String("readme", "", "rewrite the table between the markers in this file")
	flag.Parse()
	table, err := render(*cache)
	if err == nil && *readme != "" {
		err = rewrite(*readme, table)
	} else if err == nil {
		fmt.Print(table)
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
		var f features
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

func rewrite(path, table string) error {
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
