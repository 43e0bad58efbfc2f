// Package binary is the binary log driver: it runs a logger program that
// speaks containerd's binary logging protocol, so loggers written for
// containerd (binary:///path URIs) work unchanged.
//
// The protocol, as the program sees it:
//   - fd 3 is the container's stdout and fd 4 its stderr (read ends of
//     pipes), carrying the container's bytes: each record's line, followed
//     by "\n" unless the record is partial;
//   - fd 5 is the ready pipe: the program writes a byte to it, or closes
//     it, once it is ready to read; until then the container's output waits;
//   - the environment is exactly CONTAINER_ID and CONTAINER_NAMESPACE;
//   - EOF on fds 3 and 4 means the container is gone: the program drains
//     them and exits. If it lingers, Close sends SIGTERM, then SIGKILL.
//
// Differences from containerd: the program must live in an allow-listed
// directory (a container may name a program through its annotations, so an
// arbitrary path would let it run anything as the monitor's user; compare
// GHSA-xhf5-7wjv-pqxp); and a program that dies is restarted with an
// exponential backoff, its output waiting meanwhile (Write blocks) instead
// of being lost.
//
// Options:
//
//	path        the logger program (required), inside an allowed directory
//	arg.NAME    adds the arguments NAME VALUE, in NAME order (containerd
//	            turns a URI's query into arguments the same way)
package binary

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"

	"github.com/containers/conmon-v2/logging"
)

// Name is the driver's registry name.
const Name = "binary"

// DefaultAllowedDirs are where logger programs may live when Config names
// no directory.
var DefaultAllowedDirs = []string{"/usr/libexec/conmon-v2/loggers", "/usr/local/libexec/conmon-v2/loggers"}

// Runner starts and waits for the logger program. A *reaper.Reaper is one:
// in a process that runs the reaper, every child must be started and waited
// for through it, or its exit is stolen.
type Runner interface {
	Start(cmd *exec.Cmd) (chan runc.Exit, error)
	Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error)
}

// Config is what the process running the driver decides, not the container.
type Config struct {
	// AllowedDirs are the directories whose programs may be run; default
	// DefaultAllowedDirs.
	AllowedDirs []string
	// Runner starts and waits for the program; default os/exec, for
	// processes without a reaper.
	Runner Runner
	// ReadyTimeout bounds the wait for the ready signal (default 10s).
	ReadyTimeout time.Duration
	// MinBackoff and MaxBackoff bound the delay before a restart
	// (default 100ms and 30s; it doubles after each quick death).
	MinBackoff, MaxBackoff time.Duration
	// StopTimeout is how long Close waits after EOF before SIGTERM, and
	// after SIGTERM before SIGKILL (default 5s).
	StopTimeout time.Duration
}

// NewFactory returns the driver's logging.Factory for cfg.
func NewFactory(cfg Config) logging.Factory {
	if len(cfg.AllowedDirs) == 0 {
		cfg.AllowedDirs = DefaultAllowedDirs
	}
	if cfg.Runner == nil {
		cfg.Runner = ExecRunner{}
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(30*time.Second, cfg.MinBackoff)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	return func(ctx context.Context, info logging.Info) (logging.Driver, error) {
		return newDriver(ctx, cfg, info)
	}
}

// Driver feeds a logger program. It is safe for concurrent use.
type Driver struct {
	cfg  Config
	path string
	args []string
	env  []string

	// The stream pipes outlive the program: a restarted program reads what
	// its predecessor left unread, so a restart loses at most what the
	// dead program had read and not yet stored.
	outR, outW, errR, errW *os.File

	wmu sync.Mutex // serialises writes, so lines never interleave
	buf []byte     // guarded by wmu

	mu        sync.Mutex // guards the fields below
	cur       *proc      // the running program; nil while restarting
	startErr  error      // why the last restart failed, while cur is nil
	closed    bool
	restarts  int
	stop      chan struct{} // closed by Close: ends backoff sleeps
	done      chan struct{} // closed when the supervisor returns
	lastClose error
}

type proc struct {
	cmd     *exec.Cmd
	ec      chan runc.Exit
	started time.Time
}

var _ logging.Driver = (*Driver)(nil)

func newDriver(ctx context.Context, cfg Config, info logging.Info) (*Driver, error) {
	d := &Driver{cfg: cfg, stop: make(chan struct{}), done: make(chan struct{})}
	args := map[string]string{}
	for k, v := range info.Options {
		switch {
		case k == logging.OptPath:
			d.path = v
		case strings.HasPrefix(k, "arg."):
			name := strings.TrimPrefix(k, "arg.")
			if name == "" {
				return nil, fmt.Errorf("binary: option %q has no argument name: %w", k, errdefs.ErrInvalidArgument)
			}
			args[name] = v
		case logging.IsCommonOption(k):
			// file options, for other drivers
		default:
			return nil, fmt.Errorf("binary: unknown option %q (known: path, arg.NAME): %w", k, errdefs.ErrInvalidArgument)
		}
	}
	if d.path == "" {
		return nil, fmt.Errorf("binary: option path (the logger program) is required: %w", errdefs.ErrInvalidArgument)
	}
	resolved, err := allowed(d.path, cfg.AllowedDirs)
	if err != nil {
		return nil, err
	}
	d.path = resolved
	for _, k := range slices.Sorted(maps.Keys(args)) {
		d.args = append(d.args, k)
		if args[k] != "" {
			d.args = append(d.args, args[k])
		}
	}
	d.env = []string{"CONTAINER_ID=" + info.Meta.ID, "CONTAINER_NAMESPACE=" + info.Meta.Namespace}
	if d.outR, d.outW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("binary: pipe: %w", err)
	}
	if d.errR, d.errW, err = os.Pipe(); err != nil {
		d.closePipes()
		return nil, fmt.Errorf("binary: pipe: %w", err)
	}
	p, err := d.start(ctx)
	if err != nil {
		d.closePipes()
		return nil, err
	}
	d.cur = p
	go d.supervise(p)
	return d, nil
}

// allowed resolves path (symlinks included) and checks that it is an
// executable regular file inside one of dirs (also resolved). A refusal is
// an InvalidArgument naming the path.
func allowed(path string, dirs []string) (string, error) {
	resolved, err := CheckInDirs(path, dirs, true)
	if err != nil {
		return "", fmt.Errorf("binary: logger %q refused: %w", path, err)
	}
	return resolved, nil
}

// CheckInDirs is the allow-list check of the binary and plugin drivers:
// path must be absolute and, resolved through ResolveInDirs, lie inside one
// of dirs and be an executable regular file (executable) or a socket (not
// executable). It returns the resolved path, or why not as an
// InvalidArgument whose message (the reason alone) the caller prefixes
// with the driver and path.
func CheckInDirs(path string, dirs []string, executable bool) (string, error) {
	refuse := func(why string) error {
		return fmt.Errorf("%s: %w", why, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(path) {
		return "", refuse("not an absolute path")
	}
	resolved, inside, err := ResolveInDirs(path, dirs)
	if err != nil {
		return "", refuse(err.Error())
	}
	if !inside {
		return "", refuse(fmt.Sprintf("not inside an allowed directory (%s)", strings.Join(dirs, ", ")))
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", refuse(err.Error())
	}
	switch {
	case executable && (!fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0):
		return "", refuse("not an executable file")
	case !executable && fi.Mode()&os.ModeSocket == 0:
		return "", refuse("not a socket")
	}
	return resolved, nil
}

// ResolveInDirs resolves path through symlinks and reports whether the
// result lies strictly below one of dirs, each resolved too, so that a link
// inside an allowed directory cannot lead out of it (GHSA-xhf5-7wjv-pqxp).
// A directory that does not exist allows nothing. err is the resolution's
// own error, for the caller to classify and name path in; the allow-list
// checks of the binary and plugin drivers and of binary:// stdio share it.
func ResolveInDirs(path string, dirs []string) (resolved string, inside bool, err error) {
	resolved, err = filepath.EvalSymlinks(path)
	if err != nil {
		return "", false, err
	}
	for _, dir := range dirs {
		rdir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			continue
		}
		rel, err := filepath.Rel(rdir, resolved)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
			continue
		}
		return resolved, true, nil
	}
	return resolved, false, nil
}

func (d *Driver) closePipes() {
	for _, f := range []*os.File{d.outR, d.outW, d.errR, d.errW} {
		if f != nil {
			f.Close()
		}
	}
}

// start runs the program and waits for its ready signal.
func (d *Driver) start(ctx context.Context) (*proc, error) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("binary: pipe: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(d.path, d.args...)
	cmd.Env = d.env
	cmd.ExtraFiles = []*os.File{d.outR, d.errR, readyW} // fds 3, 4, 5
	// Its own process group: a terminal's signals meant for the monitor
	// do not reach it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	ec, err := d.cfg.Runner.Start(cmd)
	readyW.Close() // the child's copy signals readiness (or EOF at exit)
	if err != nil {
		return nil, fmt.Errorf("binary: start %s: %w", d.path, errors.Join(err, errdefs.ErrUnavailable))
	}
	p := &proc{cmd: cmd, ec: ec, started: time.Now()}
	if err := waitReady(ctx, readyR, d.cfg.ReadyTimeout); err != nil {
		_ = cmd.Process.Kill()
		_, _ = d.cfg.Runner.Wait(cmd, ec)
		return nil, fmt.Errorf("binary: %s: %w", d.path, err)
	}
	return p, nil
}

// waitReady reads the ready pipe: a byte or EOF (the program closed it or
// exited) is ready, as containerd has it.
func waitReady(ctx context.Context, r *os.File, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := r.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("ready pipe: %w", err)
	}
	var b [1]byte
	_, err := r.Read(b[:])
	switch {
	case err == nil, errors.Is(err, io.EOF):
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("no ready signal on fd 5 within %v: %w", timeout, errdefs.ErrUnavailable)
	}
	return fmt.Errorf("ready pipe: %w", err)
}

// supervise waits for each program's exit and restarts it, with backoff,
// until Close.
func (d *Driver) supervise(p *proc) {
	defer close(d.done)
	backoff := d.cfg.MinBackoff
	for {
		_, _ = d.cfg.Runner.Wait(p.cmd, p.ec)
		d.mu.Lock()
		d.cur = nil
		closed := d.closed
		d.mu.Unlock()
		if closed {
			return
		}
		if time.Since(p.started) > 10*d.cfg.MaxBackoff {
			backoff = d.cfg.MinBackoff // it ran well: a fresh failure
		}
		for {
			select {
			case <-d.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, d.cfg.MaxBackoff)
			np, err := d.start(context.Background())
			d.mu.Lock()
			if err != nil {
				d.startErr = err
				d.mu.Unlock()
				continue
			}
			if d.closed {
				// Close saw no program to stop: this one got EOF already
				// (the write ends are closed); make sure it goes.
				d.mu.Unlock()
				_ = np.cmd.Process.Signal(syscall.SIGTERM)
				_, _ = d.cfg.Runner.Wait(np.cmd, np.ec)
				return
			}
			d.cur, d.startErr = np, nil
			d.restarts++
			d.mu.Unlock()
			p = np
			break
		}
	}
}

// Restarts returns how many times the program was restarted.
func (d *Driver) Restarts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restarts
}

// Write writes r's bytes to the program's fd 3 or 4. It blocks while the
// pipe is full: the program is slow, or dead and being restarted.
func (d *Driver) Write(r *logging.Record) error {
	d.wmu.Lock()
	defer d.wmu.Unlock()
	b := append(d.buf[:0], r.Line...)
	if !r.Partial {
		b = append(b, '\n')
	}
	d.buf = b
	if cap(d.buf) > 1<<20 {
		d.buf = nil
	}
	f := d.outW
	if r.Stream == logging.Stderr {
		f = d.errW
	}
	if _, err := f.Write(b); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return fmt.Errorf("binary: write after close: %w", errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("binary: write to %s: %w", d.path, err)
	}
	return nil
}

// Reopen does nothing: the program owns its destination.
func (d *Driver) Reopen() error { return nil }

// Close sends EOF on fds 3 and 4 and waits for the program to exit,
// sending SIGTERM and then SIGKILL if it takes longer than StopTimeout.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		<-d.done
		return d.lastClose
	}
	d.closed = true
	close(d.stop)
	p := d.cur
	d.mu.Unlock()
	// EOF for the program; also unblocks a Write stuck on a full pipe.
	// Our read ends go too, so the program holds the only ones left.
	d.closePipes()
	var err error
	if p != nil && !d.exitedWithin(d.cfg.StopTimeout) {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if !d.exitedWithin(d.cfg.StopTimeout) {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			err = fmt.Errorf("binary: %s killed after ignoring EOF and SIGTERM for %v each: %w", d.path, d.cfg.StopTimeout, errdefs.ErrUnavailable)
		}
	}
	<-d.done
	d.lastClose = err
	return err
}

func (d *Driver) exitedWithin(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.done:
		return true
	case <-t.C:
		return false
	}
}

// ExecRunner runs programs with os/exec, for processes without a reaper:
// the default Runner of this package and of package plugin.
type ExecRunner struct{}

// Start starts cmd; the channel it returns is never sent on (Wait does
// not read it).
func (ExecRunner) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return make(chan runc.Exit, 1), nil
}

// Wait waits for cmd and returns its exit code, or -1 and the error when
// it has no exit state.
func (ExecRunner) Wait(cmd *exec.Cmd, _ chan runc.Exit) (int, error) {
	err := cmd.Wait()
	if cmd.ProcessState != nil {
		return cmd.ProcessState.ExitCode(), nil
	}
	return -1, err
}
