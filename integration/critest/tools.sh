#!/usr/bin/env bash
# Build the cri-tools programs the harness drives, from the Go module proxy,
# into a cache directory outside the repository (nothing is vendored):
#   CACHE/cri-tools-VERSION/{critest,crictl,ginkgo}
# critest is a Go test binary (cmd/critest holds only _test.go files), so it is
# made with `go test -c`, which `go install` cannot do; crictl and ginkgo (the
# CLI critest execs for -parallel=N) are plain programs.
#
# usage: tools.sh CACHE [VERSION]     prints the directory that holds them
set -euo pipefail
cache=${1:?usage: tools.sh CACHE [VERSION]}
version=${2:-v1.37.0}
out=$cache/cri-tools-$version
if [ -x "$out/critest" ] && [ -x "$out/crictl" ] && [ -x "$out/ginkgo" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$out"
# The repository builds with -mod=vendor; these are foreign modules, resolved
# through their own go.sum in module mode.
export GOFLAGS=-mod=mod CGO_ENABLED=0
src=$(go mod download -json "sigs.k8s.io/cri-tools@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ ! -d "$src" ]; then
	echo "tools.sh: cannot download sigs.k8s.io/cri-tools@$version from the module proxy" >&2
	exit 1
fi
ldflags="-X sigs.k8s.io/cri-tools/pkg/version.Version=${version#v}"
tmp=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The module cache copy is read-only; go writes nothing into it when building.
(
	cd "$src"
	go build -trimpath -ldflags "$ldflags" -o "$tmp/crictl" ./cmd/crictl
	go test -c -trimpath -ldflags "$ldflags" -o "$tmp/critest" ./cmd/critest
	go build -trimpath -o "$tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
) >&2
mv "$tmp/crictl" "$tmp/critest" "$tmp/ginkgo" "$out/"
echo "$out"
