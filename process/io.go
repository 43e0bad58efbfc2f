package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// Starter starts and waits for helper processes (binary loggers) through
// the process's single wait loop; *reaper.Reaper implements it.
type Starter interface {
	Start(cmd *exec.Cmd) (chan runc.Exit, error)
	Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error)
}

// Tap receives a copy of a process's output besides its containerd
// destination: the logging pipeline of a container whose spec asks for
// one. Writer is called once per stream before output flows; the returned
// writer is closed when the stream ends. Close is called once, after every
// stream ended, and drains.
type Tap interface {
	Writer(stream logging.Stream) io.WriteCloser
	Close() error
}

// IOConfig is what NewIO needs.
type IOConfig struct {
	ID        string // container ID (CONTAINER_ID of binary loggers)
	Namespace string // containerd namespace (CONTAINER_NAMESPACE)
	Stdio     *ParsedStdio
	Starter   Starter      // for binary:// loggers
	Tap       Tap          // optional
	UID, GID  int          // owner of the pipes handed to the process
	Log       *slog.Logger // nil: slog.Default()
}

// IO connects one process's stdio to its destinations: containerd's FIFOs,
// a file, a binary logger, and optionally a logging Tap. Output copying
// ends when the process side of a stream is closed by every holder; the
// destination is closed then, which is how clients see EOF (ctr waits for
// it before it sends Delete).
type IO struct {
	cfg    IOConfig
	ctx    context.Context // lives as long as the IO; cancels pending FIFO opens
	cancel context.CancelFunc

	pio  runc.IO      // pipes to the process; nil with a terminal
	sock *runc.Socket // console socket; nil without a terminal

	mu      sync.Mutex
	con     console.Console // pty master, for ioctls (Resize); set by Start
	pty     *os.File        // pollable dup of the master for reads and writes
	stdinW  io.WriteCloser  // where stdin goes (process pipe or pty)
	stdin   *stdinCopier    // copies the client's stdin FIFO; nil without one
	closed  bool
	stdinCl bool

	dests   [3][]io.WriteCloser // by logging.Stream (1 stdout, 2 stderr)
	shared  *refCloser          // file:// destination shared by both streams
	logger  *binaryLogger
	copiers sync.WaitGroup
}

// NewIO opens the destinations of cfg.Stdio and prepares what the runtime
// needs (pipes or a console socket). Nothing is copied before Start.
func NewIO(ctx context.Context, cfg IOConfig) (_ *IO, retErr error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ioctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	i := &IO{cfg: cfg, ctx: ioctx, cancel: cancel}
	defer func() {
		if retErr != nil {
			i.Close()
		}
	}()
	st := cfg.Stdio
	if st == nil {
		st = &ParsedStdio{}
		i.cfg.Stdio = st
	}
	var err error
	// A logging tap reads the output even when the client takes none.
	tap := cfg.Tap != nil
	both := st.Scheme == SchemeFile || st.Scheme == SchemeBinary
	openOut := st.Stdout != "" || tap
	openErr := st.Stderr != "" || both || tap
	if st.Terminal {
		if i.sock, err = runc.NewTempConsoleSocket(); err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
	} else if st.Stdin == "" && !openOut && !openErr {
		if i.pio, err = runc.NewNullIO(); err != nil {
			return nil, err
		}
	} else {
		i.pio, err = runc.NewPipeIO(cfg.UID, cfg.GID, func(o *runc.IOOption) {
			o.OpenStdin = st.Stdin != ""
			o.OpenStdout = openOut
			o.OpenStderr = openErr
		})
		if err != nil {
			return nil, fmt.Errorf("stdio pipes: %w", err)
		}
	}
	if st.Stdin != "" {
		if fi, err := os.Stat(st.Stdin); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
			return nil, fmt.Errorf("stdin %q is not a FIFO (%v): %w", st.Stdin, err, errdefs.ErrInvalidArgument)
		}
	}
	if err := i.openDests(); err != nil {
		return nil, err
	}
	if tap {
		i.dests[logging.Stdout] = append(i.dests[logging.Stdout], cfg.Tap.Writer(logging.Stdout))
		if !st.Terminal {
			i.dests[logging.Stderr] = append(i.dests[logging.Stderr], cfg.Tap.Writer(logging.Stderr))
		}
	}
	return i, nil
}

func (i *IO) openDests() error {
	st := i.cfg.Stdio
	switch st.Scheme {
	case SchemeNull:
	case SchemeFifo:
		for _, s := range []struct {
			stream logging.Stream
			path   string
		}{{logging.Stdout, st.Stdout}, {logging.Stderr, st.Stderr}} {
			if s.path == "" || (s.stream == logging.Stderr && st.Terminal) {
				continue
			}
			f, err := fifo.OpenFifo(i.ctx, s.path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				return fmt.Errorf("%s %q: %v: %w", s.stream, s.path, err, errdefs.ErrInvalidArgument)
			}
			i.dests[s.stream] = append(i.dests[s.stream], f)
		}
	case SchemeFile:
		p := st.URI.Path
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("log file %q: %v: %w", p, err, errdefs.ErrInvalidArgument)
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640) // output may hold secrets: no world read
		if err != nil {
			return fmt.Errorf("log file %q: %v: %w", p, err, errdefs.ErrInvalidArgument)
		}
		i.shared = &refCloser{c: f, n: 2}
		i.dests[logging.Stdout] = append(i.dests[logging.Stdout], &sharedWriter{w: f, r: i.shared})
		if !st.Terminal {
			i.dests[logging.Stderr] = append(i.dests[logging.Stderr], &sharedWriter{w: f, r: i.shared})
		} else {
			i.shared.n = 1
		}
	case SchemeBinary:
		l, err := startLogger(i.ctx, st, i.cfg.ID, i.cfg.Namespace, i.cfg.Starter)
		if err != nil {
			return err
		}
		i.logger = l
		i.dests[logging.Stdout] = append(i.dests[logging.Stdout], l.out)
		if st.Terminal {
			_ = l.err.Close()
		} else {
			i.dests[logging.Stderr] = append(i.dests[logging.Stderr], l.err)
		}
	}
	return nil
}

// RuncIO is the IO to hand to runc create/exec; nil with a terminal.
func (i *IO) RuncIO() runc.IO { return i.pio }

// ConsoleSocket is the socket to hand to runc for a terminal; nil otherwise.
func (i *IO) ConsoleSocket() runc.ConsoleSocket {
	if i.sock == nil {
		return nil
	}
	return i.sock
}

// Start begins copying, once the runtime created the process. For a
// terminal it first receives the pty master from the console socket.
func (i *IO) Start(ctx context.Context) error {
	if i.sock != nil {
		type result struct {
			c   console.Console
			err error
		}
		ch := make(chan result, 1)
		go func() {
			c, err := i.sock.ReceiveMaster()
			ch <- result{c, err}
		}()
		var r result
		select {
		case r = <-ch:
		case <-ctx.Done():
			_ = i.sock.Close()
			return fmt.Errorf("waiting for the pty master: %w", ctx.Err())
		}
		_ = i.sock.Close()
		if r.err != nil {
			return fmt.Errorf("receiving the pty master: %w", r.err)
		}
		// Reads and writes go through a non-blocking dup owned by the
		// runtime poller, so Close can interrupt them; the console keeps
		// the original for its ioctls.
		dup, err := unix.FcntlInt(r.c.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			err = unix.SetNonblock(dup, true)
		}
		if err != nil {
			_ = r.c.Close()
			return fmt.Errorf("pty master: %w", err)
		}
		pty := os.NewFile(uintptr(dup), "pty-master")
		i.mu.Lock()
		i.con = r.c
		i.pty = pty
		i.stdinW = pty
		i.mu.Unlock()
		i.copyOut(logging.Stdout, pty, false)
	} else if i.pio != nil {
		i.mu.Lock()
		if i.cfg.Stdio.Stdin != "" {
			i.stdinW = i.pio.Stdin()
		}
		i.mu.Unlock()
		if r := i.pio.Stdout(); r != nil && len(i.dests[logging.Stdout]) > 0 {
			i.copyOut(logging.Stdout, r, true)
		}
		if r := i.pio.Stderr(); r != nil && len(i.dests[logging.Stderr]) > 0 {
			i.copyOut(logging.Stderr, r, true)
		}
	}
	i.mu.Lock()
	var err error
	if i.cfg.Stdio.Stdin != "" && i.stdinW != nil && !i.closed {
		if i.stdin, err = newStdinCopier(i.cfg.Stdio.Stdin, i.stdinW, i.pty != nil); err == nil {
			i.stdin.start()
		}
	}
	i.mu.Unlock()
	return err
}

// copyOut copies one process stream to its destinations until EOF (or EIO
// from a pty whose slave side is gone). A destination that fails is
// dropped and the others keep receiving: a vanished client must not stop
// the logging pipeline.
func (i *IO) copyOut(stream logging.Stream, r io.Reader, closeSrc bool) {
	dests := i.dests[stream]
	i.copiers.Add(1)
	go func() {
		defer i.copiers.Done()
		buf := make([]byte, 32<<10)
		alive := make([]bool, len(dests))
		for k := range alive {
			alive[k] = true
		}
		for {
			n, err := r.Read(buf)
			if n > 0 {
				for k, d := range dests {
					if !alive[k] {
						continue
					}
					if _, werr := d.Write(buf[:n]); werr != nil {
						i.cfg.Log.Warn("output destination failed, dropping it", "container", i.cfg.ID, "stream", stream.String(), "destination", k, "error", werr)
						alive[k] = false
					}
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
					i.cfg.Log.Warn("reading container output", "container", i.cfg.ID, "stream", stream.String(), "error", err)
				}
				break
			}
		}
		for _, d := range dests {
			_ = d.Close()
		}
		if c, ok := r.(io.Closer); ok && closeSrc {
			_ = c.Close()
		}
	}()
}

// CloseStdin closes the process's stdin (CloseIO): the process reads EOF.
// For a terminal it sends the EOF character instead of closing the pty.
// What the client wrote before is delivered first.
func (i *IO) CloseStdin() error {
	i.mu.Lock()
	if i.stdinCl {
		i.mu.Unlock()
		return nil
	}
	i.stdinCl = true
	sc, pty, w := i.stdin, i.pty, i.stdinW
	i.mu.Unlock()
	switch {
	case sc != nil:
		return sc.closeStdin()
	case pty != nil:
		_, err := pty.Write([]byte{4}) // ^D: the line discipline's EOF
		return err
	case w != nil:
		return w.Close()
	}
	return nil
}

// Resize sets the pty size; FailedPrecondition without a terminal.
func (i *IO) Resize(width, height uint32) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.con == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	return i.con.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// outputGrace bounds how long Close waits for output still in flight (a
// grandchild that keeps the pipe open must not block Delete forever).
const outputGrace = 2 * time.Second

// Close waits (bounded) for the output copiers, then closes every pipe,
// FIFO and file, stops a binary logger and drains the tap. Idempotent.
func (i *IO) Close() {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return
	}
	i.closed = true
	i.mu.Unlock()

	done := make(chan struct{})
	go func() { i.copiers.Wait(); close(done) }()
	wait := func() bool {
		select {
		case <-done:
			return true
		case <-time.After(outputGrace):
			return false
		}
	}
	i.mu.Lock()
	sc, pty := i.stdin, i.pty
	i.mu.Unlock()
	if !wait() {
		// A process side still held open (a daemonised grandchild):
		// stop reading it.
		if i.pio != nil {
			_ = i.pio.Close()
		}
		if pty != nil {
			_ = pty.Close()
		}
		if !wait() {
			// A destination that does not drain (a client that stopped
			// reading its FIFO) cannot be interrupted: leave that copier.
			i.cfg.Log.Error("container output copier stuck on its destination; abandoning it", "container", i.cfg.ID)
		}
	}
	if sc != nil {
		sc.stop()
	}
	if i.pio != nil {
		_ = i.pio.Close()
	}
	if pty != nil {
		_ = pty.Close()
	}
	if i.con != nil {
		_ = i.con.Close()
	}
	if i.sock != nil {
		_ = i.sock.Close()
	}
	i.cancel()
	// Destinations of streams that never started copying.
	for _, ds := range i.dests {
		for _, d := range ds {
			_ = d.Close()
		}
	}
	if i.logger != nil {
		i.logger.stop()
	}
	if i.cfg.Tap != nil {
		if err := i.cfg.Tap.Close(); err != nil {
			i.cfg.Log.Error("closing log pipeline", "container", i.cfg.ID, "error", err)
		}
	}
}

// refCloser closes c when its count reaches zero.
type refCloser struct {
	mu sync.Mutex
	c  io.Closer
	n  int
}

func (r *refCloser) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n--
	if r.n == 0 {
		_ = r.c.Close()
	}
}

// sharedWriter is one stream's handle on a destination shared by both
// streams; closing it releases its reference once.
type sharedWriter struct {
	w    io.Writer
	r    *refCloser
	once sync.Once
}

func (s *sharedWriter) Write(p []byte) (int, error) { return s.w.Write(p) }

func (s *sharedWriter) Close() error {
	s.once.Do(s.r.release)
	return nil
}
