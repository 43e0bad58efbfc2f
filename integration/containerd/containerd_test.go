// Package containerd runs containerd-shim-conmon-v2 under a real containerd
// (Debian's 1.6, or a 2.x built from the Go module proxy when
// CONMON_V2_CONTAINERD2 names its directory) driven by ctr. Each test
// starts its own containerd with private root, state and sockets, and the
// shim's sockets, runc root and state live under the test's directory too.
package containerd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/internal/testutil"
)

const runtimeName = "io.containerd.conmon.v2"

// env is one private containerd with the shim on its PATH.
type env struct {
	t         *testing.T
	dir       string // short: socket paths must fit 106 bytes
	rootfs    string
	shimBin   string
	ctrBin    string
	ctrdBin   string
	address   string
	shimCfg   string // shim configuration file passed with --runtime-config-path
	socketDir string
	runcRoot  string
	loggers   string
	version   int             // containerd config version (2 for 1.6, 3 for 2.x)
	sockets   map[string]bool // shim sockets seen in bundles' address files
	cmd       *exec.Cmd
	log       *os.File
}

// newEnv prepares the directories and starts containerd. ctrdDir, if set,
// holds containerd and ctr binaries to use instead of the installed ones.
func newEnv(t *testing.T, ctrdDir string) *env {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	e := &env{t: t, shimBin: testutil.Bin(t, "containerd-shim-conmon-v2"), version: 2, sockets: map[string]bool{}}
	if ctrdDir != "" {
		e.ctrdBin, e.ctrBin, e.version = filepath.Join(ctrdDir, "containerd"), filepath.Join(ctrdDir, "ctr"), 3
	} else {
		e.ctrdBin, e.ctrBin = testutil.NeedCommand(t, "containerd"), testutil.NeedCommand(t, "ctr")
	}
	dir, err := os.MkdirTemp("", "ctrd")
	if err != nil {
		t.Fatal(err)
	}
	e.dir = dir
	t.Cleanup(func() { os.RemoveAll(dir) })
	e.rootfs = testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	e.address = filepath.Join(dir, "c.sock")
	e.socketDir = filepath.Join(dir, "s")
	e.runcRoot = filepath.Join(dir, "runc")
	e.loggers = filepath.Join(dir, "loggers")
	for _, d := range []string{"bin", "fifo", "log", "loggers"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(e.shimBin, filepath.Join(dir, "bin", "containerd-shim-conmon-v2")); err != nil {
		t.Fatal(err)
	}
	e.shimCfg = filepath.Join(dir, "shim.toml")
	writeFile(t, e.shimCfg, fmt.Sprintf(
		"socket_dir = %q\nruntime_root = %q\nstate_dir = %q\nlogger_dirs = [%q]\n",
		e.socketDir, e.runcRoot, filepath.Join(dir, "shimstate"), e.loggers))
	writeFile(t, filepath.Join(dir, "config.toml"), e.containerdConfig())
	e.startContainerd()
	t.Cleanup(e.cleanup)
	return e
}

func (e *env) containerdConfig() string {
	if e.version == 3 {
		return fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "debug"
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), e.address, e.address+".ttrpc")
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "debug"
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), e.address, e.address+".ttrpc", filepath.Join(e.dir, "opt"))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (e *env) startContainerd() {
	t := e.t
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.dir, "log", "containerd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.ctrdBin, "--config", filepath.Join(e.dir, "config.toml"))
	cmd.Dir = e.dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(e.dir, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.cmd, e.log = cmd, logf
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := e.ctr("version"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.dumpLog()
			t.Fatal("containerd did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopContainerd sends SIGTERM to containerd (by pid) and waits for it.
// Shims keep running.
func (e *env) stopContainerd() {
	if e.cmd == nil {
		return
	}
	e.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { e.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		e.cmd.Process.Kill()
		<-done
	}
	e.log.Close()
	e.cmd = nil
}

func (e *env) dumpLog() {
	data, _ := os.ReadFile(filepath.Join(e.dir, "log", "containerd.log"))
	lines := strings.Split(string(data), "\n")
	if len(lines) > 80 {
		lines = lines[len(lines)-80:]
	}
	e.t.Logf("containerd log (tail):\n%s", strings.Join(lines, "\n"))
}

// cleanup removes what a failed test left and stops containerd. Shim
// daemons of this environment that are still alive are killed (by pid).
func (e *env) cleanup() {
	if e.t.Failed() {
		e.dumpLog()
	}
	if e.cmd != nil {
		out, _ := e.ctr("task", "ls", "-q")
		for _, id := range strings.Fields(out) {
			e.ctr("task", "kill", "-a", "-s", "SIGKILL", id)
		}
		time.Sleep(200 * time.Millisecond)
		for _, id := range strings.Fields(out) {
			e.ctr("task", "rm", "-f", id)
		}
		out, _ = e.ctr("c", "ls", "-q")
		for _, id := range strings.Fields(out) {
			e.ctr("c", "rm", id)
		}
	}
	e.stopContainerd()
	for _, pid := range e.shimPids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// ctr runs ctr against this containerd and returns its combined output.
func (e *env) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctrBin, append([]string{"--address", e.address}, args...)...)
	cmd.Dir = e.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) mustCtr(args ...string) string {
	e.t.Helper()
	out, err := e.ctr(args...)
	if err != nil {
		e.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// runArgs returns `run` arguments for our runtime; extra flags go before
// --rootfs since ctr wants every flag before <rootfs> <id>.
func (e *env) runArgs(id string, flags []string, cmd ...string) []string {
	a := []string{"run", "--runtime", runtimeName, "--runtime-config-path", e.shimCfg, "--fifo-dir", filepath.Join(e.dir, "fifo")}
	a = append(a, flags...)
	a = append(a, "--rootfs", e.rootfs, id)
	return append(a, cmd...)
}

// shimPids lists the shim daemons serving this containerd.
func (e *env) shimPids() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasSuffix(args[0], "containerd-shim-conmon-v2") {
			continue
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == e.address {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// taskStatus returns the STATUS column of `ctr task ls` for id.
func (e *env) taskStatus(id string) string {
	out, _ := e.ctr("task", "ls")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

func (e *env) waitStatus(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for e.taskStatus(id) != want {
		if time.Now().After(deadline) {
			e.t.Fatalf("task %s: status %q, want %q", id, e.taskStatus(id), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove kills, deletes the task and the container id.
func (e *env) remove(id string) string {
	e.t.Helper()
	e.noteSocket(id)
	e.ctr("task", "kill", "-a", "-s", "SIGKILL", id)
	e.waitStatus(id, "STOPPED")
	out := e.mustCtr("task", "rm", id)
	e.mustCtr("c", "rm", id)
	return out
}

// assertClean checks that nothing of the shim is left: no daemon, no
// socket, no mount under the test directory, no runc container.
func (e *env) assertClean() {
	t := e.t
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(e.shimPids()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("shim daemons still running: %v", e.shimPids())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(e.socketDir); len(ents) > 0 {
		t.Errorf("sockets left in %s: %v", e.socketDir, ents)
	}
	for s := range e.sockets {
		if _, err := os.Lstat(s); !os.IsNotExist(err) {
			t.Errorf("socket %s left: %v", s, err)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, e.dir+"/") {
			t.Errorf("mount left: %s", line)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(e.runcRoot, "default")); len(ents) > 0 {
		for _, d := range ents {
			if d.IsDir() {
				t.Errorf("runc container left: %s", d.Name())
			}
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestContainerd16(t *testing.T) {
	e := newEnv(t, "")
	runScenario(t, e)
}

// TestContainerd2 runs the same scenario against containerd 2.x when
// CONMON_V2_CONTAINERD2 names directories (colon-separated) that hold a
// containerd and a ctr (see `make containerd2`).
func TestContainerd2(t *testing.T) {
	dirs := os.Getenv("CONMON_V2_CONTAINERD2")
	if dirs == "" {
		t.Skip("CONMON_V2_CONTAINERD2 not set (make containerd2 builds containerd 2.x)")
	}
	for _, dir := range filepath.SplitList(dirs) {
		if dir == "" {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			e := newEnv(t, dir)
			runScenario(t, e)
		})
	}
}

func runScenario(t *testing.T, e *env) {
	t.Run("output", func(t *testing.T) {
		out := e.mustCtr(e.runArgs("echo1", []string{"--rm"}, "/bin/echo", "hello from conmon-v2")...)
		if !strings.Contains(out, "hello from conmon-v2") {
			t.Fatalf("output %q", out)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		out, err := e.ctr(e.runArgs("exit7", []string{"--rm"}, "/bin/sh", "-c", "exit 7")...)
		if exitCode(err) != 7 {
			t.Fatalf("ctr exited %v, want 7\n%s", err, out)
		}
	})
	t.Run("failed create leaves nothing", func(t *testing.T) {
		out, err := e.ctr(e.runArgs("bad1", []string{"--rm"}, "/no/such/binary")...)
		if err == nil {
			t.Fatalf("running a missing binary succeeded: %q", out)
		}
		e.ctr("c", "rm", "bad1")
		e.assertClean()
	})
	t.Run("detached exec ps metrics pause kill", func(t *testing.T) {
		events := e.watchEvents(t)
		e.mustCtr(e.runArgs("det", []string{"-d"}, "/bin/sh", "-c", "while true; do sleep 1; done")...)
		e.waitStatus("det", "RUNNING")
		out := e.mustCtr("task", "exec", "--fifo-dir", filepath.Join(e.dir, "fifo"), "--exec-id", "e1", "det", "/bin/echo", "hello-exec")
		if !strings.Contains(out, "hello-exec") {
			t.Fatalf("exec output %q", out)
		}
		out, err := e.ctr("task", "exec", "--fifo-dir", filepath.Join(e.dir, "fifo"), "--exec-id", "e2", "det", "/bin/sh", "-c", "exit 3")
		if exitCode(err) != 3 {
			t.Fatalf("exec exit: %v, want 3\n%s", err, out)
		}
		// ps: the init process at least, with numeric pids.
		// ctr 2.x may print warnings before the table.
		out = e.mustCtr("task", "ps", "det")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		for len(lines) > 0 && !strings.HasPrefix(lines[0], "PID") {
			lines = lines[1:]
		}
		if len(lines) < 2 {
			t.Fatalf("ps output %q", out)
		}
		if _, err := strconv.Atoi(strings.Fields(lines[1])[0]); err != nil {
			t.Fatalf("ps output %q", out)
		}
		out = e.mustCtr("task", "metrics", "det")
		if !strings.Contains(out, "memory") && !strings.Contains(out, "pids") {
			t.Fatalf("metrics output %q", out)
		}
		// Without criu, checkpoint fails with a clear error and the task
		// runs on.
		var checkpointEvents []string
		if _, err := exec.LookPath("criu"); err != nil {
			// ctr pauses the task around the checkpoint.
			checkpointEvents = []string{"/tasks/paused", "/tasks/resumed"}
			out, err := e.ctr("task", "checkpoint", "det")
			if err == nil || !strings.Contains(out, "criu") {
				t.Errorf("checkpoint without criu: %v %q, want an error naming criu", err, out)
			}
			e.waitStatus("det", "RUNNING")
		}
		e.mustCtr("task", "pause", "det")
		e.waitStatus("det", "PAUSED")
		e.mustCtr("task", "resume", "det")
		e.waitStatus("det", "RUNNING")
		e.mustCtr("task", "kill", "-s", "SIGKILL", "det")
		e.waitStatus("det", "STOPPED")
		out = e.mustCtr("task", "rm", "det")
		if !strings.Contains(out, "137") {
			t.Errorf("task rm after SIGKILL reports %q, want exit code 137", out)
		}
		e.mustCtr("c", "rm", "det")
		// Every event reached containerd, decodable (ctr prints only the
		// events whose type URL it resolves) and in order.
		want := []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started",
			"/tasks/exit", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"}
		want = append(want, checkpointEvents...)
		want = append(want, "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete")
		events.expect(t, "det", want...)
	})
	t.Run("oom", func(t *testing.T) {
		events := e.watchEvents(t)
		out, err := e.ctr(e.runArgs("oom1", []string{"--rm", "--memory-limit", "16777216"},
			"/bin/sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived")...)
		if exitCode(err) != 137 {
			t.Fatalf("ctr exited %v, want 137 (OOM kill)\n%s", err, out)
		}
		events.expect(t, "oom1", "/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit", "/tasks/delete")
	})
	t.Run("tty", func(t *testing.T) {
		testutil.NeedCommand(t, "script")
		// The size arrives by ResizePty right after Start: poll for it.
		inner := "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do s=$(stty size 2>/dev/null); " +
			"[ -n \"$s\" ] && [ \"$s\" != \"0 0\" ] && break; sleep 0.1; done; echo size=$s; tty"
		out := e.inPty(t, "100", "30", e.runArgs("tty1", []string{"--rm", "-t"}, "/bin/sh", "-c", inner)...)
		if !strings.Contains(out, "size=30 100") || !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("tty output %q, want size=30 100 and a /dev/pts tty", out)
		}
		// An exec with its own pty, sized by its own ResizePty.
		e.mustCtr(e.runArgs("tty2", []string{"-d"}, "/bin/sleep", "1000")...)
		e.waitStatus("tty2", "RUNNING")
		out = e.inPty(t, "90", "25", "task", "exec", "-t", "--fifo-dir", filepath.Join(e.dir, "fifo"), "--exec-id", "x1", "tty2", "/bin/sh", "-c", inner)
		if !strings.Contains(out, "size=25 90") || !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("exec tty output %q, want size=25 90 and a /dev/pts tty", out)
		}
		e.remove("tty2")
	})
	t.Run("log uris", func(t *testing.T) {
		logDir := filepath.Join(e.dir, "log")
		logger := filepath.Join(e.loggers, "filelogger")
		// binary:// protocol: stdout on fd 3, stderr on fd 4, ready on fd 5;
		// the environment holds only CONTAINER_ID and CONTAINER_NAMESPACE.
		// No PATH either: the script finds the log directory from $0.
		writeFile(t, logger, "#!/bin/sh\nexec 5>&-\nd=${0%/*}/../log\n"+
			"/bin/cat <&3 > \"$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.out\" &\n"+
			"/bin/cat <&4 > \"$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.err\" &\nwait\n")
		if err := os.Chmod(logger, 0o755); err != nil {
			t.Fatal(err)
		}
		e.mustCtr(e.runArgs("bin1", []string{"--rm", "--log-uri", "binary://" + logger + "?k=v"},
			"/bin/sh", "-c", "echo out-line; echo err-line >&2")...)
		waitFile(t, filepath.Join(logDir, "default-bin1.out"), "out-line\n")
		waitFile(t, filepath.Join(logDir, "default-bin1.err"), "err-line\n")

		// A logger outside the allow-list is refused.
		out, err := e.ctr(e.runArgs("bin2", []string{"--rm", "--log-uri", "binary:///bin/sh"}, "/bin/true")...)
		if err == nil || !strings.Contains(out, "logger") {
			t.Fatalf("logger outside the allow-list: %v %q", err, out)
		}
		e.ctr("c", "rm", "bin2")

		file := filepath.Join(logDir, "sub", "file1.log")
		e.mustCtr(e.runArgs("file1", []string{"--rm", "--log-uri", "file://" + file}, "/bin/sh", "-c", "echo out-line; echo err-line >&2")...)
		data, err := os.ReadFile(file)
		if err != nil || !strings.Contains(string(data), "out-line") || !strings.Contains(string(data), "err-line") {
			t.Fatalf("file:// log %q %v", data, err)
		}
	})
	t.Run("one shim per sandbox", func(t *testing.T) {
		for _, id := range []string{"g1", "g2"} {
			e.mustCtr(e.runArgs(id, []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}, "/bin/sleep", "1000")...)
		}
		e.waitStatus("g1", "RUNNING")
		e.waitStatus("g2", "RUNNING")
		if pids := e.shimPids(); len(pids) != 1 {
			t.Fatalf("%d shim daemons for one sandbox: %v", len(pids), pids)
		}
		a1, _ := os.ReadFile(filepath.Join(e.bundle("g1"), "address"))
		a2, _ := os.ReadFile(filepath.Join(e.bundle("g2"), "address"))
		if len(a1) == 0 || string(a1) != string(a2) {
			t.Fatalf("address files %q and %q differ", a1, a2)
		}
		// The shim's own API reports the group and both tasks.
		info := monitorInfo(t, string(a1))
		if info.Group != "pod1" || info.Tasks != 2 || int(info.Pid) != e.shimPids()[0] {
			t.Fatalf("monitor Info %+v, want group pod1, 2 tasks, pid %v", info, e.shimPids())
		}
		// Deleting one leaves the shared daemon serving the other.
		e.remove("g1")
		if pids := e.shimPids(); len(pids) != 1 {
			t.Fatalf("after deleting g1: %d shim daemons", len(pids))
		}
		e.waitStatus("g2", "RUNNING")
		out := e.mustCtr("task", "exec", "--fifo-dir", filepath.Join(e.dir, "fifo"), "--exec-id", "e1", "g2", "/bin/echo", "still-here")
		if !strings.Contains(out, "still-here") {
			t.Fatalf("exec after deleting g1: %q", out)
		}
		// A third member joins after the first is gone; the daemon's log,
		// which went to g1's log FIFO, moves to g3's and reaches containerd.
		shimPid := e.shimPids()[0]
		e.mustCtr(e.runArgs("g3", []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}, "/bin/sleep", "1000")...)
		e.waitStatus("g3", "RUNNING")
		if pids := e.shimPids(); len(pids) != 1 || pids[0] != shimPid {
			t.Fatalf("after g3 joined: shim daemons %v, want [%d]", pids, shimPid)
		}
		e.remove("g2")
		e.remove("g3")
		e.assertClean()
		marker := fmt.Sprintf("msg=stopping runtime=%s namespace=default pid=%d", runtimeName, shimPid)
		deadline := time.Now().Add(5 * time.Second)
		for {
			log, _ := os.ReadFile(filepath.Join(e.dir, "log", "containerd.log"))
			if bytes.Contains(log, []byte(marker)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the shared daemon's last log lines (%q) never reached containerd", marker)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("dense mode", func(t *testing.T) {
		dense := filepath.Join(e.dir, "dense.toml")
		cfg, _ := os.ReadFile(e.shimCfg)
		writeFile(t, dense, string(cfg)+"grouping = \"namespace\"\n")
		for _, id := range []string{"n1", "n2"} {
			args := e.runArgs(id, []string{"-d"}, "/bin/sleep", "1000")
			for i, a := range args {
				if a == e.shimCfg {
					args[i] = dense
				}
			}
			e.mustCtr(args...)
			e.waitStatus(id, "RUNNING")
		}
		if pids := e.shimPids(); len(pids) != 1 {
			t.Fatalf("%d shim daemons in namespace mode: %v", len(pids), pids)
		}
		e.remove("n1")
		e.remove("n2")
		e.assertClean()
	})
	t.Run("shim killed", func(t *testing.T) {
		e.mustCtr(e.runArgs("k1", []string{"-d"}, "/bin/sleep", "1000")...)
		e.waitStatus("k1", "RUNNING")
		pids := e.shimPids()
		if len(pids) != 1 {
			t.Fatalf("shim daemons %v", pids)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "shimstate", "default", "k1")); err != nil {
			t.Fatalf("no task record: %v", err)
		}
		e.noteSocket("k1")
		syscall.Kill(pids[0], syscall.SIGKILL)
		// containerd notices, runs `delete`, and forgets the task.
		deadline := time.Now().Add(10 * time.Second)
		for e.taskStatus("k1") != "" {
			if time.Now().After(deadline) {
				t.Fatalf("task still listed as %q after its shim died", e.taskStatus("k1"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		// containerd may forget the task before its `delete` call returns.
		record := filepath.Join(e.dir, "shimstate", "default", "k1")
		deadline = time.Now().Add(5 * time.Second)
		for {
			if _, err := os.Stat(record); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task record %s left after delete", record)
			}
			time.Sleep(50 * time.Millisecond)
		}
		e.mustCtr("c", "rm", "k1")
		e.assertClean()
	})
	t.Run("containerd restart", func(t *testing.T) {
		// Two containers of one pod: one shared daemon to reconnect to.
		for _, id := range []string{"r1", "r1b"} {
			e.mustCtr(e.runArgs(id, []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=podr"}, "/bin/sleep", "1000")...)
			e.waitStatus(id, "RUNNING")
		}
		pids := e.shimPids()
		e.stopContainerd()
		e.startContainerd()
		e.waitStatus("r1", "RUNNING")
		e.waitStatus("r1b", "RUNNING")
		if got := e.shimPids(); len(got) != 1 || len(pids) != 1 || got[0] != pids[0] {
			t.Fatalf("shim daemons before restart %v, after %v", pids, got)
		}
		for _, id := range []string{"r1", "r1b"} {
			out := e.mustCtr("task", "exec", "--fifo-dir", filepath.Join(e.dir, "fifo"), "--exec-id", "e1", id, "/bin/echo", "after-restart")
			if !strings.Contains(out, "after-restart") {
				t.Fatalf("exec in %s after restart: %q", id, out)
			}
		}
		e.remove("r1")
		e.remove("r1b")
		e.assertClean()
	})
	t.Run("exit while containerd is down", func(t *testing.T) {
		e.mustCtr(e.runArgs("r2", []string{"-d"}, "/bin/sleep", "1000")...)
		e.waitStatus("r2", "RUNNING")
		out := e.mustCtr("task", "ls")
		var pid int
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "r2" {
				pid, _ = strconv.Atoi(f[1])
			}
		}
		if pid <= 0 {
			t.Fatalf("no pid for r2 in %q", out)
		}
		e.stopContainerd()
		logPath := filepath.Join(e.dir, "log", "containerd.log")
		before, _ := os.ReadFile(logPath)
		syscall.Kill(pid, syscall.SIGKILL)
		time.Sleep(300 * time.Millisecond) // the shim queues /tasks/exit meanwhile
		e.startContainerd()
		if e.version == 3 {
			// containerd 2.x deletes, on load, a task whose shim reports no
			// process (its log says "cleaning leaked shim process").
			deadline := time.Now().Add(10 * time.Second)
			for e.taskStatus("r2") != "" {
				if time.Now().After(deadline) {
					t.Fatalf("task r2 still listed as %q", e.taskStatus("r2"))
				}
				time.Sleep(50 * time.Millisecond)
			}
			e.mustCtr("c", "rm", "r2")
			e.assertClean()
			return
		}
		// The queued event reaches the new containerd, and the task is
		// known to have stopped.
		e.waitStatus("r2", "STOPPED")
		deadline := time.Now().Add(10 * time.Second)
		for {
			log, _ := os.ReadFile(logPath)
			if len(log) > len(before) && bytes.Contains(log[len(before):], []byte("topic=/tasks/exit")) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the exit that happened while containerd was down never reached it")
			}
			time.Sleep(50 * time.Millisecond)
		}
		out = e.mustCtr("task", "rm", "r2")
		if !strings.Contains(out, "137") {
			t.Errorf("task rm reports %q, want exit code 137", out)
		}
		e.mustCtr("c", "rm", "r2")
		e.assertClean()
	})
	t.Run("nothing left", func(t *testing.T) {
		e.assertClean()
		if len(e.sockets) == 0 {
			t.Error("no shim socket was seen in any bundle")
		}
		log, _ := os.ReadFile(filepath.Join(e.dir, "log", "containerd.log"))
		if bytes.Contains(log, []byte("failed to load runtime info")) {
			t.Error("containerd could not load the shim's -info")
		}
		for s := range e.sockets {
			t.Logf("shim socket used: %s", s)
		}
		// containerd 2.x logs which task API version it speaks.
		seen := map[string]bool{}
		for _, line := range strings.Split(string(log), "\n") {
			if i := strings.Index(line, "connecting to shim"); i >= 0 {
				for _, f := range strings.Fields(line[i:]) {
					if strings.HasPrefix(f, "version=") || strings.HasPrefix(f, "protocol=") {
						seen[f] = true
					}
				}
			}
		}
		for f := range seen {
			t.Logf("containerd connected with %s", f)
		}
	})
}

// inPty runs ctr with args inside `script`, on a pty of cols x rows, and
// returns what it printed.
func (e *env) inPty(t *testing.T, cols, rows string, args ...string) string {
	t.Helper()
	args = append([]string{e.ctrBin, "--address", e.address}, args...)
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qec", "stty cols "+cols+" rows "+rows+"; "+strings.Join(quoted, " "), "/dev/null")
	// script reads its stdin; keep it open (and empty) while ctr runs.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	cmd.Stdin = pr
	out, err := cmd.CombinedOutput()
	pr.Close()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// eventWatch is a running `ctr events` writing to a file.
type eventWatch struct {
	cmd  *exec.Cmd
	file string
}

func (e *env) watchEvents(t *testing.T) *eventWatch {
	t.Helper()
	file := filepath.Join(e.dir, "log", "events-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(e.ctrBin, "--address", e.address, "events")
	cmd.Stdout = f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(200 * time.Millisecond) // let the subscription reach containerd
	return &eventWatch{cmd: cmd, file: file}
}

// expect checks that the /tasks/ events of container id are exactly
// topics, in that order.
func (w *eventWatch) expect(t *testing.T, id string, topics ...string) {
	t.Helper()
	want := strings.Join(topics, " ")
	deadline := time.Now().Add(5 * time.Second)
	var got []string
	var text []byte
	for {
		text, _ = os.ReadFile(w.file)
		got = got[:0]
		for _, line := range strings.Split(string(text), "\n") {
			f := strings.Fields(line)
			for i, x := range f {
				if strings.HasPrefix(x, "/tasks/") && strings.Contains(strings.Join(f[i+1:], " "), `"`+id+`"`) {
					got = append(got, x)
				}
			}
		}
		if strings.Join(got, " ") == want || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Join(got, " ") != want {
		t.Errorf("events of %s:\n got  %v\n want %v\n%s", id, got, topics, text)
	} else {
		t.Logf("events of %s in order: %v", id, got)
	}
}

// noteSocket remembers the shim socket of task id, which assertClean
// checks is gone. containerd 2.3 chooses the socket directory itself.
func (e *env) noteSocket(id string) {
	if a, err := os.ReadFile(filepath.Join(e.bundle(id), "address")); err == nil {
		e.sockets[strings.TrimPrefix(string(a), "unix://")] = true
	}
}

func (e *env) bundle(id string) string {
	return filepath.Join(e.dir, "state", "io.containerd.runtime.v2.task", "default", id)
}

func monitorInfo(t *testing.T, address string) *conmonapi.InfoResponse {
	t.Helper()
	conn, err := net.Dial("unix", strings.TrimPrefix(address, "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := conmonapi.NewMonitorClient(c).Info(ctx, &conmonapi.InfoRequest{})
	if err != nil {
		t.Fatalf("conmon.v1.Monitor/Info: %v", err)
	}
	return info
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(path)
		if err == nil && string(data) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q %v, want %q", path, data, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
