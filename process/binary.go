package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// loggerReadyTimeout bounds how long Create waits for a binary logger to
// signal readiness on fd 5.
const loggerReadyTimeout = 10 * time.Second

// loggerStopGrace is how long a binary logger gets to flush after SIGTERM
// before it is killed.
const loggerStopGrace = 3 * time.Second

// binaryLogger is a running binary:// logger. The container's stdout and
// stderr reach it as fds 3 and 4; it reports readiness by writing a byte to
// (or closing) fd 5.
type binaryLogger struct {
	pid      int
	signal   func(syscall.Signal) error
	out, err *os.File // our write ends of its fd 3 and fd 4
	exited   chan struct{}
	// handed: the logger goes on in the monitor it was handed to; stop
	// closes our ends only.
	handed bool
	pidfd  int // a handed-over logger's pidfd (0: none), closed by stop
}

// startLogger starts the logger named by st.URI with arguments from the
// query (key, first value; keys sorted so runs are reproducible) and an
// environment of exactly CONTAINER_ID and CONTAINER_NAMESPACE.
func startLogger(ctx context.Context, st *ParsedStdio, id, ns string, starter Starter) (_ *binaryLogger, retErr error) {
	if starter == nil {
		return nil, fmt.Errorf("binary logger %q: no process starter configured: %w", st.URI.Path, errdefs.ErrFailedPrecondition)
	}
	q := st.URI.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var args []string
	for _, k := range keys {
		args = append(args, k)
		if v := q[k]; len(v) > 0 && v[0] != "" {
			args = append(args, v[0])
		}
	}
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	outR, outW, err := pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	waitR, waitW, err := pipe()
	if err != nil {
		closeAll()
		return nil, err
	}
	cmd := exec.Command(st.URI.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + ns}
	cmd.ExtraFiles = []*os.File{outR, errR, waitW}
	ec, err := starter.Start(cmd)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("starting binary logger %q: %w", st.URI.Path, err)
	}
	// Only the logger keeps these ends now.
	_ = outR.Close()
	_ = errR.Close()
	_ = waitW.Close()
	l := &binaryLogger{pid: cmd.Process.Pid, signal: func(sig syscall.Signal) error { return cmd.Process.Signal(sig) },
		out: outW, err: errW, exited: make(chan struct{})}
	go func() {
		_, _ = starter.Wait(cmd, ec)
		close(l.exited)
	}()
	ready := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		_, err := waitR.Read(b)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		ready <- err
	}()
	timer := time.NewTimer(loggerReadyTimeout)
	defer timer.Stop()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
		err = fmt.Errorf("not ready after %s", loggerReadyTimeout)
	}
	_ = waitR.Close()
	if err != nil {
		l.stop()
		return nil, fmt.Errorf("binary logger %q: %w", st.URI.Path, err)
	}
	return l, nil
}

// stop closes the logger's input, asks it to finish with SIGTERM and kills
// it if it does not exit within loggerStopGrace.
func (l *binaryLogger) stop() {
	_ = l.out.Close()
	_ = l.err.Close()
	if l.handed {
		return
	}
	if l.pidfd > 0 {
		defer func() {
			<-l.exited // the watcher is done with it
			_ = unix.Close(l.pidfd)
		}()
	}
	select {
	case <-l.exited:
		return
	default:
	}
	_ = l.signal(syscall.SIGTERM)
	select {
	case <-l.exited:
		return
	case <-time.After(loggerStopGrace):
	}
	_ = l.signal(syscall.SIGKILL)
	<-l.exited
}

// handedLogger is a binary logger a previous monitor of this process
// handed over (live upgrade): it is still this process's child, so the
// wait loop reaps it; its end is seen through a pidfd.
func handedLogger(pid int, out, err *os.File) (*binaryLogger, error) {
	fd, perr := unix.PidfdOpen(pid, 0)
	if perr != nil {
		return nil, fmt.Errorf("binary logger pid %d: %w", pid, perr)
	}
	l := &binaryLogger{pid: pid, out: out, err: err, exited: make(chan struct{}), pidfd: fd}
	l.signal = func(sig syscall.Signal) error { return unix.PidfdSendSignal(fd, sig, nil, 0) }
	go func() {
		// Owned by the logger: it ends when the logger does.
		defer close(l.exited)
		for {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(pfd, -1); n > 0 || (err != nil && !errors.Is(err, unix.EINTR)) {
				return
			}
		}
	}()
	return l, nil
}
