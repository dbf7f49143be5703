// Command vmtest runs the project's compiled test binaries inside a Debian kernel booted under qemu
// (TCG: no /dev/kvm needed), one leg of the kernel matrix (docs/kernels.md).
//
//	go run ./test/kernels/vmtest -kernel 6.1 ./pkg/datapath ./pkg/mptcp
//
// On the host it installs qemu-system-x86 and busybox-static when missing, fetches Debian's
// linux-image package for the kernel through apt (a private sources list and state under the cache
// directory: the host's apt configuration is not changed), unpacks it, builds the test binaries
// (CGO_ENABLED=0), writes an initramfs (busybox, the modules the tests need in dependency order, an
// init script) and boots it with the host's / shared read-only over 9p and a writable results
// directory. The guest chroots into the host's tree (so ip, tc and ss are the host's), runs each
// test binary with -test.v in its package directory, and powers off. The host prints the guest's
// uname -r and each package's result and exits non-zero naming the failed packages and tests.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// modules the tests need; their dependencies come from modules.dep. Built-in or absent ones are skipped.
var wantModules = []string{
	"virtio_pci", "9pnet_virtio", "9p", "veth", "sch_ingress", "cls_bpf", "sch_tbf", "ipip",
	"ip6_tunnel", "tunnel4", "tunnel6",
	// A device without native XDP for the automatic ingress hook's test (TestAutoIngress).
	"bridge",
	// ss reads sockets through sock_diag: tcp, udp, raw and MPTCP (ss -M) are modules on Debian.
	"inet_diag", "tcp_diag", "udp_diag", "raw_diag", "mptcp_diag",
}

type config struct {
	kernel      string
	cache       string
	repo        string
	timeout     time.Duration
	pkgTimeout  time.Duration
	bootTimeout time.Duration
	mem         string
	smp         int
	pkgs        []string
	features    bool
	demo        bool
}

func main() {
	var c config
	flag.StringVar(&c.kernel, "kernel", "6.1", "kernel series: the version of Debian's linux-image-amd64 (bookworm or bookworm-backports) that starts with it")
	flag.StringVar(&c.cache, "cache", "build/kernels", "cache and output directory")
	flag.DurationVar(&c.timeout, "timeout", 15*time.Minute, "bound on the whole guest run (boot to poweroff)")
	flag.DurationVar(&c.pkgTimeout, "pkg-timeout", 8*time.Minute, "bound on one package's test binary in the guest")
	flag.DurationVar(&c.bootTimeout, "boot-timeout", 2*time.Minute, "bound on the guest's boot (until init reports uname)")
	flag.StringVar(&c.mem, "m", "2G", "guest memory")
	flag.IntVar(&c.smp, "smp", 2, "guest CPUs")
	flag.BoolVar(&c.features, "features", true, "also run mptcp-xdp features -o json in the guest (saved to the results directory)")
	flag.BoolVar(&c.demo, "demo", false, "also run mptcp-xdp demo -o json in the guest; the leg fails unless its transfer is intact and every datapath count equals the kernel's MPTcpExt counter")
	flag.Parse()
	c.pkgs = flag.Args()
	if len(c.pkgs) == 0 {
		c.pkgs = []string{"./pkg/datapath", "./pkg/mptcp", "./pkg/maps", "./pkg/lb", "./pkg/replay"}
	}
	start := time.Now()
	err := run(&c)
	fmt.Printf("vmtest: kernel %s leg took %s\n", c.kernel, time.Since(start).Round(time.Second))
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: kernel %s: %v\n", c.kernel, err)
		os.Exit(1)
	}
}

func run(c *config) error {
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	c.repo = repo
	if c.cache, err = filepath.Abs(c.cache); err != nil {
		return err
	}
	if err := ensureTools(); err != nil {
		return err
	}
	kdir, kver, err := fetchKernel(c)
	if err != nil {
		return fmt.Errorf("fetch kernel: %w", err)
	}
	legDir := filepath.Join(c.cache, "leg-"+c.kernel)
	binDir := filepath.Join(c.cache, "bin")
	resDir := filepath.Join(legDir, "results")
	if err := os.RemoveAll(resDir); err != nil {
		return err
	}
	for _, d := range []string{binDir, resDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	pkgs, err := buildTests(c, binDir)
	if err != nil {
		return err
	}
	initrd := filepath.Join(legDir, "initramfs.cpio")
	if err := writeInitramfs(c, initrd, kdir, kver, pkgs, binDir, resDir); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	vmlinuz := filepath.Join(kdir, "boot", "vmlinuz-"+kver)
	return boot(c, vmlinuz, initrd, legDir, resDir, pkgs)
}

func ensureTools() error {
	var missing []string
	if _, err := exec.LookPath("depmod"); err != nil {
		missing = append(missing, "kmod")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing = append(missing, "busybox-static")
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Printf("vmtest: installing %s\n", strings.Join(missing, " "))
	if err := sh("", "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("apt-get update: %w", err)
	}
	args := append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)
	if err := sh("", "apt-get", args...); err != nil {
		return fmt.Errorf("apt-get install %s: %w", strings.Join(missing, " "), err)
	}
	return nil
}

func sh(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, lastLines(out.String(), 15))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// fetchKernel resolves the kernel series to the package linux-image-amd64 depends on in bookworm or
// bookworm-backports, downloads it with apt-get download and unpacks it. It returns the unpacked
// tree and the kernel release (the name under lib/modules).
func fetchKernel(c *config) (string, string, error) {
	aptDir := filepath.Join(c.cache, "apt")
	for _, d := range []string{"lists/partial", "cache/archives/partial", "debs"} {
		if err := os.MkdirAll(filepath.Join(aptDir, d), 0o755); err != nil {
			return "", "", err
		}
	}
	sources := "deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-backports main\n"
	if err := os.WriteFile(filepath.Join(aptDir, "sources.list"), []byte(sources), 0o644); err != nil {
		return "", "", err
	}
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(aptDir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(aptDir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(aptDir, "cache"),
		"-o", "APT::Sandbox::User=root",
	}
	if err := sh("", "apt-get", append(opts, "update", "-qq")...); err != nil {
		return "", "", err
	}
	out, err := exec.Command("apt-cache", append(opts, "show", "linux-image-amd64")...).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show linux-image-amd64: %w", err)
	}
	var pkg, ver string
	for _, stanza := range strings.Split(string(out), "\n\n") {
		var v, dep string
		for _, l := range strings.Split(stanza, "\n") {
			if s, ok := strings.CutPrefix(l, "Version: "); ok {
				v = s
			}
			if s, ok := strings.CutPrefix(l, "Depends: "); ok {
				dep = strings.Fields(s)[0]
			}
		}
		if strings.HasPrefix(v, c.kernel+".") && dep != "" {
			pkg, ver = dep, v
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("no linux-image-amd64 version %s.* in bookworm or bookworm-backports", c.kernel)
	}
	fmt.Printf("vmtest: kernel %s: %s (%s)\n", c.kernel, pkg, ver)
	debs := filepath.Join(aptDir, "debs")
	matches, _ := filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
	if len(matches) == 0 {
		if err := sh(debs, "apt-get", append(opts, "download", pkg)...); err != nil {
			return "", "", err
		}
		matches, _ = filepath.Glob(filepath.Join(debs, pkg+"_*.deb"))
		if len(matches) == 0 {
			return "", "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, debs)
		}
	}
	kdir := filepath.Join(c.cache, pkg)
	if _, err := os.Stat(filepath.Join(kdir, ".unpacked")); err != nil {
		os.RemoveAll(kdir)
		if err := sh("", "dpkg-deb", "-x", matches[0], kdir); err != nil {
			return "", "", err
		}
		ents, err := os.ReadDir(filepath.Join(kdir, "lib", "modules"))
		if err != nil || len(ents) != 1 {
			return "", "", fmt.Errorf("%s: want one directory under lib/modules: %v", kdir, err)
		}
		// The package ships no modules.dep (its postinst runs depmod): make it in the unpacked tree.
		if err := sh("", "depmod", "-b", kdir, ents[0].Name()); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(filepath.Join(kdir, ".unpacked"), nil, 0o644); err != nil {
			return "", "", err
		}
	}
	ents, err := os.ReadDir(filepath.Join(kdir, "lib", "modules"))
	if err != nil || len(ents) != 1 {
		return "", "", fmt.Errorf("%s: want one directory under lib/modules: %v", kdir, err)
	}
	return kdir, ents[0].Name(), nil
}

type testPkg struct {
	pkg  string // ./pkg/datapath
	name string // pkg_datapath
	dir  string // pkg/datapath
	run  string // the tests to run (-test.run), from ./pkg:REGEXP; empty: all
}

func buildTests(c *config, binDir string) ([]testPkg, error) {
	var pkgs []testPkg
	for _, p := range c.pkgs {
		p, run, _ := strings.Cut(p, ":")
		if strings.ContainsAny(run, "'\n") {
			return nil, fmt.Errorf("%s: the test pattern %q may not hold a quote or a newline", p, run)
		}
		dir := strings.TrimPrefix(filepath.Clean(p), "./")
		tp := testPkg{pkg: "./" + dir, name: strings.ReplaceAll(dir, "/", "_"), dir: dir, run: run}
		bin := filepath.Join(binDir, tp.name+".test")
		os.Remove(bin)
		cmd := exec.Command("go", "test", "-c", "-o", bin, tp.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go test -c %s: %w", tp.pkg, err)
		}
		if _, err := os.Stat(bin); err != nil {
			fmt.Printf("vmtest: %s has no test files, skipped\n", tp.pkg)
			continue
		}
		pkgs = append(pkgs, tp)
	}
	{ // for features, demo and the tests that run the binary (MPTCP_XDP_BIN: testutil.BuildBinary)
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, "mptcp-xdp"), "./cmd/mptcp-xdp")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/mptcp-xdp: %w", err)
		}
	}
	return pkgs, nil
}

// moduleOrder returns the module files (relative to lib/modules/VER) to insmod, dependencies first.
func moduleOrder(modDir string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{}
	byName := map[string]string{}
	for _, l := range strings.Split(string(data), "\n") {
		mod, rest, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		base := filepath.Base(mod)
		base = base[:strings.Index(base, ".ko")]
		byName[strings.ReplaceAll(base, "-", "_")] = mod
	}
	var order []string
	seen := map[string]bool{}
	var visit func(string)
	visit = func(m string) {
		if seen[m] {
			return
		}
		seen[m] = true
		// modules.dep lists a module's dependencies so that the last is loaded first.
		d := deps[m]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, m)
	}
	for _, w := range wantModules {
		if m, ok := byName[w]; ok {
			visit(m)
		}
	}
	return order, nil
}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "@@VMTEST UNAME $(uname -r)"
for m in $(cat /modules.order); do
	insmod "/lib/modules/$m" 2>/tmp.err || { grep -q 'File exists' /tmp.err || echo "@@VMTEST MODFAIL $m $(cat /tmp.err)"; }
done
fatal() { echo "@@VMTEST FATAL $*"; poweroff -f; sleep 5; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host || fatal "9p mount of the host's / failed"
H=/host
mount -t proc proc $H/proc || fatal "mount proc"
mount -t sysfs sys $H/sys || fatal "mount sysfs"
mount -t devtmpfs dev $H/dev || fatal "mount devtmpfs"
mount -t tmpfs run $H/run || fatal "mount tmpfs /run"
@TMPMOUNT@
mount -t bpf bpf $H/sys/fs/bpf || fatal "mount bpffs"
mount -t debugfs debugfs $H/sys/kernel/debug || echo "@@VMTEST WARN no debugfs"
mount -t tracefs tracefs $H/sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 $H/sys/fs/cgroup || echo "@@VMTEST WARN no cgroup2"
mkdir -p $H/dev/pts $H/dev/shm; mount -t devpts devpts $H/dev/pts; mount -t tmpfs shm $H/dev/shm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results $H@RESULTS@ || fatal "9p mount of the results directory failed"
ip link set lo up
echo 1 > /proc/sys/net/mptcp/enabled || echo "@@VMTEST WARN net.mptcp.enabled not set"
uname -r > $H@RESULTS@/uname
echo "@@VMTEST READY"
run() { # name dir [test pattern]
	echo "@@VMTEST BEGIN $1"
	chroot $H /usr/bin/env -i PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=@TMPDIR@ TMPDIR=@TMPDIR@ MPTCP_XDP_VMTEST=1 MPTCP_XDP_BIN=@BIN@/mptcp-xdp \
		/bin/sh -c "cd @REPO@/$2 && exec timeout -k 10 @PKGTIMEOUT@ @BIN@/$1.test -test.v -test.count=1 -test.timeout=@TESTTIMEOUT@ ${3:+-test.run='$3'}" \
		> $H@RESULTS@/$1.log 2>&1
	rc=$?
	grep -E '^(--- FAIL|FAIL|ok|PASS|panic:)' $H@RESULTS@/$1.log | head -40 | sed "s/^/@@VMTEST LOG $1 /"
	echo "@@VMTEST RESULT $1 $rc"
}
@RUNS@
echo "@@VMTEST DONE"
sync
poweroff -f
sleep 10
`

func writeInitramfs(c *config, out, kdir, kver string, pkgs []testPkg, binDir, resDir string) error {
	modDir := filepath.Join(kdir, "lib", "modules", kver)
	order, err := moduleOrder(modDir)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	w := newCpio(f)
	for _, d := range []string{"bin", "dev", "proc", "sys", "host", "lib", "lib/modules"} {
		w.dir(d)
	}
	w.node("dev/console", 0o020600, 5, 1)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return err
	}
	w.file("bin/busybox", 0o755, bb)
	var loaded []string
	for _, m := range order {
		data, err := os.ReadFile(filepath.Join(modDir, m))
		if err != nil {
			return err
		}
		name := m
		if strings.HasSuffix(m, ".xz") {
			cmd := exec.Command("xz", "-dc")
			cmd.Stdin = bytes.NewReader(data)
			if data, err = cmd.Output(); err != nil {
				return fmt.Errorf("xz -d %s: %w", m, err)
			}
			name = strings.TrimSuffix(m, ".xz")
		} else if strings.HasSuffix(m, ".zst") {
			cmd := exec.Command("zstd", "-dc")
			cmd.Stdin = bytes.NewReader(data)
			if data, err = cmd.Output(); err != nil {
				return fmt.Errorf("zstd -d %s: %w", m, err)
			}
			name = strings.TrimSuffix(m, ".zst")
		}
		name = strings.ReplaceAll(name, "/", "_")
		w.file("lib/modules/"+name, 0o644, data)
		loaded = append(loaded, name)
	}
	w.file("modules.order", 0o644, []byte(strings.Join(loaded, "\n")+"\n"))
	var runs strings.Builder
	for _, p := range pkgs {
		fmt.Fprintf(&runs, "run %s %s '%s'\n", p.name, p.dir, p.run)
	}
	if c.features {
		fmt.Fprintf(&runs, "chroot $H %s/mptcp-xdp features -o json > $H%s/features.json 2> $H%s/features.err; echo \"@@VMTEST FEATURES $?\"\n", binDir, resDir, resDir)
	}
	if c.demo {
		fmt.Fprintf(&runs, "echo \"@@VMTEST BEGIN demo\"; chroot $H /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TMPDIR=@TMPDIR@ timeout -k 10 300 %s/mptcp-xdp demo --duration 3s -o json > $H%s/demo.json 2> $H%s/demo.err; echo \"@@VMTEST DEMO $?\"\n", binDir, resDir, resDir)
	}
	// A tmpfs on the guest's /tmp would hide a repository (a CI clone) or results directory under
	// the host's /tmp: the tests then get their temporary files in a tmpfs under /run.
	tmpMount, tmpDir := `mount -t tmpfs tmp $H/tmp || fatal "mount tmpfs /tmp"`, "/tmp"
	for _, d := range []string{c.repo, resDir, binDir} {
		if d == "/tmp" || strings.HasPrefix(d, "/tmp/") {
			tmpMount, tmpDir = "mkdir -p $H/run/tmp", "/run/tmp"
		}
	}
	script := strings.NewReplacer(
		"@TMPMOUNT@", tmpMount, "@TMPDIR@", tmpDir,
		"@RESULTS@", resDir, "@REPO@", c.repo, "@BIN@", binDir,
		"@PKGTIMEOUT@", fmt.Sprintf("%ds", int(c.pkgTimeout.Seconds())),
		"@TESTTIMEOUT@", fmt.Sprintf("%ds", int(c.pkgTimeout.Seconds())-15),
		"@RUNS@", runs.String(),
	).Replace(initScript)
	w.file("init", 0o755, []byte(script))
	return w.close()
}

// cpioWriter writes the newc format the kernel unpacks into its rootfs.
type cpioWriter struct {
	w   io.Writer
	ino int
	err error
}

func newCpio(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

func (c *cpioWriter) entry(name string, mode, rmaj, rmin int, data []byte) {
	if c.err != nil {
		return
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(name)+1, 0)
	c.ino++
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpioWriter) dir(name string)                      { c.entry(name, 0o040755, 0, 0, nil) }
func (c *cpioWriter) file(name string, perm int, d []byte) { c.entry(name, 0o100000|perm, 0, 0, d) }
func (c *cpioWriter) node(name string, mode, maj, min int) { c.entry(name, mode, maj, min, nil) }
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	return c.err
}

type pkgResult struct {
	rc     int
	failed []string
	took   time.Duration
}

var failRe = regexp.MustCompile(`^\s*--- FAIL: (\S+)`)

func boot(c *config, vmlinuz, initrd, legDir, resDir string, pkgs []testPkg) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	args := []string{
		"-accel", "tcg", "-cpu", "max", "-m", c.mem, "-smp", fmt.Sprint(c.smp),
		"-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 oops=panic quiet loglevel=4 rdinit=/init",
		"-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
		"-fsdev", "local,id=results,path=" + resDir + ",security_model=none",
		"-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
		"-nic", "none",
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	logf, err := os.Create(filepath.Join(legDir, "console.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	fmt.Printf("vmtest: booting %s under qemu (TCG), console in %s\n", filepath.Base(vmlinuz), filepath.Join(legDir, "console.log"))
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait(); pw.Close() }()

	type event struct {
		line string
		eof  bool
	}
	lines := make(chan event, 64)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lines <- event{line: strings.TrimRight(sc.Text(), "\r")}
		}
		io.Copy(io.Discard, pr)
		lines <- event{eof: true}
	}()

	var (
		uname, panicLine, fatal, hung string
		done, booted                  bool
		current                       string
		currentSince                  time.Time
		results                       = map[string]*pkgResult{}
		tail                          []string
		features                      = -1
		demo                          = -1
	)
	bootDeadline := time.Now().Add(c.bootTimeout)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case ev := <-lines:
			if ev.eof {
				break loop
			}
			l := ev.line
			fmt.Fprintln(logf, l)
			tail = append(tail, l)
			if len(tail) > 30 {
				tail = tail[1:]
			}
			if strings.Contains(l, "Kernel panic") && panicLine == "" {
				panicLine = l
			}
			i := strings.Index(l, "@@VMTEST ")
			if i < 0 {
				continue
			}
			f := strings.Fields(l[i+len("@@VMTEST "):])
			if len(f) == 0 {
				continue
			}
			switch f[0] {
			case "UNAME":
				booted = true
				if len(f) > 1 {
					uname = f[1]
				}
				fmt.Printf("vmtest: guest uname -r: %s\n", uname)
			case "MODFAIL", "WARN":
				fmt.Printf("vmtest: guest: %s\n", strings.Join(f, " "))
			case "FATAL":
				fatal = strings.Join(f[1:], " ")
			case "READY":
				fmt.Printf("vmtest: guest ready (filesystems, modules, net.mptcp.enabled=1)\n")
			case "BEGIN":
				current, currentSince = f[1], time.Now()
			case "RESULT":
				rc := 1
				fmt.Sscan(f[2], &rc)
				r := &pkgResult{rc: rc, took: time.Since(currentSince)}
				results[f[1]] = r
				status := "ok"
				if rc != 0 {
					status = fmt.Sprintf("FAIL (exit %d)", rc)
					if rc == 124 || rc == 137 {
						status = fmt.Sprintf("FAIL (killed after %s: hung)", c.pkgTimeout)
					}
				}
				fmt.Printf("vmtest: %-22s %s  %s\n", f[1], status, time.Since(currentSince).Round(time.Second))
				current = ""
			case "FEATURES":
				fmt.Sscan(f[1], &features)
			case "DEMO":
				fmt.Sscan(f[1], &demo)
				current = ""
			case "DONE":
				done = true
			}
		case <-tick.C:
			if !booted && time.Now().After(bootDeadline) {
				fatal = fmt.Sprintf("guest did not boot within %s", c.bootTimeout)
				cmd.Process.Kill()
			}
			if current != "" && time.Since(currentSince) > c.pkgTimeout+90*time.Second {
				hung = current
				cmd.Process.Kill()
			}
		}
	}
	err = <-waitErr
	if ctx.Err() != nil {
		fatal = fmt.Sprintf("guest still running after %s (package running: %q); killed", c.timeout, current)
	}
	if hung != "" {
		fatal = fmt.Sprintf("package %s hung in the guest (no result %s after its bound); killed", hung, c.pkgTimeout+90*time.Second)
	}
	os.WriteFile(filepath.Join(legDir, "uname"), []byte(uname+"\n"), 0o644)

	// Failed tests from each package's -test.v log.
	var failedPkgs []string
	names := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		names = append(names, p.name)
	}
	for _, n := range names {
		r := results[n]
		if r == nil {
			continue
		}
		if r.rc != 0 {
			data, _ := os.ReadFile(filepath.Join(resDir, n+".log"))
			sc := bufio.NewScanner(bytes.NewReader(data))
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				if m := failRe.FindStringSubmatch(sc.Text()); m != nil {
					r.failed = append(r.failed, m[1])
				}
			}
			sort.Strings(r.failed)
			// The top-level tests that failed (summary.json keeps every subtest too).
			desc := n
			var top []string
			for _, f := range r.failed {
				if !strings.Contains(f, "/") {
					top = append(top, f)
				}
			}
			if len(top) > 0 {
				desc += " (" + strings.Join(top, ", ")
				if sub := len(r.failed) - len(top); sub > 0 {
					desc += fmt.Sprintf("; %d of their subtests", sub)
				}
				desc += ")"
			}
			failedPkgs = append(failedPkgs, desc)
		}
	}
	if features == 0 {
		fmt.Printf("vmtest: mptcp-xdp features -o json saved in %s\n", filepath.Join(resDir, "features.json"))
	} else if features > 0 {
		fmt.Printf("vmtest: mptcp-xdp features failed (exit %d): %s\n", features, filepath.Join(resDir, "features.err"))
	}
	var demoErr error
	defer func() { writeSummary(c, legDir, uname, pkgs, results, demo, demoErr) }()
	if c.demo {
		if demoErr = checkDemo(resDir, demo); demoErr == nil {
			fmt.Printf("vmtest: demo: every datapath count equals the guest kernel's MPTcpExt counter (%s)\n", filepath.Join(resDir, "demo.json"))
		} else {
			fmt.Printf("vmtest: demo FAIL: %v\n", demoErr)
		}
	}
	fmt.Printf("vmtest: logs of each package in %s\n", resDir)
	switch {
	case panicLine != "":
		return fmt.Errorf("kernel panic in the guest: %s\n%s", panicLine, strings.Join(tail, "\n"))
	case fatal != "":
		return fmt.Errorf("%s\nlast console lines:\n%s", fatal, strings.Join(tail, "\n"))
	case !booted:
		return fmt.Errorf("guest did not boot (qemu: %v)\nlast console lines:\n%s", err, strings.Join(tail, "\n"))
	case !done:
		return fmt.Errorf("guest stopped before running every package (qemu: %v)\nlast console lines:\n%s", err, strings.Join(tail, "\n"))
	}
	var missing []string
	for _, n := range names {
		if results[n] == nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no result from %s", strings.Join(missing, ", "))
	}
	if demoErr != nil {
		failedPkgs = append(failedPkgs, "demo ("+demoErr.Error()+")")
	}
	if len(failedPkgs) > 0 {
		return errors.New("failed on " + uname + ": " + strings.Join(failedPkgs, "; "))
	}
	fmt.Printf("vmtest: every package passed on %s\n", uname)
	return nil
}

// demoResult is what checkDemo reads of `mptcp-xdp demo -o json` (internal/demo.Result).
type demoResult struct {
	ChecksumOK bool   `json:"checksum_ok"`
	MPTCP      bool   `json:"mptcp"`
	SentBytes  uint64 `json:"sent_bytes"`
	RecvBytes  uint64 `json:"received_bytes"`
	Kernel     []struct {
		Class    string `json:"class"`
		MIB      string `json:"mib"`
		Datapath uint64 `json:"datapath"`
		Kernel   int64  `json:"kernel"`
	} `json:"kernel_check"`
}

// checkDemo checks the guest's demo run (its exit status rc, -1 if it never reported): exit 0, an
// intact MPTCP transfer, and each datapath count equal to the kernel's counter of the same event.
func checkDemo(resDir string, rc int) error {
	if rc != 0 {
		msg, _ := os.ReadFile(filepath.Join(resDir, "demo.err"))
		return fmt.Errorf("exit %d: %s", rc, strings.TrimSpace(lastLines(string(msg), 5)))
	}
	b, err := os.ReadFile(filepath.Join(resDir, "demo.json"))
	if err != nil {
		return err
	}
	var r demoResult
	if err := json.Unmarshal(b, &r); err != nil {
		return fmt.Errorf("demo.json: %w", err)
	}
	if !r.MPTCP || !r.ChecksumOK || r.SentBytes == 0 || r.RecvBytes != r.SentBytes {
		return fmt.Errorf("transfer: mptcp %v, checksum ok %v, %d bytes sent, %d received", r.MPTCP, r.ChecksumOK, r.SentBytes, r.RecvBytes)
	}
	if len(r.Kernel) == 0 {
		return errors.New("demo.json has no kernel_check")
	}
	var bad []string
	for _, k := range r.Kernel {
		fmt.Printf("vmtest: demo: %-16s datapath %6d  MPTcpExt%-16s %6d\n", k.Class, k.Datapath, k.MIB, k.Kernel)
		if int64(k.Datapath) != k.Kernel {
			bad = append(bad, fmt.Sprintf("%s %d != MPTcpExt%s %d", k.Class, k.Datapath, k.MIB, k.Kernel))
		}
	}
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, ", "))
	}
	return nil
}

// Summary is what a leg ran and how it ended (leg-<kernel>/summary.json), for the README's kernel
// table (test/kernels/table). The names are stable.
type Summary struct {
	Kernel   string           `json:"kernel"`  // the series asked for: 6.1
	Release  string           `json:"release"` // the guest's uname -r
	Packages []PackageSummary `json:"packages"`
	Demo     *DemoSummary     `json:"demo,omitempty"` // absent without -demo
}

// PackageSummary is one test binary's run in the guest.
type PackageSummary struct {
	Package string   `json:"package"`         // ./pkg/lb
	Tests   string   `json:"tests,omitempty"` // the -test.run pattern, if any
	Passed  bool     `json:"passed"`
	Seconds float64  `json:"seconds"`
	Failed  []string `json:"failed,omitempty"`  // the --- FAIL lines' test names
	Missing bool     `json:"missing,omitempty"` // no result came back (the guest stopped first)
}

// DemoSummary is the guest's demo run.
type DemoSummary struct {
	Passed bool   `json:"passed"`
	Error  string `json:"error,omitempty"`
}

func writeSummary(c *config, legDir, uname string, pkgs []testPkg, results map[string]*pkgResult, demoRC int, demoErr error) {
	sum := Summary{Kernel: c.kernel, Release: uname}
	for _, p := range pkgs {
		ps := PackageSummary{Package: p.pkg, Tests: p.run}
		if r := results[p.name]; r != nil {
			ps.Passed, ps.Seconds, ps.Failed = r.rc == 0, r.took.Round(time.Second).Seconds(), r.failed
		} else {
			ps.Missing = true
		}
		sum.Packages = append(sum.Packages, ps)
	}
	if c.demo {
		sum.Demo = &DemoSummary{Passed: demoErr == nil}
		if demoErr != nil {
			sum.Demo.Error = demoErr.Error()
		}
	}
	b, err := json.MarshalIndent(sum, "", "  ")
	if err == nil {
		err = os.WriteFile(filepath.Join(legDir, "summary.json"), append(b, '\n'), 0o644)
	}
	if err != nil {
		fmt.Printf("vmtest: summary: %v\n", err)
	}
}
