// Package podman runs the real Podman 4.3.1 with `--conmon bin/conmon-v2`
// and checks what users see: run, logs, exec, attach, stop, kill, wait,
// restart, rm, the log drivers and OOM reporting. Every test uses a private
// Podman store (--root, --runroot, --tmpdir under t.TempDir(), vfs, file
// events) and a busybox rootfs, so nothing global is touched.
package podman

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// env is one private Podman installation driving conmon-v2.
type env struct {
	t      *testing.T
	dir    string
	rootfs string
	conmon string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "podman")
	testutil.NeedCommand(t, "runc")
	dir := t.TempDir()
	e := &env{
		t:      t,
		dir:    dir,
		rootfs: testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs")),
		conmon: testutil.Bin(t, "conmon-v2"),
	}
	t.Cleanup(func() {
		// Containers left behind would keep monitors and mounts alive.
		_, _ = e.podmanCtx(context.Background(), nil, "rm", "-af", "-t", "0")
	})
	return e
}

func (e *env) globalArgs() []string {
	return []string{
		"--root", filepath.Join(e.dir, "root"),
		"--runroot", filepath.Join(e.dir, "runroot"),
		"--tmpdir", filepath.Join(e.dir, "tmp"),
		"--storage-driver", "vfs",
		"--events-backend", "file",
		"--runtime", "runc",
		"--cgroup-manager", "cgroupfs",
		"--conmon", e.conmon,
	}
}

// runArgs are the flags every container needs on this machine, then the
// caller's options, then the rootfs (--rootfs is a flag: the rootfs is the
// first positional argument) and the command.
func (e *env) runArgs(opts []string, cmd ...string) []string {
	a := []string{
		"--network", "none",
		"--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
	}
	a = append(a, opts...)
	a = append(a, "--rootfs", e.rootfs)
	return append(a, cmd...)
}

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) podmanCtx(ctx context.Context, stdin []byte, args ...string) (result, error) {
	cmd := exec.CommandContext(ctx, "podman", append(e.globalArgs(), args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.Dir = e.dir
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
		err = nil
	}
	return r, err
}

// podman runs podman with a 60 s bound and fails the test if it could not
// run at all; the exit code is the caller's to check.
func (e *env) podman(stdin []byte, args ...string) result {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := e.podmanCtx(ctx, stdin, args...)
	if err != nil {
		e.t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// ok runs podman and fails the test on a non-zero exit.
func (e *env) ok(args ...string) string {
	e.t.Helper()
	r := e.podman(nil, args...)
	if r.code != 0 {
		e.t.Fatalf("podman %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// run is `podman run <opts> --rootfs <rootfs> <cmd>`.
func (e *env) run(stdin []byte, opts []string, cmd ...string) result {
	e.t.Helper()
	return e.podman(stdin, append([]string{"run"}, e.runArgs(opts, cmd...)...)...)
}

// detached starts a container and returns its ID, checking that its
// monitor really is conmon-v2 (Podman silently falls back to
// /usr/bin/conmon when it dislikes a --conmon binary).
func (e *env) detached(opts []string, cmd ...string) string {
	e.t.Helper()
	id := strings.TrimSpace(e.ok(append([]string{"run", "-d"}, e.runArgs(opts, cmd...)...)...))
	pid := strings.TrimSpace(e.ok("inspect", "--format", "{{.State.ConmonPid}}", id))
	exe, err := os.Readlink("/proc/" + pid + "/exe")
	if err == nil && strings.TrimSuffix(exe, " (deleted)") != e.conmon {
		e.t.Fatalf("container monitor is %s, want %s", exe, e.conmon)
	}
	return id
}

func (e *env) inspect(id, format string) string {
	e.t.Helper()
	return strings.TrimSpace(e.ok("inspect", "--format", format, id))
}

func (e *env) waitStatus(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := e.inspect(id, "{{.State.Status}}")
		if st == want {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("container %s: status %s, want %s", id, st, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRunAttached(t *testing.T) {
	e := newEnv(t)
	r := e.run(nil, nil, "echo", "hi")
	if r.code != 0 || r.stdout != "hi\n" {
		t.Fatalf("run echo: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = e.run(nil, nil, "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Fatalf("run exit 7: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// --rm: the container is gone once run returns.
	r = e.run(nil, []string{"--rm", "--name", "gone"}, "echo", "bye")
	if r.code != 0 || r.stdout != "bye\n" {
		t.Fatalf("run --rm: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := e.podman(nil, "container", "exists", "gone"); r.code != 1 {
		t.Fatalf("container exists after run --rm: exit %d", r.code)
	}
	// -i: stdin reaches the container and its EOF ends it.
	r = e.run([]byte("line1\nline2\n"), []string{"-i"}, "sh", "-c", "cat; echo done")
	if r.code != 0 || r.stdout != "line1\nline2\ndone\n" {
		t.Fatalf("run -i: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestRunFailureAndFds(t *testing.T) {
	e := newEnv(t)
	// The runtime's error travels through the sync pipe to Podman.
	r := e.run(nil, nil, "/nonexistent")
	if r.code != 127 || !strings.Contains(r.stderr, `exec: "/nonexistent"`) {
		t.Fatalf("run /nonexistent: exit %d, stderr %q", r.code, r.stderr)
	}
	// --preserve-fds: the caller's fd 3 reaches the container.
	f, err := os.Open("/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want, _ := os.ReadFile("/etc/hostname")
	cmd := exec.Command("podman", append(append(e.globalArgs(), "run"), e.runArgs([]string{"--preserve-fds", "1"}, "cat", "/proc/self/fd/3")...)...)
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.Output()
	if err != nil || string(out) != string(want) {
		t.Fatalf("run --preserve-fds 1: %v, output %q, want %q", err, out, want)
	}
	// Socket activation (LISTEN_FDS, LISTEN_PID naming podman): the fds and
	// the variables reach the container, as with conmon.
	script := `exec env LISTEN_PID=$$ LISTEN_FDS=1 podman "$@"`
	sa := append([]string{"-c", script, "sh"}, e.globalArgs()...)
	sa = append(sa, "run")
	sa = append(sa, e.runArgs(nil, "sh", "-c", "echo fds=$LISTEN_FDS pid=$LISTEN_PID; cat /proc/self/fd/3")...)
	cmd = exec.Command("sh", sa...)
	cmd.ExtraFiles = []*os.File{f}
	out, err = cmd.Output()
	if err != nil || string(out) != "fds=1 pid=1\n"+string(want) {
		t.Fatalf("socket activation: %v, output %q", err, out)
	}
	// exec -d: the session runs without anyone attached.
	id := e.detached(nil, "sleep", "1000")
	e.ok("exec", "-d", id, "sh", "-c", "echo detached > /tmp/f")
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := e.podman(nil, "exec", id, "cat", "/tmp/f")
		if r.stdout == "detached\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exec -d never ran: %q %q", r.stdout, r.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.ok("rm", "-f", "-t", "0", id)
}

func TestRunTerminal(t *testing.T) {
	e := newEnv(t)
	testutil.NeedCommand(t, "script")
	// The caller's terminal size reaches the container through ctl.
	cmdline := fmt.Sprintf("stty rows 40 cols 100; podman %s run -t %s sh -c 'tty; stty size; echo x'",
		strings.Join(e.globalArgs(), " "), strings.Join(e.runArgs(nil), " "))
	out, err := exec.Command("script", "-qec", cmdline, "/dev/null").CombinedOutput()
	if err != nil {
		t.Fatalf("script podman run -t: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.Contains(s, "/dev/pts/0\r\n") || !strings.Contains(s, "40 100\r\n") || !strings.Contains(s, "x\r\n") {
		t.Fatalf("podman run -t output %q: want the tty name, its size 40x100 and CRLF line ends", s)
	}
}

func TestDetachedLogsStop(t *testing.T) {
	e := newEnv(t)
	id := e.detached(nil, "sh", "-c", `echo first; echo err >&2; sleep 1.2; echo second; trap "echo bye; exit 3" TERM; while true; do sleep 0.1; done`)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.ok("logs", id), "second") {
		if time.Now().After(deadline) {
			t.Fatal("second line never reached podman logs")
		}
		time.Sleep(100 * time.Millisecond)
	}
	r := e.podman(nil, "logs", id)
	if r.stdout != "first\nsecond\n" || r.stderr != "err\n" {
		t.Fatalf("logs: stdout %q stderr %q", r.stdout, r.stderr)
	}
	if got := e.ok("logs", "--tail", "1", id); got != "second\n" {
		t.Fatalf("logs --tail 1: %q", got)
	}
	// --since: the lines stamped after the first one only.
	path := e.inspect(id, "{{.HostConfig.LogConfig.Path}}")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var secondTS string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasSuffix(line, " second") {
			secondTS = strings.Fields(line)[0]
		}
	}
	if secondTS == "" {
		t.Fatalf("no k8s-file line for second in %q", data)
	}
	ts, err := time.Parse(time.RFC3339Nano, secondTS)
	if err != nil {
		t.Fatal(err)
	}
	since := ts.Add(-500 * time.Millisecond).Format(time.RFC3339Nano)
	if got := e.ok("logs", "--since", since, id); got != "second\n" {
		t.Fatalf("logs --since %s: %q", since, got)
	}

	e.ok("stop", "-t", "10", id)
	if got := e.inspect(id, "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 3" {
		t.Fatalf("after stop: %s, want exited 3", got)
	}
	if got := e.ok("logs", "--tail", "1", id); got != "bye\n" {
		t.Fatalf("last log line after stop: %q (the drain at exit lost it)", got)
	}
	checkK8sFile(t, path)
	e.ok("rm", id)
	if r := e.podman(nil, "container", "exists", id); r.code != 1 {
		t.Fatalf("container exists after rm: exit %d", r.code)
	}
}

// checkK8sFile checks every line of a k8s-file log: RFC 3339 time with a
// numeric offset, stream, P or F.
func checkK8sFile(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 {
			t.Fatalf("k8s-file line %q: want 4 fields", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, f[0]); err != nil || strings.HasSuffix(f[0], "Z") {
			t.Fatalf("k8s-file line %q: time %q is not RFC 3339 with a numeric offset", line, f[0])
		}
		if (f[1] != "stdout" && f[1] != "stderr") || (f[2] != "F" && f[2] != "P") {
			t.Fatalf("k8s-file line %q: bad stream or tag", line)
		}
	}
}

func TestLogsFollow(t *testing.T) {
	e := newEnv(t)
	id := e.detached(nil, "sh", "-c", "for i in 1 2 3 4 5; do echo n$i; sleep 0.2; done")
	got := e.ok("logs", "-f", id)
	if got != "n1\nn2\nn3\nn4\nn5\n" {
		t.Fatalf("logs -f: %q", got)
	}
	if c := e.ok("wait", id); strings.TrimSpace(c) != "0" {
		t.Fatalf("wait: %q", c)
	}
}

func TestExec(t *testing.T) {
	e := newEnv(t)
	id := e.detached(nil, "sleep", "1000")
	r := e.podman(nil, "exec", id, "sh", "-c", "echo execout; echo execerr >&2; exit 5")
	if r.code != 5 || r.stdout != "execout\n" || r.stderr != "execerr\n" {
		t.Fatalf("exec: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = e.podman([]byte("to-stdin\n"), "exec", "-i", id, "cat")
	if r.code != 0 || r.stdout != "to-stdin\n" {
		t.Fatalf("exec -i: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	testutil.NeedCommand(t, "script")
	cmdline := fmt.Sprintf("podman %s exec -it %s sh -c 'tty; exit 4'", strings.Join(e.globalArgs(), " "), id)
	out, err := exec.Command("script", "-qec", cmdline, "/dev/null").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 4 {
		t.Fatalf("exec -it: %v (want exit 4)\n%s", err, out)
	}
	if !strings.Contains(string(out), "/dev/pts/") {
		t.Fatalf("exec -it output %q: no tty", out)
	}
	e.ok("rm", "-f", "-t", "0", id)
}

func TestKillWaitRestart(t *testing.T) {
	e := newEnv(t)
	id := e.detached(nil, "sh", "-c", "echo started; while true; do sleep 0.1; done")
	e.ok("kill", "-s", "KILL", id)
	if got := strings.TrimSpace(e.ok("wait", id)); got != "137" {
		t.Fatalf("wait after kill -9: %q, want 137", got)
	}
	if got := e.inspect(id, "{{.State.ExitCode}}"); got != "137" {
		t.Fatalf("ExitCode %s, want 137", got)
	}
	e.ok("restart", id)
	e.waitStatus(id, "running")
	if got := e.ok("logs", id); got != "started\nstarted\n" {
		t.Fatalf("logs after restart: %q", got)
	}
	e.ok("kill", "-s", "TERM", id) // sh as pid 1 ignores TERM without a trap
	e.ok("kill", "-s", "KILL", id)
	if got := strings.TrimSpace(e.ok("wait", id)); got != "137" {
		t.Fatalf("wait after restart+kill: %q", got)
	}
}

func TestAttach(t *testing.T) {
	e := newEnv(t)
	id := e.detached(nil, "sh", "-c", "while true; do echo tick; echo tock >&2; sleep 0.2; done")
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", append(e.globalArgs(), "attach", "--no-stdin", "--sig-proxy=false", id)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	_ = cmd.Run() // killed by the context
	if !strings.Contains(out.String(), "tick\n") || !strings.Contains(errb.String(), "tock\n") {
		t.Fatalf("attach: stdout %q stderr %q", out.String(), errb.String())
	}
	if got := e.inspect(id, "{{.State.Status}}"); got != "running" {
		t.Fatalf("container %s after the attach client went away", got)
	}
	e.ok("rm", "-f", "-t", "0", id)
}

func TestLogDrivers(t *testing.T) {
	e := newEnv(t)
	t.Run("none", func(t *testing.T) {
		r := e.run(nil, []string{"--log-driver", "none"}, "sh", "-c", "echo visible")
		if r.code != 0 || r.stdout != "visible\n" {
			t.Fatalf("attached run with -l none: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("passthrough", func(t *testing.T) {
		r := e.run(nil, []string{"--log-driver", "passthrough"}, "sh", "-c", "echo through; echo err >&2; exit 2")
		if r.code != 2 || r.stdout != "through\n" || r.stderr != "err\n" {
			t.Fatalf("passthrough: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("k8s-file-max-size", func(t *testing.T) {
		id := e.detached([]string{"--log-opt", "max-size=1k"}, "sh", "-c",
			"i=0; while [ $i -lt 200 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxx; i=$((i+1)); done")
		e.ok("wait", id)
		path := e.inspect(id, "{{.HostConfig.LogConfig.Path}}")
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > 1000 {
			t.Fatalf("log is %d bytes, max-size is 1k", fi.Size())
		}
		got := e.ok("logs", id)
		if !strings.HasSuffix(got, "line-199-xxxxxxxxxxxxxxxxxxxx\n") {
			t.Fatalf("logs after truncation end with %q", got[max(0, len(got)-80):])
		}
	})
	t.Run("journald", func(t *testing.T) {
		testutil.Journald(t)
		id := e.detached([]string{"--log-driver", "journald"}, "sh", "-c", "echo to-journal; echo err-journal >&2")
		e.ok("wait", id)
		deadline := time.Now().Add(10 * time.Second)
		for {
			r := e.podman(nil, "logs", id)
			if r.stdout == "to-journal\n" && r.stderr == "err-journal\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("logs from journald: stdout %q stderr %q", r.stdout, r.stderr)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

func TestTimeoutHealth(t *testing.T) {
	e := newEnv(t)
	// --timeout: conmon's -T kills the container, exit -1 (255).
	r := e.run(nil, []string{"--timeout", "1"}, "sleep", "30")
	if r.code != 255 {
		t.Fatalf("run --timeout 1: exit %d (stderr %q), want 255", r.code, r.stderr)
	}
	// healthcheck run is an exec session through the monitor.
	id := e.detached([]string{"--health-cmd", "test -e /etc/passwd"}, "sleep", "1000")
	if r := e.podman(nil, "healthcheck", "run", id); r.code != 0 {
		t.Fatalf("healthcheck run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if got := e.inspect(id, "{{.State.Health.Status}}"); got != "healthy" {
		t.Fatalf("health %q", got)
	}
	e.ok("rm", "-f", "-t", "0", id)
}

// TestLifecycle covers what Podman drives through the exit command
// (podman container cleanup): --rm after stop, restart policies; plus
// start -a and a container in a pod.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	id := e.detached([]string{"--rm"}, "sleep", "1000")
	e.ok("stop", "-t", "0", id)
	deadline := time.Now().Add(10 * time.Second)
	for e.podman(nil, "container", "exists", id).code != 1 {
		if time.Now().After(deadline) {
			t.Fatal("--rm container still exists after stop")
		}
		time.Sleep(100 * time.Millisecond)
	}

	id = strings.TrimSpace(e.ok(append([]string{"create"}, e.runArgs(nil, "sh", "-c", "echo attached-start; exit 2")...)...))
	r := e.podman(nil, "start", "-a", id)
	if r.code != 2 || r.stdout != "attached-start\n" {
		t.Fatalf("start -a: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}

	// Restarts happen in `podman container cleanup` (the exit command),
	// which has no --conmon and so uses containers.conf's conmon_path:
	// the restarted runs may be monitored by /usr/bin/conmon here.
	id = strings.TrimSpace(e.ok(append([]string{"run", "-d"}, e.runArgs([]string{"--restart", "on-failure:2"}, "sh", "-c", "echo run; exit 1")...)...))
	deadline = time.Now().Add(20 * time.Second)
	for {
		if got := e.inspect(id, "{{.RestartCount}} {{.State.Status}}"); got == "2 exited" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restart policy: %s", e.inspect(id, "{{.RestartCount}} {{.State.Status}}"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := e.ok("logs", id); got != "run\nrun\nrun\n" {
		t.Fatalf("logs of a twice restarted container: %q", got)
	}

	pod := strings.TrimSpace(e.ok("pod", "create", "--infra=false"))
	id = e.detached([]string{"--pod", pod}, "sleep", "1000")
	e.ok("pod", "stop", "-t", "0", pod)
	if got := e.inspect(id, "{{.State.Status}} {{.State.ExitCode}}"); got != "exited 137" {
		t.Fatalf("container of a stopped pod: %s", got)
	}
	e.ok("pod", "rm", "-f", pod)
}

func TestOOMKilled(t *testing.T) {
	e := newEnv(t)
	id := e.detached([]string{"--memory", "10m", "--memory-swap", "10m"}, "sh", "-c",
		"x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x$x; done")
	got := strings.TrimSpace(e.ok("wait", id))
	if got != "137" {
		t.Fatalf("wait: %q, want 137", got)
	}
	if oom := e.inspect(id, "{{.State.OOMKilled}}"); oom != "true" {
		t.Fatalf("OOMKilled %s, want true", oom)
	}
}
