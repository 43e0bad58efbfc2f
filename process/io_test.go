package process

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// cmdStarter starts helpers with exec.Cmd itself: these tests run no reaper.
type cmdStarter struct{}

func (cmdStarter) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	go func() {
		_ = cmd.Wait()
		ec <- runc.Exit{Pid: cmd.Process.Pid, Status: cmd.ProcessState.ExitCode()}
	}()
	return ec, nil
}

func (cmdStarter) Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}

// tapRecorder is a Tap keeping what each stream received.
type tapRecorder struct {
	mu     sync.Mutex
	got    map[logging.Stream]*bytes.Buffer
	closed bool
}

type tapWriter struct {
	t *tapRecorder
	s logging.Stream
}

func (w tapWriter) Write(p []byte) (int, error) {
	w.t.mu.Lock()
	defer w.t.mu.Unlock()
	return w.t.got[w.s].Write(p)
}
func (w tapWriter) Close() error { return nil }

func (t *tapRecorder) Writer(s logging.Stream) io.WriteCloser {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.got == nil {
		t.got = map[logging.Stream]*bytes.Buffer{}
	}
	t.got[s] = &bytes.Buffer{}
	return tapWriter{t, s}
}

func (t *tapRecorder) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	return nil
}

// runWithIO runs a shell command as the "container" with i's pipes.
func runWithIO(t *testing.T, i *IO, script string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	i.RuncIO().Set(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if sc, ok := i.RuncIO().(runc.StartCloser); ok {
		if err := sc.CloseAfterStart(); err != nil {
			t.Fatal(err)
		}
	}
	if err := i.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
}

func fifoReader(t *testing.T, dir, name string) (string, <-chan string) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	ch := make(chan string, 1)
	go func() {
		f, err := os.Open(p)
		if err != nil {
			ch <- err.Error()
			return
		}
		defer f.Close()
		b, _ := io.ReadAll(f)
		ch <- string(b)
	}()
	return p, ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no EOF on the FIFO")
		return ""
	}
}

func TestIOFifosAndTap(t *testing.T) {
	dir := t.TempDir()
	out, outC := fifoReader(t, dir, "out")
	errp, errC := fifoReader(t, dir, "err")
	st, err := ParseStdio(Stdio{Stdout: out, Stderr: errp}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tap := &tapRecorder{}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st, Tap: tap})
	if err != nil {
		t.Fatal(err)
	}
	runWithIO(t, i, "echo to-out; echo to-err >&2")
	// EOF reaches the client when the process is gone, before Close.
	if got := recv(t, outC); got != "to-out\n" {
		t.Errorf("stdout FIFO %q", got)
	}
	if got := recv(t, errC); got != "to-err\n" {
		t.Errorf("stderr FIFO %q", got)
	}
	i.Close()
	tap.mu.Lock()
	defer tap.mu.Unlock()
	if !tap.closed || tap.got[logging.Stdout].String() != "to-out\n" || tap.got[logging.Stderr].String() != "to-err\n" {
		t.Errorf("tap closed=%v got %q / %q", tap.closed, tap.got[logging.Stdout], tap.got[logging.Stderr])
	}
}

func TestIOFileURI(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "sub", "ctr.log")
	uri := "file://" + logPath
	st, err := ParseStdio(Stdio{Stdout: uri, Stderr: uri}, nil)
	if err != nil {
		t.Fatal(err)
	}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st})
	if err != nil {
		t.Fatal(err)
	}
	runWithIO(t, i, "echo a; echo b >&2")
	i.Close()
	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(data); !strings.Contains(s, "a\n") || !strings.Contains(s, "b\n") {
		t.Fatalf("file %q", s)
	}
}

// TestBinaryLogger checks the binary:// protocol: fds 3 and 4 carry the
// streams, fd 5 signals readiness, the environment is exactly
// CONTAINER_ID and CONTAINER_NAMESPACE, the query gives the arguments, and
// a logger that ignores SIGTERM is killed.
func TestBinaryLogger(t *testing.T) {
	dir := t.TempDir()
	res := filepath.Join(dir, "res")
	if err := os.MkdirAll(res, 0o755); err != nil {
		t.Fatal(err)
	}
	logger := filepath.Join(dir, "logger")
	script := `#!/bin/sh
trap '' TERM
echo "$@" > ` + res + `/args
/usr/bin/env > ` + res + `/env
/bin/cat <&3 > ` + res + `/out &
/bin/cat <&4 > ` + res + `/err &
printf x >&5
exec 5>&-
wait
exec /bin/sleep 1000
`
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	u := "binary://" + logger + "?b=2&a=1"
	st, err := ParseStdio(Stdio{Stdout: u, Stderr: u}, []string{dir})
	if err != nil {
		t.Fatal(err)
	}
	i, err := NewIO(context.Background(), IOConfig{ID: "cid", Namespace: "ns", Stdio: st, Starter: cmdStarter{}})
	if err != nil {
		t.Fatal(err)
	}
	runWithIO(t, i, "echo o; echo e >&2")
	i.Close() // waits for the SIGTERM grace, then kills
	for name, want := range map[string]string{"args": "a 1 b 2\n", "out": "o\n", "err": "e\n"} {
		got, _ := os.ReadFile(filepath.Join(res, name))
		if string(got) != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	env, _ := os.ReadFile(filepath.Join(res, "env"))
	lines := strings.Fields(string(env))
	for _, l := range lines {
		if !strings.HasPrefix(l, "CONTAINER_ID=") && !strings.HasPrefix(l, "CONTAINER_NAMESPACE=") &&
			!strings.HasPrefix(l, "PWD=") && !strings.HasPrefix(l, "SHLVL=") && !strings.HasPrefix(l, "_=") && !strings.HasPrefix(l, "OLDPWD=") {
			t.Errorf("unexpected environment entry %q", l)
		}
	}
	if !strings.Contains(string(env), "CONTAINER_ID=cid\n") || !strings.Contains(string(env), "CONTAINER_NAMESPACE=ns\n") {
		t.Errorf("environment %q", env)
	}
	select {
	case <-i.logger.exited:
	default:
		t.Error("logger still running after Close")
	}
}

func TestBinaryLoggerNotReady(t *testing.T) {
	dir := t.TempDir()
	logger := filepath.Join(dir, "logger")
	if err := os.WriteFile(logger, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A logger that exits at once closes fd 5: that is EOF, which counts as
	// ready (containerd's binary:// contract); its writes then fail and are
	// dropped without stopping the IO.
	st := &ParsedStdio{Stdio: Stdio{Stdout: "binary://" + logger}, Scheme: SchemeBinary, URI: &url.URL{Scheme: "binary", Path: logger}}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st, Starter: cmdStarter{}})
	if err != nil {
		t.Fatal(err)
	}
	runWithIO(t, i, "echo lost")
	i.Close()
}

// TestIOCloseWithOutputHeldOpen checks that Close does not wait forever
// for a background process that keeps the container's stdout open.
func TestIOCloseWithOutputHeldOpen(t *testing.T) {
	dir := t.TempDir()
	out, outC := fifoReader(t, dir, "out")
	st, err := ParseStdio(Stdio{Stdout: out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st})
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "bg.pid")
	runWithIO(t, i, "echo before; /bin/sleep 60 & echo $! > "+pidFile)
	defer func() {
		if data, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}()
	i.Close()
	if got := recv(t, outC); got != "before\n" {
		t.Fatalf("stdout %q", got)
	}
}

// TestIOTapWithoutClientStdio checks that a logging tap gets the output of
// a process whose client asked for no stdio at all.
func TestIOTapWithoutClientStdio(t *testing.T) {
	tap := &tapRecorder{}
	st, err := ParseStdio(Stdio{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	i, err := NewIO(context.Background(), IOConfig{ID: "c", Stdio: st, Tap: tap})
	if err != nil {
		t.Fatal(err)
	}
	runWithIO(t, i, "echo o; echo e >&2")
	i.Close()
	tap.mu.Lock()
	defer tap.mu.Unlock()
	if tap.got[logging.Stdout].String() != "o\n" || tap.got[logging.Stderr].String() != "e\n" {
		t.Fatalf("tap got %q / %q", tap.got[logging.Stdout], tap.got[logging.Stderr])
	}
}

// readerOf on a pipe (non-blocking, polled) reads data, reports EOF once
// the write end is closed, and reports a read end closed under it as
// os.ErrClosed (IO.Close stops a copier that way).
func TestReaderOfPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	read := readerOf(r)
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	bp, n, err := read()
	if err != nil || string((*bp)[:n]) != "hello" {
		t.Fatalf("read %q, %v", (*bp)[:n], err)
	}
	copyBufs.Put(bp)
	w.Close()
	if bp, _, err := read(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the writer closed: %v, want EOF", err)
	} else if bp != nil {
		copyBufs.Put(bp)
	}

	r2, w2, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	read2 := readerOf(r2)
	done := make(chan error, 1)
	go func() {
		_, _, err := read2()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it wait in the poller
	r2.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read end closed: %v, want os.ErrClosed", err)
	}
}
