// Package bench measures conmon-v2 side by side with the monitors it
// replaces, on the same machine, in one run, on the same busybox bundles:
// runc alone (the floor), Debian's conmon driven through its command line,
// containerd-shim-runc-v2 driven over ttrpc, and conmon-v2 in its modes
// (conmon drop-in, shim per container, per group, per node).
//
// Run executes the figures of issue 6 and returns a Report; WriteResults
// stores it as markdown, JSON and an SVG chart. cmd/conmon-bench is the
// command line; `make bench` and `make bench-quick` call it.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
	"golang.org/x/sys/unix"
)

// Config selects what a run measures.
type Config struct {
	Quick       bool
	Ns          []int   // idle container counts of the memory figure
	Iterations  int     // samples per system for the latency and exec figures
	LogBytes    int64   // bytes written per log-throughput run
	LogRepeats  int     // runs per system and line size; the median is reported
	LineSizes   []int   // line lengths of the log figure
	Dense       int     // containers of the scale figure; 0 skips it
	GroupSize   int     // containers per sandbox in the grouped mode
	Concurrency int     // parallel launches and deletes when filling N
	Settle      float64 // seconds to wait before reading memory
	// SettleOthers, if > 0, replaces Settle for the systems that do not
	// trim their memory once idle (all but conmon-v2's): quick mode.
	SettleOthers float64
	BinDir       string // conmon-v2 binaries (bin/ of the repository)
	RepoRoot     string // module root, to build the log generator
	Only         []string
	Keep         bool          // keep the scratch directory (logs of the shims) for debugging
	Figures      []string      // figures to run (FigMemory...); empty = all
	Hold         time.Duration // debugging: pause after each memory reading, monitors alive
	Logf         func(format string, args ...any)
}

// DefaultConfig is the full run (`make bench`) or, with quick, a run
// under two minutes (`make bench-quick`).
func DefaultConfig(quick bool) Config {
	c := Config{
		Quick:       quick,
		Ns:          []int{1, 10, 100, 500},
		Iterations:  40,
		LogBytes:    1 << 30,
		LogRepeats:  3,
		LineSizes:   []int{80, 16384},
		Dense:       1000,
		GroupSize:   10,
		Concurrency: 4,
		// conmon-v2's drop-in trims its start-up memory 3 s after the
		// container starts: readings are taken after that, at the idle
		// steady state.
		Settle: 5,
	}
	if quick {
		c.Ns = []int{1, 10}
		c.Iterations = 8
		c.LogBytes = 64 << 20
		c.LogRepeats = 1
		c.Dense = 0
		c.Settle = 3.5
		c.SettleOthers = 0.5
	}
	return c
}

// Run measures every available system. A system that cannot run is
// reported with its reason; a figure that fails for a system is reported
// as failed for that system. Run leaves no container, monitor or cgroup
// behind, even when it fails.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if os.Getuid() != 0 {
		return nil, errors.New("bench: must run as root (runc, cgroups)")
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.RepoRoot == "" {
		cfg.RepoRoot = findRepoRoot()
	}
	if cfg.BinDir == "" {
		cfg.BinDir = filepath.Join(cfg.RepoRoot, "bin")
	}
	// Daemonised monitors and the containers that runc alone starts are
	// re-parented to the harness, which waits for them and reads their
	// final CPU time while they are zombies.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("bench: PR_SET_CHILD_SUBREAPER: %w", err)
	}
	dir, err := os.MkdirTemp("", "cb")
	if err != nil {
		return nil, err
	}
	runcPath, err := exec.LookPath("runc")
	if err != nil {
		return nil, fmt.Errorf("bench: runc not installed: %w", err)
	}
	env := &Env{
		Dir:      dir,
		Rootfs:   filepath.Join(dir, "rootfs"),
		Runc:     runcPath,
		RuncRoot: filepath.Join(dir, "runc"),
		Cgroup:   fmt.Sprintf("/conmon-bench-%d", os.Getpid()),
		BinDir:   cfg.BinDir,
		Logf:     cfg.Logf,
	}
	defer cleanup(env, cfg.Keep)
	for _, d := range []string{env.RuncRoot, env.GateDir(), filepath.Join(dir, "b")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := testutil.MakeBusyboxRootfs(env.Rootfs); err != nil {
		return nil, err
	}
	if err := buildTool(ctx, cfg.RepoRoot, "gen", filepath.Join(env.Rootfs, "bin", "gen")); err != nil {
		return nil, err
	}
	if err := buildTool(ctx, cfg.RepoRoot, "idle", filepath.Join(dir, "idle")); err != nil {
		return nil, err
	}

	b := &bencher{cfg: cfg, env: env, rep: newReport(cfg)}
	b.systems = b.candidates()
	defer func() {
		for _, s := range b.systems {
			if s.sys != nil {
				_ = s.sys.Close(context.Background())
			}
		}
	}()
	b.checkAvailability(ctx)
	for _, f := range []struct {
		name string
		run  func(context.Context)
	}{{FigMemory, b.memory}, {FigLatency, b.latency}, {FigExec, b.exec}, {FigLogs, b.logs}, {FigDense, b.dense}} {
		if ctx.Err() != nil {
			break
		}
		if f.name == FigDense && cfg.Dense <= 0 {
			continue
		}
		if len(cfg.Figures) == 0 || slices.Contains(cfg.Figures, f.name) {
			f.run(ctx)
		}
	}
	b.rep.finish()
	return b.rep, ctx.Err()
}

// sysEntry is one measured system and what it takes part in.
type sysEntry struct {
	sys    System
	prefix string
	kind   string // "floor", "conmon", "conmon-v2", "runc-shim", "raw", "raw-fsync", "reference"
	shared bool   // one monitor serves several containers: keep one running
	group  bool   // containers carry a sandbox-id annotation
	mem    bool   // has monitor memory to measure
	logs   bool   // takes part in the log figure
	lat    bool   // takes part in the latency and exec figures
	dense  bool   // takes part in the 1000-container figure
	logAnn bool   // containers carry conmon-v2's k8s-file log annotations
	reason string // "" if available
}

// figures lists the figures s takes part in.
func (s *sysEntry) figures(cfg Config) []string {
	var f []string
	if s.mem {
		f = append(f, FigMemory)
	}
	if s.lat {
		f = append(f, FigLatency, FigExec)
	}
	if s.logs {
		f = append(f, FigLogs)
	}
	if s.dense && cfg.Dense > 0 {
		f = append(f, FigDense)
	}
	return f
}

func (b *bencher) candidates() []*sysEntry {
	env := b.env
	bin := func(name string) (string, string) {
		p := filepath.Join(b.cfg.BinDir, name)
		if _, err := os.Stat(p); err != nil {
			return p, fmt.Sprintf("%s not built (make build)", p)
		}
		return p, ""
	}
	list := []*sysEntry{
		{sys: &runcSystem{env: env}, prefix: "rf", kind: "floor", lat: true},
	}
	conmonBin, err := exec.LookPath("conmon")
	e := &sysEntry{sys: &conmonSystem{env: env, name: "conmon 2.1.6", bin: conmonBin}, prefix: "cm", kind: "conmon", mem: true, logs: true, lat: true, dense: true}
	if err != nil {
		e.reason = "conmon not installed"
	}
	list = append(list, e)

	rs := newShimSystem(env, "containerd-shim-runc-v2", "containerd-shim-runc-v2", "rs")
	e = &sysEntry{sys: rs, prefix: "rs", kind: "runc-shim", mem: true, logs: true, lat: true, dense: true}
	if p, err := exec.LookPath("containerd-shim-runc-v2"); err != nil {
		e.reason = "containerd-shim-runc-v2 not installed"
	} else {
		rs.bin = p
	}
	list = append(list, e)

	p, why := bin("conmon-v2")
	list = append(list, &sysEntry{sys: &conmonSystem{env: env, name: "conmon-v2 (drop-in)", bin: p}, prefix: "cv", kind: "conmon-v2", mem: true, logs: true, lat: true, reason: why})

	p, why = bin("containerd-shim-conmon-v2")
	per := newShimSystem(env, "conmon-v2 shim, per container", p, "sc")
	list = append(list, &sysEntry{sys: per, prefix: "sc", kind: "conmon-v2", mem: true, logs: true, lat: true, logAnn: true, reason: why})

	grp := newShimSystem(env, fmt.Sprintf("conmon-v2 shim, per pod of %d", b.cfg.GroupSize), p, "sg")
	list = append(list, &sysEntry{sys: grp, prefix: "sg", kind: "conmon-v2", shared: true, group: true, mem: true, lat: true, logAnn: true, reason: why})

	node := newShimSystem(env, "conmon-v2 shim, per node", p, "sn")
	list = append(list, &sysEntry{sys: node, prefix: "sn", kind: "conmon-v2", shared: true, mem: true, logs: true, lat: true, dense: true, logAnn: true, reason: why})
	for _, cs := range []struct {
		s        *shimSystem
		grouping string
	}{{per, "pod"}, {grp, "pod"}, {node, "namespace"}} {
		if err := configureConmonShim(env, cs.s, cs.grouping); err != nil {
			return nil // the scratch directory is unusable; Run fails later
		}
	}

	list = append(list, &sysEntry{sys: &runcSystem{env: env, rawCopy: true}, prefix: "rw", kind: "raw", logs: true})
	// The second reference: the same copy, fsynced before the clock
	// stops, as conmon and the drop-in sync the log before they report
	// the exit (bench/README.md "The raw copy, defined two ways").
	syncBin, err := exec.LookPath("sync")
	e = &sysEntry{sys: &runcSystem{env: env, rawCopy: true, syncBin: "sync"}, prefix: "ry", kind: "raw-fsync", logs: true}
	if err != nil {
		e.reason = "coreutils sync not installed"
	} else {
		e.sys.(*runcSystem).syncBin = syncBin
	}
	list = append(list, e)
	list = append(list, &sysEntry{sys: &runcSystem{env: env, idleBin: filepath.Join(env.Dir, "idle")}, prefix: "gi", kind: "reference", mem: true})

	if len(b.cfg.Only) > 0 {
		var keep []*sysEntry
		for _, s := range list {
			for _, o := range b.cfg.Only {
				if s.kind == "floor" || strings.Contains(strings.ToLower(s.sys.Name()), strings.ToLower(o)) {
					keep = append(keep, s)
					break
				}
			}
		}
		list = keep
	}
	return list
}

type bencher struct {
	cfg     Config
	env     *Env
	rep     *Report
	systems []*sysEntry
}

func (b *bencher) logf(format string, args ...any) { b.cfg.Logf(format, args...) }

// checkAvailability runs one short container through every system; a
// system that cannot is reported as not available, with the reason.
func (b *bencher) checkAvailability(ctx context.Context) {
	for _, s := range b.systems {
		if s.reason == "" {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := b.smoke(cctx, s)
			cancel()
			if err != nil {
				s.reason = "smoke test failed: " + oneLine(err.Error())
			}
		}
		b.rep.Systems = append(b.rep.Systems, SystemInfo{Name: s.sys.Name(), Kind: s.kind, Available: s.reason == "", Reason: s.reason, Figures: s.figures(b.cfg)})
		if s.reason != "" {
			b.logf("%-36s not available: %s", s.sys.Name(), s.reason)
		} else {
			b.logf("%-36s available", s.sys.Name())
		}
	}
}

func (b *bencher) smoke(ctx context.Context, s *sysEntry) error {
	c, err := b.newContainer(s, 0, []string{"sh", "-c", "exit 3"})
	if err != nil {
		return err
	}
	if err := s.sys.Launch(ctx, c); err != nil {
		b.remove(s, c)
		return err
	}
	code, err := s.sys.Wait(ctx, c)
	derr := s.sys.Delete(ctx, c)
	b.finish(c)
	if err != nil {
		return err
	}
	if code != 3 {
		return fmt.Errorf("exit status %d, want 3", code)
	}
	return derr
}

// newContainer allocates a container of system s; i places it in its pod
// in the grouped mode.
func (b *bencher) newContainer(s *sysEntry, i int, args []string) (*Container, error) {
	group := ""
	if s.group {
		group = fmt.Sprintf("%s-pod%d", s.prefix, i/max(1, b.cfg.GroupSize))
	}
	return b.env.NewContainer(s.prefix, group, args, s.logAnn)
}

// remove deletes c after a failure, ignoring errors, and frees its bundle.
func (b *bencher) remove(s *sysEntry, c *Container) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = s.sys.Delete(ctx, c)
	b.finish(c)
}

// finish drops c's bundle (its log included).
func (b *bencher) finish(c *Container) {
	b.env.track(c.MonitorPID)
	if !b.cfg.Keep {
		_ = os.RemoveAll(c.Bundle)
	}
}

func (b *bencher) available() []*sysEntry {
	var out []*sysEntry
	for _, s := range b.systems {
		if s.reason == "" {
			out = append(out, s)
		}
	}
	return out
}

// launchMany starts n idle containers of s, numbered from first, with up
// to cfg.Concurrency launches at a time.
func (b *bencher) launchMany(ctx context.Context, s *sysEntry, first, n int) ([]*Container, error) {
	out := make([]*Container, n)
	errs := make([]error, n)
	sem := make(chan struct{}, max(1, b.cfg.Concurrency))
	var wg sync.WaitGroup
	for i := range n {
		c, err := b.newContainer(s, first+i, []string{"sleep", "1000000"})
		if err != nil {
			errs[i] = err
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.sys.Launch(ctx, c); err != nil {
				errs[i] = err
				b.remove(s, c)
				return
			}
			b.env.track(c.MonitorPID)
			out[i] = c
		}()
	}
	wg.Wait()
	var live []*Container
	for _, c := range out {
		if c != nil {
			live = append(live, c)
		}
	}
	return live, errors.Join(errs...)
}

// deleteMany deletes cs, cfg.Concurrency at a time, and returns how long
// it took.
func (b *bencher) deleteMany(s *sysEntry, cs []*Container) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	sem := make(chan struct{}, max(1, b.cfg.Concurrency))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, c := range cs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := s.sys.Delete(ctx, c); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			b.finish(c)
		}()
	}
	wg.Wait()
	return time.Since(t0), errors.Join(errs...)
}

func monitorPIDs(cs []*Container) []int {
	var pids []int
	for _, c := range cs {
		if c.MonitorPID > 0 && !slices.Contains(pids, c.MonitorPID) {
			pids = append(pids, c.MonitorPID)
		}
	}
	return pids
}

// monitorMemory sums PSS and private dirty memory over the distinct
// monitor processes of cs.
func monitorMemory(cs []*Container) (memUsage, int, error) {
	seen := map[int]bool{}
	var total memUsage
	for _, c := range cs {
		if c.MonitorPID <= 0 || seen[c.MonitorPID] {
			continue
		}
		seen[c.MonitorPID] = true
		m, err := readSmapsRollup(c.MonitorPID)
		if err != nil {
			return total, len(seen), err
		}
		total.PSS += m.PSS
		total.PrivateDirty += m.PrivateDirty
		total.RSS += m.RSS
	}
	return total, len(seen), nil
}

// memory is figure (a): monitor memory per idle container at each N.
func (b *bencher) memory(ctx context.Context) {
	for _, s := range b.available() {
		if !s.mem {
			continue
		}
		var live []*Container
		for _, n := range b.cfg.Ns {
			t0 := time.Now()
			more, err := b.launchMany(ctx, s, len(live), n-len(live))
			live = append(live, more...)
			if err != nil {
				b.rep.fail(FigMemory, s.sys.Name(), fmt.Sprintf("N=%d: %v", n, err))
				break
			}
			startWall := time.Since(t0)
			settle := b.cfg.Settle
			if s.kind != "conmon-v2" && b.cfg.SettleOthers > 0 {
				settle = b.cfg.SettleOthers
			}
			sleepCtx(ctx, time.Duration(settle*float64(time.Second)))
			m, procs, err := monitorMemory(live)
			if err != nil {
				b.rep.fail(FigMemory, s.sys.Name(), fmt.Sprintf("N=%d: %v", n, err))
				break
			}
			r := MemResult{
				System: s.sys.Name(), N: n, Processes: procs,
				PSSTotalKB:           kb(m.PSS),
				PrivateDirtyTotalKB:  kb(m.PrivateDirty),
				RSSTotalKB:           kb(m.RSS),
				PSSPerContainerKB:    kb(m.PSS) / float64(n),
				PrivDirtyPerCtrKB:    kb(m.PrivateDirty) / float64(n),
				LaunchWallSeconds:    startWall.Seconds(),
				LaunchedInThisStepOf: len(more),
			}
			b.rep.Memory = append(b.rep.Memory, r)
			b.logf("memory  %-36s N=%-4d procs=%-4d PSS/ctr=%8.0f KiB  privdirty/ctr=%8.0f KiB", s.sys.Name(), n, procs, r.PSSPerContainerKB, r.PrivDirtyPerCtrKB)
			if b.cfg.Hold > 0 {
				b.logf("holding %s; monitor pids %v", b.cfg.Hold, monitorPIDs(live))
				sleepCtx(ctx, b.cfg.Hold)
			}
			if ctx.Err() != nil {
				break
			}
		}
		if _, err := b.deleteMany(s, live); err != nil {
			b.rep.fail(FigMemory, s.sys.Name(), "delete: "+oneLine(err.Error()))
		}
	}
}

// anchor keeps one idle container running in a shared monitor, so that
// the latency figures measure joining a running monitor, as a pod's
// second container or a node's next one does.
func (b *bencher) anchor(ctx context.Context, s *sysEntry) (*Container, error) {
	if !s.shared {
		return nil, nil
	}
	cs, err := b.launchMany(ctx, s, 0, 1)
	if err != nil || len(cs) == 0 {
		return nil, fmt.Errorf("anchor container: %w", err)
	}
	return cs[0], nil
}

func (b *bencher) dropAnchor(s *sysEntry, c *Container) {
	if c != nil {
		_, _ = b.deleteMany(s, []*Container{c})
	}
}

// latency is figure (b): create+start, and the whole round trip
// create→start→exit→delete, one container at a time. The shared modes'
// anchors are started first; then the systems take turns (takeTurns: one
// create+start each per round, the order rotating), then take turns again
// for the round trip, so that every system is sampled in the same seconds
// as the floor. Besides each system's p50 and p99, the median of the
// per-round differences to the floor is reported for both.
func (b *bencher) latency(ctx context.Context) {
	type latRun struct {
		s      *sysEntry
		anchor *Container
		err    error
	}
	var runs []*latRun
	floor := -1
	for _, s := range b.available() {
		if !s.lat {
			continue
		}
		a, err := b.anchor(ctx, s)
		if err != nil {
			b.rep.fail(FigLatency, s.sys.Name(), err.Error())
			continue
		}
		if s.kind == "floor" {
			floor = len(runs)
		}
		runs = append(runs, &latRun{s: s, anchor: a})
	}
	starts := takeTurns(ctx, b.cfg.Iterations, len(runs), floor, func(k int) (float64, bool) {
		r := runs[k]
		c, err := b.newContainer(r.s, 0, []string{"sleep", "1000000"})
		if err != nil {
			r.err = err
			return 0, false
		}
		t0 := time.Now()
		err = r.s.sys.Launch(ctx, c)
		d := time.Since(t0)
		b.remove(r.s, c)
		if err != nil {
			r.err = err
			return 0, false
		}
		return ms(d), true
	})
	rounds := takeTurns(ctx, b.cfg.Iterations, len(runs), floor, func(k int) (float64, bool) {
		r := runs[k]
		if r.err != nil {
			return 0, false
		}
		c, err := b.newContainer(r.s, 0, []string{"true"})
		if err != nil {
			r.err = err
			return 0, false
		}
		t0 := time.Now()
		err = r.s.sys.Launch(ctx, c)
		if err == nil {
			_, err = r.s.sys.Wait(ctx, c)
		}
		if err == nil {
			err = r.s.sys.Delete(ctx, c)
			b.finish(c)
		} else {
			b.remove(r.s, c)
		}
		if err != nil {
			r.err = err
			return 0, false
		}
		return ms(time.Since(t0)), true
	})
	for k, r := range runs {
		b.dropAnchor(r.s, r.anchor)
		if r.err == nil && ctx.Err() != nil {
			r.err = ctx.Err()
		}
		if r.err != nil {
			b.rep.fail(FigLatency, r.s.sys.Name(), oneLine(r.err.Error()))
			continue
		}
		st, rt := starts[k].Times, rounds[k].Times
		l := LatResult{System: r.s.sys.Name(), Samples: len(st),
			StartP50: pct(st, 50), StartP99: pct(st, 99),
			RoundP50: pct(rt, 50), RoundP99: pct(rt, 99),
			StartPairedOverFloor: pairedMedian(starts[k].Paired),
			RoundPairedOverFloor: pairedMedian(rounds[k].Paired)}
		b.rep.Latency = append(b.rep.Latency, l)
		b.logf("latency %-36s create+start p50=%6.1f ms p99=%6.1f ms paired-runc=%s  round trip p50=%6.1f ms p99=%6.1f ms paired-runc=%s",
			l.System, l.StartP50, l.StartP99, fmtPaired(l.StartPairedOverFloor), l.RoundP50, l.RoundP99, fmtPaired(l.RoundPairedOverFloor))
	}
}

// execPhaser is a system whose exec is several calls (the shims' Exec,
// Start, Wait, Delete), each timed for the exec figure's breakdown.
type execPhaser interface {
	ExecPhases(ctx context.Context, c *Container, args []string) (int, [4]time.Duration, error)
}

// exec is figure (c): `true` run in an idle container, to its exit status.
// Every system's container is started first; then the systems take turns
// (takeTurns: one exec each per round, the order rotating), and the median
// of the per-round differences to the floor is reported besides the
// difference of the medians.
func (b *bencher) exec(ctx context.Context) {
	type execRun struct {
		s      *sysEntry
		c      *Container
		phased execPhaser
		phases [4][]float64 // Exec, Start, Wait, Delete of a shim
		err    error
	}
	var runs []*execRun
	floor := -1
	for _, s := range b.available() {
		if !s.lat {
			continue
		}
		cs, err := b.launchMany(ctx, s, 0, 1)
		if err != nil || len(cs) == 0 {
			b.rep.fail(FigExec, s.sys.Name(), oneLine(fmt.Sprint(err)))
			continue
		}
		r := &execRun{s: s, c: cs[0]}
		r.phased, _ = s.sys.(execPhaser)
		if s.kind == "floor" {
			floor = len(runs)
		}
		runs = append(runs, r)
	}
	res := takeTurns(ctx, b.cfg.Iterations, len(runs), floor, func(k int) (float64, bool) {
		r := runs[k]
		t0 := time.Now()
		var code int
		var err error
		if r.phased != nil {
			var ph [4]time.Duration
			code, ph, err = r.phased.ExecPhases(ctx, r.c, []string{"true"})
			for k := range ph {
				r.phases[k] = append(r.phases[k], ms(ph[k]))
			}
		} else {
			code, err = r.s.sys.Exec(ctx, r.c, []string{"true"})
		}
		if err == nil && code != 0 {
			err = fmt.Errorf("exec true: exit status %d", code)
		}
		if err != nil {
			r.err = err
			return 0, false
		}
		return ms(time.Since(t0)), true
	})
	for k, r := range runs {
		_, _ = b.deleteMany(r.s, []*Container{r.c})
		if r.err != nil {
			b.rep.fail(FigExec, r.s.sys.Name(), oneLine(r.err.Error()))
			continue
		}
		times := res[k].Times
		e := ExecResult{System: r.s.sys.Name(), Samples: len(times), P50: pct(times, 50), P99: pct(times, 99),
			PairedOverFloor: pairedMedian(res[k].Paired)}
		if r.phased != nil {
			e.Calls = &ExecCalls{Exec: pct(r.phases[0], 50), Start: pct(r.phases[1], 50), Wait: pct(r.phases[2], 50), Delete: pct(r.phases[3], 50)}
		}
		b.rep.Exec = append(b.rep.Exec, e)
		b.logf("exec    %-36s p50=%6.1f ms p99=%6.1f ms", e.System, e.P50, e.P99)
	}
}

// logs is figure (d): a container writes cfg.LogBytes of lines as fast as
// it can; the monitor writes them to a file (k8s-file for the conmons).
// The clock and the monitor's CPU time start when the container is set up
// and the generator is released, and stop when the monitor reports the
// exit, which it does only after the log is drained.
func (b *bencher) logs(ctx context.Context) {
	reps := max(1, b.cfg.LogRepeats)
	for _, line := range b.cfg.LineSizes {
		// Rounds over all systems, so that a burst of load elsewhere on
		// the machine spreads over the systems; the median run is kept.
		runs := map[string][]LogResult{}
		failed := map[string]bool{}
		for rep := 0; rep < reps && ctx.Err() == nil; rep++ {
			for _, s := range b.available() {
				name := s.sys.Name()
				if !s.logs || failed[name] {
					continue
				}
				r, err := b.logRun(ctx, s, line)
				if err != nil {
					b.rep.fail(FigLogs, name, fmt.Sprintf("%d-byte lines: %s", line, oneLine(err.Error())))
					failed[name] = true
					continue
				}
				runs[name] = append(runs[name], *r)
				b.logf("logs    %-36s %5d B lines: %7.1f MB/s  %6.2f CPU-s/GB  peak RSS %6.1f MiB", r.System, line, r.MBps, r.CPUSecPerGB, r.PeakRSSMiB)
			}
		}
		for _, s := range b.available() {
			rs := runs[s.sys.Name()]
			if len(rs) == 0 || failed[s.sys.Name()] {
				continue
			}
			sort.Slice(rs, func(i, j int) bool { return rs[i].MBps < rs[j].MBps })
			m := rs[len(rs)/2]
			m.Runs, m.MBpsMin, m.MBpsMax = len(rs), rs[0].MBps, rs[len(rs)-1].MBps
			b.rep.Logs = append(b.rep.Logs, m)
		}
	}
}

func (b *bencher) logRun(ctx context.Context, s *sysEntry, line int) (*LogResult, error) {
	c, err := b.newContainer(s, 0, []string{"true"})
	if err != nil {
		return nil, err
	}
	gate := filepath.Join(b.env.GateDir(), c.ID)
	defer os.Remove(gate)
	c.Args = []string{"/bin/gen", fmt.Sprint(line), fmt.Sprint(b.cfg.LogBytes), "/gate/" + c.ID}
	if err := b.env.writeBundle(c); err != nil {
		return nil, err
	}
	if err := s.sys.Launch(ctx, c); err != nil {
		b.remove(s, c)
		return nil, err
	}
	b.env.track(c.MonitorPID)
	mon := c.MonitorPID
	cpu0 := 0.0
	if mon > 0 && s.kind != "raw" && s.kind != "raw-fsync" { // cat's CPU is counted from its start
		cpu0, _ = cpuSeconds(mon)
	}
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // peak RSS sampler; ends when stop closes
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if v, err := peakRSS(mon); err == nil && v > peak {
				peak = v
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	t0 := time.Now()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		close(stop)
		<-sampled
		b.remove(s, c)
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	code, err := s.sys.Wait(wctx, c)
	if err == nil && s.kind == "runc-shim" {
		// containerd's runc shim reports the exit before its file://
		// copy has drained the pipe: the clock stops when the raw file
		// holds every byte.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if fi, err := os.Stat(c.LogPath); err == nil && fi.Size() >= b.cfg.LogBytes {
				break
			}
		}
	}
	cancel()
	wall := time.Since(t0)
	close(stop) // the sampler writes peak until it has stopped
	<-sampled
	cpu1 := 0.0
	if c.Final != nil {
		cpu1 = c.Final.CPU
		if c.Final.PeakRSS > peak {
			peak = c.Final.PeakRSS
		}
	} else if mon > 0 {
		cpu1, _ = cpuSeconds(mon)
	}
	var size int64
	if fi, serr := os.Stat(c.LogPath); serr == nil {
		size = fi.Size()
	}
	derr := s.sys.Delete(ctx, c)
	b.finish(c)
	if err != nil {
		return nil, err
	}
	if code != 0 {
		return nil, fmt.Errorf("generator exited %d", code)
	}
	if derr != nil {
		return nil, derr
	}
	if size < b.cfg.LogBytes {
		return nil, fmt.Errorf("log file holds %d bytes, less than the %d written", size, b.cfg.LogBytes)
	}
	gb := float64(b.cfg.LogBytes) / 1e9
	return &LogResult{
		System: s.sys.Name(), Kind: s.kind, LineBytes: line, Bytes: b.cfg.LogBytes, FileBytes: size,
		Seconds: wall.Seconds(), MBps: float64(b.cfg.LogBytes) / 1e6 / wall.Seconds(),
		CPUSeconds: cpu1 - cpu0, CPUSecPerGB: (cpu1 - cpu0) / gb,
		PeakRSSMiB: float64(peak) / (1 << 20),
	}, nil
}

// dense is figure (e): cfg.Dense idle containers started and monitored.
func (b *bencher) dense(ctx context.Context) {
	for _, s := range b.available() {
		if !s.dense {
			continue
		}
		t0 := time.Now()
		live, err := b.launchMany(ctx, s, 0, b.cfg.Dense)
		wall := time.Since(t0)
		r := DenseResult{System: s.sys.Name(), N: b.cfg.Dense, Started: len(live), StartWallSeconds: wall.Seconds()}
		if err != nil {
			r.Error = oneLine(err.Error())
		}
		sleepCtx(ctx, time.Duration(b.cfg.Settle*float64(time.Second)))
		m, procs, merr := monitorMemory(live)
		if merr == nil {
			r.Processes = procs
			r.PSSTotalMiB = float64(m.PSS) / (1 << 20)
			r.RSSTotalMiB = float64(m.RSS) / (1 << 20)
			r.PrivDirtyTotalMiB = float64(m.PrivateDirty) / (1 << 20)
		} else if r.Error == "" {
			r.Error = oneLine(merr.Error())
		}
		dwall, derr := b.deleteMany(s, live)
		r.DeleteWallSeconds = dwall.Seconds()
		if derr != nil && r.Error == "" {
			r.Error = "delete: " + oneLine(derr.Error())
		}
		b.rep.Dense = append(b.rep.Dense, r)
		b.logf("dense   %-36s %d/%d started in %.1f s, monitors PSS %.1f MiB (%d procs), deleted in %.1f s %s", r.System, r.Started, r.N, r.StartWallSeconds, r.PSSTotalMiB, r.Processes, r.DeleteWallSeconds, r.Error)
	}
}

// cleanup removes everything a run may have left: containers in the
// harness's runc root, monitor processes, cgroups, the scratch directory.
func cleanup(env *Env, keep bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, root := range []string{env.RuncRoot, filepath.Join(env.ShimRuncRoot(), benchNamespace)} {
		if out, err := exec.CommandContext(ctx, env.Runc, "--root", root, "list", "-q").Output(); err == nil {
			for _, id := range strings.Fields(string(out)) {
				_ = exec.CommandContext(ctx, env.Runc, "--root", root, "delete", "-f", id).Run()
			}
		}
	}
	env.mu.Lock()
	pids := make([]int, 0, len(env.started))
	for pid := range env.started {
		pids = append(pids, pid)
	}
	env.mu.Unlock()
	for _, pid := range pids {
		if isZombieOrOurs(pid, env) {
			killAndReap(pid)
		}
	}
	removeCgroups(env.Cgroup)
	// Reap whatever else was re-parented to us.
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if pid <= 0 || err != nil {
			break
		}
	}
	if keep {
		env.Logf("kept %s", env.Dir)
		return
	}
	_ = os.RemoveAll(env.Dir)
}

// removeCgroups kills whatever still runs in the run's cgroups (a runc init
// left behind by a monitor that died half-way through a create, which no
// runc state names) and removes them, in every v1 hierarchy and in v2.
func removeCgroups(parent string) {
	roots := []string{"/sys/fs/cgroup"}
	if ents, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
			}
		}
	}
	for pass := 0; pass < 2; pass++ {
		for _, root := range roots {
			dir := filepath.Join(root, parent)
			kids, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, k := range kids {
				if !k.IsDir() {
					continue
				}
				sub := filepath.Join(dir, k.Name())
				if pass == 0 {
					if data, err := os.ReadFile(filepath.Join(sub, "cgroup.procs")); err == nil {
						for _, f := range strings.Fields(string(data)) {
							var pid int
							if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
								_ = unix.Kill(pid, unix.SIGKILL)
							}
						}
					}
					continue
				}
				_ = os.Remove(sub)
			}
			if pass == 1 {
				_ = os.Remove(dir)
			}
		}
		if pass == 0 {
			time.Sleep(100 * time.Millisecond) // let the kills land
		}
	}
}

// isZombieOrOurs reports whether pid still runs one of the monitors of
// this run (a pid may have been reused since): its parent is the harness.
func isZombieOrOurs(pid int, env *Env) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(data), ')')
	f := strings.Fields(string(data[i+1:]))
	return len(f) > 1 && f[1] == fmt.Sprint(os.Getpid())
}

// buildTool builds one of bench/internal's programs, static and stripped
// as `make build` builds conmon-v2: the log generator (copied into the
// rootfs) and the idle Go process (the memory reference).
func buildTool(ctx context.Context, repo, name, dst string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-mod=vendor", "-trimpath", "-ldflags", "-s -w", "-o", dst, "./bench/internal/"+name)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building bench/internal/%s: %w: %s", name, err, out)
	}
	return nil
}

// findRepoRoot walks up from the working directory to conmon-v2's go.mod.
func findRepoRoot() string {
	dir, err := os.Getwd()
	if err == nil {
		for d := dir; ; d = filepath.Dir(d) {
			if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil &&
				strings.Contains(string(data), "module github.com/containers/conmon-v2") {
				return d
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return testutil.RepoRoot()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func kb(b uint64) float64        { return float64(b) / 1024 }

// pct is the nearest-rank percentile of xs.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(p/100*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
