package client

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// idPattern is containerd's identifier rule, which the shim enforces too;
// checking it here gives the error before any process is started.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

// ValidateID checks a container or exec ID against containerd's identifier
// rule (letters, digits, and '.', '_', '-' between them; at most 76).
func ValidateID(id string) error {
	if id == "" || len(id) > 76 || !idPattern.MatchString(id) {
		return fmt.Errorf("invalid ID %q (letters, digits and . _ - between them, at most 76): %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Stdio names the fifos (or other URIs the shim accepts: file://,
// binary://) of a process's standard streams. Empty means none.
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// CreateOpts is a task to create.
type CreateOpts struct {
	ID     string
	Bundle string
	// Rootfs are mounts the shim mounts onto <bundle>/rootfs; empty when
	// the spec's root.path names a directory already.
	Rootfs []*types.Mount
	Stdio  Stdio
}

// Create creates (does not start) the task's init process and returns its
// pid.
func (s *Shim) Create(ctx context.Context, o CreateOpts) (uint32, error) {
	r, err := s.task.Create(ctx, &taskv2.CreateTaskRequest{
		ID:       o.ID,
		Bundle:   o.Bundle,
		Rootfs:   o.Rootfs,
		Terminal: o.Stdio.Terminal,
		Stdin:    o.Stdio.Stdin,
		Stdout:   o.Stdio.Stdout,
		Stderr:   o.Stdio.Stderr,
	})
	if err != nil {
		return 0, native("create", o.ID, err)
	}
	return r.GetPid(), nil
}

// Start starts the init process (execID "") or an exec, and returns its pid.
func (s *Shim) Start(ctx context.Context, id, execID string) (uint32, error) {
	r, err := s.task.Start(ctx, &taskv2.StartRequest{ID: id, ExecID: execID})
	if err != nil {
		return 0, native("start", procName(id, execID), err)
	}
	return r.GetPid(), nil
}

// Exit is how a process ended.
type Exit struct {
	Pid    uint32
	Status uint32 // exit code, or 128+signal
	At     time.Time
}

// Delete removes a stopped process (execID "" = the task itself).
func (s *Shim) Delete(ctx context.Context, id, execID string) (Exit, error) {
	r, err := s.task.Delete(ctx, &taskv2.DeleteRequest{ID: id, ExecID: execID})
	if err != nil {
		return Exit{}, native("delete", procName(id, execID), err)
	}
	return Exit{Pid: r.GetPid(), Status: r.GetExitStatus(), At: r.GetExitedAt().AsTime()}, nil
}

// Status is a process's state, as the words `conmonctl ps` prints.
type Status string

// The statuses of a process.
const (
	Created Status = "created"
	Running Status = "running"
	Paused  Status = "paused"
	Pausing Status = "pausing"
	Stopped Status = "stopped"
	Unknown Status = "unknown"
)

// StatusOf converts the task API's status.
func StatusOf(s tasktypes.Status) Status {
	switch s {
	case tasktypes.Status_CREATED:
		return Created
	case tasktypes.Status_RUNNING:
		return Running
	case tasktypes.Status_PAUSED:
		return Paused
	case tasktypes.Status_PAUSING:
		return Pausing
	case tasktypes.Status_STOPPED:
		return Stopped
	}
	return Unknown
}

// State is a process's state.
type State struct {
	ID         string
	ExecID     string
	Bundle     string
	Pid        uint32
	Status     Status
	Stdio      Stdio
	ExitStatus uint32
	ExitedAt   time.Time // zero while running
}

// State asks for a process's state.
func (s *Shim) State(ctx context.Context, id, execID string) (State, error) {
	r, err := s.task.State(ctx, &taskv2.StateRequest{ID: id, ExecID: execID})
	if err != nil {
		return State{}, native("state", procName(id, execID), err)
	}
	st := State{
		ID: id, ExecID: execID, Bundle: r.GetBundle(), Pid: r.GetPid(),
		Status:     StatusOf(r.GetStatus()),
		Stdio:      Stdio{Stdin: r.GetStdin(), Stdout: r.GetStdout(), Stderr: r.GetStderr(), Terminal: r.GetTerminal()},
		ExitStatus: r.GetExitStatus(),
	}
	if r.GetExitedAt() != nil && r.GetExitedAt().GetSeconds() > 0 {
		st.ExitedAt = r.GetExitedAt().AsTime()
	}
	return st, nil
}

// Pids lists the pids of every process in the task's container.
func (s *Shim) Pids(ctx context.Context, id string) ([]uint32, error) {
	r, err := s.task.Pids(ctx, &taskv2.PidsRequest{ID: id})
	if err != nil {
		return nil, native("pids", id, err)
	}
	out := make([]uint32, 0, len(r.GetProcesses()))
	for _, p := range r.GetProcesses() {
		out = append(out, p.GetPid())
	}
	return out, nil
}

// Pause freezes every process of the task.
func (s *Shim) Pause(ctx context.Context, id string) error {
	_, err := s.task.Pause(ctx, &taskv2.PauseRequest{ID: id})
	return native("pause", id, err)
}

// Resume thaws the task.
func (s *Shim) Resume(ctx context.Context, id string) error {
	_, err := s.task.Resume(ctx, &taskv2.ResumeRequest{ID: id})
	return native("resume", id, err)
}

// Checkpoint checkpoints the task into path (CRIU through the runtime).
func (s *Shim) Checkpoint(ctx context.Context, id, path string) error {
	_, err := s.task.Checkpoint(ctx, &taskv2.CheckpointTaskRequest{ID: id, Path: path})
	return native("checkpoint", id, err)
}

// Kill sends signal to a process; all sends it to every process of the
// task's container (execID must then be "").
func (s *Shim) Kill(ctx context.Context, id, execID string, signal uint32, all bool) error {
	_, err := s.task.Kill(ctx, &taskv2.KillRequest{ID: id, ExecID: execID, Signal: signal, All: all})
	return native("kill", procName(id, execID), err)
}

// Exec registers (does not start) a new process in the task's container.
func (s *Shim) Exec(ctx context.Context, id, execID string, p *specs.Process, stdio Stdio) error {
	if err := ValidateID(execID); err != nil {
		return err
	}
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("exec %s: encode process: %w", procName(id, execID), err)
	}
	_, err = s.task.Exec(ctx, &taskv2.ExecProcessRequest{
		ID: id, ExecID: execID, Terminal: stdio.Terminal,
		Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: data},
	})
	return native("exec", procName(id, execID), err)
}

// ResizePty sets the size of a process's terminal.
func (s *Shim) ResizePty(ctx context.Context, id, execID string, width, height uint32) error {
	_, err := s.task.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: id, ExecID: execID, Width: width, Height: height})
	return native("resize", procName(id, execID), err)
}

// CloseStdin closes a process's standard input: it reads EOF.
func (s *Shim) CloseStdin(ctx context.Context, id, execID string) error {
	_, err := s.task.CloseIO(ctx, &taskv2.CloseIORequest{ID: id, ExecID: execID, Stdin: true})
	return native("close stdin of", procName(id, execID), err)
}

// Update changes the task's resources and/or annotations.
func (s *Shim) Update(ctx context.Context, id string, res *specs.LinuxResources, annotations map[string]string) error {
	req := &taskv2.UpdateTaskRequest{ID: id, Annotations: annotations}
	if res != nil {
		data, err := json.Marshal(res)
		if err != nil {
			return fmt.Errorf("update %s: encode resources: %w", id, err)
		}
		req.Resources = &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: data}
	}
	_, err := s.task.Update(ctx, req)
	return native("update", id, err)
}

// Wait blocks until the process exits (or ctx ends) and returns its exit.
func (s *Shim) Wait(ctx context.Context, id, execID string) (Exit, error) {
	r, err := s.task.Wait(ctx, &taskv2.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		return Exit{}, native("wait", procName(id, execID), err)
	}
	return Exit{Status: r.GetExitStatus(), At: r.GetExitedAt().AsTime()}, nil
}

// RawStats returns the task's cgroup metrics as the shim sent them (an Any
// of io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics);
// Stats decodes them.
func (s *Shim) RawStats(ctx context.Context, id string) (*anypb.Any, error) {
	r, err := s.task.Stats(ctx, &taskv2.StatsRequest{ID: id})
	if err != nil {
		return nil, native("stats", id, err)
	}
	return r.GetStats(), nil
}

// ConnectInfo is the answer of the task API's Connect.
type ConnectInfo struct {
	ShimPid uint32
	TaskPid uint32
	Version string
}

// ConnectTask asks the shim for its pid and the task's pid.
func (s *Shim) ConnectTask(ctx context.Context, id string) (ConnectInfo, error) {
	r, err := s.task.Connect(ctx, &taskv2.ConnectRequest{ID: id})
	if err != nil {
		return ConnectInfo{}, native("connect", id, err)
	}
	return ConnectInfo{ShimPid: r.GetShimPid(), TaskPid: r.GetTaskPid(), Version: r.GetVersion()}, nil
}

// Shutdown asks the shim to exit; it does so only when it serves no task
// any more. The connection usually closes under the call; that is not an
// error.
func (s *Shim) Shutdown(ctx context.Context, id string, now bool) error {
	_, err := s.task.Shutdown(ctx, &taskv2.ShutdownRequest{ID: id, Now: now})
	err = native("shutdown", id, err)
	if errdefs.IsUnavailable(err) {
		return nil
	}
	return err
}

func procName(id, execID string) string {
	if execID == "" {
		return id
	}
	return id + "/" + execID
}
