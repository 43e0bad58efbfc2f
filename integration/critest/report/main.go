// Command report reads the ginkgo JSON reports of critest runs, one per
// runtime handler, writes each run's per-spec results as text, and compares
// a candidate handler with a baseline: it exits 1 when a spec that passed
// with the baseline did not pass with the candidate, or when the baseline
// passed fewer specs than -min-baseline (a broken environment would
// otherwise make every comparison trivially green).
//
// usage: report -baseline runc=runc.json -candidate conmon-v2=conmon.json \
//
//	[-min-baseline 91] [-out DIR]
//
// -out DIR receives HANDLER.txt per run: one line per spec,
// "P|F|S seconds spec-name | reason", reason being the failure or skip
// message's first line.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// specReport is the part of ginkgo's JSON SpecReport this program reads.
type specReport struct {
	ContainerHierarchyTexts []string
	LeafNodeType            string
	LeafNodeText            string
	State                   string
	RunTime                 time.Duration
	Failure                 *struct{ Message string }
}

type suiteReport struct {
	SpecReports []specReport
}

// result is one spec's outcome in one run.
type result struct {
	Name    string
	State   string // passed, failed, skipped, pending, panicked, timedout, ...
	Seconds float64
	Reason  string
}

// run is one handler's results, in report order.
type run struct {
	Handler string
	Results []result
}

// load reads a ginkgo JSON report (an array of suite reports) and keeps the
// It nodes; a name seen twice gets a " #2" suffix so every key is unique.
func load(handler string, r io.Reader) (run, error) {
	var suites []suiteReport
	if err := json.NewDecoder(r).Decode(&suites); err != nil {
		return run{}, fmt.Errorf("report of handler %s: not a ginkgo JSON report: %w", handler, err)
	}
	out := run{Handler: handler}
	seen := map[string]int{}
	for _, s := range suites {
		for _, sp := range s.SpecReports {
			if sp.LeafNodeType != "It" {
				continue
			}
			name := strings.Join(sp.ContainerHierarchyTexts, " ") + " :: " + sp.LeafNodeText
			if seen[name]++; seen[name] > 1 {
				name = fmt.Sprintf("%s #%d", name, seen[name])
			}
			res := result{Name: name, State: sp.State, Seconds: sp.RunTime.Seconds()}
			if sp.Failure != nil {
				res.Reason = oneLine(sp.Failure.Message, 240)
			}
			out.Results = append(out.Results, res)
		}
	}
	if len(out.Results) == 0 {
		return run{}, fmt.Errorf("report of handler %s: no specs in it", handler)
	}
	return out, nil
}

// oneLine squeezes a multi-line message (gomega prints "Unexpected
// error:" and the error on the next lines) into one line of at most max bytes.
func oneLine(msg string, max int) string {
	s := strings.Join(strings.Fields(msg), " ")
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// counts returns how many specs passed, failed (any failure state) and were
// skipped or pending.
func (r run) counts() (passed, failed, skipped int) {
	for _, res := range r.Results {
		switch res.State {
		case "passed":
			passed++
		case "skipped", "pending":
			skipped++
		default:
			failed++
		}
	}
	return
}

// regressions lists, sorted, the specs that passed in base and did not pass
// in cand (a spec missing from cand counts as not passed).
func regressions(base, cand run) []string {
	state := map[string]string{}
	for _, res := range cand.Results {
		state[res.Name] = res.State
	}
	var out []string
	for _, res := range base.Results {
		if res.State == "passed" && state[res.Name] != "passed" {
			out = append(out, res.Name)
		}
	}
	sort.Strings(out)
	return out
}

func letter(state string) string {
	switch state {
	case "passed":
		return "P"
	case "skipped", "pending":
		return "S"
	}
	return "F"
}

// write prints r's results, one line per spec, into w.
func (r run) write(w io.Writer) error {
	p, f, s := r.counts()
	if _, err := fmt.Fprintf(w, "# critest, runtime handler %s: %d specs, %d passed, %d failed, %d skipped\n",
		r.Handler, len(r.Results), p, f, s); err != nil {
		return err
	}
	for _, res := range r.Results {
		line := fmt.Sprintf("%s %5.1f %s", letter(res.State), res.Seconds, res.Name)
		if res.Reason != "" && res.State != "passed" {
			line += " | " + res.Reason
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
	}
	return nil
}

// handlerFile parses "HANDLER=FILE".
func handlerFile(flagName, v string) (string, string, error) {
	h, f, ok := strings.Cut(v, "=")
	if !ok || h == "" || f == "" {
		return "", "", fmt.Errorf("-%s %q: want HANDLER=FILE", flagName, v)
	}
	return h, f, nil
}

func loadFile(flagName, v string) (run, error) {
	h, path, err := handlerFile(flagName, v)
	if err != nil {
		return run{}, err
	}
	f, err := os.Open(path)
	if err != nil {
		return run{}, fmt.Errorf("-%s: %w", flagName, err)
	}
	defer f.Close()
	return load(h, f)
}

func main() {
	if err := mainErr(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// errRegression marks a failed comparison, already explained on stdout.
var errRegression = errors.New("conformance regression")

func mainErr(stdout io.Writer) error {
	baseFlag := flag.String("baseline", "", "HANDLER=FILE: the reference run (required)")
	candFlag := flag.String("candidate", "", "HANDLER=FILE: the run compared with it (optional)")
	minBase := flag.Int("min-baseline", 0, "fail when the baseline passes fewer specs")
	outDir := flag.String("out", "", "directory for HANDLER.txt result files")
	flag.Parse()
	if *baseFlag == "" {
		return errors.New("-baseline is required")
	}
	runs := []run{}
	base, err := loadFile("baseline", *baseFlag)
	if err != nil {
		return err
	}
	runs = append(runs, base)
	var cand *run
	if *candFlag != "" {
		c, err := loadFile("candidate", *candFlag)
		if err != nil {
			return err
		}
		cand = &c
		runs = append(runs, c)
	}
	for _, r := range runs {
		p, f, s := r.counts()
		fmt.Fprintf(stdout, "%-10s %3d specs: %3d passed, %3d failed, %3d skipped\n", r.Handler, len(r.Results), p, f, s)
		for _, res := range r.Results {
			if letter(res.State) == "F" {
				fmt.Fprintf(stdout, "  FAIL %s | %s\n", res.Name, res.Reason)
			}
		}
		if *outDir != "" {
			f, err := os.Create(filepath.Join(*outDir, r.Handler+".txt"))
			if err != nil {
				return err
			}
			werr := r.write(f)
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				return werr
			}
		}
	}
	bad := false
	if p, _, _ := base.counts(); p < *minBase {
		fmt.Fprintf(stdout, "baseline %s passed %d specs, fewer than the %d expected: the environment is broken\n", base.Handler, p, *minBase)
		bad = true
	}
	if cand != nil {
		reg := regressions(base, *cand)
		for _, name := range reg {
			fmt.Fprintf(stdout, "REGRESSION passes with %s, not with %s: %s\n", base.Handler, cand.Handler, name)
		}
		if len(reg) > 0 {
			bad = true
		} else {
			fmt.Fprintf(stdout, "every spec that passes with %s passes with %s\n", base.Handler, cand.Handler)
		}
	}
	if bad {
		return errRegression
	}
	return nil
}
