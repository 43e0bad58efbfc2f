// Package bench_test checks that the benchmark harness of package bench
// runs end to end. It asserts no timing: benchmarks are not tests.
package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containers/conmon-v2/bench"
	"github.com/containers/conmon-v2/internal/testutil"
)

// TestHarnessQuick runs the quick benchmark on N=2 with a few samples and
// checks that latest.md, latest.json and the chart are written and that
// every system that was available has a number in every figure it takes
// part in.
func TestHarnessQuick(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	testutil.NeedCommand(t, "go") // the harness builds its log generator

	cfg := bench.DefaultConfig(true)
	cfg.Ns = []int{2}
	cfg.Iterations = 2
	cfg.LogBytes = 4 << 20
	cfg.LineSizes = []int{80}
	cfg.RepoRoot = testutil.RepoRoot()
	cfg.Logf = t.Logf
	if dir := os.Getenv("CONMON_V2_BIN"); dir != "" {
		cfg.BinDir = dir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("bench.Run: %v", err)
	}
	out := t.TempDir()
	if _, err := bench.WriteResults(rep, out); err != nil {
		t.Fatalf("WriteResults: %v", err)
	}
	for _, name := range []string{"latest.md", "latest.json", "memory-per-container.svg"} {
		fi, err := os.Stat(filepath.Join(out, name))
		if err != nil || fi.Size() == 0 {
			t.Errorf("%s missing or empty: %v", name, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got bench.Report
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("latest.json: %v", err)
	}
	measured := 0
	for _, s := range got.Systems {
		if !s.Available {
			if s.Reason == "" {
				t.Errorf("%s: not available, without a reason", s.Name)
			}
			t.Logf("%s: not available: %s", s.Name, s.Reason)
			continue
		}
		measured++
		for _, fig := range s.Figures {
			if v := number(&got, fig, s.Name); v <= 0 {
				t.Errorf("%s: no %s figure in latest.json (failures: %v)", s.Name, fig, failures(&got, s.Name))
			}
		}
	}
	// runc and Debian's conmon are installed wherever this test runs.
	if measured < 2 {
		t.Errorf("only %d systems measured", measured)
	}
}

// number returns the headline number of a figure for a system, 0 if absent.
func number(r *bench.Report, fig, system string) float64 {
	switch fig {
	case bench.FigMemory:
		for _, m := range r.Memory {
			if m.System == system {
				return m.PSSPerContainerKB
			}
		}
	case bench.FigLatency:
		for _, l := range r.Latency {
			if l.System == system {
				return l.StartP50
			}
		}
	case bench.FigExec:
		for _, e := range r.Exec {
			if e.System == system {
				return e.P50
			}
		}
	case bench.FigLogs:
		for _, l := range r.Logs {
			if l.System == system {
				return l.MBps
			}
		}
	case bench.FigDense:
		for _, d := range r.Dense {
			if d.System == system {
				return d.PSSTotalMiB
			}
		}
	}
	return 0
}

func failures(r *bench.Report, system string) []bench.Failure {
	var out []bench.Failure
	for _, f := range r.Failures {
		if f.System == system {
			out = append(out, f)
		}
	}
	return out
}
