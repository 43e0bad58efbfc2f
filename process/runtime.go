package process

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Runtime is the part of an OCI runtime the supervisor needs. *runc.Runc
// implements it as is; unit tests use a fake. Create and Exec are expected
// to write the new process's pid into opts.PidFile before they return.
type Runtime interface {
	Create(ctx context.Context, id, bundle string, opts *runc.CreateOpts) error
	Start(ctx context.Context, id string) error
	Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error
	Kill(ctx context.Context, id string, sig int, opts *runc.KillOpts) error
	Delete(ctx context.Context, id string, opts *runc.DeleteOpts) error
	Pause(ctx context.Context, id string) error
	Resume(ctx context.Context, id string) error
	Ps(ctx context.Context, id string) ([]int, error)
	Update(ctx context.Context, id string, resources *specs.LinuxResources) error
	Checkpoint(ctx context.Context, id string, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error
}

var _ Runtime = (*runc.Runc)(nil)

// NewRunc returns the runc runtime rooted at root (runc --root). The
// caller sets runc.Monitor to its reaper before any call (in main).
func NewRunc(root string) *runc.Runc {
	return &runc.Runc{
		Command:      "runc",
		Root:         root,
		Log:          filepath.Join(root, "runc.log"),
		LogFormat:    runc.JSON,
		PdeathSignal: 0,
		Setpgid:      true,
	}
}

// DefaultRuntimeRoot is runc's state root for a containerd namespace.
func DefaultRuntimeRoot(namespace string) string {
	return filepath.Join("/run/conmon-v2/runc", namespace)
}

// readPid reads a pid file written by the runtime.
func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// CriuInstalled reports whether runc can checkpoint here.
func CriuInstalled() bool {
	_, err := exec.LookPath("criu")
	return err == nil
}

// Runc adapts *runc.Runc: errors of create and exec carry runc's own last
// error message from its JSON log (go-runc only reports the exit status
// when the command's stdio belongs to the container).
type Runc struct {
	*runc.Runc
}

// NewRuncRuntime returns the Runc adapter rooted at root.
func NewRuncRuntime(root string) *Runc {
	return &Runc{Runc: NewRunc(root)}
}

// Create runs runc create. runc's root (which holds its log) is created
// first: runc fails without a word when it cannot open its log.
func (r *Runc) Create(ctx context.Context, id, bundle string, opts *runc.CreateOpts) error {
	if r.Root != "" {
		if err := os.MkdirAll(r.Root, 0o711); err != nil {
			return fmt.Errorf("runc root %q: %w", r.Root, err)
		}
	}
	return withRuncLog(r.Runc.Create(ctx, id, bundle, opts), r.Log)
}

// Exec runs runc exec; opts.LogFile, when set, receives runc's log.
func (r *Runc) Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error {
	logFile := r.Log
	if opts != nil && opts.LogFile != "" {
		logFile = opts.LogFile
	}
	return withRuncLog(r.Runc.Exec(ctx, id, spec, opts), logFile)
}

func withRuncLog(err error, logFile string) error {
	if err == nil || logFile == "" {
		return err
	}
	if msg := lastRuncError(logFile); msg != "" {
		return fmt.Errorf("%w: %s", err, msg)
	}
	return err
}

// lastRuncError returns the message of the last error-level line of a
// runc JSON log, or "".
func lastRuncError(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var l struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal([]byte(lines[i]), &l) == nil && l.Level == "error" {
			return l.Msg
		}
	}
	return ""
}
