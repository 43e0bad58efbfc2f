package bench

import (
	"encoding/json"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Report is everything one run measured. It is written as latest.json;
// latest.md is its rendering.
type Report struct {
	Started   time.Time     `json:"started"`
	Seconds   float64       `json:"seconds"`
	Quick     bool          `json:"quick"`
	Host      HostInfo      `json:"host"`
	Config    RunConfig     `json:"config"`
	Systems   []SystemInfo  `json:"systems"`
	Memory    []MemResult   `json:"memory"`
	Latency   []LatResult   `json:"latency"`
	Exec      []ExecResult  `json:"exec"`
	Logs      []LogResult   `json:"logs"`
	Dense     []DenseResult `json:"dense"`
	Failures  []Failure     `json:"failures"`
	Targets   []Target      `json:"targets"`
	LoadStart string        `json:"load_start"`
	LoadEnd   string        `json:"load_end"`
}

// HostInfo identifies the machine.
type HostInfo struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	MemGiB int    `json:"mem_gib"`
	Go     string `json:"go"`
}

// RunConfig is the part of Config the figures depend on.
type RunConfig struct {
	Ns          []int `json:"ns"`
	Iterations  int   `json:"iterations"`
	LogBytes    int64 `json:"log_bytes"`
	LineSizes   []int `json:"line_sizes"`
	Dense       int   `json:"dense"`
	GroupSize   int   `json:"group_size"`
	Concurrency int   `json:"concurrency"`
}

// Figure names, as in SystemInfo.Figures and Failure.Figure.
const (
	FigMemory  = "memory"
	FigLatency = "latency"
	FigExec    = "exec"
	FigLogs    = "logs"
	FigDense   = "dense"
)

// SystemInfo says whether a system took part, and why not.
type SystemInfo struct {
	Name      string   `json:"name"`
	Kind      string   `json:"kind"` // floor, conmon, runc-shim, conmon-v2, raw, raw-fsync, reference
	Available bool     `json:"available"`
	Reason    string   `json:"reason,omitempty"`
	Figures   []string `json:"figures"` // the figures it takes part in
}

// MemResult is figure (a) for one system at one N.
type MemResult struct {
	System               string  `json:"system"`
	N                    int     `json:"n"`
	Processes            int     `json:"monitor_processes"`
	PSSTotalKB           float64 `json:"pss_total_kib"`
	PrivateDirtyTotalKB  float64 `json:"private_dirty_total_kib"`
	RSSTotalKB           float64 `json:"rss_total_kib"`
	PSSPerContainerKB    float64 `json:"pss_per_container_kib"`
	PrivDirtyPerCtrKB    float64 `json:"private_dirty_per_container_kib"`
	LaunchWallSeconds    float64 `json:"launch_wall_seconds"`
	LaunchedInThisStepOf int     `json:"launched_in_step"`
}

// LatResult is figure (b), in milliseconds.
type LatResult struct {
	System   string  `json:"system"`
	Samples  int     `json:"samples"`
	StartP50 float64 `json:"create_start_p50_ms"`
	StartP99 float64 `json:"create_start_p99_ms"`
	RoundP50 float64 `json:"round_trip_p50_ms"`
	RoundP99 float64 `json:"round_trip_p99_ms"`
	// StartPairedOverFloor and RoundPairedOverFloor are the medians, over
	// the rounds, of this system's create+start and round trip minus the
	// floor's in the same round; nil for the floor.
	StartPairedOverFloor *float64 `json:"create_start_paired_over_runc_p50_ms,omitempty"`
	RoundPairedOverFloor *float64 `json:"round_trip_paired_over_runc_p50_ms,omitempty"`
}

// ExecResult is figure (c), in milliseconds.
type ExecResult struct {
	System  string     `json:"system"`
	Samples int        `json:"samples"`
	P50     float64    `json:"p50_ms"`
	P99     float64    `json:"p99_ms"`
	Calls   *ExecCalls `json:"calls_p50_ms,omitempty"` // a shim's four calls
	// PairedOverFloor is the median, over the rounds, of this system's
	// exec minus the floor's in the same round.
	PairedOverFloor *float64 `json:"paired_over_runc_p50_ms,omitempty"`
}

// ExecCalls is the median of each ttrpc call of a shim's exec, in
// milliseconds: Start holds `runc exec --detach`, the others only the
// shim's own work and the round trip.
type ExecCalls struct {
	Exec   float64 `json:"exec"`
	Start  float64 `json:"start"`
	Wait   float64 `json:"wait"`
	Delete float64 `json:"delete"`
}

// LogResult is figure (d) for one system and line size.
type LogResult struct {
	System      string  `json:"system"`
	Kind        string  `json:"kind"`
	LineBytes   int     `json:"line_bytes"`
	Bytes       int64   `json:"bytes"`
	FileBytes   int64   `json:"file_bytes"`
	Seconds     float64 `json:"seconds"`
	MBps        float64 `json:"mb_per_s"`
	CPUSeconds  float64 `json:"monitor_cpu_seconds"`
	CPUSecPerGB float64 `json:"monitor_cpu_seconds_per_gb"`
	PeakRSSMiB  float64 `json:"monitor_peak_rss_mib"`
	Runs        int     `json:"runs"`         // this is the median run of Runs
	MBpsMin     float64 `json:"mb_per_s_min"` // slowest and fastest run
	MBpsMax     float64 `json:"mb_per_s_max"`
	// PctOfRaw is MBps as a percentage of the raw copy's (`cat` of the
	// pipe into a file, no fsync: the reference of issue 6's 70 % target)
	// at the same line size; PctOfRawFsync of the same copy with the file
	// fsynced before the clock stops (information: conmon and the drop-in
	// fsync the log before they report the exit, the shims at Delete,
	// after the clock). Nil when the reference was not measured.
	PctOfRaw      *float64 `json:"pct_of_raw_copy,omitempty"`
	PctOfRawFsync *float64 `json:"pct_of_raw_copy_fsync,omitempty"`
}

// DenseResult is figure (e).
type DenseResult struct {
	System            string  `json:"system"`
	N                 int     `json:"n"`
	Started           int     `json:"started"`
	Processes         int     `json:"monitor_processes"`
	StartWallSeconds  float64 `json:"start_wall_seconds"`
	DeleteWallSeconds float64 `json:"delete_wall_seconds"`
	PSSTotalMiB       float64 `json:"pss_total_mib"`
	RSSTotalMiB       float64 `json:"rss_total_mib"`
	PrivDirtyTotalMiB float64 `json:"private_dirty_total_mib"`
	Error             string  `json:"error,omitempty"`
}

// Failure is a figure that did not complete for a system.
type Failure struct {
	Figure string `json:"figure"`
	System string `json:"system"`
	Error  string `json:"error"`
}

// Target is one of issue 6's targets, checked against this run.
type Target struct {
	Name   string `json:"name"`
	Status string `json:"status"` // "holds", "fails", "not measured"
	Detail string `json:"detail"`
}

func newReport(cfg Config) *Report {
	r := &Report{
		Started: time.Now().UTC(),
		Quick:   cfg.Quick,
		Host:    hostInfo(),
		Config: RunConfig{Ns: cfg.Ns, Iterations: cfg.Iterations, LogBytes: cfg.LogBytes, LineSizes: cfg.LineSizes,
			Dense: cfg.Dense, GroupSize: cfg.GroupSize, Concurrency: cfg.Concurrency},
		LoadStart: loadAvg(),
	}
	return r
}

func (r *Report) fail(figure, system, err string) {
	r.Failures = append(r.Failures, Failure{Figure: figure, System: system, Error: err})
}

func (r *Report) finish() {
	r.Seconds = time.Since(r.Started).Seconds()
	r.LoadEnd = loadAvg()
	for i := range r.Logs {
		l := &r.Logs[i]
		l.PctOfRaw, l.PctOfRawFsync = r.logShare(l, "raw"), r.logShare(l, "raw-fsync")
	}
	r.Targets = r.checkTargets()
}

// logShare is l's throughput as a percentage of the reference system of
// the given kind ("raw" or "raw-fsync") at the same line size; nil if
// that reference has no result.
func (r *Report) logShare(l *LogResult, kind string) *float64 {
	ref := r.logRes(r.kindName(kind), l.LineBytes)
	if ref == nil || ref.MBps <= 0 {
		return nil
	}
	v := 100 * l.MBps / ref.MBps
	return &v
}

// fmtPct formats a share of a reference, "–" if there is none.
func fmtPct(p *float64) string {
	if p == nil {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", *p)
}

func hostInfo() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kbytes int
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kbytes); err == nil {
			h.MemGiB = int(math.Round(float64(kbytes) / (1 << 20)))
		}
	}
	return h
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// lookup helpers: the result of a named system (or of the first system of
// a kind).

func (r *Report) kindName(kind string) string {
	for _, s := range r.Systems {
		if s.Kind == kind && s.Available {
			return s.Name
		}
	}
	return ""
}

func (r *Report) mem(system string, n int) *MemResult {
	for i := range r.Memory {
		if r.Memory[i].System == system && r.Memory[i].N == n {
			return &r.Memory[i]
		}
	}
	return nil
}

func (r *Report) lat(system string) *LatResult {
	for i := range r.Latency {
		if r.Latency[i].System == system {
			return &r.Latency[i]
		}
	}
	return nil
}

func (r *Report) execRes(system string) *ExecResult {
	for i := range r.Exec {
		if r.Exec[i].System == system {
			return &r.Exec[i]
		}
	}
	return nil
}

func (r *Report) logRes(system string, line int) *LogResult {
	for i := range r.Logs {
		if r.Logs[i].System == system && r.Logs[i].LineBytes == line {
			return &r.Logs[i]
		}
	}
	return nil
}

// checkTargets evaluates issue 6's targets on this run's figures. A
// target whose figures are missing is "not measured", never assumed.
func (r *Report) checkTargets() []Target {
	var ts []Target
	conmon := r.kindName("conmon")
	floor := r.kindName("floor")
	raw := r.kindName("raw")
	var v2 []string
	for _, s := range r.Systems {
		if s.Kind == "conmon-v2" {
			v2 = append(v2, s.Name)
		}
	}
	// Memory at the largest N that is at least 100 (100 in the full run),
	// else the largest measured.
	memN := 0
	for _, n := range r.Config.Ns {
		if memN < 100 || n == 100 {
			memN = n
		}
		if n == 100 {
			break
		}
	}
	cm := r.mem(conmon, memN)
	for _, name := range v2 {
		m := r.mem(name, memN)
		shared := strings.Contains(name, "per pod") || strings.Contains(name, "per node")
		t := Target{}
		if shared {
			t.Name = fmt.Sprintf("%s: monitor PSS for %d containers <= 1/3 of %d conmons", name, memN, memN)
		} else {
			t.Name = fmt.Sprintf("%s: PSS per container <= 3x conmon's (N=%d)", name, memN)
		}
		switch {
		case m == nil || cm == nil:
			t.Status, t.Detail = "not measured", "no memory figure at this N"
		default:
			ratio := m.PSSTotalKB / cm.PSSTotalKB
			limit := 3.0
			if shared {
				limit = 1.0 / 3
			}
			t.Status = holds(ratio <= limit)
			t.Detail = fmt.Sprintf("%.0f KiB vs conmon %.0f KiB: ratio %.2f (limit %.2f)", m.PSSTotalKB, cm.PSSTotalKB, ratio, limit)
		}
		ts = append(ts, t)
	}
	fl, cl := r.lat(floor), r.lat(conmon)
	for _, name := range v2 {
		l := r.lat(name)
		t := Target{Name: name + ": create+start overhead over runc <= conmon's (p50)"}
		if l == nil || fl == nil || cl == nil {
			t.Status, t.Detail = "not measured", "no latency figure"
		} else {
			ov, cov := l.StartP50-fl.StartP50, cl.StartP50-fl.StartP50
			t.Status = holds(ov <= cov)
			t.Detail = fmt.Sprintf("overhead %.1f ms vs conmon %.1f ms (runc %.1f ms)", ov, cov, fl.StartP50)
			if l.StartPairedOverFloor != nil && cl.StartPairedOverFloor != nil {
				t.Detail += fmt.Sprintf("; paired %+.1f ms vs conmon %+.1f ms", *l.StartPairedOverFloor, *cl.StartPairedOverFloor)
			}
		}
		ts = append(ts, t)
	}
	for _, line := range r.Config.LineSizes {
		cmr, rawr := r.logRes(conmon, line), r.logRes(raw, line)
		for _, name := range v2 {
			l := r.logRes(name, line)
			if l == nil {
				continue
			}
			t := Target{Name: fmt.Sprintf("%s, %d-byte lines: throughput >= 2x conmon, >= 70%% of raw copy, CPU/GB <= 1/2 conmon's", name, line)}
			if cmr == nil || rawr == nil {
				t.Status, t.Detail = "not measured", "conmon or raw copy missing"
			} else {
				a, bb, c := l.MBps/cmr.MBps, l.MBps/rawr.MBps, l.CPUSecPerGB/cmr.CPUSecPerGB
				t.Status = holds(a >= 2 && bb >= 0.7 && c <= 0.5)
				t.Detail = fmt.Sprintf("%.0f MB/s = %.2fx conmon (%.0f), %.0f%% of raw (%.0f); CPU %.2f s/GB = %.2fx conmon's (%.2f)",
					l.MBps, a, cmr.MBps, 100*bb, rawr.MBps, l.CPUSecPerGB, c, cmr.CPUSecPerGB)
				if rf := r.logRes(r.kindName("raw-fsync"), line); rf != nil && rf.MBps > 0 {
					// Information only: the target is judged against `cat`.
					t.Detail += fmt.Sprintf("; not judged: %.0f%% of raw + fsync (%.0f)", 100*l.MBps/rf.MBps, rf.MBps)
				}
			}
			ts = append(ts, t)
		}
	}
	fe := r.execRes(floor)
	for _, name := range v2 {
		e := r.execRes(name)
		t := Target{Name: name + ": exec latency within 5 ms of runc exec (p50)"}
		if e == nil || fe == nil {
			t.Status, t.Detail = "not measured", "no exec figure"
		} else {
			t.Status = holds(e.P50-fe.P50 <= 5)
			t.Detail = fmt.Sprintf("%.1f ms vs runc exec %.1f ms (+%.1f ms)", e.P50, fe.P50, e.P50-fe.P50)
		}
		ts = append(ts, t)
	}
	return ts
}

func holds(ok bool) string {
	if ok {
		return "holds"
	}
	return "fails"
}

// WriteResults writes latest.md, latest.json and memory-per-container.svg
// into dir and returns the markdown.
func WriteResults(r *Report, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), append(data, '\n'), 0o644); err != nil {
		return "", err
	}
	md := r.Markdown()
	if err := os.WriteFile(filepath.Join(dir, "latest.md"), []byte(md), 0o644); err != nil {
		return "", err
	}
	if err := r.memoryChart(filepath.Join(dir, "memory-per-container.svg")); err != nil {
		return md, fmt.Errorf("chart: %w", err)
	}
	return md, nil
}

// fmtPaired formats a paired difference to the floor, "–" if there is none.
func fmtPaired(p *float64) string {
	if p == nil {
		return "–"
	}
	return fmt.Sprintf("%+.1f", *p)
}

func ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a/b) || math.IsInf(a/b, 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// Markdown renders the report as tables, every figure also as a ratio to
// conmon and, where one exists, to the floor.
func (r *Report) Markdown() string {
	var b strings.Builder
	mode := "full"
	if r.Quick {
		mode = "quick"
	}
	fmt.Fprintf(&b, "# conmon-v2 benchmark (%s run)\n\n", mode)
	fmt.Fprintf(&b, "Run %s, %.0f s; kernel %s, %d CPUs, %d GiB, %s; load average %s at start, %s at end.\n",
		r.Started.Format(time.RFC3339), r.Seconds, r.Host.Kernel, r.Host.CPUs, r.Host.MemGiB, r.Host.Go, r.LoadStart, r.LoadEnd)
	fmt.Fprintf(&b, "Samples per latency figure: %d; log volume per run: %d MiB; pod size of the grouped mode: %d; launch concurrency: %d.\n\n",
		r.Config.Iterations, r.Config.LogBytes>>20, r.Config.GroupSize, r.Config.Concurrency)

	b.WriteString(r.Summary())
	b.WriteString("\n## Systems\n\n| system | status |\n|---|---|\n")
	for _, s := range r.Systems {
		st := "measured"
		if !s.Available {
			st = "not available: " + s.Reason
		}
		fmt.Fprintf(&b, "| %s | %s |\n", s.Name, st)
	}
	conmon := r.kindName("conmon")
	floor := r.kindName("floor")

	b.WriteString("\n## (a) Monitor memory per idle container\n\nPSS and private dirty memory of the monitor processes (`/proc/PID/smaps_rollup`), summed and divided by the number of containers. runc alone has no monitor.\n\n")
	b.WriteString("| system | N | monitor processes | PSS/container KiB | × conmon | private dirty/container KiB | × conmon | total PSS MiB |\n|---|---|---|---|---|---|---|---|\n")
	for _, m := range r.Memory {
		c := r.mem(conmon, m.N)
		var cp, cd float64
		if c != nil {
			cp, cd = c.PSSPerContainerKB, c.PrivDirtyPerCtrKB
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %s | %.0f | %s | %.1f |\n", m.System, m.N, m.Processes,
			m.PSSPerContainerKB, ratio(m.PSSPerContainerKB, cp), m.PrivDirtyPerCtrKB, ratio(m.PrivDirtyPerCtrKB, cd), m.PSSTotalKB/1024)
	}

	b.WriteString("\n## (b) Create+start and round-trip latency\n\nCreate+start: until the container's init runs. Round trip: create→start→exit→delete of `true`, monitor stopped. − runc: minus the runc floor (p50 − p50, p99 − p99); × conmon: the p50 overhead as a multiple of conmon's. Systems take turns, one sample each per round (create+start rounds first, then round-trip rounds); *paired* is the median over the rounds of the system's time minus runc's in the same round.\n\n")
	b.WriteString("| system | create+start p50 ms | p99 ms | − runc p50 | − runc p99 | paired − runc | × conmon | round trip p50 ms | p99 ms | − runc p50 | − runc p99 | paired − runc | × conmon |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fl, cl := r.lat(floor), r.lat(conmon)
	for _, l := range r.Latency {
		d := [4]string{"–", "–", "–", "–"}
		x := [2]string{"–", "–"}
		if fl != nil && l.System != floor {
			d = [4]string{fmt.Sprintf("%+.1f", l.StartP50-fl.StartP50), fmt.Sprintf("%+.1f", l.StartP99-fl.StartP99),
				fmt.Sprintf("%+.1f", l.RoundP50-fl.RoundP50), fmt.Sprintf("%+.1f", l.RoundP99-fl.RoundP99)}
			if cl != nil {
				x = [2]string{ratio(l.StartP50-fl.StartP50, cl.StartP50-fl.StartP50), ratio(l.RoundP50-fl.RoundP50, cl.RoundP50-fl.RoundP50)}
			}
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %s | %s | %s | %s | %.1f | %.1f | %s | %s | %s | %s |\n", l.System, l.StartP50, l.StartP99, d[0], d[1], fmtPaired(l.StartPairedOverFloor), x[0],
			l.RoundP50, l.RoundP99, d[2], d[3], fmtPaired(l.RoundPairedOverFloor), x[1])
	}

	b.WriteString("\n## (c) Exec latency\n\n`true` in an idle container until its exit status is known: `runc exec` for the floor, conmon's legacy `--sync` exec (CRI-O's ExecSync), the shims' Exec+Start+Wait+Delete.\n\n")
	b.WriteString("Systems take turns, one exec each per round; *paired* is the median over the rounds of the system's time minus runc's in the same round.\n\n")
	b.WriteString("| system | p50 ms | p99 ms | − runc p50 | paired − runc | × conmon | shim calls p50 ms: Exec / Start / Wait / Delete |\n|---|---|---|---|---|---|---|\n")
	fe, ce := r.execRes(floor), r.execRes(conmon)
	for _, e := range r.Exec {
		d, pd, x, calls := "–", fmtPaired(e.PairedOverFloor), "–", "–"
		if fe != nil {
			d = fmt.Sprintf("%+.1f", e.P50-fe.P50)
		}
		if ce != nil {
			x = ratio(e.P50, ce.P50)
		}
		if k := e.Calls; k != nil {
			calls = fmt.Sprintf("%.2f / %.1f / %.2f / %.2f", k.Exec, k.Start, k.Wait, k.Delete)
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.1f | %s | %s | %s | %s |\n", e.System, e.P50, e.P99, d, pd, x, calls)
	}

	b.WriteString("\n## (d) Log throughput and monitor CPU\n\nThe container writes the volume as fast as it can; the monitor writes a k8s-file (conmon, conmon-v2), a raw file (containerd-shim-runc-v2's `file://`), or `cat` copies the pipe to a file (the references). Clock and CPU (utime+stime of the monitor) from release of the generator to the reported exit. Two references: *% of raw* is the share of `cat`'s throughput (no fsync), the reference of issue 6's 70 % target; *% of raw + fsync* (information, not a target) the share of the same copy with the file fsynced before its clock stops. conmon and the drop-in report the exit only once the log is fsynced, so their clock includes that fsync; the shims report it on reaping and fsync at Delete, outside the clock; containerd-shim-runc-v2 never fsyncs.\n\n")
	b.WriteString("| system | line | MB/s (median) | runs: min–max | × conmon | % of raw (cat) | % of raw + fsync | CPU s/GB | × conmon | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for i := range r.Logs {
		l := &r.Logs[i]
		cm := r.logRes(conmon, l.LineBytes)
		xc, cc := "–", "–"
		if cm != nil {
			xc, cc = ratio(l.MBps, cm.MBps), ratio(l.CPUSecPerGB, cm.CPUSecPerGB)
		}
		// Computed here too, so that --render of an older report fills them.
		xr, xf := fmtPct(r.logShare(l, "raw")), fmtPct(r.logShare(l, "raw-fsync"))
		fmt.Fprintf(&b, "| %s | %d B | %.1f | %d: %.0f–%.0f | %s | %s | %s | %.2f | %s | %.1f |\n", l.System, l.LineBytes, l.MBps, l.Runs, l.MBpsMin, l.MBpsMax, xc, xr, xf, l.CPUSecPerGB, cc, l.PeakRSSMiB)
	}

	if len(r.Dense) > 0 {
		b.WriteString("\n## (e) Many containers\n\n| system | started | monitor processes | total monitor PSS MiB | × conmon | total RSS MiB | start wall s | delete wall s | error |\n|---|---|---|---|---|---|---|---|---|\n")
		var cd *DenseResult
		for i := range r.Dense {
			if r.Dense[i].System == conmon {
				cd = &r.Dense[i]
			}
		}
		for _, d := range r.Dense {
			x := "–"
			if cd != nil {
				x = ratio(d.PSSTotalMiB, cd.PSSTotalMiB)
			}
			fmt.Fprintf(&b, "| %s | %d/%d | %d | %.1f | %s | %.1f | %.1f | %.1f | %s |\n", d.System, d.Started, d.N, d.Processes, d.PSSTotalMiB, x, d.RSSTotalMiB, d.StartWallSeconds, d.DeleteWallSeconds, d.Error)
		}
	}

	b.WriteString("\n## Targets (issue 6)\n\n| target | status | figures |\n|---|---|---|\n")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Name, t.Status, t.Detail)
	}
	if len(r.Failures) > 0 {
		b.WriteString("\n## Failures\n\n| figure | system | error |\n|---|---|---|\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "| %s | %s | %s |\n", f.Figure, f.System, strings.ReplaceAll(f.Error, "|", "\\|"))
		}
	}
	b.WriteString("\nThe machine's 2 CPUs may be shared with other work during a run (see the load averages): latency and throughput figures carry that noise; memory figures do not.\n")
	return b.String()
}

// Summary is one row per system with the headline of every figure: memory
// at the largest N measured, overheads over the runc floor, the log
// figure's CPU per GB, each with its ratio to conmon.
func (r *Report) Summary() string {
	var b strings.Builder
	conmon, floor := r.kindName("conmon"), r.kindName("floor")
	memN := 0
	for _, m := range r.Memory {
		memN = max(memN, m.N)
	}
	fl, fe := r.lat(floor), r.execRes(floor)
	cl, ce := r.lat(conmon), r.execRes(conmon)
	cm := r.mem(conmon, memN)
	line := func(n int) string { return fmt.Sprintf("%d B", n) }
	fmt.Fprintf(&b, "## Summary\n\nMemory at N=%d; latencies are p50 minus the runc floor's p50, and *paired* the median of the per-round differences to the floor (the systems take turns); log CPU is the monitor's CPU-seconds per GB. (× conmon) in parentheses.\n\n", memN)
	b.WriteString("| system | PSS/container KiB | private dirty/container KiB | create+start − runc ms | create+start paired − runc ms | round trip − runc ms | round trip paired − runc ms | exec − runc ms |")
	for _, l := range r.Config.LineSizes {
		fmt.Fprintf(&b, " log %s MB/s | log %s CPU-s/GB |", line(l), line(l))
	}
	b.WriteString("\n|---|---|---|---|---|---|---|---|")
	for range r.Config.LineSizes {
		b.WriteString("---|---|")
	}
	b.WriteString("\n")
	for _, s := range r.Systems {
		if !s.Available {
			continue
		}
		cell := func(ok bool, v float64, base float64, hasBase bool, f string) string {
			if !ok {
				return "–"
			}
			out := fmt.Sprintf(f, v)
			if hasBase && s.Name != conmon {
				out += " (" + ratio(v, base) + ")"
			}
			return out
		}
		m := r.mem(s.Name, memN)
		l, e := r.lat(s.Name), r.execRes(s.Name)
		isFloor := s.Name == floor
		row := []string{
			s.Name,
			cell(m != nil, val(m, func(m *MemResult) float64 { return m.PSSPerContainerKB }), val(cm, func(m *MemResult) float64 { return m.PSSPerContainerKB }), cm != nil, "%.0f"),
			cell(m != nil, val(m, func(m *MemResult) float64 { return m.PrivDirtyPerCtrKB }), val(cm, func(m *MemResult) float64 { return m.PrivDirtyPerCtrKB }), cm != nil, "%.0f"),
			cell(l != nil && fl != nil && !isFloor, val(l, func(l *LatResult) float64 { return l.StartP50 - fl.StartP50 }), val(cl, func(l *LatResult) float64 { return l.StartP50 - fl.StartP50 }), cl != nil, "%+.1f"),
			pairedCell(val(l, func(l *LatResult) *float64 { return l.StartPairedOverFloor }), val(cl, func(l *LatResult) *float64 { return l.StartPairedOverFloor }), s.Name != conmon),
			cell(l != nil && fl != nil && !isFloor, val(l, func(l *LatResult) float64 { return l.RoundP50 - fl.RoundP50 }), val(cl, func(l *LatResult) float64 { return l.RoundP50 - fl.RoundP50 }), cl != nil, "%+.1f"),
			pairedCell(val(l, func(l *LatResult) *float64 { return l.RoundPairedOverFloor }), val(cl, func(l *LatResult) *float64 { return l.RoundPairedOverFloor }), s.Name != conmon),
			cell(e != nil && fe != nil && !isFloor, val(e, func(e *ExecResult) float64 { return e.P50 - fe.P50 }), val(ce, func(e *ExecResult) float64 { return e.P50 - fe.P50 }), ce != nil, "%+.1f"),
		}
		for _, ls := range r.Config.LineSizes {
			lr, cr := r.logRes(s.Name, ls), r.logRes(conmon, ls)
			row = append(row,
				cell(lr != nil, val(lr, func(l *LogResult) float64 { return l.MBps }), val(cr, func(l *LogResult) float64 { return l.MBps }), cr != nil, "%.0f"),
				cell(lr != nil, val(lr, func(l *LogResult) float64 { return l.CPUSecPerGB }), val(cr, func(l *LogResult) float64 { return l.CPUSecPerGB }), cr != nil, "%.2f"))
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	return b.String()
}

// val applies f to p, or returns the zero value for a nil p.
func val[T, V any](p *T, f func(*T) V) V {
	if p == nil {
		var zero V
		return zero
	}
	return f(p)
}

// pairedCell is a summary cell of a paired difference to the floor, with
// its ratio to conmon's paired difference when withBase and conmon has
// one; "–" if there is no paired difference.
func pairedCell(v, conmon *float64, withBase bool) string {
	out := fmtPaired(v)
	if v != nil && conmon != nil && withBase {
		out += " (" + ratio(*v, *conmon) + ")"
	}
	return out
}

// memoryChart draws PSS per container against N, one line per system.
func (r *Report) memoryChart(path string) error {
	p := plot.New()
	p.Title.Text = "Monitor memory per idle container"
	p.X.Label.Text = "containers (N)"
	p.Y.Label.Text = "PSS per container (KiB)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	// Per-container memory spans two orders of magnitude (a lone shim
	// against a node daemon's share): log scale on both axes.
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	colors := []color.RGBA{
		{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, {R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
		{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, {R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
		{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
	}
	i := 0
	for _, s := range r.Systems {
		var pts plotter.XYs
		for _, m := range r.Memory {
			if m.System == s.Name {
				pts = append(pts, plotter.XY{X: float64(m.N), Y: m.PSSPerContainerKB})
			}
		}
		if len(pts) == 0 {
			continue
		}
		line, points, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		c := colors[i%len(colors)]
		line.Color, points.Color = c, c
		points.Shape = draw.CircleGlyph{}
		p.Add(line, points)
		p.Legend.Add(s.Name, line, points)
		i++
	}
	if i == 0 { // nothing measured: an empty chart, with a valid log axis
		p.X.Min, p.X.Max = 1, 10
		p.Y.Min, p.Y.Max = 1, 10
	}
	c := vgsvg.New(8*vg.Inch, 5*vg.Inch)
	p.Draw(draw.New(c))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
