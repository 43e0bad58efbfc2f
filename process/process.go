// Package process is the supervision domain: a Container with its init and
// exec processes, their state machine, the runtime (runc) calls, rootfs
// mounts, stdio, OOM watching and cgroup statistics.
//
// The types here hold no locks of their own: their owner (the task
// service) serialises access to a Container and its Processes with its own
// mutex, and calls the blocking runtime methods without holding it.
package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Process is a container's init or one of its execs. Its fields are
// guarded by the owner's lock.
type Process struct {
	ID          string // container ID for init, exec ID for execs
	ContainerID string
	Init        bool
	Stdio       Stdio
	Spec        *specs.Process // execs only

	Status     Status
	Pid        int
	ExitStatus int
	ExitedAt   time.Time
	CreatedAt  time.Time
	StartedAt  time.Time

	// Starting is set while the runtime starts the process: an exit seen
	// then is held in PendingExit so the start event goes out first.
	Starting    bool
	PendingExit *Exit

	IO *IO
	// StdinClosed records a CloseIO that came before the process had
	// stdio (an exec not started yet).
	StdinClosed bool
	done        chan struct{}
}

// Exit is a process's end as the reaper saw it.
type Exit struct {
	Pid       int
	Status    int
	Timestamp time.Time
}

func newProcess(containerID, id string, init bool, stdio Stdio) *Process {
	return &Process{
		ID:          id,
		ContainerID: containerID,
		Init:        init,
		Stdio:       stdio,
		Status:      Created,
		CreatedAt:   time.Now(),
		done:        make(chan struct{}),
	}
}

// Done is closed once the process's exit has been recorded.
func (p *Process) Done() <-chan struct{} { return p.done }

// Transition moves p along the state machine.
func (p *Process) Transition(ev Event) error {
	to, err := Next(p.Status, ev)
	if err != nil {
		return fmt.Errorf("process %q: %w", p.ID, err)
	}
	p.Status = to
	return nil
}

// SetExited records the exit and wakes every Wait. A process that never
// ran (deleted while created) gets 128+SIGKILL, as a killed one would.
func (p *Process) SetExited(status int, at time.Time) {
	if p.Status == Stopped || p.Status == Deleted {
		return
	}
	if err := p.Transition(EvExit); err != nil {
		p.Status = Stopped
	}
	p.ExitStatus = status
	p.ExitedAt = at
	close(p.done)
}

// Alive reports whether p has a pid and has not exited.
func (p *Process) Alive() bool {
	return p.Pid > 0 && (p.Status == Running || p.Status == Paused)
}

// Container is one task: its bundle, spec, init process and execs.
type Container struct {
	ID        string
	Namespace string
	Bundle    string
	Spec      *specs.Spec
	Init      *Process
	Execs     map[string]*Process

	// InitExitDeferred is set when init exited while execs were alive: its
	// exit is reported after theirs.
	InitExitDeferred *Exit

	// Custody, if not nil, holds duplicates of the processes'
	// descriptors (a keeper; custody.go).
	Custody Custodian

	rt            Runtime
	log           *slog.Logger
	rootfsMounted bool
}

// CreateConfig is a Create request, validated by Create.
type CreateConfig struct {
	ID         string
	Namespace  string
	Bundle     string
	Rootfs     []*types.Mount
	Stdio      Stdio
	Runtime    Runtime
	Starter    Starter  // for binary:// loggers
	LoggerDirs []string // allow-list for binary:// loggers
	// TapFor, if set, returns the logging tap for a container's spec, or
	// nil when the spec asks for none.
	TapFor       func(spec *specs.Spec) (Tap, error)
	NoPivot      bool
	NoNewKeyring bool
	// IOOwner, if set, owns the stdio pipes instead of the process user
	// (containerd.runc.v1.Options io_uid/io_gid).
	IOOwner *[2]int
	Log     *slog.Logger // nil: slog.Default()
	// Custody, if not nil, holds duplicates of the stdio descriptors.
	Custody Custodian
}

// ReadSpec reads bundle/config.json.
func ReadSpec(bundle string) (*specs.Spec, error) {
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading OCI spec: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parsing %s/config.json: %v: %w", bundle, err, errdefs.ErrInvalidArgument)
	}
	return &s, nil
}

// Create validates cfg, mounts the rootfs, opens stdio and runs the
// runtime's create. The init process is left Created with its pid known.
// On failure everything done is undone.
func Create(ctx context.Context, cfg CreateConfig) (_ *Container, retErr error) {
	if err := ValidateID("container id", cfg.ID); err != nil {
		return nil, err
	}
	if err := ValidateBundle(cfg.Bundle); err != nil {
		return nil, err
	}
	st, err := ParseStdio(cfg.Stdio, cfg.LoggerDirs)
	if err != nil {
		return nil, err
	}
	spec, err := ReadSpec(cfg.Bundle)
	if err != nil {
		return nil, err
	}
	c := &Container{
		ID:        cfg.ID,
		Namespace: cfg.Namespace,
		Bundle:    cfg.Bundle,
		Spec:      spec,
		Init:      newProcess(cfg.ID, cfg.ID, true, cfg.Stdio),
		Execs:     make(map[string]*Process),
		Custody:   cfg.Custody,
		rt:        cfg.Runtime,
		log:       cfg.Log,
	}
	defer func() {
		if retErr != nil {
			c.cleanup()
			removeEmptyCgroups(spec) // a runtime killed mid-create leaves them
		}
	}()
	if len(cfg.Rootfs) > 0 {
		target := filepath.Join(cfg.Bundle, "rootfs")
		if err := os.MkdirAll(target, 0o711); err != nil {
			return nil, err
		}
		if err := MountRootfs(cfg.Rootfs, target); err != nil {
			return nil, err
		}
		c.rootfsMounted = true
	}
	var tap Tap
	if cfg.TapFor != nil {
		if tap, err = cfg.TapFor(spec); err != nil {
			return nil, err
		}
	}
	uid, gid := processOwner(spec, spec.Process)
	if cfg.IOOwner != nil {
		uid, gid = cfg.IOOwner[0], cfg.IOOwner[1]
	}
	pio, err := NewIO(ctx, IOConfig{ID: cfg.ID, Namespace: cfg.Namespace, Stdio: st, Starter: cfg.Starter, Tap: tap, UID: uid, GID: gid, Log: cfg.Log, Custody: cfg.Custody})
	if err != nil {
		if tap != nil {
			_ = tap.Close()
		}
		return nil, err
	}
	c.Init.IO = pio
	pidFile := filepath.Join(cfg.Bundle, "init.pid")
	_ = os.Remove(pidFile)
	err = cfg.Runtime.Create(ctx, cfg.ID, cfg.Bundle, &runc.CreateOpts{
		IO:            pio.RuncIO(),
		PidFile:       pidFile,
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       cfg.NoPivot,
		NoNewKeyring:  cfg.NoNewKeyring,
	})
	if err != nil {
		_ = cfg.Runtime.Delete(context.WithoutCancel(ctx), cfg.ID, &runc.DeleteOpts{Force: true})
		return nil, fmt.Errorf("runtime create of %q: %w", cfg.ID, err)
	}
	if err := pio.Start(ctx); err != nil {
		_ = cfg.Runtime.Delete(context.WithoutCancel(ctx), cfg.ID, &runc.DeleteOpts{Force: true})
		return nil, err
	}
	pid, err := readPid(pidFile)
	if err != nil {
		_ = cfg.Runtime.Delete(context.WithoutCancel(ctx), cfg.ID, &runc.DeleteOpts{Force: true})
		return nil, fmt.Errorf("reading the pid of %q: %w", cfg.ID, err)
	}
	c.Init.Pid = pid
	return c, nil
}

// processOwner returns the host uid and gid that own the pipes of process
// p: its user, mapped through the spec's user namespace if it has one.
func processOwner(spec *specs.Spec, p *specs.Process) (int, int) {
	if p == nil {
		return 0, 0
	}
	uid, gid := p.User.UID, p.User.GID
	if spec != nil && spec.Linux != nil {
		uid = mapID(spec.Linux.UIDMappings, uid)
		gid = mapID(spec.Linux.GIDMappings, gid)
	}
	return int(uid), int(gid)
}

// mapID maps a container id to the host through mappings (identity when
// there are none or none covers it).
func mapID(mappings []specs.LinuxIDMapping, id uint32) uint32 {
	for _, m := range mappings {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return m.HostID + (id - m.ContainerID)
		}
	}
	return id
}

// cleanup releases what Create acquired.
func (c *Container) cleanup() {
	if c.Init.IO != nil {
		c.Init.IO.Close()
	}
	for _, e := range c.Execs {
		if e.IO != nil {
			e.IO.Close()
		}
	}
	if c.rootfsMounted {
		_ = UnmountAll(filepath.Join(c.Bundle, "rootfs"))
		c.rootfsMounted = false
	}
}

// Start runs the runtime's start for init.
func (c *Container) Start(ctx context.Context) error {
	if err := c.rt.Start(ctx, c.ID); err != nil {
		return fmt.Errorf("runtime start of %q: %w", c.ID, err)
	}
	return nil
}

// NewExec registers an exec process (not started). spec is the OCI
// process, stdio is validated here.
func (c *Container) NewExec(execID string, stdio Stdio, spec *specs.Process, loggerDirs []string) (*Process, error) {
	if err := ValidateID("exec id", execID); err != nil {
		return nil, err
	}
	if _, err := ParseStdio(stdio, loggerDirs); err != nil {
		return nil, err
	}
	if spec == nil || len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec %q: process spec has no args: %w", execID, errdefs.ErrInvalidArgument)
	}
	if spec.Terminal != stdio.Terminal {
		spec.Terminal = stdio.Terminal
	}
	p := newProcess(c.ID, execID, false, stdio)
	p.Spec = spec
	return p, nil
}

// StartExec opens the exec's stdio and runs the runtime's exec, detached.
// It returns the exec's pid and its IO, which the caller stores in p.IO
// under its lock. p's Stdio and Spec are only read.
func (c *Container) StartExec(ctx context.Context, p *Process, starter Starter, loggerDirs []string) (int, *IO, error) {
	st, err := ParseStdio(p.Stdio, loggerDirs)
	if err != nil {
		return 0, nil, err
	}
	uid, gid := processOwner(c.Spec, p.Spec)
	pio, err := NewIO(ctx, IOConfig{ID: c.ID, Namespace: c.Namespace, Stdio: st, Starter: starter, UID: uid, GID: gid, Log: c.log, Exec: p.ID, Custody: c.Custody})
	if err != nil {
		return 0, nil, err
	}
	pidFile := filepath.Join(c.Bundle, "exec-"+p.ID+".pid")
	_ = os.Remove(pidFile)
	defer os.Remove(pidFile)
	err = c.rt.Exec(ctx, c.ID, *p.Spec, &runc.ExecOpts{
		IO:            pio.RuncIO(),
		PidFile:       pidFile,
		ConsoleSocket: pio.ConsoleSocket(),
		Detach:        true,
		// No LogFile: the runtime keeps runc's log of the exec in memory
		// (Runc.Exec) and puts its error in err.
	})
	if err != nil {
		pio.Close()
		return 0, nil, fmt.Errorf("runtime exec of %q in %q: %w", p.ID, c.ID, err)
	}
	if err := pio.Start(ctx); err != nil {
		pio.Close()
		return 0, nil, err
	}
	pid, err := readPid(pidFile)
	if err != nil {
		pio.Close()
		return 0, nil, fmt.Errorf("reading the pid of exec %q: %w", p.ID, err)
	}
	return pid, pio, nil
}

// SharesPIDNamespace reports whether the container has no PID namespace
// of its own: its spec joins an existing one (a pod's, by path) or has
// none (the host's). Then init's exit does not end the container's other
// processes, and they keep its output pipes open.
func (c *Container) SharesPIDNamespace() bool {
	if c.Spec == nil || c.Spec.Linux == nil {
		return true
	}
	for _, ns := range c.Spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path != ""
		}
	}
	return true
}

// Kill signals the container's init (all: every process of the container).
func (c *Container) Kill(ctx context.Context, sig uint32, all bool) error {
	if err := c.rt.Kill(ctx, c.ID, int(sig), &runc.KillOpts{All: all}); err != nil {
		return killError(err)
	}
	return nil
}

// KillPid signals an exec process directly (runc kills only init).
func KillPid(pid int, sig uint32) error {
	if pid <= 0 {
		return fmt.Errorf("process has no pid: %w", errdefs.ErrFailedPrecondition)
	}
	if err := unix.Kill(pid, syscall.Signal(sig)); err != nil {
		return killError(err)
	}
	return nil
}

// killError classifies the error of a kill: a process that is already gone
// is NotFound, which containerd's clients tolerate.
func killError(err error) error {
	msg := err.Error()
	if errors.Is(err, unix.ESRCH) || strings.Contains(msg, "process already finished") ||
		strings.Contains(msg, "container not running") || strings.Contains(msg, "no such process") ||
		strings.Contains(msg, "does not exist") {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return fmt.Errorf("kill: %w", err)
}

// Destroy removes the container from the runtime, closes all stdio and
// unmounts the rootfs. It is called once init is stopped (or never ran).
func (c *Container) Destroy(ctx context.Context) error {
	var errs []error
	err := c.rt.Delete(ctx, c.ID, &runc.DeleteOpts{Force: true})
	if err != nil && !strings.Contains(err.Error(), "does not exist") && ctx.Err() == nil {
		// Once more: a runtime that died in the middle (killed, OOM)
		// leaves its state, and the task is gone from here after this.
		err = c.rt.Delete(ctx, c.ID, &runc.DeleteOpts{Force: true})
	}
	if err != nil && !strings.Contains(err.Error(), "does not exist") {
		errs = append(errs, fmt.Errorf("runtime delete of %q: %w", c.ID, err))
	}
	removeEmptyCgroups(c.Spec) // a runtime killed mid-delete leaves them
	c.cleanup()
	_ = os.Remove(filepath.Join(c.Bundle, "init.pid"))
	return errors.Join(errs...)
}

// Pause freezes the container.
func (c *Container) Pause(ctx context.Context) error { return c.rt.Pause(ctx, c.ID) }

// Resume thaws the container.
func (c *Container) Resume(ctx context.Context) error { return c.rt.Resume(ctx, c.ID) }

// Pids lists the pids of every process in the container.
func (c *Container) Pids(ctx context.Context) ([]int, error) { return c.rt.Ps(ctx, c.ID) }

// Update applies new resource limits.
func (c *Container) Update(ctx context.Context, r *specs.LinuxResources) error {
	if err := c.rt.Update(ctx, c.ID, r); err != nil {
		return fmt.Errorf("runtime update of %q: %w", c.ID, err)
	}
	return nil
}

// Checkpoint checkpoints the container into opts.ImagePath with CRIU.
func (c *Container) Checkpoint(ctx context.Context, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error {
	if !CriuInstalled() {
		return fmt.Errorf("checkpoint of %q: criu not installed: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if err := c.rt.Checkpoint(ctx, c.ID, opts, actions...); err != nil {
		return fmt.Errorf("runtime checkpoint of %q: %w", c.ID, err)
	}
	return nil
}
