# conmon-v2 build. Every Go command runs with -mod=vendor: the build needs no
# network once vendor/ is checked out.
GO       ?= go
export GOFLAGS := -mod=vendor
export CGO_ENABLED := 0
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/containers/conmon-v2/internal/version.Version=$(VERSION)
CMDS     := $(notdir $(wildcard cmd/*))
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /integration -e /bench)
# Integration and unit tests are time-boxed so .ci/run stays far below CI's limit.
INTEGRATION_TIMEOUT ?= 20m

.PHONY: help build test unit integration vendor verify-vendor check protos check-protos demo bench bench-quick critest soak fuzz containerd2 integration-containerd2 clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

build: ## build every binary of cmd/ into bin/
	@mkdir -p bin
	@for c in $(CMDS); do \
		echo "go build bin/$$c"; \
		$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$$c ./cmd/$$c || exit 1; \
	done

test: build unit integration ## unit tests with -race, then the root-gated integration tests

unit: ## unit tests, with the race detector
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 10m $(UNIT_PKGS)

integration: build ## integration tests against real runc, containerd, Podman, journald (root)
	$(GO) test -count=1 -p 1 -timeout $(INTEGRATION_TIMEOUT) ./integration/...

bench: build ## side-by-side benchmark vs conmon, containerd-shim-runc-v2, runc (root; long): bench/results/latest.*
	$(GO) run ./bench/cmd/conmon-bench --out bench/results

bench-quick: build ## the same benchmark in under two minutes (root): bench/results/tmp/latest.*
	$(GO) run ./bench/cmd/conmon-bench --quick --out bench/results/tmp

vendor: ## refresh go.sum and vendor/
	GOFLAGS=-mod=mod $(GO) mod tidy
	GOFLAGS=-mod=mod $(GO) mod vendor

verify-vendor: ## fail if vendor/ is not what go.mod says
	GOFLAGS=-mod=mod $(GO) mod verify
	@tmp=$$(mktemp -d); cp -r go.mod go.sum vendor $$tmp/; \
	GOFLAGS=-mod=mod $(GO) mod vendor -o $$tmp/vendor2 && diff -r vendor $$tmp/vendor2 >/dev/null \
	  || { echo "vendor/ is stale: run make vendor"; rm -rf $$tmp; exit 1; }; rm -rf $$tmp

check: ## gofmt, go vet, generated code up to date
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^vendor/')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Every Fuzz target of the module, each for FUZZTIME (CI: a few seconds).
# A failing input is written to the package's testdata/fuzz/ by go test.
FUZZTIME ?= 10s
fuzz: ## run every go test -fuzz target for FUZZTIME each (default 10s)
	@out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	for f in $$(git grep -l '^func Fuzz' -- '*_test.go' ':!vendor'); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz ./$$(dirname $$f) $$t ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./$$(dirname $$f) >$$out 2>&1 \
			  || { tail -40 $$out; exit 1; }; \
		done; \
	done

# The soak test's long run (the short variant runs in make test).
SOAK_CONTAINERS ?= 100
SOAK_LINES      ?= 1000000
soak: build ## $(SOAK_CONTAINERS) containers x $(SOAK_LINES) numbered lines in one dense daemon, every line checked (root; minutes, ~5 GB of logs in TMPDIR)
	CONMON_V2_SOAK=containers=$(SOAK_CONTAINERS),lines=$(SOAK_LINES) \
	  $(GO) test -count=1 -v -timeout 90m -run '^TestSoak$$' ./integration/resilience/

critest: build ## CRI conformance: critest through containerd 1.6, runc baseline vs conmon-v2 (root; see integration/critest)
	integration/critest/critest.sh

# containerd 2.x from the Go module proxy (network), cached outside the tree.
CONTAINERD2_VERSIONS ?= v2.2.9 v2.3.7
CONTAINERD2_CACHE    ?= $(HOME)/.cache/conmon-v2-containerd2

containerd2: ## build containerd+ctr $(CONTAINERD2_VERSIONS) into $(CONTAINERD2_CACHE) (network, minutes)
	@for v in $(CONTAINERD2_VERSIONS); do \
		[ -x $(CONTAINERD2_CACHE)/$$v/ctr ] && continue; \
		echo "go install containerd $$v"; \
		GOFLAGS= CGO_ENABLED=0 GOBIN=$(CONTAINERD2_CACHE)/$$v $(GO) install -tags "no_btrfs no_devmapper no_zfs" \
		  github.com/containerd/containerd/v2/cmd/containerd@$$v github.com/containerd/containerd/v2/cmd/ctr@$$v || exit 1; \
	done

integration-containerd2: build containerd2 ## the ctr scenario against containerd 2.x (root)
	CONMON_V2_CONTAINERD2=$$(for v in $(CONTAINERD2_VERSIONS); do printf '%s:' $(CONTAINERD2_CACHE)/$$v; done) \
	  $(GO) test -count=1 -v -run TestContainerd2 ./integration/containerd/

demo: ## on a fresh Debian machine (root): install runc/busybox, build, run a container with conmonctl
	@scripts/demo.sh

PROTO_DIRS = $(sort $(dir $(wildcard api/*/v*/*.proto)))
PROTOC_BIN = $(CURDIR)/bin/.protoc

protos: ## regenerate the *.pb.go of api/ from the .proto files (protoc and vendored plugins)
	@mkdir -p $(PROTOC_BIN)
	$(GO) build -o $(PROTOC_BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(PROTOC_BIN)/protoc-gen-go-ttrpc github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc
	@for d in $(PROTO_DIRS); do \
		echo "protoc $$d"; \
		(cd $$d && PATH=$(PROTOC_BIN):$$PATH protoc -I. \
			--go_out=paths=source_relative:. --go-ttrpc_out=paths=source_relative:. *.proto) || exit 1; \
	done

check-protos: protos ## fail if the generated code differs from what the .proto files give
	@git diff --exit-code --stat -- 'api/*.pb.go' || { echo "generated code is stale: run make protos"; exit 1; }

clean: ## remove build output
	rm -rf bin
