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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/pipesize"
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
	// Exec is the exec ID ("" for init) and Custody, if not nil, the
	// keeper that holds duplicates of the descriptors (custody.go).
	Exec    string
	Custody Custodian
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
	fifos   [3]io.WriteCloser   // the client's FIFO among dests, for a handover
	shared  *refCloser          // file:// destination shared by both streams
	logger  *binaryLogger
	copiers sync.WaitGroup

	// Suspend and Resume (a handover to a new monitor), guarded by mu.
	srcs       [3]io.Reader     // what each stream's copier reads
	closeSrc   [3]bool          // the copier closes its source at the end
	copying    [3]chan struct{} // closed when that copier returned
	ended      [3]bool          // the stream reached its end (EOF)
	suspended  bool             // copiers parked
	stdinFifo  *os.File         // the parked stdin copier's FIFO
	stdinLate  *stdinCopier     // a stdin copier Suspend gave up waiting for
	stdinEnded bool             // the process got its stdin EOF
	parking    atomic.Bool      // copiers stop at a deadline without closing anything
	journal    *ioJournal       // under a keeper: the streams' in-flight journals (journal.go)
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
			if err := i.openFifoDest(s.stream, s.path); err != nil {
				return err
			}
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

// openFifoDest opens the client's FIFO for stream: without waiting for
// its reader (writes wait for it instead).
func (i *IO) openFifoDest(stream logging.Stream, path string) error {
	f, err := fifo.OpenFifo(i.ctx, path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("%s %q: %v: %w", stream, path, err, errdefs.ErrInvalidArgument)
	}
	i.dests[stream] = append(i.dests[stream], f)
	i.fifos[stream] = f
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
	} else if i.pio != nil {
		i.mu.Lock()
		if i.cfg.Stdio.Stdin != "" {
			i.stdinW = i.pio.Stdin()
		}
		i.mu.Unlock()
	}
	return i.startCopying(nil)
}

// startCopying starts a copier for each output stream that has
// destinations, and the stdin copier (from fifo, the client's FIFO already
// opened, when not nil).
func (i *IO) startCopying(fifo *os.File) error {
	i.holdInCustody() // before anything is read
	if i.pty != nil {
		i.copyOut(logging.Stdout, i.pty, false)
	} else if i.pio != nil {
		if r := i.pio.Stdout(); r != nil && len(i.dests[logging.Stdout]) > 0 {
			i.copyOut(logging.Stdout, r, true)
		}
		if r := i.pio.Stderr(); r != nil && len(i.dests[logging.Stderr]) > 0 {
			i.copyOut(logging.Stderr, r, true)
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.cfg.Stdio.Stdin != "" && i.stdinW != nil && !i.closed && !i.stdinEnded {
		sc, err := newStdinCopier(i.cfg.Stdio.Stdin, i.stdinW, i.pty != nil, fifo)
		if err != nil {
			return err
		}
		i.stdin = sc
		i.stdinCustody(sc)
		sc.start()
	} else if fifo != nil {
		_ = fifo.Close()
	}
	return nil
}

// copyBufSize is the size of one read of a process's output: a busy
// stream costs a read(2), a wake-up and a batch of log records per
// copyBufSize (the logging tap cuts it into records of at most
// logging.DefaultReadSize, as conmon's 8 KiB reads would).
const copyBufSize = 128 << 10

// copyBufs holds the read buffers of the output copiers. A copier takes a
// buffer only once its stream is readable and gives it back after the
// write, so an idle container holds none: the memory of a daemon that
// monitors many quiet containers does not grow by a buffer per stream. It
// is a cache, like fmt's printer pool, not state: which buffer a copier
// gets changes nothing it does.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyOut copies one process stream to its destinations until EOF (or EIO
// from a pty whose slave side is gone). A destination that fails is
// dropped and the others keep receiving: a vanished client must not stop
// the logging pipeline.
//
// A copier stops without closing anything when its read hits the deadline
// Suspend sets (parking): every byte it read is then written, and the rest
// waits in the pipe for Resume or for the monitor the IO is handed to.
func (i *IO) copyOut(stream logging.Stream, r io.Reader, closeSrc bool) {
	dests := i.dests[stream]
	done := make(chan struct{})
	i.mu.Lock()
	i.srcs[stream], i.closeSrc[stream], i.copying[stream] = r, closeSrc, done
	j := i.journal.stream(stream) // nil without a keeper: plain reads and writes
	i.mu.Unlock()
	read := j.reader(r)
	i.copiers.Add(1)
	go func() {
		defer i.copiers.Done()
		defer close(done)
		alive := make([]bool, len(dests))
		for k := range alive {
			alive[k] = true
		}
		dropped := func(k int, werr error) {
			i.cfg.Log.Warn("output destination failed, dropping it", "container", i.cfg.ID, "stream", stream.String(), "destination", k, "error", werr)
			alive[k] = false
		}
		j.replay(dests, alive, dropped) // what a killed monitor read and did not write
		for {
			bp, n, err := read()
			if n > 0 {
				buf := *bp
				for k, d := range dests {
					if !alive[k] {
						continue
					}
					if werr := j.write(k, d, buf[:n]); werr != nil {
						dropped(k, werr)
					}
				}
				j.written()
			}
			if bp != nil {
				j.put(bp)
			}
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) && i.parking.Load() {
					return // parked by Suspend: sources and destinations stay open
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.EIO) && !errors.Is(err, os.ErrClosed) {
					i.cfg.Log.Warn("reading container output", "container", i.cfg.ID, "stream", stream.String(), "error", err)
				}
				break
			}
		}
		i.mu.Lock()
		i.ended[stream] = true
		i.mu.Unlock()
		for _, d := range dests {
			_ = d.Close()
		}
		if c, ok := r.(io.Closer); ok && closeSrc {
			_ = c.Close()
		}
		i.streamEnded(stream)
	}()
}

// nonblockingConn returns r as a file and its raw descriptor when r is an
// *os.File in non-blocking mode, which the runtime poller can wait for;
// false otherwise.
func nonblockingConn(r io.Reader) (*os.File, syscall.RawConn, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return nil, nil, false
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, nil, false
	}
	nonblock := false
	// Not f.Fd(): it would make the file blocking.
	_ = rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nonblock = err == nil && fl&unix.O_NONBLOCK != 0
	})
	return f, rc, nonblock
}

// readerOf returns a function that reads the next piece of r into a
// buffer from copyBufs; the caller returns the buffer (nil when nothing
// was read) to copyBufs. For a non-blocking file, the usual case (pipes
// from os.Pipe, the pty master's dup), it waits for readability in the
// runtime's poller without holding a buffer; any other reader gets a
// buffer for each blocking Read.
func readerOf(r io.Reader) func() (*[]byte, int, error) {
	plain := func() (*[]byte, int, error) {
		bp := copyBufs.Get().(*[]byte)
		n, err := r.Read(*bp)
		return bp, n, err
	}
	f, rc, ok := nonblockingConn(r)
	if !ok {
		return plain // the poller cannot wait for it
	}
	var grow pipesize.Grower // a busy stream's pipe: the project's one policy
	return func() (*[]byte, int, error) {
		var (
			bp   *[]byte
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			bp = copyBufs.Get().(*[]byte)
			for {
				n, rerr = unix.Read(int(fd), *bp)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				copyBufs.Put(bp)
				bp = nil
				return false // wait in the poller, holding no buffer
			}
			grow.Observe(fd, n, len(*bp))
			return true
		})
		switch {
		case err != nil: // closed, or a deadline
			if bp != nil {
				copyBufs.Put(bp)
			}
			// RawConn reports a closed file with an internal error;
			// an empty Read reports it as os.ErrClosed.
			if _, cerr := f.Read(nil); cerr != nil {
				err = cerr
			}
			return nil, 0, err
		case rerr != nil:
			if n < 0 {
				n = 0
			}
			return bp, n, &os.PathError{Op: "read", Path: f.Name(), Err: rerr}
		case n == 0:
			return bp, 0, io.EOF
		}
		return bp, n, nil
	}
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
	i.releaseCustody()
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
