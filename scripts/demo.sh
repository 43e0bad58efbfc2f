#!/usr/bin/env bash
# demo.sh: run one container through conmon-v2's shim with conmonctl, on a
# fresh Debian machine (as root): install runc and busybox-static when
# missing, build, make a busybox rootfs, run a container with k8s-file logs,
# show ps, logs, exec and stats, then stop and remove it. `make demo` runs
# it. DEMO_DIR keeps the rootfs and state somewhere chosen (default: a new
# temporary directory, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: run as root (containers need it): sudo make demo" >&2
	exit 1
fi

export PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
	echo "demo: Go (1.26 or later) is needed to build: install it from https://go.dev/dl/ into /usr/local/go" >&2
	exit 1
fi

missing=()
command -v runc >/dev/null || missing+=(runc)
command -v busybox >/dev/null || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]} from Debian's packages"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

echo "== building"
make --no-print-directory build

keep=${DEMO_DIR:+1}
dir=${DEMO_DIR:-$(mktemp -d)}
mkdir -p "$dir"
root="$dir/state"
ctl=(bin/conmonctl --root "$root")
name=demo
cleanup() {
	"${ctl[@]}" rm -f "$name" >/dev/null 2>&1 || true
	if [ -z "$keep" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

echo "== making a busybox root filesystem in $dir/rootfs"
scripts/mkrootfs.sh "$dir/rootfs"

step() {
	printf '\n$ conmonctl'
	printf ' %q' "$@"
	printf '\n'
	"${ctl[@]}" "$@"
}

step run -d --name "$name" --rootfs "$dir/rootfs" --memory 64m --log-driver k8s-file \
	-- sh -c 'i=0; while :; do i=$((i+1)); echo "tick $i"; sleep 0.5; done'
sleep 2
step ps
step shims
step logs --tail 3 "$name"
echo "(the k8s-file log itself:)"
tail -n 2 "$root/containers/$("${ctl[@]}" ps --json | sed -n 's/^ *"id": "\(.*\)",$/\1/p' | head -n1)/ctr.log"
step exec "$name" -- sh -c 'echo "hello from exec in $(hostname), pid $$"'
step stats --no-stream "$name"
step stop -t 2 "$name"
step ps
step rm "$name"
step ps
printf '\ndemo: done\n'
