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

// env is one private containerd (testutil.Containerd) with the shim's
// sockets seen by the test.
type env struct {
	*testutil.Containerd
	sockets map[string]bool // shim sockets seen in bundles' address files
}

// newEnv starts a private containerd, with debug logs. ctrdDir, if set,
// holds containerd and ctr binaries to use instead of the installed ones.
func newEnv(t *testing.T, ctrdDir string) *env {
	t.Helper()
	return &env{
		Containerd: testutil.StartContainerd(t, testutil.ContainerdOptions{Prefix: "ctrd", BinDir: ctrdDir, Debug: true}),
		sockets:    map[string]bool{},
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runArgs returns `run` arguments for our runtime; extra flags go before
// --rootfs since ctr wants every flag before <rootfs> <id>.
func (e *env) runArgs(id string, flags []string, cmd ...string) []string {
	a := []string{"run", "--runtime", testutil.ContainerdRuntime, "--runtime-config-path", e.ShimCfg, "--fifo-dir", filepath.Join(e.Dir, "fifo")}
	a = append(a, flags...)
	a = append(a, "--rootfs", e.Rootfs, id)
	return append(a, cmd...)
}

// remove kills, deletes the task and the container id.
func (e *env) remove(id string) string {
	e.T.Helper()
	e.noteSocket(id)
	e.Ctr("task", "kill", "-a", "-s", "SIGKILL", id)
	e.WaitStatus(id, "STOPPED")
	out := e.MustCtr("task", "rm", id)
	e.MustCtr("c", "rm", id)
	return out
}

// assertClean checks that nothing of the shim is left: no daemon, no
// socket, no mount under the test directory, no runc container.
func (e *env) assertClean() {
	t := e.T
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(e.ShimPids()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("shim daemons still running: %v", e.ShimPids())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ents, _ := os.ReadDir(e.SocketDir); len(ents) > 0 {
		t.Errorf("sockets left in %s: %v", e.SocketDir, ents)
	}
	for s := range e.sockets {
		if _, err := os.Lstat(s); !os.IsNotExist(err) {
			t.Errorf("socket %s left: %v", s, err)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, e.Dir+"/") {
			t.Errorf("mount left: %s", line)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(e.RuncRoot, "default")); len(ents) > 0 {
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
		out := e.MustCtr(e.runArgs("echo1", []string{"--rm"}, "/bin/echo", "hello from conmon-v2")...)
		if !strings.Contains(out, "hello from conmon-v2") {
			t.Fatalf("output %q", out)
		}
	})
	t.Run("exit code", func(t *testing.T) {
		out, err := e.Ctr(e.runArgs("exit7", []string{"--rm"}, "/bin/sh", "-c", "exit 7")...)
		if exitCode(err) != 7 {
			t.Fatalf("ctr exited %v, want 7\n%s", err, out)
		}
	})
	t.Run("failed create leaves nothing", func(t *testing.T) {
		out, err := e.Ctr(e.runArgs("bad1", []string{"--rm"}, "/no/such/binary")...)
		if err == nil {
			t.Fatalf("running a missing binary succeeded: %q", out)
		}
		e.Ctr("c", "rm", "bad1")
		e.assertClean()
	})
	t.Run("detached exec ps metrics pause kill", func(t *testing.T) {
		events := e.watchEvents(t)
		e.MustCtr(e.runArgs("det", []string{"-d"}, "/bin/sh", "-c", "while true; do sleep 1; done")...)
		e.WaitStatus("det", "RUNNING")
		out := e.MustCtr("task", "exec", "--fifo-dir", filepath.Join(e.Dir, "fifo"), "--exec-id", "e1", "det", "/bin/echo", "hello-exec")
		if !strings.Contains(out, "hello-exec") {
			t.Fatalf("exec output %q", out)
		}
		out, err := e.Ctr("task", "exec", "--fifo-dir", filepath.Join(e.Dir, "fifo"), "--exec-id", "e2", "det", "/bin/sh", "-c", "exit 3")
		if exitCode(err) != 3 {
			t.Fatalf("exec exit: %v, want 3\n%s", err, out)
		}
		// ps: the init process at least, with numeric pids.
		// ctr 2.x may print warnings before the table.
		out = e.MustCtr("task", "ps", "det")
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
		out = e.MustCtr("task", "metrics", "det")
		if !strings.Contains(out, "memory") && !strings.Contains(out, "pids") {
			t.Fatalf("metrics output %q", out)
		}
		// Without criu, checkpoint fails with a clear error and the task
		// runs on.
		var checkpointEvents []string
		if _, err := exec.LookPath("criu"); err != nil {
			// ctr pauses the task around the checkpoint.
			checkpointEvents = []string{"/tasks/paused", "/tasks/resumed"}
			out, err := e.Ctr("task", "checkpoint", "det")
			if err == nil || !strings.Contains(out, "criu") {
				t.Errorf("checkpoint without criu: %v %q, want an error naming criu", err, out)
			}
			e.WaitStatus("det", "RUNNING")
		}
		e.MustCtr("task", "pause", "det")
		e.WaitStatus("det", "PAUSED")
		e.MustCtr("task", "resume", "det")
		e.WaitStatus("det", "RUNNING")
		e.MustCtr("task", "kill", "-s", "SIGKILL", "det")
		e.WaitStatus("det", "STOPPED")
		out = e.MustCtr("task", "rm", "det")
		if !strings.Contains(out, "137") {
			t.Errorf("task rm after SIGKILL reports %q, want exit code 137", out)
		}
		e.MustCtr("c", "rm", "det")
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
		out, err := e.Ctr(e.runArgs("oom1", []string{"--rm", "--memory-limit", "16777216"},
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
		e.MustCtr(e.runArgs("tty2", []string{"-d"}, "/bin/sleep", "1000")...)
		e.WaitStatus("tty2", "RUNNING")
		out = e.inPty(t, "90", "25", "task", "exec", "-t", "--fifo-dir", filepath.Join(e.Dir, "fifo"), "--exec-id", "x1", "tty2", "/bin/sh", "-c", inner)
		if !strings.Contains(out, "size=25 90") || !strings.Contains(out, "/dev/pts/") {
			t.Fatalf("exec tty output %q, want size=25 90 and a /dev/pts tty", out)
		}
		e.remove("tty2")
	})
	t.Run("log uris", func(t *testing.T) {
		logDir := filepath.Join(e.Dir, "log")
		logger := filepath.Join(e.LoggerDir, "filelogger")
		// binary:// protocol: stdout on fd 3, stderr on fd 4, ready on fd 5;
		// the environment holds only CONTAINER_ID and CONTAINER_NAMESPACE.
		// No PATH either: the script finds the log directory from $0.
		writeFile(t, logger, "#!/bin/sh\nexec 5>&-\nd=${0%/*}/../log\n"+
			"/bin/cat <&3 > \"$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.out\" &\n"+
			"/bin/cat <&4 > \"$d/$CONTAINER_NAMESPACE-$CONTAINER_ID.err\" &\nwait\n")
		if err := os.Chmod(logger, 0o755); err != nil {
			t.Fatal(err)
		}
		e.MustCtr(e.runArgs("bin1", []string{"--rm", "--log-uri", "binary://" + logger + "?k=v"},
			"/bin/sh", "-c", "echo out-line; echo err-line >&2")...)
		waitFile(t, filepath.Join(logDir, "default-bin1.out"), "out-line\n")
		waitFile(t, filepath.Join(logDir, "default-bin1.err"), "err-line\n")

		// A logger outside the allow-list is refused.
		out, err := e.Ctr(e.runArgs("bin2", []string{"--rm", "--log-uri", "binary:///bin/sh"}, "/bin/true")...)
		if err == nil || !strings.Contains(out, "logger") {
			t.Fatalf("logger outside the allow-list: %v %q", err, out)
		}
		e.Ctr("c", "rm", "bin2")

		file := filepath.Join(logDir, "sub", "file1.log")
		e.MustCtr(e.runArgs("file1", []string{"--rm", "--log-uri", "file://" + file}, "/bin/sh", "-c", "echo out-line; echo err-line >&2")...)
		data, err := os.ReadFile(file)
		if err != nil || !strings.Contains(string(data), "out-line") || !strings.Contains(string(data), "err-line") {
			t.Fatalf("file:// log %q %v", data, err)
		}
	})
	t.Run("one shim per sandbox", func(t *testing.T) {
		for _, id := range []string{"g1", "g2"} {
			e.MustCtr(e.runArgs(id, []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}, "/bin/sleep", "1000")...)
		}
		e.WaitStatus("g1", "RUNNING")
		e.WaitStatus("g2", "RUNNING")
		if pids := e.ShimPids(); len(pids) != 1 {
			t.Fatalf("%d shim daemons for one sandbox: %v", len(pids), pids)
		}
		a1, _ := os.ReadFile(filepath.Join(e.bundle("g1"), "address"))
		a2, _ := os.ReadFile(filepath.Join(e.bundle("g2"), "address"))
		if len(a1) == 0 || string(a1) != string(a2) {
			t.Fatalf("address files %q and %q differ", a1, a2)
		}
		// The shim's own API reports the group and both tasks.
		info := monitorInfo(t, string(a1))
		if info.Group != "pod1" || info.Tasks != 2 || int(info.Pid) != e.ShimPids()[0] {
			t.Fatalf("monitor Info %+v, want group pod1, 2 tasks, pid %v", info, e.ShimPids())
		}
		// Deleting one leaves the shared daemon serving the other.
		e.remove("g1")
		if pids := e.ShimPids(); len(pids) != 1 {
			t.Fatalf("after deleting g1: %d shim daemons", len(pids))
		}
		e.WaitStatus("g2", "RUNNING")
		out := e.MustCtr("task", "exec", "--fifo-dir", filepath.Join(e.Dir, "fifo"), "--exec-id", "e1", "g2", "/bin/echo", "still-here")
		if !strings.Contains(out, "still-here") {
			t.Fatalf("exec after deleting g1: %q", out)
		}
		// A third member joins after the first is gone; the daemon's log,
		// which went to g1's log FIFO, moves to g3's and reaches containerd.
		shimPid := e.ShimPids()[0]
		e.MustCtr(e.runArgs("g3", []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=pod1"}, "/bin/sleep", "1000")...)
		e.WaitStatus("g3", "RUNNING")
		if pids := e.ShimPids(); len(pids) != 1 || pids[0] != shimPid {
			t.Fatalf("after g3 joined: shim daemons %v, want [%d]", pids, shimPid)
		}
		e.remove("g2")
		e.remove("g3")
		e.assertClean()
		marker := fmt.Sprintf("msg=stopping runtime=%s namespace=default pid=%d", testutil.ContainerdRuntime, shimPid)
		deadline := time.Now().Add(5 * time.Second)
		for {
			log, _ := os.ReadFile(filepath.Join(e.Dir, "log", "containerd.log"))
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
		dense := filepath.Join(e.Dir, "dense.toml")
		cfg, _ := os.ReadFile(e.ShimCfg)
		writeFile(t, dense, string(cfg)+"grouping = \"namespace\"\n")
		for _, id := range []string{"n1", "n2"} {
			args := e.runArgs(id, []string{"-d"}, "/bin/sleep", "1000")
			for i, a := range args {
				if a == e.ShimCfg {
					args[i] = dense
				}
			}
			e.MustCtr(args...)
			e.WaitStatus(id, "RUNNING")
		}
		if pids := e.ShimPids(); len(pids) != 1 {
			t.Fatalf("%d shim daemons in namespace mode: %v", len(pids), pids)
		}
		e.remove("n1")
		e.remove("n2")
		e.assertClean()
	})
	t.Run("shim killed", func(t *testing.T) {
		e.MustCtr(e.runArgs("k1", []string{"-d"}, "/bin/sleep", "1000")...)
		e.WaitStatus("k1", "RUNNING")
		pids := e.ShimPids()
		if len(pids) != 1 {
			t.Fatalf("shim daemons %v", pids)
		}
		if _, err := os.Stat(filepath.Join(e.Dir, "shimstate", "default", "k1")); err != nil {
			t.Fatalf("no task record: %v", err)
		}
		e.noteSocket("k1")
		syscall.Kill(pids[0], syscall.SIGKILL)
		// containerd notices, runs `delete`, and forgets the task.
		deadline := time.Now().Add(10 * time.Second)
		for e.TaskStatus("k1") != "" {
			if time.Now().After(deadline) {
				t.Fatalf("task still listed as %q after its shim died", e.TaskStatus("k1"))
			}
			time.Sleep(50 * time.Millisecond)
		}
		// containerd may forget the task before its `delete` call returns.
		record := filepath.Join(e.Dir, "shimstate", "default", "k1")
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
		e.MustCtr("c", "rm", "k1")
		e.assertClean()
	})
	t.Run("containerd restart", func(t *testing.T) {
		// Two containers of one pod: one shared daemon to reconnect to.
		for _, id := range []string{"r1", "r1b"} {
			e.MustCtr(e.runArgs(id, []string{"-d", "--annotation", "io.kubernetes.cri.sandbox-id=podr"}, "/bin/sleep", "1000")...)
			e.WaitStatus(id, "RUNNING")
		}
		pids := e.ShimPids()
		e.Stop()
		e.Start()
		e.WaitStatus("r1", "RUNNING")
		e.WaitStatus("r1b", "RUNNING")
		if got := e.ShimPids(); len(got) != 1 || len(pids) != 1 || got[0] != pids[0] {
			t.Fatalf("shim daemons before restart %v, after %v", pids, got)
		}
		for _, id := range []string{"r1", "r1b"} {
			out := e.MustCtr("task", "exec", "--fifo-dir", filepath.Join(e.Dir, "fifo"), "--exec-id", "e1", id, "/bin/echo", "after-restart")
			if !strings.Contains(out, "after-restart") {
				t.Fatalf("exec in %s after restart: %q", id, out)
			}
		}
		e.remove("r1")
		e.remove("r1b")
		e.assertClean()
	})
	t.Run("exit while containerd is down", func(t *testing.T) {
		e.MustCtr(e.runArgs("r2", []string{"-d"}, "/bin/sleep", "1000")...)
		e.WaitStatus("r2", "RUNNING")
		out := e.MustCtr("task", "ls")
		var pid int
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "r2" {
				pid, _ = strconv.Atoi(f[1])
			}
		}
		if pid <= 0 {
			t.Fatalf("no pid for r2 in %q", out)
		}
		e.Stop()
		logPath := filepath.Join(e.Dir, "log", "containerd.log")
		before, _ := os.ReadFile(logPath)
		syscall.Kill(pid, syscall.SIGKILL)
		time.Sleep(300 * time.Millisecond) // the shim queues /tasks/exit meanwhile
		e.Start()
		if e.Version == 3 {
			// containerd 2.x deletes, on load, a task whose shim reports no
			// process (its log says "cleaning leaked shim process").
			deadline := time.Now().Add(10 * time.Second)
			for e.TaskStatus("r2") != "" {
				if time.Now().After(deadline) {
					t.Fatalf("task r2 still listed as %q", e.TaskStatus("r2"))
				}
				time.Sleep(50 * time.Millisecond)
			}
			e.MustCtr("c", "rm", "r2")
			e.assertClean()
			return
		}
		// The queued event reaches the new containerd, and the task is
		// known to have stopped.
		e.WaitStatus("r2", "STOPPED")
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
		out = e.MustCtr("task", "rm", "r2")
		if !strings.Contains(out, "137") {
			t.Errorf("task rm reports %q, want exit code 137", out)
		}
		e.MustCtr("c", "rm", "r2")
		e.assertClean()
	})
	t.Run("nothing left", func(t *testing.T) {
		e.assertClean()
		if len(e.sockets) == 0 {
			t.Error("no shim socket was seen in any bundle")
		}
		log, _ := os.ReadFile(filepath.Join(e.Dir, "log", "containerd.log"))
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
	args = append([]string{e.CtrBin, "--address", e.Address}, args...)
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
	file := filepath.Join(e.Dir, "log", "events-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(e.CtrBin, "--address", e.Address, "events")
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
	return filepath.Join(e.Dir, "state", "io.containerd.runtime.v2.task", "default", id)
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
