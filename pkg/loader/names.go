package loader

// The names that become path components under the pin roots, checked in one place: interface and
// network namespace names are refused unless the kernel (or `ip netns`) could have made them, every
// computed directory must stay under its root, and removePins removes only the pins whose names
// mptcp-xdp makes.

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/mptcp-xdp/mptcp-xdp/pkg/datapath"
	"github.com/mptcp-xdp/mptcp-xdp/pkg/lb"
)

// NameError is a name refused as a path component: an interface or network namespace name that
// the kernel (or `ip netns`) could not have made.
type NameError struct {
	What string // "interface" or "network namespace"
	Name string
	Why  string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("invalid %s name %q: %s", e.What, e.Name, e.Why)
}

// ValidIfaceName checks name as the kernel's dev_valid_name does: 1 to 15 bytes (IFNAMSIZ 16 with
// its NUL), not "." or "..", no '/', ':', NUL or whitespace (the kernel's isspace: \t \n \v \f \r,
// space and 0xa0). The error is a *NameError.
func ValidIfaceName(name string) error {
	bad := func(why string) error { return &NameError{What: "interface", Name: name, Why: why} }
	switch {
	case name == "":
		return bad("empty")
	case len(name) >= unix.IFNAMSIZ:
		return bad(fmt.Sprintf("%d bytes, at most %d", len(name), unix.IFNAMSIZ-1))
	case name == "." || name == "..":
		return bad("not a name")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '/', ':', 0:
			return bad(fmt.Sprintf("contains %q", c))
		case ' ', '\t', '\n', '\v', '\f', '\r', 0xa0:
			return bad("contains whitespace")
		}
	}
	return nil
}

// ValidNetnsName checks a named network namespace's name, which becomes a directory under the pin
// roots and a file in /run/netns: not empty, "." or "..", no '/' or NUL, at most NAME_MAX (255)
// bytes. The error is a *NameError.
func ValidNetnsName(name string) error {
	bad := func(why string) error { return &NameError{What: "network namespace", Name: name, Why: why} }
	switch {
	case name == "":
		return bad("empty")
	case len(name) > unix.NAME_MAX:
		return bad(fmt.Sprintf("%d bytes, at most %d", len(name), unix.NAME_MAX))
	case name == "." || name == "..":
		return bad("not a name")
	case strings.ContainsRune(name, '/'):
		return bad("contains '/'")
	case strings.IndexByte(name, 0) >= 0:
		return bad("contains a NUL byte")
	}
	return nil
}

// validIfaceNames checks every name of ifaces.
func validIfaceNames(ifaces []string) error {
	for _, i := range ifaces {
		if err := ValidIfaceName(i); err != nil {
			return err
		}
	}
	return nil
}

// under checks that path, cleaned, is strictly inside root.
func under(root, path string) error {
	rel, err := filepath.Rel(filepath.Clean(root), filepath.Clean(path))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return fmt.Errorf("pin path %s is not under %s", path, root)
	}
	return nil
}

// ifaceDir is IfaceDir for names that come from a caller: both are checked, and so is the path.
func (l *Loader) ifaceDir(nsDir, iface string) (string, error) {
	if err := ValidNetnsName(nsDir); err != nil {
		return "", err
	}
	if err := ValidIfaceName(iface); err != nil {
		return "", err
	}
	dir := l.IfaceDir(nsDir, iface)
	if err := under(l.Root, dir); err != nil {
		return "", err
	}
	return dir, nil
}

// ownPinNames are the names of the pins mptcp-xdp makes in an interface, balancer or decapsulator
// directory, besides the per-interface hook pins of the last two (ownPinName): the datapath's pins,
// and every map the embedded objects pin by name.
var ownPinNames = sync.OnceValue(func() map[string]bool {
	names := map[string]bool{PinLBWeights: true, PinLBHealth: true}
	for _, d := range datapathPins() {
		names[d.name] = true
	}
	if spec, err := datapath.LoadXdp(); err == nil {
		for name := range spec.Maps { // loadObjects pins every map of the XDP object
			names[name] = true
		}
	}
	for _, decap := range []bool{false, true} {
		spec, err := lbSpec(decap, lb.Config{}, "-")
		if err != nil {
			continue // then its maps are left as foreign, never guessed
		}
		for name, m := range spec.Maps {
			if m.Pinning == ebpf.PinByName {
				names[name] = true
			}
		}
	}
	return names
})

// ownPinName reports whether mptcp-xdp makes pins of this name: ownPinNames, or a balancer's or
// decapsulator's hook pin of a valid interface name (link_xdp@eth0, prog_xdp@eth0, replaced_xdp@eth0).
func ownPinName(name string) bool {
	if ownPinNames()[name] {
		return true
	}
	for _, prefix := range []string{lbLinkPrefix, lbProgPrefix, pinReplacedXDP + lbIfaceSep} {
		if iface, ok := strings.CutPrefix(name, prefix); ok && ValidIfaceName(iface) == nil {
			return true
		}
	}
	return false
}

// ForeignFilesError reports files mptcp-xdp did not make in one of its pin directories: detach
// removed its own pins and left these, and so the directory.
type ForeignFilesError struct {
	Dir   string
	Names []string
}

func (e *ForeignFilesError) Error() string {
	return fmt.Sprintf("%s holds %d file(s) mptcp-xdp did not make, left in place with the directory: %s",
		e.Dir, len(e.Names), strings.Join(e.Names, ", "))
}

// ownPin reports whether a directory entry is a pin mptcp-xdp makes: a pin (bpffs shows pins as
// regular files; it allows directories and symbolic links too) with a name of ownPinName.
func ownPin(e fs.DirEntry) bool { return e.Type().IsRegular() && ownPinName(e.Name()) }

// foreignFiles lists the entries of dir that are not pins mptcp-xdp makes (ownPin).
func foreignFiles(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if !ownPin(e) {
			out = append(out, e.Name())
		}
	}
	return out
}

// validNames checks the namespace and interface names of an attach of the balancer or decapsulator.
func (o LBAttachOptions) validNames() error {
	if o.Netns != "" {
		if err := ValidNetnsName(o.Netns); err != nil {
			return err
		}
	}
	return validIfaceNames(o.Ifaces)
}
