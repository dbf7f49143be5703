// Package layout holds the project's layout rules as a test: libraries under pkg/ never import
// internal/ (the labs, the demo and test helpers), and the CLI never reaches past the libraries into
// the generated eBPF bindings.
package layout

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/mptcp-xdp/mptcp-xdp"

// imports maps every package of the module to what its non-test files import (tests may use the
// helpers under internal/).
func imports(t *testing.T) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", "list", "-f",
		`{{.ImportPath}} {{join .Imports " "}}`,
		module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m[f[0]] = f[1:]
	}
	if len(m) < 10 {
		t.Fatalf("go list found %d packages, want the whole module", len(m))
	}
	return m
}

func TestLayout(t *testing.T) {
	for pkg, imps := range imports(t) {
		for _, imp := range imps {
			switch {
			case strings.HasPrefix(pkg, module+"/pkg/") && strings.HasPrefix(imp, module+"/internal/"):
				t.Errorf("%s imports %s: libraries under pkg/ must not import internal/", pkg, imp)
			case strings.HasPrefix(pkg, module+"/cmd/") && imp == module+"/pkg/datapath":
				t.Errorf("%s imports %s: the CLI goes through pkg/loader, pkg/lb and pkg/control, not the generated bindings", pkg, imp)
			}
		}
	}
}
