#!/bin/sh
# effort.sh prints the size of conmon-v2 per component, as docs/design.md
# section 6 reports it: lines of Go that is not a test, of Go tests, of
# generated Go, of other files (shell, proto, TOML templates, Makefile), the
# number of test functions, and the commit count. It reads the files git
# tracks (git ls-files), never vendor/. Run it from anywhere in the checkout.
#
# Lines are physical lines (wc -l), comments and blank lines included.
# Generated Go is any .go file whose first lines say "Code generated".
set -eu
cd "$(git rev-parse --show-toplevel)"

# component maps a path to the row it is counted in.
component() {
	case "$1" in
	reaper/*) echo "reaper (wait loop)" ;;
	process/*) echo "process (supervision domain)" ;;
	service/monitor/*) echo "service/monitor (conmon.v1 API)" ;;
	service/*) echo "service (task API)" ;;
	shim/* | cmd/containerd-shim-conmon-v2*/*) echo "shim + cmd/containerd-shim-conmon-v2" ;;
	events/*) echo "events" ;;
	api/*) echo "api (protos)" ;;
	logging/*) echo "logging (+ drivers)" ;;
	cmd/conmon-log-plugin-example/*) echo "example log plugin" ;;
	conmon/* | cmd/conmon-v2/*) echo "conmon drop-in + cmd/conmon-v2" ;;
	client/* | cmd/conmonctl/*) echo "client + cmd/conmonctl" ;;
	bench/*) echo "bench" ;;
	integration/critest/*) echo "integration/critest" ;;
	integration/*) echo "integration (other)" ;;
	internal/*) echo "internal" ;;
	docs/* | *.md) echo "docs (markdown)" ;;
	*) echo "build, CI, scripts" ;;
	esac
}

git ls-files | grep -v '^vendor/' | while IFS= read -r f; do
	[ -f "$f" ] || continue
	n=$(wc -l <"$f")
	kind=other
	case "$f" in
	*_test.go)
		kind=test
		tests=$(grep -c '^func Test' "$f" || true)
		;;
	*.go)
		if head -n 5 "$f" | grep -q 'Code generated'; then kind=gen; else kind=code; fi
		;;
	esac
	[ "$kind" = test ] || tests=0
	printf '%s\t%s\t%s\t%s\n' "$(component "$f")" "$kind" "$n" "$tests"
done | awk -F '\t' '
{
	c = $1; rows[c] = 1
	lines[c, $2] += $3; total[$2] += $3
	tests[c] += $4; ttests += $4
}
END {
	printf "| component | Go code | Go tests | generated Go | other files | test funcs |\n"
	printf "|---|---:|---:|---:|---:|---:|\n"
	n = 0
	for (c in rows) names[++n] = c
	# sort the rows by name (insertion sort; a handful of rows)
	for (i = 2; i <= n; i++) { v = names[i]; j = i - 1; while (j > 0 && names[j] > v) { names[j+1] = names[j]; j-- } names[j+1] = v }
	for (i = 1; i <= n; i++) {
		c = names[i]
		printf "| %s | %d | %d | %d | %d | %d |\n", c, lines[c, "code"], lines[c, "test"], lines[c, "gen"], lines[c, "other"], tests[c]
	}
	printf "| **total** | **%d** | **%d** | **%d** | **%d** | **%d** |\n", total["code"], total["test"], total["gen"], total["other"], ttests
}'

echo
echo "commits: $(git rev-list --count HEAD)"
echo "first commit: $(git log --reverse --format=%cI | head -n 1)"
echo "last commit:  $(git log -1 --format=%cI)"
echo "fuzz targets: $(git ls-files '*_test.go' | grep -v '^vendor/' | xargs grep -h '^func Fuzz' | wc -l)"
echo "benchmarks:   $(git ls-files '*_test.go' | grep -v '^vendor/' | xargs grep -h '^func Benchmark' | wc -l)"
