package main

import (
	"archive/tar"
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/mptcp-xdp/mptcp-xdp/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }

// TestImage builds the image as `make image` does (both architectures), reads each output back
// with go-containerregistry, checks the index, the platforms, the entrypoint, cmd and labels and
// the one-layer filesystem, and runs the host architecture's binary from its unpacked root
// filesystem (chroot, with its own proc, sysfs and bpffs as a container runtime gives it):
// --version prints the stamped version and serve answers /metrics and /healthz on loopback.
func TestImage(t *testing.T) {
	testutil.RequireRoot(t)
	other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]
	if other == "" {
		t.Fatalf("no image is built for %s (amd64 and arm64 are)", runtime.GOARCH)
	}
	o := options{
		Out:        filepath.Join(t.TempDir(), "image"),
		Package:    "./cmd/mptcp-xdp",
		Dir:        "../..",
		Repository: "example.test/mptcp-xdp/mptcp-xdp",
		// A version no build has by chance: the binary must carry this one.
		Version:  fmt.Sprintf("0.0.0-test.%d", time.Now().UnixNano()),
		Revision: "0123456789abcdef0123456789abcdef01234567",
		Source:   defaultSource,
		Archs:    []string{runtime.GOARCH, other},
		Created:  time.Unix(1700000000, 0).UTC(),
	}
	start := time.Now()
	res, err := build(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %v: %s", time.Since(start).Round(time.Millisecond), res.Ref)
	wantLabels := map[string]string{
		labelVersion:  o.Version,
		labelRevision: o.Revision,
		labelSource:   o.Source,
		labelTitle:    "mptcp-xdp",
		labelCreated:  "2023-11-14T22:13:20Z",
	}
	tag := tagOf(o.Version)

	// The layout directory: index.json names one image index, by tag and by full reference.
	outer, err := layout.ImageIndexFromPath(res.LayoutDir)
	if err != nil {
		t.Fatal(err)
	}
	om, err := outer.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(om.Manifests) != 1 {
		t.Fatalf("index.json lists %d descriptors, want 1 (the image index)", len(om.Manifests))
	}
	d := om.Manifests[0]
	if d.MediaType != types.OCIImageIndex || d.Annotations[refName] != tag || d.Annotations[imageName] != res.Ref {
		t.Errorf("index.json: %s %v, want an OCI image index named %s (%s)", d.MediaType, d.Annotations, tag, res.Ref)
	}
	if d.Digest != res.IndexDigest {
		t.Errorf("index.json points at %s, build reported %s", d.Digest, res.IndexDigest)
	}
	idx, err := outer.ImageIndex(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if im.MediaType != types.OCIImageIndex {
		t.Errorf("image index media type %s", im.MediaType)
	}
	for k, v := range wantLabels {
		if im.Annotations[k] != v {
			t.Errorf("image index annotation %s = %q, want %q", k, im.Annotations[k], v)
		}
	}
	var platforms []string
	images := map[string]v1.Image{}
	for _, m := range im.Manifests {
		if m.Platform == nil {
			t.Fatalf("manifest %s has no platform", m.Digest)
		}
		platforms = append(platforms, m.Platform.String())
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		images[m.Platform.Architecture] = img
		if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
			t.Errorf("%s: manifest media type %s, want %s", m.Platform, mt, types.OCIManifestSchema1)
		}
		checkConfig(t, img, m.Platform, wantLabels)
	}
	slices.Sort(platforms)
	want := []string{"linux/" + runtime.GOARCH, "linux/" + other}
	if other == "arm64" {
		want[1] += "/v8"
	} else {
		want[0] += "/v8"
	}
	slices.Sort(want)
	if !slices.Equal(platforms, want) {
		t.Errorf("platforms %v, want %v", platforms, want)
	}

	// The layout's tar holds the same layout; each docker-save tarball the same image as the index.
	untarred := filepath.Join(t.TempDir(), "layout")
	untar(t, res.LayoutTar, untarred)
	if ii, err := layout.ImageIndexFromPath(untarred); err != nil {
		t.Errorf("%s: %v", res.LayoutTar, err)
	} else if m, err := ii.IndexManifest(); err != nil || len(m.Manifests) != 1 || m.Manifests[0].Digest != res.IndexDigest {
		t.Errorf("%s: not the layout directory's index (%v)", res.LayoutTar, err)
	}
	ref, err := name.NewTag(res.Ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range res.Images {
		dimg, err := tarball.ImageFromPath(a.DockerTar, &ref)
		if err != nil {
			t.Errorf("%s: %v", a.DockerTar, err)
			continue
		}
		got, err := dimg.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		wantCfg, err := images[a.Arch].ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		if got != wantCfg {
			t.Errorf("%s: config %s, the index's linux/%s image has %s", a.DockerTar, got, a.Arch, wantCfg)
		}
		t.Logf("linux/%s: binary %s, layer %s, docker tar %s", a.Arch, mib(a.BinarySize), mib(a.LayerSize), mib(fileSize(t, a.DockerTar)))
	}

	// The filesystem: the binary alone, static, for its architecture.
	roots := map[string]string{}
	for arch, img := range images {
		root := filepath.Join(t.TempDir(), "rootfs-"+arch)
		entries := extract(t, img, root)
		wantEntries := []string{"usr dir 0755", "usr/local dir 0755", "usr/local/bin dir 0755", "usr/local/bin/mptcp-xdp file 0755"}
		if !slices.Equal(entries, wantEntries) {
			t.Errorf("linux/%s filesystem %q, want %q", arch, entries, wantEntries)
		}
		checkELF(t, filepath.Join(root, binaryPath), arch)
		roots[arch] = root
	}
	root := roots[runtime.GOARCH]
	if root == "" {
		t.Fatal("no image of the host's architecture")
	}

	t.Run("version", func(t *testing.T) {
		cmd := exec.Command(binaryPath, "--version")
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("chroot %s %s --version: %v\n%s", root, binaryPath, err, out)
		}
		if want := "mptcp-xdp version " + o.Version + "\n"; string(out) != want {
			t.Errorf("--version printed %q, want %q", out, want)
		}
	})

	t.Run("serve", func(t *testing.T) { serveFromRoot(t, root, o.Version) })
}

func checkConfig(t *testing.T, img v1.Image, p *v1.Platform, labels map[string]string) {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture || cf.Variant != p.Variant {
		t.Errorf("%s: config says %s/%s/%s", p, cf.OS, cf.Architecture, cf.Variant)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/mptcp-xdp"}) {
		t.Errorf("%s: entrypoint %q", p, cf.Config.Entrypoint)
	}
	if !slices.Equal(cf.Config.Cmd, []string{"serve"}) {
		t.Errorf("%s: cmd %q, want [serve]", p, cf.Config.Cmd)
	}
	for k, v := range labels {
		if cf.Config.Labels[k] != v {
			t.Errorf("%s: label %s = %q, want %q", p, k, cf.Config.Labels[k], v)
		}
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != types.OCILayer {
		t.Errorf("%s: layers %v, want one %s", p, m.Layers, types.OCILayer)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("%s: config media type %s", p, m.Config.MediaType)
	}
	if m.Annotations[labelVersion] != labels[labelVersion] {
		t.Errorf("%s: manifest annotations %v", p, m.Annotations)
	}
}

// extract writes the flattened filesystem of img under root and lists it as "path kind mode".
func extract(t *testing.T, img v1.Image, root string) []string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	var out []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(root, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			out = append(out, fmt.Sprintf("%s dir %04o", h.Name, h.Mode&0o7777))
			if err := os.MkdirAll(dst, os.FileMode(h.Mode&0o777)); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			out = append(out, fmt.Sprintf("%s file %04o", h.Name, h.Mode&0o7777))
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode&0o777))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			out = append(out, fmt.Sprintf("%s type %c", h.Name, h.Typeflag))
		}
	}
	return out
}

// checkELF checks that the binary is a static executable for arch.
func checkELF(t *testing.T, path, arch string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if f.Machine != want || f.ByteOrder.String() != "LittleEndian" {
		t.Errorf("linux/%s binary: %s %s, want %s little-endian", arch, f.Machine, f.ByteOrder, want)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("linux/%s binary has an interpreter: not static", arch)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("linux/%s binary needs %v: not static", arch, libs)
	}
}

var (
	metricsAddrRE = regexp.MustCompile(`msg="serving metrics" address=(\S+)`)
	healthAddrRE  = regexp.MustCompile(`msg="serving health" address=(\S+)`)
)

// serveFromRoot runs the image's `serve` chrooted into root, in a mount namespace of its own that
// gives it what a container runtime does (proc, a sysfs, an empty bpffs with the pin directories
// the DaemonSet mounts), on loopback ports the kernel picks, and scrapes it.
func serveFromRoot(t *testing.T, root, version string) {
	for _, d := range []string{"proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	script := `set -e
mount -t proc proc "$1/proc"
mount -t sysfs sysfs "$1/sys"
mount -t bpf bpf "$1/sys/fs/bpf"
mkdir "$1/sys/fs/bpf/mptcp-xdp" "$1/sys/fs/bpf/mptcp-xdp-lb" "$1/sys/fs/bpf/mptcp-xdp-history"
exec chroot "$1" "$2" serve --listen 127.0.0.1:0 --health-listen 127.0.0.1:0`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", root, binaryPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var (
		mu  sync.Mutex
		log strings.Builder
	)
	collect := func() string {
		mu.Lock()
		defer mu.Unlock()
		return log.String()
	}
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		var health string
		for sc.Scan() {
			mu.Lock()
			log.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if m := healthAddrRE.FindStringSubmatch(sc.Text()); m != nil {
				health = m[1]
			}
			if m := metricsAddrRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addrs <- [2]string{m[1], health}:
				default:
				}
			}
		}
		done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	var a [2]string
	select {
	case a = <-addrs:
	case err := <-done:
		done <- err
		t.Fatalf("serve exited before listening: %v\n%s", err, collect())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not listen within 30s:\n%s", collect())
	}
	if a[1] == "" {
		t.Fatalf("serve logged no health address:\n%s", collect())
	}
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(url string) (int, string) {
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v\n%s", url, err, collect())
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	code, body := get("http://" + a[0] + "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d\n%s\n%s", code, body, collect())
	}
	buildInfo := regexp.MustCompile(`(?m)^mptcp_xdp_build_info\{[^}]*version="` + regexp.QuoteMeta(version) + `"[^}]*\} 1$`)
	if !buildInfo.MatchString(body) {
		t.Errorf("/metrics has no mptcp_xdp_build_info with version %q:\n%.2000s", version, body)
	}
	if code, body := get("http://" + a[1] + "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q\n%s", code, body, collect())
	}
}

func untar(t *testing.T, file, dir string) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
