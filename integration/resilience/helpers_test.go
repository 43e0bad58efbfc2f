// Package resilience holds the integration tests of issue 9: socket and
// file access, bounded resources, and what survives a monitor's crash.
// They run the real shim (bin/containerd-shim-conmon-v2) over real runc,
// as root.
package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/process"
)

// probeEnv switches the test binary into the probe (see TestMain).
const probeEnv = "CONMON_V2_RESILIENCE_PROBE"

// TestMain runs the probe when the test binary was started as one: a
// client that dials a shim socket (a path, or fd 3 through
// /proc/self/fd/3) and asks the Monitor API for Info. Exit 0: answered;
// 2: the connect failed; 3: connected but the call failed.
func TestMain(m *testing.M) {
	if target := os.Getenv(probeEnv); target != "" {
		os.Exit(probe(target))
	}
	if dir := os.Getenv(rootlessEnv); dir != "" {
		os.Exit(rootlessScenario(dir))
	}
	os.Exit(m.Run())
}

func probe(target string) int {
	conn, err := net.DialTimeout("unix", target, 5*time.Second)
	if err != nil {
		fmt.Println("connect:", err)
		return 2
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := conmonapi.NewMonitorClient(c).Info(ctx, &conmonapi.InfoRequest{}); err != nil {
		fmt.Println("call:", err)
		return 3
	}
	fmt.Println("answered")
	return 0
}

// runProbe runs the probe as uid/gid 65534 (nobody) against target, with
// extra as its fd 3 when not nil, and returns its exit code and output.
func runProbe(t *testing.T, target string, extra *os.File) (int, string) {
	t.Helper()
	exe := probeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = []string{probeEnv + "=" + target}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra}
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	default:
		t.Fatalf("probe: %v", err)
		return -1, ""
	}
}

// probeBinary copies the test binary where uid 65534 can run it.
func probeBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "conmon-v2-probe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "probe")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// env is one test's shim setup: the shim binary, a busybox rootfs and a
// group of its own.
type env struct {
	t      *testing.T
	shim   string
	rootfs string
	dir    string
	group  string
	suffix string
	opts   client.ShimOpts
	// slowOut, when set, is the client's stdout of the next start with
	// output: it gets what the FIFOs deliver, to pass on to the task's
	// buffer (TestKeeperCustody reads one FIFO slowly).
	slowOut func(w io.Writer) io.Writer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	dir := t.TempDir()
	e := &env{
		t:      t,
		shim:   testutil.Bin(t, "containerd-shim-conmon-v2"),
		rootfs: testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs")),
		dir:    dir,
		group:  fmt.Sprintf("resilience-%d-%d", os.Getpid(), time.Now().UnixNano()%1e9),
	}
	e.suffix = strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	e.opts = client.ShimOpts{Binary: e.shim, Namespace: "resilience"}
	return e
}

// dense switches the env to the dense mode (grouping = "namespace": one
// daemon for every container of the namespace), in a namespace of its own,
// through a configuration file passed with -config by a wrapper script.
func (e *env) dense() { e.configure("dense", "grouping = \"namespace\"\n") }

// configure runs the shim with the TOML text conf (through -config and a
// wrapper script), in a namespace of its own named after name.
func (e *env) configure(name, toml string) {
	t := e.t
	t.Helper()
	conf := filepath.Join(e.dir, name+".toml")
	if err := os.WriteFile(conf, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(e.dir, "shim-"+name)
	script := "#!/bin/sh\nexec " + e.shim + " -config " + conf + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.opts = client.ShimOpts{Binary: wrapper, Namespace: "resilience-" + name + "-" + e.suffix}
	t.Cleanup(func() {
		// The namespace's directories, once empty.
		for _, d := range []string{"/run/conmon-v2/state/", "/run/conmon-v2/runc/"} {
			_ = os.Remove(filepath.Join(d, e.opts.Namespace, "runc.log"))
			_ = os.Remove(filepath.Join(d, e.opts.Namespace, ".keeper-exits"))
			_ = os.Remove(filepath.Join(d, e.opts.Namespace))
		}
	})
}

// logDir makes the directory "logs" of the env (mode 0700) and returns
// its path.
func (e *env) logDir() string {
	e.t.Helper()
	dir := filepath.Join(e.dir, "logs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// task is one container started through the shim.
type task struct {
	id     string
	bundle string
	addr   string
	shim   *client.Shim
	io     *client.IO
	out    *testutil.SyncBuffer
	done   bool // removed
}

// start creates and starts a container running args in the env's group.
// With output, its stdout and stderr come back through FIFOs into
// task.out; extra annotations are added to the spec.
func (e *env) start(ctx context.Context, id string, args []string, output bool, ann map[string]string) *task {
	t := e.t
	t.Helper()
	id = id + "-" + e.suffix // unique: a failed run may leave runc state behind
	a := map[string]string{client.GroupAnnotation: e.group}
	for k, v := range ann {
		a[k] = v
	}
	bundle, addr, s := e.launch(ctx, id, client.SpecOpts{Args: args, Hostname: id, Annotations: a})
	tk := &task{id: id, bundle: bundle, addr: addr, shim: s, out: &testutil.SyncBuffer{}}
	t.Cleanup(func() {
		// A test that failed half-way: leave no container behind.
		if !tk.done {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if s2, err := client.Connect(cctx, tk.addr); err == nil {
				_ = s2.Kill(cctx, tk.id, "", uint32(unix.SIGKILL), true)
				_, _ = s2.Wait(cctx, tk.id, "")
				_, _ = s2.Delete(cctx, tk.id, "")
				s2.Close()
			}
			_, _ = client.DeleteShim(cctx, e.opts, tk.id, tk.bundle)
		}
	})
	var stdio client.Stdio
	if output {
		fifos, err := client.NewFIFOSet(filepath.Join(e.dir, "io-"+id), "init", false, true, true, false)
		if err != nil {
			t.Fatal(err)
		}
		var out io.Writer = tk.out
		if e.slowOut != nil {
			out, e.slowOut = e.slowOut(out), nil
		}
		tk.io, err = client.OpenIO(ctx, fifos, client.Streams{Stdout: out, Stderr: tk.out}, nil)
		if err != nil {
			t.Fatal(err)
		}
		stdio = fifos.Stdio
	}
	if _, err := s.Create(ctx, client.CreateOpts{ID: id, Bundle: bundle, Stdio: stdio}); err != nil {
		t.Fatalf("create %s: %v", id, err)
	}
	if _, err := s.Start(ctx, id, ""); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	return tk
}

// launch writes the bundle of container id (a directory of the env's)
// with the spec so on the env's rootfs, starts the container's shim (or
// joins a running daemon) with the env's options and connects to it.
func (e *env) launch(ctx context.Context, id string, so client.SpecOpts) (bundle, addr string, s *client.Shim) {
	t := e.t
	t.Helper()
	bundle = filepath.Join(e.dir, id)
	so.Rootfs = e.rootfs
	spec, err := client.NewSpec(so)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.WriteSpec(bundle, spec); err != nil {
		t.Fatal(err)
	}
	addr, err = client.StartShim(ctx, e.opts, id, bundle)
	if err != nil {
		t.Fatal(err)
	}
	s, err = client.Connect(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	return bundle, addr, s
}

// remove kills, waits for and deletes the task, and closes its client.
func (tk *task) remove(t *testing.T) {
	t.Helper()
	tk.done = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = tk.shim.Kill(ctx, tk.id, "", uint32(unix.SIGKILL), true)
	if _, err := tk.shim.Wait(ctx, tk.id, ""); err != nil {
		t.Errorf("wait %s: %v", tk.id, err)
	}
	if _, err := tk.shim.Delete(ctx, tk.id, ""); err != nil {
		t.Errorf("delete %s: %v", tk.id, err)
	}
	if tk.io != nil {
		tk.io.Close()
	}
	tk.shim.Close()
}

// socketPath is the filesystem path of a shim address.
func socketPath(addr string) string { return strings.TrimPrefix(addr, "unix://") }

// eventually is testutil.Eventually: retries f until it succeeds or d
// passed; a deadlock guard, not a timing assertion.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	testutil.Eventually(t, d, f)
}

// fdCount counts the open descriptors of pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func alive(pid int) bool { return unix.Kill(pid, 0) == nil }

// killAndDelete kills task id on s with SIGKILL, waits for its exit (137)
// and deletes it; any failure ends the test.
func killAndDelete(ctx context.Context, t *testing.T, s *client.Shim, id string) {
	t.Helper()
	if err := s.Kill(ctx, id, "", uint32(unix.SIGKILL), true); err != nil {
		t.Fatal(err)
	}
	if w, err := s.Wait(ctx, id, ""); err != nil || w.Status != 137 {
		t.Fatalf("wait: %v %v, want 137", w, err)
	}
	if _, err := s.Delete(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
}

// killTasks kills each of tasks (through s) with SIGKILL and waits for
// its exit: 137.
func killTasks(ctx context.Context, t *testing.T, s *client.Shim, tasks []*task) {
	t.Helper()
	for _, tk := range tasks {
		if err := s.Kill(ctx, tk.id, "", uint32(unix.SIGKILL), true); err != nil {
			t.Fatal(err)
		}
		w, err := s.Wait(ctx, tk.id, "")
		if err != nil {
			t.Fatal(err)
		}
		if w.Status != 137 {
			t.Errorf("%s exited %d, want 137", tk.id, w.Status)
		}
	}
}

// waitNewDaemon waits until a daemon other than daemon (its pid) answers
// Info on s (conn names s in the error), and returns its Info.
func waitNewDaemon(ctx context.Context, t *testing.T, s *client.Shim, daemon int, conn string) client.ShimInfo {
	t.Helper()
	var info client.ShimInfo
	eventually(t, 30*time.Second, func() error {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		in, err := s.Info(cctx)
		if err != nil || int(in.Pid) == daemon {
			return fmt.Errorf("no new daemon on %s yet: %+v %v", conn, in, err)
		}
		info = in
		return nil
	})
	return info
}

// binaryLogger is a binary:// logger (a script, as containerd's --log-uri
// binary:// runs) that appends the container's stdout to a file and
// notes its pid each time it starts.
type binaryLogger struct {
	t    *testing.T
	uri  string
	got  string // what it received
	pids string // its pids, one a start
}

// binaryLogger configures the env as configure(name, toml) does, the
// logger's directory allowed (logger_dirs), and writes the logger there.
func (e *env) binaryLogger(name, toml string) *binaryLogger {
	t := e.t
	t.Helper()
	loggers := filepath.Join(e.dir, "loggers")
	if err := os.MkdirAll(loggers, 0o755); err != nil {
		t.Fatal(err)
	}
	e.configure(name, toml+fmt.Sprintf("logger_dirs = [%q]\n", loggers))
	l := &binaryLogger{t: t, got: filepath.Join(e.dir, "logger.out"), pids: filepath.Join(e.dir, "logger.pids")}
	logger := filepath.Join(loggers, "logger")
	script := "#!/bin/sh\necho $$ >> " + l.pids + "\nexec 5>&-\ncat <&3 >> " + l.got + " &\ncat <&4 >/dev/null &\nwait\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	l.uri = "binary://" + logger
	return l
}

// size is how many bytes the logger received so far.
func (l *binaryLogger) size() int64 {
	st, err := os.Stat(l.got)
	if err != nil {
		return 0
	}
	return st.Size()
}

// waitMore waits until the logger received more than n bytes; why is the
// error if it does not.
func (l *binaryLogger) waitMore(n int64, why string) {
	l.t.Helper()
	eventually(l.t, 10*time.Second, func() error {
		if l.size() <= n {
			return errors.New(why)
		}
		return nil
	})
}

// output is what the logger received.
func (l *binaryLogger) output() string {
	data, _ := os.ReadFile(l.got)
	return string(data)
}

// checkStartedOnce checks that the logger was started once, and that it
// stopped (the task was deleted).
func (l *binaryLogger) checkStartedOnce() {
	t := l.t
	t.Helper()
	pidData, _ := os.ReadFile(l.pids)
	lp := strings.Fields(string(pidData))
	if len(lp) != 1 {
		t.Fatalf("logger started %d times (%q), want once", len(lp), lp)
	}
	pid, _ := strconv.Atoi(lp[0])
	eventually(t, 10*time.Second, func() error {
		if alive(pid) && !process.ProcStatus(pid).Zombie {
			return fmt.Errorf("logger %d still runs after the delete", pid)
		}
		return nil
	})
}

// k8sFile is the annotations that send a container's output to the
// k8s-file log path (the configuration must allow "path").
func k8sFile(path string) map[string]string {
	return map[string]string{
		client.LogAnnotationPrefix + "driver": "k8s-file",
		client.LogAnnotationPrefix + "path":   path,
	}
}

// startCounterExec starts the exec "counter" of task id through s: it
// prints counterScript's numbers into the client's FIFOs. It returns what
// they received so far and their IO, which the caller closes.
func (e *env) startCounterExec(ctx context.Context, s *client.Shim, id string) (*testutil.SyncBuffer, *client.IO) {
	t := e.t
	t.Helper()
	out := &testutil.SyncBuffer{}
	fifos, err := client.NewFIFOSet(filepath.Join(e.dir, "io-exec"), "exec", false, true, false, false)
	if err != nil {
		t.Fatal(err)
	}
	cio, err := client.OpenIO(ctx, fifos, client.Streams{Stdout: out}, nil)
	if err != nil {
		t.Fatal(err)
	}
	proc := &specs.Process{Args: []string{"sh", "-c", counterScript}, Cwd: "/", Env: []string{"PATH=/bin:/sbin:/usr/bin"}}
	if err := s.Exec(ctx, id, "counter", proc, fifos.Stdio); err != nil {
		cio.Close()
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, id, "counter"); err != nil {
		cio.Close()
		t.Fatal(err)
	}
	return out, cio
}

// ttyExec is the exec "tty" of a task: cat on a terminal, its stdin from
// the client's FIFO.
type ttyExec struct {
	t     *testing.T
	stdin *io.PipeWriter
	out   *testutil.SyncBuffer
	io    *client.IO
}

// startTTYExec starts the exec "tty" of task id through s. The caller
// closes it.
func (e *env) startTTYExec(ctx context.Context, s *client.Shim, id string) *ttyExec {
	t := e.t
	t.Helper()
	fifos, err := client.NewFIFOSet(filepath.Join(e.dir, "io-tty"), "tty", true, true, false, true)
	if err != nil {
		t.Fatal(err)
	}
	stdinR, stdinW := io.Pipe()
	x := &ttyExec{t: t, stdin: stdinW, out: &testutil.SyncBuffer{}}
	x.io, err = client.OpenIO(ctx, fifos, client.Streams{Stdin: stdinR, Stdout: x.out}, nil)
	if err != nil {
		stdinW.Close()
		t.Fatal(err)
	}
	proc := &specs.Process{Args: []string{"cat"}, Terminal: true, Cwd: "/", Env: []string{"PATH=/bin:/sbin:/usr/bin", "TERM=xterm"}}
	if err := s.Exec(ctx, id, "tty", proc, fifos.Stdio); err != nil {
		x.close()
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, id, "tty"); err != nil {
		x.close()
		t.Fatal(err)
	}
	return x
}

// close closes the exec's IO, then its stdin.
func (x *ttyExec) close() {
	x.io.Close()
	x.stdin.Close()
}

// say writes the line word to the exec's stdin.
func (x *ttyExec) say(word string) {
	x.t.Helper()
	if _, err := io.WriteString(x.stdin, word+"\n"); err != nil {
		x.t.Fatal(err)
	}
}

// echoed waits until word came back twice: the terminal echoes the line,
// then cat writes it.
func (x *ttyExec) echoed(word string) {
	x.t.Helper()
	eventually(x.t, 10*time.Second, func() error {
		if n := strings.Count(x.out.String(), word); n < 2 {
			return fmt.Errorf("terminal output %q: %q %d times, want 2", x.out.String(), word, n)
		}
		return nil
	})
}

// stop kills the exec (through s) and deletes it: its exit status must
// be 137.
func (x *ttyExec) stop(ctx context.Context, s *client.Shim, id string) {
	t := x.t
	t.Helper()
	if err := s.Kill(ctx, id, "tty", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	if w, err := s.Wait(ctx, id, "tty"); err != nil || w.Status != 137 {
		t.Errorf("terminal exec: %+v %v, want 137", w, err)
	}
	if _, err := s.Delete(ctx, id, "tty"); err != nil {
		t.Errorf("delete terminal exec: %v", err)
	}
}
