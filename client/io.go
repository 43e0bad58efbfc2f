package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"
)

// FIFOSet names the fifos of one process's stdio, in a directory of the
// client. The shim opens them by path; the client holds the other ends.
type FIFOSet struct {
	Dir   string
	Stdio Stdio
}

// NewFIFOSet returns the fifo paths for a process named name in dir (which
// it creates); a stream that is not wanted gets no fifo. With a terminal
// there is no separate stderr: the terminal carries both.
func NewFIFOSet(dir, name string, stdin, stdout, stderr, terminal bool) (*FIFOSet, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("fifo directory: %w", err)
	}
	s := &FIFOSet{Dir: dir, Stdio: Stdio{Terminal: terminal}}
	if stdin {
		s.Stdio.Stdin = filepath.Join(dir, name+"-stdin")
	}
	if stdout {
		s.Stdio.Stdout = filepath.Join(dir, name+"-stdout")
	}
	if stderr && !terminal {
		s.Stdio.Stderr = filepath.Join(dir, name+"-stderr")
	}
	return s, nil
}

// Mkfifo creates the fifos without opening them: for a process whose
// streams a later client attaches to (the shim's open of a stdin fifo waits
// for its first writer).
func (s *FIFOSet) Mkfifo() error {
	for _, p := range []string{s.Stdio.Stdin, s.Stdio.Stdout, s.Stdio.Stderr} {
		if p == "" || strings.Contains(p, "://") {
			continue
		}
		if err := syscall.Mkfifo(p, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("mkfifo %s: %w", p, err)
		}
	}
	return nil
}

// Remove deletes the fifos (not the directory).
func (s *FIFOSet) Remove() error {
	var errs []error
	for _, p := range []string{s.Stdio.Stdin, s.Stdio.Stdout, s.Stdio.Stderr} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Streams are the caller's ends of a process's stdio. A nil field means
// the stream is not connected (its fifo, if any, is still drained).
type Streams struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// IO copies between a FIFOSet and Streams. Make it with OpenIO before the
// process is created (the shim's open of a fifo waits for our end).
type IO struct {
	closers []io.Closer
	outputs sync.WaitGroup
	stdin   io.WriteCloser
	once    sync.Once
}

// OpenIO creates the fifos of set and starts copying: Stdin into the stdin
// fifo (then closes it and calls onStdinEOF, which should send CloseIO: a
// shim may hold the fifo open itself), the output fifos into Stdout and
// Stderr until the shim closes them. The copies are owned by the returned
// IO: Wait for output, Close to stop everything.
//
// ctx must live as long as the process: the fifo package closes a fifo
// whose open is still pending when ctx is cancelled (the shim opens its
// ends only at Create or Start), and what was written to it is lost.
func OpenIO(ctx context.Context, set *FIFOSet, streams Streams, onStdinEOF func()) (*IO, error) {
	i := &IO{}
	open := func(path string, flag int) (io.ReadWriteCloser, error) {
		f, err := fifo.OpenFifo(ctx, path, flag|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open fifo %s: %w", path, err)
		}
		i.closers = append(i.closers, f)
		return f, nil
	}
	for _, o := range []struct {
		path string
		w    io.Writer
	}{{set.Stdio.Stdout, streams.Stdout}, {set.Stdio.Stderr, streams.Stderr}} {
		if o.path == "" {
			continue
		}
		f, err := open(o.path, syscall.O_RDONLY)
		if err != nil {
			i.Close()
			return nil, err
		}
		w := o.w
		if w == nil {
			w = io.Discard
		}
		i.outputs.Add(1)
		go func() {
			defer i.outputs.Done()
			_, _ = io.Copy(w, f)
		}()
	}
	if set.Stdio.Stdin != "" {
		f, err := open(set.Stdio.Stdin, syscall.O_WRONLY)
		if err != nil {
			i.Close()
			return nil, err
		}
		i.stdin = f
		if streams.Stdin != nil {
			// This goroutine ends at the stdin's EOF, or when Close closes
			// the fifo under it (a terminal's stdin never ends by itself).
			go func() {
				_, _ = io.Copy(f, streams.Stdin)
				f.Close()
				if onStdinEOF != nil {
					onStdinEOF()
				}
			}()
		}
	}
	return i, nil
}

// Wait waits until the shim closed every output fifo (the process and all
// that inherited its stdio exited) or timeout passes; it reports whether the
// output ended.
func (i *IO) Wait(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		i.outputs.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// Close closes every fifo end the IO holds; the copies then end.
func (i *IO) Close() error {
	var errs []error
	i.once.Do(func() {
		for _, c := range i.closers {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}
