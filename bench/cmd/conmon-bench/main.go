// Command conmon-bench runs conmon-v2's side-by-side benchmark (package
// bench) and writes bench/results/latest.{md,json} and the memory chart.
//
//	go run ./bench/cmd/conmon-bench [--quick] [--out DIR] [--n 1,10,100]
//
// It must run as root; it starts real containers with runc.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containers/conmon-v2/bench"
)

func main() {
	quick := flag.Bool("quick", false, "a run under two minutes: N=1,10, fewer samples, 32 MiB of logs, no 1000-container figure")
	out := flag.String("out", "bench/results", "directory for latest.md, latest.json and the SVG chart")
	ns := flag.String("n", "", "comma-separated idle container counts for the memory figure (default 1,10,100,500; quick 1,10)")
	iters := flag.Int("iterations", 0, "samples per latency and exec figure (0 = default)")
	logMiB := flag.Int64("log-mib", 0, "MiB written per log-throughput run (0 = default)")
	lines := flag.String("lines", "", "comma-separated line lengths in bytes of the log figure (default 80,16384)")
	logReps := flag.Int("log-repeats", 0, "runs per system and line size in the log figure; the median is reported (0 = default: 3, quick 1)")
	dense := flag.Int("dense", -1, "containers in the many-containers figure (-1 = default, 0 = skip)")
	group := flag.Int("group-size", 0, "containers per pod in the grouped mode (0 = default 10)")
	conc := flag.Int("concurrency", 0, "parallel launches when filling N (0 = default 4)")
	bin := flag.String("bin", "", "directory of conmon-v2's binaries (default <repo>/bin)")
	only := flag.String("only", "", "comma-separated substrings: measure only the systems whose names match (runc always)")
	figures := flag.String("figures", "", "comma-separated figures to run: memory,latency,exec,logs,dense (default all)")
	hold := flag.Duration("hold", 0, "debugging: pause this long after each memory reading, with the monitors running")
	render := flag.String("render", "", "re-render the results of a JSON report (latest.json) into --out, measuring nothing")
	keep := flag.Bool("keep", false, "keep the scratch directory (bundles, shim logs) for debugging")
	flag.Parse()

	if *render != "" {
		data, err := os.ReadFile(*render)
		if err != nil {
			fatalf("%v", err)
		}
		var rep bench.Report
		if err := json.Unmarshal(data, &rep); err != nil {
			fatalf("%s: %v", *render, err)
		}
		md, err := bench.WriteResults(&rep, *out)
		if err != nil {
			fatalf("%v", err)
		}
		fmt.Print(md)
		return
	}

	cfg := bench.DefaultConfig(*quick)
	if *ns != "" {
		cfg.Ns = nil
		for _, f := range strings.Split(*ns, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				fatalf("--n: %q is not a positive count", f)
			}
			cfg.Ns = append(cfg.Ns, n)
		}
	}
	if *iters > 0 {
		cfg.Iterations = *iters
	}
	if *logMiB > 0 {
		cfg.LogBytes = *logMiB << 20
	}
	if *lines != "" {
		cfg.LineSizes = nil
		for _, f := range strings.Split(*lines, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 2 {
				fatalf("--lines: %q is not a line length of at least 2 bytes (the generator's minimum)", f)
			}
			cfg.LineSizes = append(cfg.LineSizes, n)
		}
	}
	if *logReps > 0 {
		cfg.LogRepeats = *logReps
	}
	if *dense >= 0 {
		cfg.Dense = *dense
	}
	if *group > 0 {
		cfg.GroupSize = *group
	}
	if *conc > 0 {
		cfg.Concurrency = *conc
	}
	cfg.BinDir = *bin
	cfg.Keep = *keep
	cfg.Hold = *hold
	if *figures != "" {
		cfg.Figures = strings.Split(*figures, ",")
	}
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	cfg.Logf = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if rep == nil {
		fatalf("%v", err)
	}
	md, werr := bench.WriteResults(rep, *out)
	fmt.Print(md)
	if err != nil {
		fatalf("%v", err)
	}
	if werr != nil {
		fatalf("%v", werr)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "conmon-bench: "+format+"\n", args...)
	os.Exit(1)
}
