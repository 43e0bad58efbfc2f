package conmon

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// runtimeIO hands the runtime its ends of the container's stdio. It
// implements go-runc's IO; only Set and Close are used.
type runtimeIO struct {
	stdin, stdout, stderr *os.File
}

func (r *runtimeIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = r.stdin, r.stdout, r.stderr
}

// Close closes the runtime's ends in the monitor once the runtime started:
// the container holds them now, and the monitor's readers see EOF when the
// container (and whatever inherited them) is gone.
func (r *runtimeIO) Close() error {
	for _, f := range []*os.File{r.stdin, r.stdout, r.stderr} {
		if f != nil && f.Fd() > 2 {
			f.Close()
		}
	}
	return nil
}

func (r *runtimeIO) Stdin() io.WriteCloser { return nil }
func (r *runtimeIO) Stdout() io.ReadCloser { return nil }
func (r *runtimeIO) Stderr() io.ReadCloser { return nil }

// drainReader reads a container's output pipe (or terminal master). Once
// Drain is called it stops waiting: it returns what the pipe still holds
// and then EOF, even if some process still has the write side open
// (conmon's drain at exit).
type drainReader struct {
	f        *os.File
	draining atomic.Bool
	done     chan struct{} // closed at EOF
	once     sync.Once
}

func newDrainReader(f *os.File) *drainReader {
	return &drainReader{f: f, done: make(chan struct{})}
}

func (d *drainReader) eof() { d.once.Do(func() { close(d.done) }) }

func (d *drainReader) Read(p []byte) (int, error) {
	if !d.draining.Load() {
		n, err := d.f.Read(p)
		if n > 0 {
			return n, nil
		}
		if err == nil {
			return 0, nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			d.eof()
			if errors.Is(err, unix.EIO) { // terminal master after the slave closed
				return 0, io.EOF
			}
			return 0, err
		}
	}
	rc, err := d.f.SyscallConn()
	if err != nil {
		d.eof()
		return 0, io.EOF
	}
	var n int
	var rerr error
	_ = rc.Control(func(fd uintptr) {
		for {
			n, rerr = unix.Read(int(fd), p)
			if !errors.Is(rerr, unix.EINTR) {
				return
			}
		}
	})
	if n > 0 {
		return n, nil
	}
	d.eof()
	return 0, io.EOF
}

// SyscallConn exposes the pipe's descriptor, so that the log pipeline can
// grow the pipe of a busy stream: with the kernel's 64 KiB pipe the
// container blocks, and the monitor wakes, every 64 KiB. Whether it does
// is the project's one policy (internal/pipesize): not under rootless
// Podman, where every grown pipe would take 1 MiB of its user's
// fs.pipe-user-pages-soft until the container exits.
func (d *drainReader) SyscallConn() (syscall.RawConn, error) {
	return d.f.SyscallConn()
}

// Drain makes the reader return what is left and then EOF.
func (d *drainReader) Drain() {
	d.draining.Store(true)
	_ = d.f.SetReadDeadline(time.Now())
}

// Close closes the file (after the pipeline is done with it).
func (d *drainReader) Close() { d.f.Close() }

// stdinWriter is the container's stdin as attach clients see it.
type stdinWriter struct {
	mu     sync.Mutex
	w      *os.File
	closer bool // CloseStdin closes w (a pipe); a terminal stays open
	closed bool
}

func (s *stdinWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil || s.closed {
		return len(p), nil // no stdin: discarded, as conmon does
	}
	return s.w.Write(p)
}

func (s *stdinWriter) set(w *os.File) {
	s.mu.Lock()
	s.w = w
	s.mu.Unlock()
}

func (s *stdinWriter) CloseStdin() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || !s.closer {
		return
	}
	s.closed = true
	if s.w != nil {
		s.w.Close()
	}
}
