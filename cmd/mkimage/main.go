// Command mkimage builds the OCI image of mptcp-xdp without a container daemon and without a base
// image: for each architecture it builds the static binary (CGO_ENABLED=0; the eBPF objects are
// little-endian and embedded, so amd64 and arm64 take the same ones), appends one layer holding
// /usr/local/bin/mptcp-xdp onto an empty image, and writes an image index of the architectures as
// an OCI image layout directory, the same layout as a tar (podman load, ctr import, docker load on
// a containerd image store), and one docker-save tarball per architecture (docker load, podman
// load, ctr import). `make image` runs it; docs/deploy.md says how to load what it writes.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

func main() {
	var o options
	var archs, created string
	flag.StringVar(&o.Out, "out", "build/image", "directory to write the image into (replaced)")
	flag.StringVar(&o.Package, "pkg", "./cmd/mptcp-xdp", "the Go package of the binary")
	flag.StringVar(&o.Repository, "repo", defaultRepository, "image repository (the name the tarballs are tagged with)")
	flag.StringVar(&o.Version, "version", "dev", "version stamped into the binary (-X main.version) and the image's labels and tag")
	flag.StringVar(&o.Revision, "revision", "", "source revision (git commit) for the org.opencontainers.image.revision label")
	flag.StringVar(&o.Source, "source", defaultSource, "source repository URL for the org.opencontainers.image.source label")
	flag.StringVar(&archs, "arch", "amd64,arm64", "comma-separated GOARCH list (little-endian only: the eBPF objects are bpfel)")
	flag.StringVar(&created, "created", "", "creation time, Unix seconds (SOURCE_DATE_EPOCH; default: the epoch, for reproducible images)")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "mkimage: unexpected arguments %v\n", flag.Args())
		os.Exit(2)
	}
	o.Archs = strings.Split(archs, ",")
	if created == "" {
		created = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if created != "" {
		var secs int64
		if _, err := fmt.Sscan(created, &secs); err != nil {
			fmt.Fprintf(os.Stderr, "mkimage: -created %q: not Unix seconds\n", created)
			os.Exit(2)
		}
		o.Created = time.Unix(secs, 0).UTC()
	}
	res, err := build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%s  index %s\n", res.Ref, res.IndexDigest)
	for _, a := range res.Images {
		fmt.Printf("  linux/%-6s %s  binary %s, layer %s (gzip)\n", a.Arch, a.Digest, mib(a.BinarySize), mib(a.LayerSize))
	}
	fmt.Printf("  %s (OCI layout)\n  %s (OCI layout, tar)\n", res.LayoutDir, res.LayoutTar)
	for _, a := range res.Images {
		fmt.Printf("  %s (docker save format, linux/%s)\n", a.DockerTar, a.Arch)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
