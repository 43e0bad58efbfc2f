#!/usr/bin/env bash
# CRI conformance of conmon-v2: critest (sigs.k8s.io/cri-tools) through the
# CRI plugin of a private containerd 1.6, offline, once per runtime handler
# in the same run:
#   runc       io.containerd.runc.v2, containerd's own shim: the baseline
#   conmon-v2  io.containerd.conmon.v2, bin/containerd-shim-conmon-v2 (the
#              default handler of that containerd)
# It fails when a spec that passes with the baseline does not pass with
# conmon-v2, when the baseline passes fewer specs than expected, or when the
# containers of one pod are not all served by one shim process.
#
# Steps: build critest/crictl/ginkgo from the Go module proxy into a cache
# outside the repository (tools.sh); build the test images' root filesystems
# from Debian packages (rootfs.sh); serve the images from a loopback registry
# (imgreg/); start containerd with its own root, state, sockets, CNI network
# and runc state; check the pod grouping with crictl; run critest per
# handler; compare the pass lists (report/); stop everything it started, by
# pid. Root only; one run per machine at a time (critest's host ports
# 12000-12003 are fixed), enforced with a lock.
#
# Environment (all optional):
#   CRITEST_HANDLERS      handlers to test, baseline first (default "runc conmon-v2")
#   CRITEST_CACHE         tools, .deb files, last run's logs (default ~/.cache/conmon-v2-critest)
#   CRI_TOOLS_VERSION     cri-tools module version (default v1.37.0)
#   CRITEST_CONTAINERD    empty: Debian's containerd 1.6 (default); a version
#                         such as v2.2.9: containerd 2.x and its runc shim built
#                         from the Go module proxy into the cache
#   CRITEST_REGISTRY      imgreg address, loopback (default 127.0.0.1:5000)
#   CRITEST_MIN_BASELINE  least number of specs the baseline must pass (default 91)
#   CRITEST_FOCUS / CRITEST_SKIP  ginkgo regular expressions, passed as is
#   CRITEST_PARALLEL      critest -parallel=N (default serial)
#   CRITEST_TIMEOUT       seconds one handler's critest may take (default 480; a
#                         serial run takes about 130 s on 2 busy cores)
#   CRITEST_ARGS          more critest arguments, split on blanks (-ginkgo.repeat=N ...)
#   CRITEST_DEBUG=1       containerd logs at debug level (every shim event, RPC errors)
#   CRITEST_KEEP=1        keep the work directory (and print its path)
#   CONMON_V2_BIN         directory of containerd-shim-conmon-v2 (default bin/)
# Results: CACHE/last-run/{HANDLER.txt,HANDLER.json,critest-HANDLER.log,...}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bindir=${CONMON_V2_BIN:-$repo/bin}
handlers=(${CRITEST_HANDLERS:-runc conmon-v2})
cache=${CRITEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/conmon-v2-critest}
version=${CRI_TOOLS_VERSION:-v1.37.0}
registry=${CRITEST_REGISTRY:-127.0.0.1:5000}
ctd_version=${CRITEST_CONTAINERD:-}
critest_timeout=${CRITEST_TIMEOUT:-480}
min_baseline=${CRITEST_MIN_BASELINE:-91}
bridge=cv2crit0
subnet=10.231.0.0/16
busybox=registry.k8s.io/e2e-test-images/busybox:1.29-2

started=$SECONDS
say() { printf 'critest: [%4ds] %s\n' $((SECONDS - started)) "$*"; }
die() {
	printf 'critest: FAIL: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (containerd, runc, CNI)"
for h in "${handlers[@]}"; do
	case $h in
	runc) ;;
	conmon-v2) [ -x "$bindir/containerd-shim-conmon-v2" ] ||
		die "$bindir/containerd-shim-conmon-v2 is missing: run make build" ;;
	*) die "unknown runtime handler $h in CRITEST_HANDLERS (known: runc conmon-v2)" ;;
	esac
done
for c in containerd runc iptables ipcmk ldd dpkg-deb apt-get; do
	command -v "$c" >/dev/null || die "$c is not installed (.ci/run installs it)"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/portmap ] ||
	die "CNI plugins missing in /usr/lib/cni (apt-get install containernetworking-plugins)"

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -n 9 || die "another critest run holds $cache/lock"

# ---------------------------------------------------------------- cleanup
work=$(mktemp -d "${TMPDIR:-/tmp}/conmon-v2-critest.XXXXXX")
sock=$work/containerd/containerd.sock
registry_pid= containerd_pid= tools=
results=last-run${ctd_version:+-containerd-$ctd_version}

crictl() { "$tools/crictl" --config "$work/crictl.yaml" "$@"; }

# shims_of BINARY: pids of the shim processes started by this run's
# containerd (they carry its socket in -address) whose program is BINARY.
shims_of() {
	local p args
	for p in /proc/[0-9]*; do
		args=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		case $args in
		*"-address $sock "* | *"-address $sock") ;;
		*) continue ;;
		esac
		[ "$(basename "${args%% *}")" = "$1" ] && echo "${p#/proc/}"
	done
	return 0
}

# daemon LOG CMD...: start CMD in the background with only stdin, stdout and
# stderr open. Whatever else this script holds (its lock, a CI runner's
# pipes) would otherwise be inherited down to every shim, which outlives
# containerd by design.
daemon() {
	(
		for fd in /proc/$BASHPID/fd/*; do
			fd=${fd##*/}
			[ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
		done
		exec "${@:2}" >"$1" 2>&1 </dev/null
	) &
}

stop_pid() { # PID NAME: SIGTERM, then SIGKILL after 10 s
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	kill "$pid" 2>/dev/null || true
	for i in $(seq 20); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	echo "critest: $2 (pid $pid) ignored SIGTERM, killing it" >&2
	kill -9 "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$? pid m
	trap - EXIT INT TERM
	set +e
	if [ -n "$containerd_pid" ] && kill -0 "$containerd_pid" 2>/dev/null; then
		timeout 60 "$tools/crictl" --config "$work/crictl.yaml" rmp -fa >/dev/null 2>&1
		stop_pid "$containerd_pid" containerd
	fi
	# Shims outlive containerd by design; stop the ones this run started,
	# their containers first: a shim is the subreaper of its containers'
	# processes, and killing a PID namespace's init ends the namespace.
	for pid in $(shims_of containerd-shim-runc-v2) $(shims_of containerd-shim-conmon-v2); do
		echo "critest: stopping leftover shim pid $pid and its containers" >&2
		pkill -KILL -P "$pid"
		stop_pid "$pid" shim
	done
	[ -n "$registry_pid" ] && stop_pid "$registry_pid" imgreg
	grep -o " $work/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
	ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
	if [ -d "$work/logs" ]; then
		rm -rf "$cache/$results"
		cp -r "$work/logs" "$cache/$results"
		echo "critest: logs and per-spec results in $cache/$results"
	fi
	if [ -n "${CRITEST_KEEP:-}" ]; then
		echo "critest: work directory kept: $work"
	elif grep -q " $work/" /proc/mounts; then
		echo "critest: mounts remain under $work; not removing it" >&2
	else
		rm -rf "$work"
	fi
	say "done"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work"/{bin,logs,tmp,cni,ipam,containerd,podcheck}

# ---------------------------------------------------------------- tools
say "building cri-tools $version (cache $cache)"
tools=$("$here/tools.sh" "$cache" "$version")
(cd "$repo" && GOFLAGS=-mod=vendor CGO_ENABLED=0 go build -o "$work/bin/" ./integration/critest/imgreg ./integration/critest/report)
ctd_path=$PATH template=containerd.toml.in
if [ -n "$ctd_version" ]; then
	say "building containerd $ctd_version"
	ctd_dir=$cache/containerd-$ctd_version
	if [ ! -x "$ctd_dir/containerd" ] || [ ! -x "$ctd_dir/containerd-shim-runc-v2" ]; then
		# the build tags drop the snapshotters that need cgo
		GOFLAGS=-mod=mod CGO_ENABLED=0 GOBIN=$ctd_dir go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
			"github.com/containerd/containerd/v2/cmd/containerd@$ctd_version" \
			"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$ctd_version"
	fi
	# its own runc shim is the baseline there
	ctd_path=$ctd_dir:$PATH template=containerd2.toml.in
fi

# ---------------------------------------------------------------- images
say "building image root filesystems from Debian packages"
"$here/rootfs.sh" "$work/rootfs" "$cache/debs"
daemon "$work/logs/imgreg.out" "$work/bin/imgreg" -rootfs "$work/rootfs" -addr "$registry"
registry_pid=$!
for _ in $(seq 120); do
	grep -q '^READY' "$work/logs/imgreg.out" && break
	kill -0 "$registry_pid" 2>/dev/null || break
	sleep 0.5
done
grep -q '^READY' "$work/logs/imgreg.out" || die "imgreg did not start: $(cat "$work/logs/imgreg.out")"
say "imgreg (pid $registry_pid) serves $(($(wc -l <"$work/logs/imgreg.out") - 1)) references on $registry"

# ---------------------------------------------------------------- containerd
last=$((${#handlers[@]} - 1))
sed -e "s|@WORK@|$work|g" -e "s|@REGISTRY@|$registry|g" -e "s|@DEFAULT_HANDLER@|${handlers[$last]}|g" \
	"$here/$template" >"$work/containerd/config.toml"
[ -n "${CRITEST_DEBUG:-}" ] && printf '\n[debug]\n  level = "debug"\n' >>"$work/containerd/config.toml"
# containerd 2.x: the registry mirrors as hosts.toml files
for r in registry.k8s.io k8s.gcr.io gcr.io docker.io public.ecr.aws; do
	mkdir -p "$work/certs.d/$r"
	printf '[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n' "$registry" >"$work/certs.d/$r/hosts.toml"
done
sed -e "s|@WORK@|$work|g" -e "s|@BRIDGE@|$bridge|g" -e "s|@SUBNET@|$subnet|g" \
	"$here/cni.conflist.in" >"$work/cni/10-critest.conflist"
printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n' "$sock" "$sock" >"$work/crictl.yaml"
# containerd finds containerd-shim-conmon-v2 on its PATH, so bin/ goes first
daemon "$work/logs/containerd.log" env PATH="$bindir:$ctd_path" containerd --config "$work/containerd/config.toml"
containerd_pid=$!
for _ in $(seq 60); do
	[ -S "$sock" ] && crictl info >/dev/null 2>&1 && break
	kill -0 "$containerd_pid" 2>/dev/null || break
	sleep 0.5
done
crictl info >/dev/null 2>&1 || die "containerd did not start: $(tail -20 "$work/logs/containerd.log")"
say "containerd $(PATH=$ctd_path containerd --version | awk '{print $3}') (pid $containerd_pid), default handler ${handlers[$last]}"

# ---------------------------------------------------------------- pod grouping
# podcheck HANDLER SHIM: a pod with two running containers must be served by
# one shim process, the parent of the sandbox's and both containers'
# processes, and that shim must exit once the pod is removed.
podcheck() {
	local h=$1 shim=$2 d=$work/podcheck/$1 pod c cid pid ppid ppids=() n
	mkdir -p "$d/logs"
	printf '{"metadata":{"name":"grouping-%s","namespace":"critest","uid":"grouping-%s"},"log_directory":"%s","linux":{}}\n' \
		"$h" "$h" "$d/logs" >"$d/pod.json"
	pod=$(crictl runp --runtime "$h" "$d/pod.json" 2>>"$work/logs/podcheck.log") || {
		echo "runp --runtime $h failed: $(tail -3 "$work/logs/podcheck.log")"
		return 1
	}
	pid=$(crictl inspectp -o go-template --template '{{.info.pid}}' "$pod")
	ppids+=("$(awk '{print $4}' "/proc/$pid/stat")")
	for c in one two; do
		printf '{"metadata":{"name":"%s"},"image":{"image":"%s"},"command":["sleep","3600"],"log_path":"%s.log","linux":{}}\n' \
			"$c" "$busybox" "$c" >"$d/$c.json"
		cid=$(crictl create "$pod" "$d/$c.json" "$d/pod.json" 2>>"$work/logs/podcheck.log") &&
			crictl start "$cid" >/dev/null 2>>"$work/logs/podcheck.log" || {
			echo "container $c in pod of handler $h failed: $(tail -3 "$work/logs/podcheck.log")"
			return 1
		}
		pid=$(crictl inspect -o go-template --template '{{.info.pid}}' "$cid")
		ppids+=("$(awk '{print $4}' "/proc/$pid/stat")")
	done
	local shims=($(shims_of "$shim"))
	echo "handler $h: pod ${pod:0:12}: parents of sandbox, one, two: ${ppids[*]}; $shim processes: ${#shims[@]} (${shims[*]})"
	crictl stopp "$pod" >/dev/null && crictl rmp "$pod" >/dev/null
	for _ in $(seq 20); do
		n=$(shims_of "$shim" | wc -l)
		[ "$n" -eq 0 ] && break
		sleep 0.5
	done
	[ "${#shims[@]}" -eq 1 ] || { echo "want 1 $shim process for the pod, got ${#shims[@]}"; return 1; }
	for ppid in "${ppids[@]}"; do
		[ "$ppid" = "${shims[0]}" ] || { echo "a task's parent is pid $ppid, not the shim ${shims[0]}"; return 1; }
	done
	[ "$n" -eq 0 ] || { echo "$n $shim process(es) left after the pod was removed"; return 1; }
}

crictl pull "$busybox" >/dev/null
for h in "${handlers[@]}"; do
	shim=containerd-shim-runc-v2
	[ "$h" = conmon-v2 ] && shim=containerd-shim-conmon-v2
	podcheck "$h" "$shim" >"$work/logs/podcheck-$h.txt" 2>&1 || {
		cat "$work/logs/podcheck-$h.txt"
		die "pod grouping check failed for handler $h"
	}
	say "pod grouping: $(cat "$work/logs/podcheck-$h.txt")"
done

# ---------------------------------------------------------------- critest
args=(-runtime-endpoint "unix://$sock" -image-endpoint "unix://$sock" -config "$work/crictl.yaml" -ginkgo.no-color -ginkgo.v)
[ -n "${CRITEST_FOCUS:-}" ] && args+=(-ginkgo.focus="$CRITEST_FOCUS")
[ -n "${CRITEST_SKIP:-}" ] && args+=(-ginkgo.skip="$CRITEST_SKIP")
[ -n "${CRITEST_PARALLEL:-}" ] && args+=(-parallel="$CRITEST_PARALLEL")
args+=(${CRITEST_ARGS:-})
for h in "${handlers[@]}"; do
	say "critest $version, runtime handler $h"
	# critest exits non-zero on any failed spec; the comparison below judges
	rc=0
	# critest reads /etc/crictl.yaml, else the crictl.yaml in the parent of
	# its working directory (before it parses -config): make that ours
	(cd "$work/tmp" && TMPDIR=$work/tmp PATH="$tools:$PATH" timeout "$critest_timeout" "$tools/critest" "${args[@]}" \
		-runtime-handler="$h" -ginkgo.json-report="$work/logs/$h.json") \
		>"$work/logs/critest-$h.log" 2>&1 || rc=$?
	grep -E '^(Ran [0-9]+ of|SUCCESS!|FAIL!)' "$work/logs/critest-$h.log" | sed 's/^/    /' || true
	[ -s "$work/logs/$h.json" ] || die "critest ($h) wrote no report, exit code $rc: $(tail -20 "$work/logs/critest-$h.log")"
	# leftovers of one handler's run must not meet the next one
	crictl rmp -fa >/dev/null 2>&1 || true
done

cmp=(-baseline "${handlers[0]}=$work/logs/${handlers[0]}.json" -min-baseline "$min_baseline" -out "$work/logs")
[ -n "${CRITEST_FOCUS:-}${CRITEST_SKIP:-}${CRITEST_ARGS:-}" ] && cmp=(-baseline "${handlers[0]}=$work/logs/${handlers[0]}.json" -out "$work/logs")
[ ${#handlers[@]} -gt 1 ] && cmp+=(-candidate "${handlers[$last]}=$work/logs/${handlers[$last]}.json")
say "comparing"
"$work/bin/report" "${cmp[@]}" || die "CRI conformance: see the REGRESSION lines above"
say "PASS"
