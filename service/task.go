package service

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containers/conmon-v2/process"
)

var _ taskv2.TTRPCTaskService = (*Service)(nil)

// LogTapFunc returns the logging tap for a container from its spec (the
// io.containers.conmon-v2.log.* annotations), or nil when it asks for none.
type LogTapFunc func(ctx context.Context, id, namespace string, spec *specs.Spec) (process.Tap, error)

// lockTask locks s.mu and finds a container and one of its processes
// (init when execID is empty). On success it returns with s.mu held, for
// the caller to unlock; on error with s.mu released, and the error is
// NotFound naming the task (and the exec).
func (s *Service) lockTask(id, execID string) (*process.Container, *process.Process, error) {
	s.mu.Lock()
	c := s.containers[id]
	if c == nil {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
	}
	if execID == "" {
		return c, c.Init, nil
	}
	p := c.Execs[execID]
	if p == nil {
		s.mu.Unlock()
		return nil, nil, fmt.Errorf("exec %q of task %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

// Create creates the task's init process (not started) and publishes
// /tasks/create.
func (s *Service) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (_ *taskv2.CreateTaskResponse, err error) {
	defer recoverPanic("Create", &err)
	if err := process.ValidateID("container id", r.ID); err != nil {
		return nil, err
	}
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, fmt.Errorf("task %q: restore from a checkpoint: %w", r.ID, errdefs.ErrNotImplemented)
	}
	// containerd.runc.v1.Options (ctr and CRI send them for runc-like
	// runtimes): the per-container ones are honoured; binary_name, root and
	// systemd_cgroup are the shim's configuration here.
	var runcOpts options.Options
	if r.Options != nil && strings.HasSuffix(r.Options.TypeUrl, "containerd.runc.v1.Options") {
		if err := proto.Unmarshal(r.Options.Value, &runcOpts); err != nil {
			return nil, fmt.Errorf("task %q: runtime options: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("service is closed: %w", errdefs.ErrFailedPrecondition)
	}
	if s.containers[r.ID] != nil || s.reserved[r.ID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q: %w", r.ID, errdefs.ErrAlreadyExists)
	}
	s.reserved[r.ID] = true
	s.beginStartLocked()
	s.mu.Unlock()

	cfg := process.CreateConfig{
		ID:           r.ID,
		Namespace:    s.cfg.Namespace,
		Bundle:       r.Bundle,
		Rootfs:       r.Rootfs,
		Stdio:        process.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Runtime:      s.rt,
		Starter:      s.starter,
		LoggerDirs:   s.cfg.LoggerDirs,
		NoPivot:      runcOpts.NoPivotRoot,
		NoNewKeyring: runcOpts.NoNewKeyring,
		Log:          s.cfg.Log,
		Custody:      s.cfg.Custody,
	}
	if runcOpts.IoUid != 0 || runcOpts.IoGid != 0 {
		cfg.IOOwner = &[2]int{int(runcOpts.IoUid), int(runcOpts.IoGid)}
	}
	if s.cfg.Logging != nil {
		cfg.TapFor = func(spec *specs.Spec) (process.Tap, error) {
			return s.cfg.Logging(ctx, r.ID, s.cfg.Namespace, spec)
		}
	}
	c, cerr := process.Create(ctx, cfg)
	var cg string
	var cgErr error
	if cerr == nil {
		// Read while init surely lives: its OOM watch, armed after the
		// answer, must find its cgroup even if an OOM kill took init
		// (and the reaper its pid) before then.
		cg, cgErr = s.procCgroupFn(c.Init.Pid)
	}

	s.mu.Lock()
	delete(s.reserved, r.ID)
	pid := 0
	if c != nil {
		pid = c.Init.Pid
	}
	early, exited := s.endStartLocked(pid)
	if cerr != nil {
		s.mu.Unlock()
		s.logs.remove(r.ID)
		return nil, cerr
	}
	s.containers[r.ID] = c
	s.publishLocked(topicCreate, &eventsapi.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventsapi.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid:         uint32(pid),
	})
	if exited {
		s.handleExitLocked(c.Init, early)
	} else {
		s.byPid[pid] = c.Init
	}
	s.recordLocked(c)
	s.mu.Unlock()
	// A task containerd was told exists must be known to a restarted
	// daemon: the creation's record is on disk before the answer. Exec
	// transitions are written behind (records.go).
	s.rec.flush()

	// The watch is armed behind the answer: it costs 0.3-0.7 ms (a
	// mountinfo parse and the cgroup's event registration), and the
	// container's own process only runs after Start, which waits for it.
	s.armOOM(c, func(onOOM func(seen uint64)) (*process.OOMWatch, error) {
		if cgErr != nil {
			return nil, cgErr
		}
		return s.watchNewOOMFn(cg, onOOM)
	})
	return &taskv2.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// armOOM arms c's OOM watch (with arm) in a goroutine, off Create's
// request path. No OOM kill of the container is missed: init's Start
// waits for the watch (awaitOOMArms) before runc start runs the
// container's process, and a kill of runc init before the watch was armed
// is still counted by the cgroup, which the new watch reports
// (process.WatchNewOOM). An exit of init meanwhile is held
// (finishExitLocked) and published here, after that report. Delete, a
// live upgrade's Commit and Close wait for the arming too, so a watch
// never outlives its task or the service. The goroutine is the service's
// (s.wg).
func (s *Service) armOOM(c *process.Container, arm func(onOOM func(seen uint64)) (*process.OOMWatch, error)) {
	done := make(chan struct{})
	s.mu.Lock()
	if s.closed || s.oomArming[c.ID] != nil {
		s.mu.Unlock()
		return
	}
	s.oomArming[c.ID] = done
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(done)
		s.watchOOM(c, arm)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.oomArming[c.ID] != done {
			return
		}
		delete(s.oomArming, c.ID)
		if e, ok := s.oomHeld[c.ID]; ok {
			delete(s.oomHeld, c.ID)
			if s.containers[c.ID] == c {
				s.finishExitLocked(c, c.Init, e)
			}
		}
	}()
}

// awaitOOMArms returns once the OOM watch of task id, or with id "" of
// every task, is no longer being armed.
func (s *Service) awaitOOMArms(id string) {
	s.mu.Lock()
	var chs []chan struct{}
	if id != "" {
		if ch := s.oomArming[id]; ch != nil {
			chs = append(chs, ch)
		}
	} else {
		for _, ch := range s.oomArming {
			chs = append(chs, ch)
		}
	}
	s.mu.Unlock()
	for _, ch := range chs {
		<-ch
	}
}

// watchOOM starts the OOM watch of c with arm (WatchNewOOM, WatchOOM or
// WatchOOMFrom with its callback); a host without a memory cgroup only loses OOM
// events, so a failure is logged.
func (s *Service) watchOOM(c *process.Container, arm func(onOOM func(seen uint64)) (*process.OOMWatch, error)) {
	id := c.ID
	// The callback queues directly (no s.mu): the exit handler polls the
	// watch while it holds s.mu.
	w, err := arm(func(seen uint64) {
		s.events.push(topicOOM, &eventsapi.TaskOOM{ContainerID: id})
		s.rec.putOOM(id, seen) // for the task's next monitor: rewatchOOM
	})
	if err != nil {
		s.cfg.Log.Warn("no OOM events for task", "task", id, "error", err)
		return
	}
	s.mu.Lock()
	if s.containers[id] != c || s.closed {
		s.mu.Unlock()
		w.Stop()
		return
	}
	s.oom[id] = w
	s.mu.Unlock()
}

// rewatchOOM arms the OOM watch of a task taken over (a live upgrade, a
// re-adoption after a crash) from the count of kills its previous monitor
// reported (process.OOMCountFile): the kills counted since, while no
// watch ran, are reported now. Without a count (no kill reported, or a
// monitor of an older build) the watch reports from now on. After a crash
// a kill reported just before it may be reported again: the count is
// written behind the report.
func (s *Service) rewatchOOM(c *process.Container) {
	pid := c.Init.Pid
	if n, ok := process.ReadOOMCount(s.cfg.StateDir, c.ID); ok {
		s.watchOOM(c, func(onOOM func(uint64)) (*process.OOMWatch, error) { return s.watchOOMFromFn(pid, n, onOOM) })
		return
	}
	s.watchOOM(c, func(onOOM func(uint64)) (*process.OOMWatch, error) { return s.watchOOMFn(pid, onOOM) })
}

// Start starts init or an exec and publishes /tasks/start or
// /tasks/exec-started, always before that process's exit.
func (s *Service) Start(ctx context.Context, r *taskv2.StartRequest) (_ *taskv2.StartResponse, err error) {
	defer recoverPanic("Start", &err)
	c, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if p.Starting || p.Status != process.Created {
		s.mu.Unlock()
		return nil, fmt.Errorf("process %q of task %q is %s: cannot start: %w", p.ID, r.ID, p.Status, errdefs.ErrFailedPrecondition)
	}
	if !p.Init && initGoneLocked(c) {
		s.mu.Unlock()
		return nil, fmt.Errorf("exec %q: task %q has exited: %w", p.ID, r.ID, errdefs.ErrFailedPrecondition)
	}
	if s.deleting[r.ID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q is being deleted: %w", r.ID, errdefs.ErrFailedPrecondition)
	}
	p.Starting = true
	if !p.Init {
		s.beginStartLocked()
	}
	s.mu.Unlock()

	var pid int
	var serr error
	var pio *process.IO
	if p.Init {
		s.awaitOOMArms(c.ID) // armed before the container's process runs
		serr = c.Start(ctx)
		pid = p.Pid
	} else {
		pid, pio, serr = c.StartExec(ctx, p, s.starter, s.cfg.LoggerDirs)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	p.Starting = false
	if pio != nil {
		p.IO = pio
		if p.StdinClosed {
			go func() {
				if err := pio.CloseStdin(); err != nil {
					s.cfg.Log.Warn("closing stdin of a new exec", "task", c.ID, "exec", p.ID, "error", err)
				}
			}()
		}
	}
	var early process.Exit
	exited := false
	if !p.Init {
		early, exited = s.endStartLocked(pid)
	}
	if serr != nil {
		if p.PendingExit != nil { // init died while runc start failed
			e := *p.PendingExit
			p.PendingExit = nil
			s.handleExitLocked(p, e)
		}
		s.maybeFinishInitLocked(c)
		return nil, serr
	}
	if err := p.Transition(process.EvStart); err != nil {
		return nil, err
	}
	p.StartedAt = time.Now()
	if p.Init {
		s.publishLocked(topicStart, &eventsapi.TaskStart{ContainerID: c.ID, Pid: uint32(pid)})
		if p.PendingExit != nil {
			early, exited = *p.PendingExit, true
			p.PendingExit = nil
		}
	} else {
		p.Pid = pid
		s.publishLocked(topicExecStarted, &eventsapi.TaskExecStarted{ContainerID: c.ID, ExecID: p.ID, Pid: uint32(pid)})
	}
	switch {
	case exited:
		// A short exec (ExecSync's usual case) is gone before its start
		// returns: handleExitLocked records the started and exited
		// process at once, one record instead of two.
		s.handleExitLocked(p, early)
	default:
		s.byPid[pid] = p
		if !p.Init && initGoneLocked(c) {
			// Init died while this exec was starting: it goes too, and
			// init's exit waits for it.
			_ = s.killPid(pid, 9)
		}
		s.recordLocked(c)
	}
	return &taskv2.StartResponse{Pid: uint32(pid)}, nil
}

// Delete deletes a stopped (or never started) process. For init it removes
// the container from the runtime, unmounts its rootfs, publishes
// /tasks/delete and forgets the task.
func (s *Service) Delete(ctx context.Context, r *taskv2.DeleteRequest) (_ *taskv2.DeleteResponse, err error) {
	defer recoverPanic("Delete", &err)
	if r.ExecID == "" {
		s.awaitOOMArms(r.ID) // its watch is stopped below
	}
	c, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if s.deleting[r.ID] {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q is being deleted: %w", r.ID, errdefs.ErrNotFound)
	}
	busy := p.Starting || p.Status == process.Running || p.Status == process.Paused
	if p.Init && c.InitExitDeferred != nil {
		busy = true
	}
	if busy {
		s.mu.Unlock()
		return nil, fmt.Errorf("process %q of task %q is %s: cannot delete: %w", p.ID, r.ID, p.Status, errdefs.ErrFailedPrecondition)
	}
	if !p.Init {
		delete(c.Execs, p.ID)
		if p.Status == process.Created {
			p.SetExited(137, time.Now())
		}
		_ = p.Transition(process.EvDelete)
		s.recordLocked(c)
		s.mu.Unlock()
		if p.IO != nil {
			p.IO.Close()
		}
		return deleteResponse(p), nil
	}
	s.deleting[r.ID] = true
	delete(s.byPid, p.Pid)
	w := s.oom[r.ID]
	delete(s.oom, r.ID)
	s.mu.Unlock()

	w.Stop()
	derr := c.Destroy(ctx)

	s.mu.Lock()
	delete(s.deleting, r.ID)
	delete(s.containers, r.ID)
	s.logs.remove(r.ID)
	if p.Status == process.Created {
		// Never started: runc delete killed its init.
		p.SetExited(137, time.Now())
	}
	_ = p.Transition(process.EvDelete)
	for _, x := range c.Execs {
		if x.Status == process.Created {
			x.SetExited(137, time.Now())
		}
	}
	s.publishLocked(topicDelete, &eventsapi.TaskDelete{
		ContainerID: c.ID,
		Pid:         uint32(p.Pid),
		ExitStatus:  uint32(p.ExitStatus),
		ExitedAt:    ts(p.ExitedAt),
		ID:          c.ID,
	})
	s.rec.put(c.ID, nil) // after the writes queued before: the record goes
	empty := len(s.containers) == 0 && len(s.reserved) == 0
	s.mu.Unlock()
	// Likewise a deleted task's record is gone before the answer, so that a
	// restarted daemon never adopts a task containerd has forgotten.
	s.rec.flush()
	if derr != nil {
		s.cfg.Log.Error("delete", "task", c.ID, "error", derr)
	}
	if empty && s.cfg.OnEmpty != nil {
		s.cfg.OnEmpty()
	}
	return deleteResponse(p), nil
}

func deleteResponse(p *process.Process) *taskv2.DeleteResponse {
	return &taskv2.DeleteResponse{Pid: uint32(p.Pid), ExitStatus: uint32(p.ExitStatus), ExitedAt: ts(p.ExitedAt)}
}

// State reports a process; its id is the process's own id (the exec id
// for execs).
func (s *Service) State(ctx context.Context, r *taskv2.StateRequest) (_ *taskv2.StateResponse, err error) {
	defer recoverPanic("State", &err)
	c, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return &taskv2.StateResponse{
		ID:         p.ID,
		Bundle:     c.Bundle,
		Pid:        uint32(p.Pid),
		Status:     p.Status.Proto(),
		Stdin:      p.Stdio.Stdin,
		Stdout:     p.Stdio.Stdout,
		Stderr:     p.Stdio.Stderr,
		Terminal:   p.Stdio.Terminal,
		ExitStatus: uint32(p.ExitStatus),
		ExitedAt:   ts(p.ExitedAt),
		ExecID:     r.ExecID,
	}, nil
}

// Pids lists the container's processes; exec processes carry their exec
// id in containerd.runc.v1.ProcessDetails.
func (s *Service) Pids(ctx context.Context, r *taskv2.PidsRequest) (_ *taskv2.PidsResponse, err error) {
	defer recoverPanic("Pids", &err)
	c, _, err := s.lockTask(r.ID, "")
	if err != nil {
		return nil, err
	}
	execByPid := make(map[int]string)
	for id, x := range c.Execs {
		if x.Pid > 0 {
			execByPid[x.Pid] = id
		}
	}
	s.mu.Unlock()
	pids, err := c.Pids(ctx)
	if err != nil {
		return nil, fmt.Errorf("pids of %q: %w", r.ID, err)
	}
	out := &taskv2.PidsResponse{}
	for _, pid := range pids {
		pi := &task.ProcessInfo{Pid: uint32(pid)}
		if id, ok := execByPid[pid]; ok {
			a, err := typeurl.MarshalAnyToProto(&options.ProcessDetails{ExecID: id})
			if err != nil {
				return nil, err
			}
			pi.Info = a
		}
		out.Processes = append(out.Processes, pi)
	}
	return out, nil
}

// Pause freezes a running task and publishes /tasks/paused.
func (s *Service) Pause(ctx context.Context, r *taskv2.PauseRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Pause", &err)
	return s.freeze(ctx, r.ID, process.EvPause)
}

// Resume thaws a paused task and publishes /tasks/resumed.
func (s *Service) Resume(ctx context.Context, r *taskv2.ResumeRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Resume", &err)
	return s.freeze(ctx, r.ID, process.EvResume)
}

func (s *Service) freeze(ctx context.Context, id string, ev process.Event) (*emptypb.Empty, error) {
	c, p, err := s.lockTask(id, "")
	if err != nil {
		return nil, err
	}
	if _, err := process.Next(p.Status, ev); err != nil || c.InitExitDeferred != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q is %s: cannot %s: %w", id, p.Status, ev, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if ev == process.EvPause {
		err = c.Pause(ctx)
	} else {
		err = c.Resume(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("%s of task %q: %w", ev, id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.Transition(ev) == nil {
		if ev == process.EvPause {
			s.publishLocked(topicPaused, &eventsapi.TaskPaused{ContainerID: id})
		} else {
			s.publishLocked(topicResumed, &eventsapi.TaskResumed{ContainerID: id})
		}
		s.recordLocked(c)
	}
	return &emptypb.Empty{}, nil
}

// Checkpoint checkpoints the task with CRIU (FailedPrecondition when criu
// is not installed).
func (s *Service) Checkpoint(ctx context.Context, r *taskv2.CheckpointTaskRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Checkpoint", &err)
	c, p, err := s.lockTask(r.ID, "")
	if err != nil {
		return nil, err
	}
	if p.Status != process.Running && p.Status != process.Paused {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q is %s: cannot checkpoint: %w", r.ID, p.Status, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if r.Path == "" {
		return nil, fmt.Errorf("checkpoint of %q: empty image path: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	opts := &runc.CheckpointOpts{ImagePath: r.Path}
	var actions []runc.CheckpointAction
	if r.Options != nil {
		var o options.CheckpointOptions
		if err := proto.Unmarshal(r.Options.Value, &o); err != nil {
			return nil, fmt.Errorf("checkpoint options: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		opts.AllowOpenTCP = o.OpenTcp
		opts.AllowExternalUnixSockets = o.ExternalUnixSockets
		opts.AllowTerminal = o.Terminal
		opts.FileLocks = o.FileLocks
		opts.EmptyNamespaces = o.EmptyNamespaces
		opts.WorkDir = o.WorkPath
		if o.ImagePath != "" {
			opts.ImagePath = o.ImagePath
		}
		if !o.Exit {
			actions = append(actions, runc.LeaveRunning)
		}
	} else {
		actions = append(actions, runc.LeaveRunning)
	}
	if err := c.Checkpoint(ctx, opts, actions...); err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.publishLocked(topicCheckpointed, &eventsapi.TaskCheckpointed{ContainerID: r.ID, Checkpoint: r.Path})
	s.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// Kill signals init (all: every process of the container) or an exec.
// A process that already exited is NotFound "process already finished".
func (s *Service) Kill(ctx context.Context, r *taskv2.KillRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Kill", &err)
	c, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	// Kill with All on an exited init still signals what is left in the
	// container's cgroup (runc kill --all): the processes of a container
	// without a PID namespace of its own outlive init and hold its stdio
	// open, and containerd's Delete (WithProcessKill) relies on this kill
	// before it waits for the IO (critest, integration/critest/FINDINGS.md).
	killRest := p.Init && r.All && p.Status == process.Stopped
	if killRest && !c.SharesPIDNamespace() {
		// Nothing is left to kill: when the init of a PID namespace dies
		// the kernel kills every other process of the namespace and
		// reports init's exit only once they are all reaped. The runtime
		// call (runc kill --all, ~10 ms) would signal an empty cgroup;
		// containerd sends this Kill before every Delete.
		s.mu.Unlock()
		return &emptypb.Empty{}, nil
	}
	if !killRest && (p.Status == process.Stopped || p.Status == process.Deleted || (p.Init && c.InitExitDeferred != nil && !r.All)) {
		s.mu.Unlock()
		return nil, fmt.Errorf("process %q of task %q: process already finished: %w", p.ID, r.ID, errdefs.ErrNotFound)
	}
	if !p.Init && p.Pid == 0 {
		s.mu.Unlock()
		return nil, fmt.Errorf("exec %q of task %q is not started: %w", p.ID, r.ID, errdefs.ErrFailedPrecondition)
	}
	pid := p.Pid
	if p.Init {
		s.killing[c.ID]++
	}
	s.mu.Unlock()
	if p.Init {
		err = c.Kill(ctx, r.Signal, r.All)
		s.mu.Lock()
		if s.killing[c.ID]--; s.killing[c.ID] <= 0 {
			delete(s.killing, c.ID)
		}
		s.maybeFinishInitLocked(c)
		s.mu.Unlock()
	} else {
		err = s.killPid(pid, r.Signal)
	}
	if err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Exec registers an exec process (not started) and publishes
// /tasks/exec-added. It fails with FailedPrecondition once init exited.
func (s *Service) Exec(ctx context.Context, r *taskv2.ExecProcessRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Exec", &err)
	if err := process.ValidateID("exec id", r.ExecID); err != nil {
		return nil, err
	}
	if r.Spec == nil || len(r.Spec.Value) == 0 {
		return nil, fmt.Errorf("exec %q: no process spec: %w", r.ExecID, errdefs.ErrInvalidArgument)
	}
	if u := r.Spec.TypeUrl; u != "" && !strings.HasSuffix(u, "opencontainers/runtime-spec/1/Process") {
		return nil, fmt.Errorf("exec %q: process spec of type %q, want types.containerd.io/opencontainers/runtime-spec/1/Process: %w", r.ExecID, u, errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(r.Spec.Value, &spec); err != nil {
		return nil, fmt.Errorf("exec %q: process spec: %v: %w", r.ExecID, err, errdefs.ErrInvalidArgument)
	}
	c, _, err := s.lockTask(r.ID, "")
	if err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if initGoneLocked(c) || s.deleting[r.ID] {
		return nil, fmt.Errorf("exec %q: task %q is not running: %w", r.ExecID, r.ID, errdefs.ErrFailedPrecondition)
	}
	if c.Execs[r.ExecID] != nil {
		return nil, fmt.Errorf("exec %q of task %q: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists)
	}
	if len(c.Execs) >= s.cfg.MaxExecs {
		return nil, fmt.Errorf("exec %q: task %q already has %d exec processes (the limit; delete finished ones): %w", r.ExecID, r.ID, len(c.Execs), errdefs.ErrResourceExhausted)
	}
	p, err := c.NewExec(r.ExecID, process.Stdio{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}, &spec, s.cfg.LoggerDirs)
	if err != nil {
		return nil, err
	}
	c.Execs[r.ExecID] = p
	s.publishLocked(topicExecAdded, &eventsapi.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	s.recordLocked(c)
	return &emptypb.Empty{}, nil
}

// ResizePty sets the size of a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskv2.ResizePtyRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("ResizePty", &err)
	_, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pio := p.IO
	s.mu.Unlock()
	if pio == nil {
		return nil, fmt.Errorf("process %q of task %q has no stdio yet: %w", p.ID, r.ID, errdefs.ErrFailedPrecondition)
	}
	if err := pio.Resize(r.Width, r.Height); err != nil {
		return nil, fmt.Errorf("resizing the pty of %q: %w", p.ID, err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskv2.CloseIORequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("CloseIO", &err)
	_, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	pio := p.IO
	if r.Stdin && pio == nil {
		// An exec not started yet (a client whose stdin ended early):
		// its stdin is closed as soon as it has one.
		p.StdinClosed = true
	}
	s.mu.Unlock()
	if r.Stdin && pio != nil {
		if err := pio.CloseStdin(); err != nil {
			return nil, fmt.Errorf("closing stdin of %q: %w", p.ID, err)
		}
	}
	return &emptypb.Empty{}, nil
}

// Update applies new resources (an OCI LinuxResources JSON) to the task.
func (s *Service) Update(ctx context.Context, r *taskv2.UpdateTaskRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Update", &err)
	if r.Resources == nil || len(r.Resources.Value) == 0 {
		return nil, fmt.Errorf("update of %q: no resources: %w", r.ID, errdefs.ErrInvalidArgument)
	}
	if u := r.Resources.TypeUrl; u != "" && !strings.HasSuffix(u, "opencontainers/runtime-spec/1/LinuxResources") {
		return nil, fmt.Errorf("update of %q: resources of type %q, want types.containerd.io/opencontainers/runtime-spec/1/LinuxResources: %w", r.ID, u, errdefs.ErrInvalidArgument)
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources.Value, &res); err != nil {
		return nil, fmt.Errorf("update of %q: resources: %v: %w", r.ID, err, errdefs.ErrInvalidArgument)
	}
	c, p, err := s.lockTask(r.ID, "")
	if err != nil {
		return nil, err
	}
	if p.Status == process.Stopped || p.Status == process.Deleted {
		s.mu.Unlock()
		return nil, fmt.Errorf("task %q is %s: cannot update: %w", r.ID, p.Status, errdefs.ErrFailedPrecondition)
	}
	s.mu.Unlock()
	if err := c.Update(ctx, &res); err != nil {
		return nil, err
	}
	return &emptypb.Empty{}, nil
}

// Wait blocks until the process exits (also before it is started) and
// returns its exit status and time.
func (s *Service) Wait(ctx context.Context, r *taskv2.WaitRequest) (_ *taskv2.WaitResponse, err error) {
	defer recoverPanic("Wait", &err)
	_, p, err := s.lockTask(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	s.mu.Unlock()
	select {
	case <-p.Done():
	case <-ctx.Done():
		return nil, ctxErr(ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return &taskv2.WaitResponse{ExitStatus: uint32(p.ExitStatus), ExitedAt: ts(p.ExitedAt)}, nil
}

// Stats returns the task's cgroup metrics.
func (s *Service) Stats(ctx context.Context, r *taskv2.StatsRequest) (_ *taskv2.StatsResponse, err error) {
	defer recoverPanic("Stats", &err)
	_, p, err := s.lockTask(r.ID, "")
	if err != nil {
		return nil, err
	}
	pid := 0
	if p.Status != process.Stopped && p.Status != process.Deleted {
		pid = p.Pid
	}
	s.mu.Unlock()
	a, err := s.statsFn(pid)
	if err != nil {
		return nil, fmt.Errorf("stats of %q: %w", r.ID, err)
	}
	return &taskv2.StatsResponse{Stats: a}, nil
}

// Connect returns the shim's pid and the task's pid (0 for an unknown
// task, without error).
func (s *Service) Connect(ctx context.Context, r *taskv2.ConnectRequest) (_ *taskv2.ConnectResponse, err error) {
	defer recoverPanic("Connect", &err)
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &taskv2.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if c := s.containers[r.ID]; c != nil {
		resp.TaskPid = uint32(c.Init.Pid)
	}
	return resp, nil
}

// Shutdown is a no-op: the shim exits through OnEmpty once its last task
// is deleted, and a shim that still serves tasks must not exit. The shim
// layer may check Empty to act on it.
func (s *Service) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (_ *emptypb.Empty, err error) {
	defer recoverPanic("Shutdown", &err)
	return &emptypb.Empty{}, nil
}

// TaskInfo describes one task for conmonctl's own API.
type TaskInfo struct {
	ID          string
	Namespace   string
	Bundle      string
	Pid         int
	Status      string
	ExitStatus  int
	ExitedAt    time.Time
	CreatedAt   time.Time
	StartedAt   time.Time
	Annotations map[string]string
	ExecIDs     []string
}

// List returns every task the service holds.
func (s *Service) List(ctx context.Context) []TaskInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TaskInfo, 0, len(s.containers))
	for _, c := range s.containers {
		ti := TaskInfo{
			ID:         c.ID,
			Namespace:  c.Namespace,
			Bundle:     c.Bundle,
			Pid:        c.Init.Pid,
			Status:     c.Init.Status.String(),
			ExitStatus: c.Init.ExitStatus,
			ExitedAt:   c.Init.ExitedAt,
			CreatedAt:  c.Init.CreatedAt,
			StartedAt:  c.Init.StartedAt,
		}
		if c.Spec != nil && len(c.Spec.Annotations) > 0 {
			ti.Annotations = make(map[string]string, len(c.Spec.Annotations))
			for k, v := range c.Spec.Annotations {
				ti.Annotations[k] = v
			}
		}
		for id := range c.Execs {
			ti.ExecIDs = append(ti.ExecIDs, id)
		}
		out = append(out, ti)
	}
	return out
}
