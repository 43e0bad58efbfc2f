package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// A live upgrade (docs/resilience.md §5) hands the service to a new binary
// in the same process (execve keeps the pid, so the containers stay its
// children):
//
//	f, err := svc.Freeze(ctx)  // stop every copier at a clean point
//	fds, err := f.FDs()        // the descriptors the new binary needs
//	... describe them to the new binary; on any error f.Thaw() ...
//	f.Commit(ctx, stopReaper)  // point of no return: flush, records
//	... execve ...
//
// and in the new binary, before its wait loop runs:
//
//	svc.Restore(ctx, fds)

// TaskFDs are one task's descriptors in a handover, by process.
type TaskFDs struct {
	ID    string                   `json:"id"`
	Init  process.IOFDs            `json:"init"`
	Execs map[string]process.IOFDs `json:"execs,omitempty"`
}

// Close closes every descriptor of t.
func (t TaskFDs) Close() {
	t.Init.Close()
	for _, x := range t.Execs {
		x.Close()
	}
}

// List returns every descriptor of t.
func (t TaskFDs) List() []int {
	out := t.Init.List()
	for _, x := range t.Execs {
		out = append(out, x.List()...)
	}
	return out
}

// startExitLoop runs the exit loop until the service closes or stopExits.
func (s *Service) startExitLoop() {
	ctx, cancel := context.WithCancel(s.ctx)
	done := make(chan struct{})
	s.wg.Add(1)
	go func() {
		defer close(done)
		s.exitLoop(ctx)
	}()
	var once sync.Once
	s.stopExits = func() bool {
		first := false
		once.Do(func() { first = true })
		cancel()
		<-done
		return first
	}
}

// Frozen is the service stopped for a handover: Freeze's result.
type Frozen struct {
	s         *Service
	ios       []*process.IO
	committed bool
}

// Freeze stops the output and stdin copiers of every process at a clean
// point (process.IO.Suspend): what they read is written to the
// destinations and the logging pipelines, the rest waits in the pipes.
// The caller has stopped the requests first (the server's listener is
// frozen). Unavailable when a request still changes a task (a create,
// start or delete in flight); then nothing is frozen.
func (s *Service) Freeze(ctx context.Context) (*Frozen, error) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, fmt.Errorf("freeze: service is closed: %w", errdefs.ErrFailedPrecondition)
	case s.frozen:
		s.mu.Unlock()
		return nil, fmt.Errorf("freeze: a handover is under way already: %w", errdefs.ErrFailedPrecondition)
	case len(s.reserved) > 0 || len(s.deleting) > 0 || s.starting > 0 || len(s.killing) > 0:
		s.mu.Unlock()
		return nil, fmt.Errorf("freeze: a create, start, kill or delete is in flight: %w", errdefs.ErrUnavailable)
	}
	s.frozen = true
	f := &Frozen{s: s}
	for _, c := range s.containers {
		if c.Init.IO != nil {
			f.ios = append(f.ios, c.Init.IO)
		}
		for _, x := range c.Execs {
			if x.IO != nil {
				f.ios = append(f.ios, x.IO)
			}
		}
	}
	s.mu.Unlock()
	for k, io := range f.ios {
		if err := io.Suspend(ctx); err != nil {
			for _, done := range f.ios[:k] {
				done.Resume()
			}
			s.mu.Lock()
			s.frozen = false
			s.mu.Unlock()
			return nil, fmt.Errorf("freeze: %w", err)
		}
	}
	return f, nil
}

// Thaw undoes Freeze: copying resumes. Not after Commit.
func (f *Frozen) Thaw() {
	if f.committed {
		return
	}
	for _, io := range f.ios {
		io.Resume()
	}
	f.s.mu.Lock()
	f.s.frozen = false
	f.s.mu.Unlock()
}

// FDs duplicates (close-on-exec) the descriptors of every task's stdio
// that the new binary needs. The caller owns them (TaskFDs.Close when the
// handover is called off).
func (f *Frozen) FDs() (_ []TaskFDs, retErr error) {
	s := f.s
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []TaskFDs
	defer func() {
		if retErr != nil {
			for _, t := range out {
				t.Close()
			}
		}
	}()
	for _, c := range s.containers {
		t := TaskFDs{ID: c.ID}
		if c.Init.IO != nil {
			fds, err := c.Init.IO.HandoverFDs()
			if err != nil {
				return nil, err
			}
			t.Init = fds
		}
		for id, x := range c.Execs {
			if x.IO == nil {
				continue
			}
			fds, err := x.IO.HandoverFDs()
			if err != nil {
				return nil, err
			}
			if t.Execs == nil {
				t.Execs = make(map[string]process.IOFDs)
			}
			t.Execs[id] = fds
		}
		out = append(out, t)
	}
	return out, nil
}

// Commit is the point of no return, once the descriptors are duplicated
// and described: it closes every process's IO here (the logging pipelines
// are flushed and their drivers closed; the pipes and FIFOs stay open
// through the duplicates), then calls stopReaper, which stops the
// process's wait loop (an exit from then on waits as a zombie for the new
// binary's), handles the exits already reaped, writes every task's record,
// stops the OOM watches (the next binary's count from the kills they
// reported) and gives the queued events up to grace to reach the
// publisher. The caller then flushes the publisher and execs.
func (f *Frozen) Commit(grace time.Duration, stopReaper func()) {
	s := f.s
	f.committed = true
	// Logger programs of the pipelines are waited for through the reaper:
	// close before it stops. In parallel: each close flushes and syncs
	// its drivers.
	parallel(len(f.ios), func(k int) { f.ios[k].Close() })
	stopReaper()
	s.stopExits()
	drained, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		e, err := s.exits.Recv(drained) // what is queued, without waiting
		if err != nil {
			break
		}
		s.handleExit(e)
	}
	s.awaitOOMArms("")
	s.mu.Lock()
	for _, c := range s.containers {
		s.recordLocked(c)
	}
	watches := s.oom
	s.oom = make(map[string]*process.OOMWatch)
	s.mu.Unlock()
	// The OOM watches stop before the flush: the count of kills each
	// reported (process.OOMCountFile, queued as they report) is then the
	// last, and the next binary's watch reports the kills counted after
	// it (rewatchOOM), none twice, none lost in between.
	for _, w := range watches {
		w.Stop()
	}
	s.rec.flush() // the next binary reads them
	s.events.close(grace)
}

// Restore takes over the tasks a previous binary of this process handed
// over in a live upgrade: each is rebuilt from its record, its processes'
// stdio from the descriptors (a task's logging pipeline is opened anew
// from its spec), and its live processes are registered for their exits,
// which the reaper delivers. Call it before the reaper's loop runs: an
// exit during the handover waits as a zombie and is then delivered here,
// not dropped. A process that is not this process's child (a task adopted
// after a crash) is watched as Adopt does. It returns the IDs restored;
// a task that cannot be restored is logged and its descriptors closed.
func (s *Service) Restore(ctx context.Context, tasks []TaskFDs) ([]string, error) {
	// Tasks are independent: restored in parallel (each opens files and
	// its logging drivers), which shortens the upgrade's gap.
	errs := make([]error, len(tasks))
	var (
		mu      sync.Mutex
		watches []*process.Container // running inits, for their OOM watch
	)
	parallel(len(tasks), func(k int) {
		c, err := s.restore(ctx, tasks[k])
		if c != nil {
			mu.Lock()
			watches = append(watches, c)
			mu.Unlock()
		}
		if err != nil {
			s.cfg.Log.Error("restore after upgrade", "task", tasks[k].ID, "error", err)
			errs[k] = fmt.Errorf("task %q: %w", tasks[k].ID, err)
		}
	})
	// OOM watches (a few ms each: cgroup files) are armed after the
	// daemon serves again, off the gap. An OOM kill in between is still
	// reported as the exit it causes.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, c := range watches {
			if s.ctx.Err() != nil {
				return
			}
			s.rewatchOOM(c)
		}
	}()
	var restored []string
	for k, t := range tasks {
		if errs[k] == nil {
			restored = append(restored, t.ID)
		}
	}
	return restored, errors.Join(errs...)
}

// parallel runs f(0..n-1) on up to 8 goroutines and returns when all
// returned.
func parallel(n int, f func(k int)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(n, 8); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				f(k)
			}
		}()
	}
	for k := 0; k < n; k++ {
		next <- k
	}
	close(next)
	wg.Wait()
}

// restore rebuilds one task; it returns the task when its init runs and
// needs an OOM watch.
func (s *Service) restore(ctx context.Context, t TaskFDs) (_ *process.Container, retErr error) {
	owned := true
	defer func() {
		if owned {
			t.Close()
		}
	}()
	rec, err := process.ReadRecord(s.cfg.StateDir, t.ID)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	if rec.ID != t.ID {
		return nil, fmt.Errorf("record names task %q: %w", rec.ID, errdefs.ErrInvalidArgument)
	}
	if live(rec.Status) && rec.Pid > 0 && !ourChild(rec.Pid) {
		// Not this process's child: adopted by the previous binary after
		// a crash, or handed back by the keeper after one (which held its
		// stdio: descriptor custody). Watched through a pidfd as Adopt
		// does; its stdio, when handed, restored before the watch starts.
		owned = false
		var (
			ioErr    error
			prepared bool
		)
		c, watched, err := s.adoptWith(rec, true, func(c *process.Container) {
			prepared = true
			_, ioErr = s.restoreIO(ctx, c, t)
		})
		if !prepared {
			t.Close() // refused, or ours already
		}
		if ioErr != nil {
			s.cfg.Log.Error("restore: stdio of an adopted task", "task", t.ID, "error", ioErr)
		}
		if err != nil || !watched {
			return nil, err
		}
		return c, nil
	}
	c, err := process.Restore(rec, s.rt, s.cfg.Log)
	if err != nil {
		return nil, err
	}
	c.Custody = s.cfg.Custody
	owned = false
	closers, err := s.restoreIO(ctx, c, t)
	defer func() {
		if retErr != nil {
			for _, io := range closers {
				io.Close()
			}
		}
	}()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("service is closed: %w", errdefs.ErrFailedPrecondition)
	}
	if s.containers[c.ID] != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("task exists already: %w", errdefs.ErrAlreadyExists)
	}
	s.containers[c.ID] = c
	watch := false
	if c.InitExitDeferred == nil && live(c.Init.Status.String()) && c.Init.Pid > 0 {
		s.byPid[c.Init.Pid] = c.Init
		watch = true
	}
	now := time.Now()
	for _, x := range c.Execs {
		if !live(x.Status.String()) || x.Pid <= 0 {
			continue
		}
		if ourChild(x.Pid) {
			s.byPid[x.Pid] = x
		} else {
			// Not ours (it was reaped elsewhere): its status is lost.
			s.handleExitLocked(x, process.Exit{Pid: x.Pid, Status: unknownExit, Timestamp: now})
		}
	}
	s.maybeFinishInitLocked(c)
	s.recordLocked(c)
	s.mu.Unlock()
	if watch {
		return c, nil
	}
	return nil, nil
}

// live reports whether a process in this recorded status has a pid that
// may still run (or wait, exited, as a zombie).
func live(status string) bool {
	st, err := process.ParseStatus(status)
	return err == nil && (st == process.Created || st == process.Running || st == process.Paused)
}

// ourChild reports whether pid is this process's child (a zombie too).
func ourChild(pid int) bool {
	ps := process.ProcStatus(pid)
	return ps.Exists && ps.PPid == os.Getpid()
}

// restoreIO rebuilds the stdio of c's processes from the descriptors in t
// (it owns them, also on error) and returns the IOs it made.
func (s *Service) restoreIO(ctx context.Context, c *process.Container, t TaskFDs) ([]*process.IO, error) {
	ioCfg := func(p *process.Process) (process.IOConfig, error) {
		st, err := process.ParseStdio(p.Stdio, s.cfg.LoggerDirs)
		if err != nil {
			return process.IOConfig{}, err
		}
		exec := ""
		if p != c.Init {
			exec = p.ID
		}
		return process.IOConfig{ID: c.ID, Namespace: c.Namespace, Stdio: st, Starter: s.starter, Log: s.cfg.Log,
			Exec: exec, Custody: s.cfg.Custody}, nil
	}
	var closers []*process.IO
	if fds := t.Init.List(); len(fds) > 0 {
		cfg, err := ioCfg(c.Init)
		if err != nil {
			t.Close()
			return closers, err
		}
		if s.cfg.Logging != nil {
			tap, err := s.cfg.Logging(ctx, c.ID, c.Namespace, c.Spec)
			if err != nil {
				t.Close()
				return closers, fmt.Errorf("logging: %w", err)
			}
			if tap != nil {
				cfg.Tap = tap
			}
		}
		pio, err := process.RestoreIO(ctx, cfg, t.Init)
		if err != nil {
			for _, x := range t.Execs {
				x.Close()
			}
			if cfg.Tap != nil {
				_ = cfg.Tap.Close()
			}
			return closers, err
		}
		c.Init.IO = pio
		closers = append(closers, pio)
	}
	for id, fds := range t.Execs {
		x := c.Execs[id]
		if x == nil {
			fds.Close()
			continue
		}
		cfg, err := ioCfg(x)
		if err == nil {
			x.IO, err = process.RestoreIO(ctx, cfg, fds)
		} else {
			fds.Close()
		}
		if err != nil {
			s.cfg.Log.Error("restore after upgrade: exec stdio", "task", c.ID, "exec", id, "error", err)
			continue
		}
		closers = append(closers, x.IO)
	}
	return closers, nil
}

// LogFile is process.LogFiler: the file the pipeline's first readable
// driver appends to (k8s-file, json-file), whose size the keeper's
// journal records before each write, to truncate a write a crash cut
// short. A pipeline with two file drivers has only the first one
// rewound. None in non-blocking mode: a write returns before the file
// has it, and the pipeline's writer appends older records meanwhile,
// which a truncation would take away.
func (w *tapWriter) LogFile() string {
	if w.t.p.Mode() != logging.Blocking {
		return ""
	}
	if src, ok := w.t.p.Source(); ok {
		return src.Path
	}
	return ""
}
