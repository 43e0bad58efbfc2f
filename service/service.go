// Package service implements containerd's task API (containerd.task.v2.Task)
// over the process domain: it owns the containers of one shim, routes the
// reaper's exits to their processes, publishes task events in order and
// keeps each task's record on disk.
//
// Exits. One reaper subscription, consumed by one goroutine, in reap
// order. An exit is matched to a process by pid under the service lock.
// Two races are closed there:
//   - a process may exit before its start returns (runc start of a short
//     command, runc exec --detach): while any create or exec start is in
//     flight, exits of pids nobody owns yet are kept, and the start looks
//     its new pid up in them; an init being started holds its exit in
//     Process.PendingExit. Either way the start event is queued first.
//   - init may die while execs run: its exit is held back
//     (Container.InitExitDeferred), the execs are killed, and init's exit
//     is recorded and published after the last exec's.
//
// Events. Every event is queued under the service lock, in the order the
// lock decided, and published by one goroutine (a slow containerd never
// holds the lock). An OOM kill is polled before init's exit is recorded,
// so /tasks/oom precedes the /tasks/exit it caused.
//
// Errors are classified with errdefs and returned as such; the ttrpc edge
// converts them to status codes once. A panic in a handler becomes an
// Internal error.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/reaper"
)

// Publisher is what the service needs to emit containerd events; topic is
// like "/tasks/exit", event a containerd api/events message.
type Publisher interface {
	Publish(ctx context.Context, topic string, event proto.Message) error
}

// Runtime is the OCI runtime the service drives; *process.Runc in the shim,
// a fake in unit tests.
type Runtime = process.Runtime

// Config is the service's wiring, built in main.
type Config struct {
	Namespace string    // containerd namespace (-namespace)
	StateDir  string    // shim-owned dir; one sub-dir per task with its record
	Publisher Publisher // may be nil (events are then dropped, logged)
	// Reaper is the process's only wait loop; the service subscribes to
	// its exits in New and starts binary loggers through it.
	Reaper      *reaper.Reaper
	Runtime     Runtime  // nil: runc rooted at RuntimeRoot
	RuntimeRoot string   // runc --root; default /run/conmon-v2/runc/<namespace>
	LoggerDirs  []string // allow-listed directories for binary:// loggers
	// MaxExecs bounds the exec processes a task may have at once (added
	// and not deleted yet); one more is refused with ResourceExhausted,
	// so a flood of Exec requests cannot exhaust the shim. 0: DefaultMaxExecs.
	MaxExecs int
	OnEmpty  func()       // called after the last task is deleted; may be nil
	Log      *slog.Logger // nil: slog.Default()
	// Logging returns a tap that receives a copy of a container's output
	// (the logging pipeline), or nil for none. nil: AnnotationLogging with
	// the built-in drivers and logging.DefaultConfig.
	Logging LogTapFunc
	// Custody, if not nil, holds duplicates of every process's stdio
	// descriptors outside this process (the group's keeper).
	Custody process.Custodian
}

// DefaultMaxExecs is Config.MaxExecs' default.
const DefaultMaxExecs = 1024

// exitSource is the reaper subscription as the service consumes it.
type exitSource interface {
	Recv(ctx context.Context) (reaper.Exit, error)
	Close()
}

// Service is the task service of one shim. Create it with New and stop it
// with Close.
type Service struct {
	cfg     Config
	rt      Runtime
	starter process.Starter
	ctx     context.Context // lives until Close
	cancel  context.CancelFunc
	exits   exitSource
	events  *eventQueue
	logs    *logReports    // the containers' log reports, for LogStats
	rec     *recordWriter  // writes the task records behind the requests
	wg      sync.WaitGroup // the exit loop, the record writer

	mu         sync.Mutex
	containers map[string]*process.Container
	reserved   map[string]bool          // ids being created
	deleting   map[string]bool          // ids being deleted
	killing    map[string]int           // ids with a Kill of init in flight
	byPid      map[int]*process.Process // live processes by pid
	starting   int                      // creates/exec starts in flight
	early      map[int]reaper.Exit      // exits of unknown pids while starting > 0
	oom        map[string]*process.OOMWatch
	oomArming  map[string]chan struct{} // OOM watches being armed after Create (armOOM); closed when done
	oomHeld    map[string]process.Exit  // init exits held until their task's OOM watch is armed (finishExitLocked)
	closed     bool
	frozen     bool        // a live upgrade is under way (Freeze)
	stopExits  func() bool // stops the exit loop; false if it was stopped already

	// killPid, procCgroupFn, watchNewOOMFn, watchOOMFn, watchOOMFromFn
	// and statsFn are process.KillPid, ProcCgroup, WatchNewOOM, WatchOOM,
	// WatchOOMFrom and Stats; unit tests replace them since their pids are
	// not real.
	killPid        func(pid int, sig uint32) error
	procCgroupFn   func(pid int) (string, error)
	watchNewOOMFn  func(procCgroup string, onOOM func(seen uint64)) (*process.OOMWatch, error)
	watchOOMFn     func(pid int, onOOM func(seen uint64)) (*process.OOMWatch, error)
	watchOOMFromFn func(pid int, seen uint64, onOOM func(seen uint64)) (*process.OOMWatch, error)
	statsFn        func(pid int) (*anypb.Any, error)
}

// New returns a running service. It subscribes to cfg.Reaper's exits
// before it returns, so no exit of a process it starts can be missed.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Reaper == nil {
		return nil, fmt.Errorf("service: a reaper is required: %w", errdefs.ErrInvalidArgument)
	}
	sub := cfg.Reaper.Subscribe()
	s, err := newService(ctx, cfg, sub, cfg.Reaper)
	if err != nil {
		sub.Close()
		return nil, err
	}
	return s, nil
}

func newService(ctx context.Context, cfg Config, exits exitSource, starter process.Starter) (*Service, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if err := process.ValidateID("namespace", cfg.Namespace); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("service: a state directory is required: %w", errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("state directory %q: %w", cfg.StateDir, err)
	}
	if cfg.RuntimeRoot == "" {
		cfg.RuntimeRoot = process.DefaultRuntimeRoot(cfg.Namespace)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxExecs <= 0 {
		cfg.MaxExecs = DefaultMaxExecs
	}
	if cfg.Logging == nil {
		// Logger programs and plugins are forked through the reaper, the
		// process's only wait loop, so their exits are not stolen from it.
		opts := builtin.Options{LoggerDirs: cfg.LoggerDirs}
		if cfg.Reaper != nil {
			opts.Runner = cfg.Reaper
		}
		cfg.Logging = AnnotationLogging(builtin.Registry(opts), logging.DefaultConfig(), cfg.StateDir)
	}
	logs := &logReports{}
	cfg.Logging = reportLogErrors(cfg.Logging, cfg.Log, logs) // logreport.go
	rt := cfg.Runtime
	if rt == nil {
		if err := os.MkdirAll(cfg.RuntimeRoot, 0o711); err != nil {
			return nil, fmt.Errorf("runtime root %q: %w", cfg.RuntimeRoot, err)
		}
		rt = process.NewRuncRuntime(cfg.RuntimeRoot)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Service{
		cfg:            cfg,
		rt:             rt,
		starter:        starter,
		ctx:            sctx,
		cancel:         cancel,
		exits:          exits,
		events:         newEventQueue(cfg.Publisher, cfg.Log),
		logs:           logs,
		rec:            newRecordWriter(cfg.StateDir, cfg.Log),
		containers:     make(map[string]*process.Container),
		reserved:       make(map[string]bool),
		deleting:       make(map[string]bool),
		killing:        make(map[string]int),
		byPid:          make(map[int]*process.Process),
		early:          make(map[int]reaper.Exit),
		oom:            make(map[string]*process.OOMWatch),
		oomArming:      make(map[string]chan struct{}),
		oomHeld:        make(map[string]process.Exit),
		killPid:        process.KillPid,
		procCgroupFn:   process.ProcCgroup,
		watchNewOOMFn:  process.WatchNewOOM,
		watchOOMFn:     process.WatchOOM,
		watchOOMFromFn: process.WatchOOMFrom,
		statsFn:        process.Stats,
	}
	logs.publish = s.events.push // before any tap exists: no task yet
	s.events.start(sctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.rec.run(sctx)
	}()
	s.startExitLoop()
	return s, nil
}

// Close stops the exit loop and the OOM watches, and gives queued events a
// few seconds to be published. Containers are left running.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.awaitOOMArms("")
	s.mu.Lock()
	watches := s.oom
	s.oom = make(map[string]*process.OOMWatch)
	s.mu.Unlock()
	for _, w := range watches {
		w.Stop()
	}
	s.events.close(5 * time.Second)
	s.cancel()
	s.exits.Close()
	s.wg.Wait()
	s.rec.flush() // what was queued after the writer stopped
	return nil
}

// Empty reports whether the service holds no task (and none is being
// created): the shim may exit.
func (s *Service) Empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.containers) == 0 && len(s.reserved) == 0
}

// exitLoop is the one consumer of the reaper subscription: exits are
// handled one at a time, in reap order. It stops with ctx (the service's,
// or a handover's stop: see Frozen.Commit).
func (s *Service) exitLoop(ctx context.Context) {
	defer s.wg.Done()
	for {
		e, err := s.exits.Recv(ctx)
		if err != nil {
			return
		}
		s.handleExit(e)
	}
}

// handleExit handles one exit; a bug in it is logged, never fatal to the
// shim (the other tasks keep their supervisor).
func (s *Service) handleExit(e reaper.Exit) {
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			s.cfg.Log.Error("panic handling an exit", "pid", e.Pid, "status", e.Status, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	s.onExitLocked(e)
}

func (s *Service) onExitLocked(e reaper.Exit) {
	p := s.byPid[e.Pid]
	if p == nil {
		// Not (yet) ours: a runtime command, a logger, or a process whose
		// start is still in flight. Keep it for the latter.
		if s.starting > 0 {
			s.early[e.Pid] = e
		}
		return
	}
	delete(s.byPid, e.Pid)
	if p.Starting {
		x := toExit(e)
		p.PendingExit = &x
		return
	}
	s.handleExitLocked(p, toExit(e))
}

func toExit(e reaper.Exit) process.Exit {
	return process.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Timestamp}
}

// beginStartLocked marks a create or exec start in flight: exits of pids
// not known yet are kept until endStartLocked.
func (s *Service) beginStartLocked() { s.starting++ }

// endStartLocked ends a start; it returns the exit already seen for pid,
// if any.
func (s *Service) endStartLocked(pid int) (process.Exit, bool) {
	e, ok := s.early[pid]
	if ok {
		delete(s.early, pid)
	}
	s.starting--
	if s.starting == 0 {
		clear(s.early)
	}
	return toExit(e), ok
}

// handleExitLocked records an exit. Init's exit is held back while execs
// of its container are alive (they are killed) so that it is published
// last.
func (s *Service) handleExitLocked(p *process.Process, e process.Exit) {
	c := s.containers[p.ContainerID]
	if c == nil {
		p.SetExited(e.Status, e.Timestamp)
		return
	}
	if p.Init {
		if c.SharesPIDNamespace() {
			s.killRestLocked(c)
		}
		if s.killing[c.ID] > 0 && !s.execsBusyLocked(c) {
			// A Kill of init is still waiting for the runtime: its answer
			// must reach the client before the exit does, or containerd
			// deletes the task and closes the task's connection under the
			// pending Kill ("ttrpc: closed"). Kill publishes the exit.
			c.InitExitDeferred = &e
			s.recordLocked(c)
			return
		}
		if s.execsBusyLocked(c) {
			c.InitExitDeferred = &e
			for _, x := range c.Execs {
				if x.Alive() {
					_ = s.killPid(x.Pid, 9)
				}
			}
			s.recordLocked(c)
			return
		}
		s.finishExitLocked(c, p, e)
		return
	}
	s.finishExitLocked(c, p, e)
	s.maybeFinishInitLocked(c)
}

// killRestLocked kills what is left of a container whose init exited and
// that has no PID namespace of its own (a pod's shared one, or the host's):
// the kernel does not do it, and a survivor (nginx's worker) holds the
// output pipes open, so the container's IO would never end (critest F1 in
// integration/critest/FINDINGS.md). The runtime call runs off the service
// lock, owned by the service's WaitGroup.
func (s *Service) killRestLocked(c *process.Container) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Kill(ctx, 9, true); err != nil && !errdefs.IsNotFound(err) {
			s.cfg.Log.Warn("killing the rest of a container after its init exited", "task", c.ID, "error", err)
		}
	}()
}

// maybeFinishInitLocked publishes a deferred init exit once no exec of c
// is alive or starting and no Kill of init is in flight.
func (s *Service) maybeFinishInitLocked(c *process.Container) {
	if c.InitExitDeferred != nil && !s.execsBusyLocked(c) && s.killing[c.ID] == 0 {
		e := *c.InitExitDeferred
		c.InitExitDeferred = nil
		s.finishExitLocked(c, c.Init, e)
	}
}

func (s *Service) execsBusyLocked(c *process.Container) bool {
	for _, x := range c.Execs {
		if x.Alive() || x.Starting {
			return true
		}
	}
	return false
}

func (s *Service) finishExitLocked(c *process.Container, p *process.Process, e process.Exit) {
	if p.Init {
		if s.oomArming[c.ID] != nil {
			// The watch may yet report an OOM kill of init from before it
			// was armed: armOOM publishes the exit once it is.
			s.oomHeld[c.ID] = e
			return
		}
		// An OOM kill is reported before the exit it caused.
		s.oom[c.ID].Poll()
	}
	p.SetExited(e.Status, e.Timestamp)
	s.publishLocked(topicExit, exitEvent(c, p))
	s.recordLocked(c)
}

// initGoneLocked reports whether c's init has exited (even if its exit is
// held back for its execs).
func initGoneLocked(c *process.Container) bool {
	return c.InitExitDeferred != nil || c.Init.Status == process.Stopped || c.Init.Status == process.Deleted
}

// recordLocked queues c's record for the record writer (records.go); a
// failure is logged, never fatal.
func (s *Service) recordLocked(c *process.Container) {
	data, err := process.MarshalRecord(c.Record())
	if err != nil {
		s.cfg.Log.Error("encoding state record", "task", c.ID, "error", err)
		return
	}
	s.rec.put(c.ID, data)
}

// recoverPanic turns a panic in a handler into an Internal error: no
// request may take the shim down.
func recoverPanic(method string, err *error) {
	if r := recover(); r != nil {
		slog.Error("panic in a task request", "method", method, "panic", r, "stack", string(debug.Stack()))
		*err = fmt.Errorf("%s: internal error: %v: %w", method, r, errdefs.ErrInternal)
	}
}

// ctxErr wraps the context error of a blocking call; errdefs' converters
// map context.Canceled and DeadlineExceeded themselves.
func ctxErr(err error) error {
	return fmt.Errorf("wait: %w", err)
}
