package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	defaultRepository = "ghcr.io/mptcp-xdp/mptcp-xdp"
	defaultSource     = "https://github.com/mptcp-xdp/mptcp-xdp"
	// binaryPath is where the image holds the binary: the DaemonSets run it by this path.
	binaryPath = "/usr/local/bin/mptcp-xdp"
	title      = "mptcp-xdp"
)

// The OCI annotation keys the image carries as labels (in its config) and as annotations (on its
// manifests and index).
const (
	labelVersion  = "org.opencontainers.image.version"
	labelSource   = "org.opencontainers.image.source"
	labelTitle    = "org.opencontainers.image.title"
	labelRevision = "org.opencontainers.image.revision"
	labelCreated  = "org.opencontainers.image.created"
	// refName names the image in an OCI layout's index.json (the tag); containerd (ctr import,
	// docker load on the containerd store) names the image by the full reference in imageName.
	refName   = "org.opencontainers.image.ref.name"
	imageName = "io.containerd.image.name"
)

// options is what mkimage builds.
type options struct {
	Out        string   // output directory, replaced
	Package    string   // Go package of the binary
	Repository string   // image repository, e.g. ghcr.io/mptcp-xdp/mptcp-xdp
	Version    string   // stamped into the binary and the labels; the image's tag
	Revision   string   // git commit, for the revision label (omitted when empty)
	Source     string   // source URL label
	Archs      []string // GOARCH values
	Created    time.Time
	// Dir is the directory go build runs in (the module); empty: the current one.
	Dir string
}

// result is what build wrote.
type result struct {
	Ref         string // repository:version
	IndexDigest v1.Hash
	LayoutDir   string // OCI image layout directory
	LayoutTar   string // the same layout as a tar
	Images      []archImage
}

type archImage struct {
	Arch       string
	Digest     v1.Hash // manifest digest
	BinarySize int64
	LayerSize  int64  // compressed
	DockerTar  string // docker save-style tarball of this architecture
}

// bigEndian are the GOARCH values whose byte order the committed eBPF objects (bpfel) do not fit.
var bigEndian = []string{"ppc64", "mips", "mips64", "s390x", "sparc64"}

// build builds the binaries and writes the image: o.Out/mptcp-xdp.oci (layout directory),
// o.Out/mptcp-xdp.oci.tar and o.Out/mptcp-xdp-linux-ARCH.tar.
func build(o options) (*result, error) {
	if len(o.Archs) == 0 {
		return nil, fmt.Errorf("no architecture")
	}
	for _, a := range o.Archs {
		if a == "" || slices.Contains(bigEndian, a) {
			return nil, fmt.Errorf("architecture %q: the eBPF objects are little-endian (bpfel) only", a)
		}
	}
	ref, err := name.NewTag(o.Repository + ":" + tagOf(o.Version))
	if err != nil {
		return nil, fmt.Errorf("image reference: %w", err)
	}
	if err := os.RemoveAll(o.Out); err != nil {
		return nil, err
	}
	binDir := filepath.Join(o.Out, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	res := &result{
		Ref:       ref.String(),
		LayoutDir: filepath.Join(o.Out, "mptcp-xdp.oci"),
		LayoutTar: filepath.Join(o.Out, "mptcp-xdp.oci.tar"),
	}
	anns := map[string]string{
		labelVersion: o.Version,
		labelSource:  o.Source,
		labelTitle:   title,
		labelCreated: o.Created.UTC().Format(time.RFC3339),
	}
	if o.Revision != "" {
		anns[labelRevision] = o.Revision
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range o.Archs {
		bin := filepath.Join(binDir, "mptcp-xdp-linux-"+arch)
		if err := goBuild(o, arch, bin); err != nil {
			return nil, err
		}
		img, err := archImageOf(o, arch, bin, anns)
		if err != nil {
			return nil, fmt.Errorf("image for linux/%s: %w", arch, err)
		}
		a := archImage{Arch: arch, DockerTar: filepath.Join(o.Out, "mptcp-xdp-linux-"+arch+".tar")}
		if a.Digest, err = img.Digest(); err != nil {
			return nil, fmt.Errorf("image for linux/%s: %w", arch, err)
		}
		if fi, err := os.Stat(bin); err == nil {
			a.BinarySize = fi.Size()
		}
		layers, err := img.Layers()
		if err != nil {
			return nil, err
		}
		for _, l := range layers {
			n, err := l.Size()
			if err != nil {
				return nil, err
			}
			a.LayerSize += n
		}
		if err := tarball.WriteToFile(a.DockerTar, ref, img); err != nil {
			return nil, fmt.Errorf("write %s: %w", a.DockerTar, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: platform(arch)},
		})
		res.Images = append(res.Images, a)
	}
	idx = mutate.Annotations(idx, anns).(v1.ImageIndex)
	if res.IndexDigest, err = idx.Digest(); err != nil {
		return nil, err
	}
	lp, err := layout.Write(res.LayoutDir, empty.Index)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", res.LayoutDir, err)
	}
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		refName:   tagOf(o.Version),
		imageName: ref.String(),
	})); err != nil {
		return nil, fmt.Errorf("write %s: %w", res.LayoutDir, err)
	}
	if err := tarDir(res.LayoutDir, res.LayoutTar, o.Created); err != nil {
		return nil, fmt.Errorf("write %s: %w", res.LayoutTar, err)
	}
	return res, nil
}

// tagOf makes a version a valid tag (git describe gives such already; "+" is not allowed).
func tagOf(version string) string {
	b := []byte(version)
	for i, c := range b {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			b[i] = '-'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	if len(b) == 0 || b[0] == '.' || b[0] == '-' {
		b = append([]byte("v"), b...)
	}
	return string(b)
}

func platform(arch string) *v1.Platform {
	p := &v1.Platform{OS: "linux", Architecture: arch}
	if arch == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// goBuild builds the static binary of o.Package for linux/arch, stamped with o.Version.
func goBuild(o options, arch, out string) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+o.Version, "-o", abs, o.Package)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s for linux/%s: %w\n%s", o.Package, arch, err, b)
	}
	return nil
}

// archImageOf is the image of one architecture: an empty OCI image with one layer, the binary.
func archImageOf(o options, arch, bin string, anns map[string]string) (v1.Image, error) {
	layerTar, err := binaryLayer(bin, o.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: o.Created},
			CreatedBy: fmt.Sprintf("mkimage: %s %s for linux/%s", binaryPath, o.Version, arch),
			Comment:   "the static mptcp-xdp binary",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	p := platform(arch)
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: o.Created}
	cf.Author = ""
	cf.Config.Entrypoint = []string{binaryPath}
	cf.Config.Cmd = []string{"serve"}
	cf.Config.Env = []string{"PATH=/usr/local/bin"}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = anns
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	return mutate.Annotations(img, anns).(v1.Image), nil
}

// binaryLayer is the layer's tar: usr/, usr/local/, usr/local/bin/ and the binary, owned by root,
// 0755, dated t.
func binaryLayer(bin string, t time.Time) ([]byte, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: t, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: binaryPath[1:], Mode: 0o755, Size: int64(len(data)), ModTime: t, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarDir writes the files under dir into a tar at out (paths relative to dir, sorted, dated t).
func tarDir(dir, out string, t time.Time) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: t})
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o644, Size: int64(len(b)), ModTime: t}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if cerr := tw.Close(); err == nil {
		err = cerr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
