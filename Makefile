# mptcp-xdp — `make help` lists the targets.
GO        ?= go
BIN       ?= bin/mptcp-xdp
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
TESTFLAGS ?= -count=1 -timeout 25m
# FUZZTIME is a count of executions (Nx), not a duration: Go 1.26's fuzzing coordinator can report
# its own -fuzztime deadline as a failure ("context deadline exceeded", golang/go#75804).
FUZZTIME  ?= 1000000x
# LBFUZZTIME: executions of the balancer's fuzz target (FuzzBalancerAgreement, about 5,000 a
# second on the 2-core VM: each one restores and reads the balancer's tables), apart from FUZZTIME.
LBFUZZTIME ?= 250000x
FUZZTIMEOUT ?= 60m
BENCHTIME ?= 1s

.PHONY: help build image manifests generate check-generated test demo bench bench-smoke fuzz lint clean test-kernel test-kernels kernels-table

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## build bin/mptcp-xdp (no C toolchain needed: the eBPF objects are committed)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/mptcp-xdp

# make image: the OCI image of the static binary (cmd/mkimage: no container daemon, no base image).
IMAGE_REPO  ?= ghcr.io/mptcp-xdp/mptcp-xdp
IMAGE_ARCH  ?= amd64,arm64
IMAGE_OUT   ?= build/image
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null)
# The image's creation time: the last commit's, so that the same commit gives the same image.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

image: ## build the OCI image (amd64+arm64) into build/image: OCI layout, its tar, docker-save tars (docs/deploy.md)
	$(GO) run ./cmd/mkimage -out $(IMAGE_OUT) -repo $(IMAGE_REPO) -arch $(IMAGE_ARCH) -version $(VERSION) -revision "$(REVISION)" -created $(SOURCE_DATE_EPOCH)

manifests: ## render deploy/kubernetes/mptcp-xdp.yaml (and test/deploy's renders) from the Helm chart deploy/helm/mptcp-xdp
	$(GO) test -count=1 -run '^TestChartRenders$$' ./test/deploy -update

generate: ## rebuild the eBPF objects and their Go bindings with clang (-O2 -g -Wall -Werror)
	$(GO) generate ./pkg/datapath/... ./test/refbench/...

check-generated: generate ## fail when the committed eBPF objects are stale
	@git diff --exit-code --stat -- pkg/datapath test/refbench || { echo "committed eBPF objects are stale: run 'make generate' and commit"; exit 1; }

test: ## run every test against the real kernel (root, network namespaces)
	$(GO) test $(TESTFLAGS) ./...

demo: build ## the lab: two namespaces, two paths, real MPTCP traffic, datapath attached, live figures
	$(BIN) demo

# LBSWAP_RUNS: runs of each case of BenchmarkLBThroughputSwap (about 13 s each, 8 cases: some 18
# minutes at 10x, past go test's default 10-minute timeout); its own line, since BENCHTIME's
# duration would give it one run and no interval.
LBSWAP_RUNS ?= 10x
bench: ## benchmarks (per-packet cost as ratios to a trivial program, throughput; the balancer's against the reference)
	$(GO) test -run '^$$' -bench . -skip '^BenchmarkLBThroughputSwap$$' -benchtime $(BENCHTIME) -benchmem ./...
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench '^BenchmarkLBThroughputSwap$$' -benchtime $(LBSWAP_RUNS) ./test/refbench/

# make bench-smoke: the per-packet benchmarks of the counting datapath and of the balancer, briefly
# (a few seconds each), so that CI catches a change that breaks them. Their ratios are printed, not
# asserted: CI shares its two cores with nothing, but a figure from seconds of one run is no result
# (docs/benchmarks.md holds those, each with its command).
SMOKE_RUNS ?= 2000000x
bench-smoke: ## the per-packet benchmarks, briefly (CI): ratios printed, not asserted
	$(GO) test -count=1 -run '^$$' -bench '^(BenchmarkXDP|BenchmarkBalancer)$$' -benchtime $(SMOKE_RUNS) ./pkg/datapath/ ./pkg/lb/
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkVsReference$$' -benchtime 2x ./test/refbench/
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkHotVsReference$$' -benchtime $(SMOKE_RUNS) ./test/refbench/
	$(GO) test -count=1 -run '^$$' -bench '^BenchmarkLBThroughputSwap$$' -benchtime 1x ./test/refbench/ -args -lbswap.blocks 1

# make bench-replay: REPLAY_BYTES is the size of the generated capture (internal/capgen), written to
# REPLAY_DIR and removed after the runs; REPLAY_RUNS runs of each tool, interleaved.
REPLAY_BYTES ?= 1073741824
REPLAY_DIR   ?= build/bench
REPLAY_RUNS  ?= 3

.PHONY: bench-replay
bench-replay: build ## replay's frames/s and peak RSS on a generated REPLAY_BYTES capture (1 GiB), both engines, beside tshark -q -z io,stat,0 (needs tshark)
	@command -v tshark >/dev/null 2>&1 || { echo "make bench-replay needs tshark (apt install tshark): tshark -q -z io,stat,0 is its baseline"; exit 1; }
	$(GO) test -count=1 -timeout 60m -run '^$$' -bench '^BenchmarkReplay$$' -benchtime 1x ./test/bench -args -replay-bytes $(REPLAY_BYTES) -replay-runs $(REPLAY_RUNS) -replay-dir $(abspath $(REPLAY_DIR)) -replay-bin $(abspath $(BIN))

fuzz: ## fuzz the eBPF parser against the Go reference parser (FUZZTIME executions) and the balancer against its Go model (LBFUZZTIME)
	@for v in "FUZZTIME=$(FUZZTIME)" "LBFUZZTIME=$(LBFUZZTIME)"; do case "$$v" in *[0-9]x) ;; *) echo "$$v: give a count of executions such as 1000000x (about 75 s here); a duration makes go1.26 report its own deadline as a failure (golang/go#75804)"; exit 2;; esac; done
	$(GO) test -run '^$$' -fuzz FuzzParserAgreement -fuzztime $(FUZZTIME) -timeout $(FUZZTIMEOUT) ./pkg/datapath/
	$(GO) test -run '^$$' -fuzz '^FuzzBalancerAgreement$$' -fuzztime $(LBFUZZTIME) -timeout $(FUZZTIMEOUT) ./pkg/lb/

# make test-kernel KERNEL=6.1: the tests of KERNEL_PKGS compiled here (CGO_ENABLED=0) and run inside
# Debian's kernel of that series under qemu (TCG, no KVM needed), then mptcp-xdp features and demo
# there; test/kernels/vmtest, docs/kernels.md. A package may name its tests: ./test:REGEXP. The
# packages left out: the exporter and cmd (their labs are the same as pkg/stats' and test's), the
# benchmarks, the image and chart builders, and test's 256 MiB replay.
KERNEL       ?= 6.1
KERNELS      ?= 6.1 6.12
KERNEL_TEST  ?= ^(TestAttachAgainUpdatesInPlace|TestHookChanges|TestClsactLeavesOthersAlone|TestForeignXDP|TestAutoIngress|TestBackendSetupJoinPort|TestConcurrentInvocations|TestBadInput|TestJSONContract|TestCountersEqualKernel)$$
KERNEL_LB    ?= ^(TestKernelTunnelDecap|TestJoinPorts|TestHealthCheck)$$
# KERNEL_PKGS_ALL is the whole set; make test-kernel runs it. make test-kernels (CI) runs on each
# kernel K of KERNELS the set KERNEL_PKGS_K when there is one, else KERNEL_PKGS: the whole set on
# 6.1 (Debian 12's kernel, the one users run), the short one on 6.12 (it has tcx, as 6.18), to keep
# CI short.
KERNEL_PKGS_ALL = ./pkg/datapath ./pkg/mptcp ./pkg/maps ./pkg/lb ./pkg/replay ./pkg/loader ./pkg/sockopt ./pkg/stats ./pkg/features './test:$(KERNEL_TEST)' './test/lb:$(KERNEL_LB)'
KERNEL_PKGS  ?= $(KERNEL_PKGS_ALL)
KERNEL_PKGS_6.1  ?= $(KERNEL_PKGS_ALL)
KERNEL_PKGS_6.12 ?= ./pkg/datapath ./pkg/mptcp ./pkg/maps ./pkg/lb ./pkg/features
VMTESTFLAGS  ?= -timeout 45m -pkg-timeout 15m -demo

test-kernel: ## run KERNEL_PKGS' tests inside Debian's kernel KERNEL (make test-kernel KERNEL=6.1) under qemu (docs/kernels.md)
	$(GO) run ./test/kernels/vmtest -kernel $(KERNEL) $(VMTESTFLAGS) $(KERNEL_PKGS)

test-kernels: ## the kernel matrix: every kernel of KERNELS (6.1, 6.12) with its KERNEL_PKGS_<kernel>, each leg timed
	@rc=0; $(foreach k,$(KERNELS),$(GO) run ./test/kernels/vmtest -kernel $(k) $(VMTESTFLAGS) $(or $(KERNEL_PKGS_$(k)),$(KERNEL_PKGS)) || rc=1;) exit $$rc

kernels-table: ## rewrite README.md's kernel table from the matrix's last legs (build/kernels/leg-*/summary.json)
	$(GO) run ./test/kernels/table -readme README.md -benchmarks docs/benchmarks.md

lint: ## gofmt and go vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

clean: ## remove build output
	rm -rf bin build
