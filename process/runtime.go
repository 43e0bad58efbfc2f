package process

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

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

// Exec runs runc exec. The process spec reaches runc through a memfd
// (--process /proc/self/fd/3), and runc's log, unless opts.LogFile names
// a file, goes to another (--log /proc/self/fd/4), read back for the
// error message when runc fails. go-runc would write the spec to a file
// in $XDG_RUNTIME_DIR or /tmp, and the caller named a log file per exec:
// two files created and unlinked on every exec, which on a disk (ext4)
// cost about as much as a third of runc exec's own time above the floor
// (bench/README.md, "Exec"). runc's init marks every descriptor above
// its own as close-on-exec, so neither memfd reaches the container.
func (r *Runc) Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error {
	if opts == nil {
		opts = &runc.ExecOpts{}
	}
	if opts.Started != nil {
		defer close(opts.Started)
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encoding the exec's process spec: %w", err)
	}
	specFile, err := memfdWith("runc-process", data)
	if err != nil {
		return err
	}
	defer specFile.Close()
	logArg := opts.LogFile
	var logFile *os.File
	if logArg == "" {
		if logFile, err = memfdWith("runc-log", nil); err != nil {
			return err
		}
		defer logFile.Close()
		logArg = "/proc/self/fd/4"
	}
	args := r.globalArgs(logArg)
	args = append(args, "exec", "--process", "/proc/self/fd/3")
	if opts.ConsoleSocket != nil {
		args = append(args, "--console-socket", opts.ConsoleSocket.Path())
	}
	if opts.PidfdSocket != nil {
		args = append(args, "--pidfd-socket", opts.PidfdSocket.Path())
	}
	if opts.Detach {
		args = append(args, "--detach")
	}
	if opts.PidFile != "" {
		abs, err := filepath.Abs(opts.PidFile)
		if err != nil {
			return fmt.Errorf("exec pid file %q: %w", opts.PidFile, err)
		}
		args = append(args, "--pid-file", abs)
	}
	args = append(args, opts.ExtraArgs...)
	args = append(args, id)
	cmd := r.cmd(ctx, args)
	cmd.ExtraFiles = []*os.File{specFile}
	if logFile != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, logFile)
	}
	var out bytes.Buffer
	if opts.IO != nil {
		opts.IO.Set(cmd)
	}
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = &out, &out // runc's own words on failure
	}
	err = r.run(cmd, opts)
	if err == nil {
		return nil
	}
	if out.Len() > 0 {
		err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(out.Bytes()))
	}
	if logFile == nil {
		return withRuncLog(err, opts.LogFile)
	}
	if msg := lastRuncErrorIn(logFile); msg != "" {
		return fmt.Errorf("%w: %s", err, msg)
	}
	return err
}

// globalArgs are runc's options before the command, as go-runc gives
// them, with log as --log.
func (r *Runc) globalArgs(log string) []string {
	var out []string
	if r.Root != "" {
		out = append(out, "--root", r.Root)
	}
	if r.Debug {
		out = append(out, "--debug")
	}
	if log != "" {
		out = append(out, "--log", log)
	}
	if r.LogFormat != "" {
		out = append(out, "--log-format", string(r.LogFormat))
	}
	if r.SystemdCgroup {
		out = append(out, "--systemd-cgroup")
	}
	if r.Rootless != nil {
		out = append(out, "--rootless="+strconv.FormatBool(*r.Rootless))
	}
	return append(out, r.ExtraArgs...)
}

// cmd is the runc command line args, set up as go-runc sets up its own.
func (r *Runc) cmd(ctx context.Context, args []string) *exec.Cmd {
	command := r.Command
	if command == "" {
		command = runc.DefaultCommand
	}
	cmd := exec.CommandContext(ctx, command, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: r.Setpgid, Pdeathsig: r.PdeathSignal}
	// NOTIFY_SOCKET makes runc talk to systemd: only for systemd's own
	// children.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, "NOTIFY_SOCKET=") })
	cmd.Dir = r.WorkDir
	return cmd
}

// run starts cmd through the process monitor (the reaper: the only wait
// loop), hands its IO the start, and waits for it.
func (r *Runc) run(cmd *exec.Cmd, opts *runc.ExecOpts) error {
	start := runc.Monitor.Start
	if r.PdeathSignal != 0 {
		start = runc.Monitor.StartLocked
	}
	ec, err := start(cmd)
	if err != nil {
		return err
	}
	if opts.Started != nil {
		opts.Started <- cmd.Process.Pid
	}
	if c, ok := opts.IO.(runc.StartCloser); ok {
		if err := c.CloseAfterStart(); err != nil {
			_, _ = runc.Monitor.Wait(cmd, ec)
			return err
		}
	}
	status, err := runc.Monitor.Wait(cmd, ec)
	if err == nil && status != 0 {
		err = fmt.Errorf("%s did not terminate successfully: %w", cmd.Args[0], &runc.ExitError{Status: status})
	}
	return err
}

// memfdWith returns a memfd named name (close-on-exec in this process;
// a child gets it through ExtraFiles) holding data.
func memfdWith(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd for %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), name)
	if len(data) > 0 {
		if _, err := f.Write(data); err != nil {
			f.Close()
			return nil, fmt.Errorf("memfd for %s: %w", name, err)
		}
	}
	return f, nil
}

// lastRuncErrorIn is lastRuncError of a log runc wrote into f.
func lastRuncErrorIn(f *os.File) string {
	data, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		return ""
	}
	return lastRuncErrorOf(data)
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
	return lastRuncErrorOf(data)
}

// lastRuncErrorOf is lastRuncError of the log's text.
func lastRuncErrorOf(data []byte) string {
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
