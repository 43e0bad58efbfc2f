package process

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// A live upgrade hands a process's IO to a new monitor (the same process
// after execve, see docs/resilience.md §5): Suspend stops the copying at a
// clean point, HandoverFDs duplicates the descriptors the new monitor
// needs, and RestoreIO rebuilds the IO from them there. The container
// notices nothing: its pipes stay open throughout and what it writes
// meanwhile waits in them.

// IOFDs names the descriptors of one process's IO, as handed to a new
// monitor; 0 means none (a handed descriptor is never 0, 1 or 2). It is
// part of the handover description (JSON).
type IOFDs struct {
	// Stdin is the write end of the process's stdin pipe.
	Stdin int `json:"stdin,omitempty"`
	// Stdout and Stderr are the read ends of its output pipes, of the
	// streams that have not reached their end.
	Stdout int `json:"stdout,omitempty"`
	Stderr int `json:"stderr,omitempty"`
	// Console is the terminal's master, for a process with a terminal.
	Console int `json:"console,omitempty"`
	// StdinFifo is the client's stdin FIFO, opened for reading, so that
	// the client's writes never meet a FIFO without a reader.
	StdinFifo int `json:"stdin_fifo,omitempty"`
	// StdinEnded: the process has had its stdin EOF (no new copier).
	StdinEnded bool `json:"stdin_ended,omitempty"`
	// StdoutFifo and StderrFifo are the write ends of the client's output
	// FIFOs, so that the client never sees them without a writer (EOF).
	StdoutFifo int `json:"stdout_fifo,omitempty"`
	StderrFifo int `json:"stderr_fifo,omitempty"`
	// LoggerPid is a binary:// logger's process (this process's child);
	// LoggerStdout and LoggerStderr the write ends of its fds 3 and 4.
	LoggerPid    int `json:"logger_pid,omitempty"`
	LoggerStdout int `json:"logger_stdout,omitempty"`
	LoggerStderr int `json:"logger_stderr,omitempty"`
	// Journal are the in-flight journals of a keeper (journal.go), by
	// stream: for stdout then stderr, the memfd and the descriptions of
	// its pipe destinations (JournalMaxDests); 0 means none. Only a
	// keeper hands them over: a live upgrade suspends the copiers with
	// their journals written out.
	Journal []int `json:"journal,omitempty"`
}

// List returns the descriptors in d.
func (d IOFDs) List() []int {
	var out []int
	for _, fd := range []int{d.Stdin, d.Stdout, d.Stderr, d.Console, d.StdinFifo, d.StdoutFifo, d.StderrFifo, d.LoggerStdout, d.LoggerStderr} {
		if fd > 0 {
			out = append(out, fd)
		}
	}
	for _, fd := range d.Journal {
		if fd > 0 {
			out = append(out, fd)
		}
	}
	return out
}

// Close closes every descriptor in d (a handover that was called off).
func (d IOFDs) Close() {
	for _, fd := range d.List() {
		_ = unix.Close(fd)
	}
}

// Suspend stops the output copiers and the stdin copier at a clean point,
// for a handover: every byte already read from the process has been
// written to its destinations (the logging tap included: a partial line
// there becomes a partial record), and nothing more is read. Sources and
// destinations stay open. It fails, resuming what it stopped, when a
// copier does not stop before ctx is done (one blocked on a destination
// that does not drain).
func (i *IO) Suspend(ctx context.Context) error {
	i.mu.Lock()
	if i.closed {
		i.mu.Unlock()
		return fmt.Errorf("suspend: the process's IO is closed: %w", errdefs.ErrFailedPrecondition)
	}
	if i.suspended {
		i.mu.Unlock()
		return nil
	}
	i.suspended = true
	i.parking.Store(true)
	var waits []chan struct{}
	for s, r := range i.srcs {
		if r == nil || i.ended[s] {
			continue
		}
		if d, ok := r.(interface{ SetReadDeadline(time.Time) error }); ok {
			_ = d.SetReadDeadline(time.Now())
		}
		waits = append(waits, i.copying[s])
	}
	sc := i.stdin
	i.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			i.Resume()
			return fmt.Errorf("suspend: output copier of %q still busy: %w", i.cfg.ID, ctx.Err())
		}
	}
	if sc != nil {
		f, err := sc.park(ctx)
		if err != nil {
			i.mu.Lock()
			i.stdinLate = sc // parks once its write returns: Resume takes over then
			i.mu.Unlock()
			i.Resume()
			return err
		}
		i.mu.Lock()
		i.stdin = nil
		i.stdinFifo = f
		if f == nil {
			i.stdinEnded = true
		}
		i.mu.Unlock()
	}
	return nil
}

// Resume undoes Suspend (a handover that was called off): the copiers of
// the streams that had not ended start again where they stopped.
func (i *IO) Resume() {
	i.mu.Lock()
	if !i.suspended || i.closed {
		i.mu.Unlock()
		return
	}
	i.suspended = false
	i.parking.Store(false)
	if i.logger != nil {
		i.logger.handed = false
	}
	var restart []logging.Stream
	for s, r := range i.srcs {
		if r == nil || i.ended[s] {
			continue
		}
		if d, ok := r.(interface{ SetReadDeadline(time.Time) error }); ok {
			_ = d.SetReadDeadline(time.Time{})
		}
		select {
		case <-i.copying[s]:
			restart = append(restart, logging.Stream(s))
		default: // never stopped (a Suspend that timed out on it)
		}
	}
	srcs, closeSrc := i.srcs, i.closeSrc
	fifo := i.stdinFifo
	i.stdinFifo = nil
	stdinNeeded := i.stdin == nil && fifo != nil
	if late := i.stdinLate; late != nil {
		// A stdin copier that was still writing when Suspend gave up:
		// once it has parked, a new one goes on from its FIFO. Owned by
		// the IO; it ends with the old copier.
		i.stdinLate, i.stdin = nil, nil
		go func() {
			<-late.done
			f := late.parkedFile()
			i.mu.Lock()
			defer i.mu.Unlock()
			switch {
			case f == nil:
				i.stdinEnded = true
			case i.closed:
				_ = f.Close()
			case i.suspended: // suspended again meanwhile
				i.stdinFifo = f
			default:
				if sc, err := newStdinCopier(i.cfg.Stdio.Stdin, i.stdinW, i.pty != nil, f); err == nil {
					i.stdin = sc
					i.stdinCustody(sc)
					sc.start()
				} else {
					_ = f.Close()
				}
			}
		}()
	}
	i.mu.Unlock()
	for _, s := range restart {
		i.copyOut(s, srcs[s], closeSrc[s])
	}
	if stdinNeeded {
		i.mu.Lock()
		if sc, err := newStdinCopier(i.cfg.Stdio.Stdin, i.stdinW, i.pty != nil, fifo); err == nil {
			i.stdin = sc
			i.stdinCustody(sc)
			sc.start()
		} else {
			_ = fifo.Close()
		}
		i.mu.Unlock()
	}
}

// HandoverFDs duplicates (close-on-exec) the descriptors a new monitor
// needs to take over the suspended IO. The caller owns them (IOFDs.Close
// if the handover is called off). A binary:// logger is handed over with
// its pid: closing this IO then leaves it running (Resume undoes that).
func (i *IO) HandoverFDs() (_ IOFDs, retErr error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.suspended || i.closed {
		return IOFDs{}, fmt.Errorf("handover of the IO of %q: not suspended: %w", i.cfg.ID, errdefs.ErrFailedPrecondition)
	}
	var d IOFDs
	defer func() {
		if retErr != nil {
			d.Close()
		}
	}()
	var err error
	dup := func(dst *int, f any) {
		if err != nil || f == nil {
			return
		}
		*dst, err = dupOf(f)
	}
	open := func(s logging.Stream) bool { return i.srcs[s] != nil && !i.ended[s] }
	if i.pty != nil {
		dup(&d.Console, i.pty)
	} else if i.pio != nil {
		if w := i.pio.Stdin(); w != nil && i.cfg.Stdio.Stdin != "" && !i.stdinCl && !i.stdinEnded {
			dup(&d.Stdin, w)
		}
		if open(logging.Stdout) {
			dup(&d.Stdout, i.pio.Stdout())
		}
		if open(logging.Stderr) {
			dup(&d.Stderr, i.pio.Stderr())
		}
	}
	d.StdinEnded = i.stdinEnded || i.stdinCl
	if i.stdinFifo != nil && !d.StdinEnded {
		dup(&d.StdinFifo, i.stdinFifo)
	}
	streamOpen := map[logging.Stream]bool{logging.Stdout: open(logging.Stdout), logging.Stderr: open(logging.Stderr)}
	for s, dst := range map[logging.Stream]*int{logging.Stdout: &d.StdoutFifo, logging.Stderr: &d.StderrFifo} {
		if f := i.fifos[s]; f != nil && streamOpen[s] {
			if fd, ferr := dupOf(f); ferr == nil {
				*dst = fd
			} // not opened yet (no reader so far): the new monitor opens it by path
		}
	}
	if l := i.logger; l != nil && err == nil {
		d.LoggerPid = l.pid
		if streamOpen[logging.Stdout] {
			dup(&d.LoggerStdout, l.out)
		}
		if streamOpen[logging.Stderr] && !i.cfg.Stdio.Terminal {
			dup(&d.LoggerStderr, l.err)
		}
		if err == nil {
			l.handed = true
		}
	}
	if err != nil {
		return IOFDs{}, fmt.Errorf("handover of the IO of %q: %w", i.cfg.ID, err)
	}
	return d, nil
}

// dupOf duplicates the descriptor of f (close-on-exec), without touching
// its blocking mode (os.File.Fd would make it blocking).
func dupOf(f any) (int, error) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		if c, ok := f.(interface{ Fd() uintptr }); ok {
			return unix.FcntlInt(c.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		}
		return 0, fmt.Errorf("%T has no descriptor", f)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	var derr error
	cerr := rc.Control(func(u uintptr) { fd, derr = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 3) })
	if cerr != nil {
		return 0, cerr
	}
	return fd, derr
}

// RestoreIO rebuilds, in a new monitor, the IO of a process that a
// previous one handed over (HandoverFDs): copying resumes where the
// previous monitor stopped. cfg is the process's IO configuration as for
// NewIO (its stdio parsed from the task record, its tap opened anew). It
// takes ownership of the descriptors in fds, also on error.
func RestoreIO(ctx context.Context, cfg IOConfig, fds IOFDs) (_ *IO, retErr error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	file := func(fd int, name string) *os.File {
		if fd <= 0 {
			return nil
		}
		return os.NewFile(uintptr(fd), name)
	}
	var (
		stdin     = file(fds.Stdin, "stdin")
		stdout    = file(fds.Stdout, "stdout")
		stderr    = file(fds.Stderr, "stderr")
		con       = file(fds.Console, "console")
		stdinFifo = file(fds.StdinFifo, "stdin-fifo")
		outFifo   = file(fds.StdoutFifo, "stdout-fifo")
		errFifo   = file(fds.StderrFifo, "stderr-fifo")
		logOut    = file(fds.LoggerStdout, "logger-stdout")
		logErr    = file(fds.LoggerStderr, "logger-stderr")
	)
	owned := []*os.File{stdin, stdout, stderr, con, stdinFifo, outFifo, errFifo, logOut, logErr}
	ioctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	i := &IO{cfg: cfg, ctx: ioctx, cancel: cancel, stdinEnded: fds.StdinEnded}
	if len(fds.Journal) > 0 {
		i.journal = &ioJournal{adopt: fds.Journal} // replayed by the copiers (startCopying)
	}
	defer func() {
		if retErr != nil {
			for _, f := range owned {
				if f != nil {
					_ = f.Close()
				}
			}
			if i.journal != nil {
				for _, fd := range i.journal.adopt {
					if fd > 0 {
						_ = unix.Close(fd)
					}
				}
				i.journal.adopt = nil
			}
			i.Close()
		}
	}()
	st := cfg.Stdio
	if st == nil {
		st = &ParsedStdio{}
		i.cfg.Stdio = st
	}
	outOpen, errOpen := stdout != nil, stderr != nil
	if con != nil {
		c, err := console.ConsoleFromFile(con)
		if err != nil {
			return nil, fmt.Errorf("restore of the terminal of %q: %w", cfg.ID, err)
		}
		owned[3] = nil
		i.con = c
		// As in Start: reads and writes through a non-blocking dup.
		dup, err := unix.FcntlInt(c.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err == nil {
			if err = unix.SetNonblock(dup, true); err != nil {
				_ = unix.Close(dup)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("restore of the terminal of %q: %w", cfg.ID, err)
		}
		i.pty = os.NewFile(uintptr(dup), "pty-master")
		i.stdinW = i.pty
		outOpen, errOpen = true, false
	} else {
		i.pio = &handedPipes{in: stdin, out: stdout, err: stderr}
		owned[0], owned[1], owned[2] = nil, nil, nil
		if stdin != nil {
			i.stdinW = stdin
		} else {
			i.stdinEnded = true
		}
	}
	if !outOpen {
		i.ended[logging.Stdout] = true
	}
	if !errOpen {
		i.ended[logging.Stderr] = true
	}
	// Destinations of the streams still open.
	switch st.Scheme {
	case SchemeNull:
	case SchemeFifo:
		for _, s := range []struct {
			stream logging.Stream
			path   string
			open   bool
			handed *os.File
			slot   int
		}{{logging.Stdout, st.Stdout, outOpen, outFifo, 5}, {logging.Stderr, st.Stderr, errOpen, errFifo, 6}} {
			switch {
			case s.path == "" || !s.open:
			case s.handed != nil:
				i.dests[s.stream] = append(i.dests[s.stream], s.handed)
				i.fifos[s.stream] = s.handed
				owned[s.slot] = nil
			default:
				if err := i.openFifoDest(s.stream, s.path); err != nil {
					return nil, err
				}
			}
		}
	case SchemeFile:
		if err := i.openDests(); err != nil {
			return nil, err
		}
	case SchemeBinary:
		if fds.LoggerPid <= 0 {
			return nil, fmt.Errorf("restore of the IO of %q: its binary:// logger was not handed over: %w", cfg.ID, errdefs.ErrInvalidArgument)
		}
		l, err := handedLogger(fds.LoggerPid, logOut, logErr)
		if err != nil {
			return nil, fmt.Errorf("restore of the IO of %q: %w", cfg.ID, err)
		}
		owned[7], owned[8] = nil, nil
		i.logger = l
		if logOut != nil {
			i.dests[logging.Stdout] = append(i.dests[logging.Stdout], logOut)
		}
		if logErr != nil {
			i.dests[logging.Stderr] = append(i.dests[logging.Stderr], logErr)
		}
	}
	if cfg.Tap != nil {
		i.dests[logging.Stdout] = append(i.dests[logging.Stdout], cfg.Tap.Writer(logging.Stdout))
		if !st.Terminal {
			i.dests[logging.Stderr] = append(i.dests[logging.Stderr], cfg.Tap.Writer(logging.Stderr))
		}
	}
	if !outOpen {
		i.dests[logging.Stdout] = closeAll(i.dests[logging.Stdout])
	}
	if !errOpen {
		i.dests[logging.Stderr] = closeAll(i.dests[logging.Stderr])
	}
	if st.Stdin == "" && stdinFifo != nil {
		_ = stdinFifo.Close()
		stdinFifo = nil
	}
	owned[4] = nil
	if err := i.startCopying(stdinFifo); err != nil {
		return nil, err
	}
	return i, nil
}

// closeAll closes the destinations of a stream that has ended already.
func closeAll(ds []io.WriteCloser) []io.WriteCloser {
	for _, d := range ds {
		_ = d.Close()
	}
	return nil
}

// handedPipes is the runc.IO of a process whose pipes a previous monitor
// handed over: only our ends exist here.
type handedPipes struct {
	in, out, err *os.File
}

func (h *handedPipes) Stdin() io.WriteCloser {
	if h.in == nil {
		return nil
	}
	return h.in
}

func (h *handedPipes) Stdout() io.ReadCloser {
	if h.out == nil {
		return nil
	}
	return h.out
}

func (h *handedPipes) Stderr() io.ReadCloser {
	if h.err == nil {
		return nil
	}
	return h.err
}

func (h *handedPipes) Close() error {
	for _, f := range []*os.File{h.in, h.out, h.err} {
		if f != nil {
			_ = f.Close()
		}
	}
	return nil
}

// Set is never called: the process exists already.
func (h *handedPipes) Set(*exec.Cmd) {}
