// Package conmonctl drives bin/conmonctl as a user would, against the real
// shim (bin/containerd-shim-conmon-v2) and runc, with a busybox rootfs. Each
// test has its own state root; every test checks that nothing it made is
// left behind.
package conmonctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// harness runs conmonctl with a private root.
type harness struct {
	t      *testing.T
	bin    string
	shim   string
	root   string
	rootfs string
	before map[int]bool // shim daemons that ran before the test
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	h := &harness{
		t:      t,
		bin:    testutil.Bin(t, "conmonctl"),
		shim:   testutil.Bin(t, "containerd-shim-conmon-v2"),
		root:   filepath.Join(t.TempDir(), "state"),
		rootfs: testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs")),
	}
	h.before = map[int]bool{}
	for _, pid := range shimPids() {
		h.before[pid] = true
	}
	t.Cleanup(h.cleanup)
	return h
}

// cleanup removes what a failed test left and checks that a passing one
// left nothing: no container record, no shim serving this root.
func (h *harness) cleanup() {
	recs := h.ps()
	for _, r := range recs {
		h.run("rm", "-f", r.Name)
	}
	if len(recs) > 0 && !h.t.Failed() {
		h.t.Errorf("containers left behind: %+v", recs)
	}
	entries, _ := os.ReadDir(filepath.Join(h.root, "containers"))
	if len(entries) > 0 && !h.t.Failed() {
		h.t.Errorf("state left behind in %s: %d entries", h.root, len(entries))
	}
	// A shim exits by itself a moment after its last task is deleted.
	deadline := time.Now().Add(15 * time.Second)
	for len(h.shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if pids := h.shims(); len(pids) > 0 {
		h.t.Errorf("shim processes left behind: %v", pids)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

func (h *harness) cmd(ctx context.Context, args ...string) *exec.Cmd {
	full := append([]string{"--root", h.root, "--shim", h.shim}, args...)
	return exec.CommandContext(ctx, h.bin, full...)
}

// run runs conmonctl with args (bounded to a minute) and returns its
// output and exit code.
func (h *harness) run(args ...string) result {
	return h.runIn("", args...)
}

func (h *harness) runIn(stdin string, args ...string) result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := h.cmd(ctx, args...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	if stdin != "" {
		c.Stdin = strings.NewReader(stdin)
	}
	err := c.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatalf("conmonctl %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// ok runs conmonctl and fails the test unless it exits 0.
func (h *harness) ok(args ...string) string {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 {
		h.t.Fatalf("conmonctl %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

type psEntry struct {
	Name     string `json:"name"`
	ID       string `json:"id"`
	Group    string `json:"group"`
	Status   string `json:"status"`
	Pid      int    `json:"pid"`
	ExitCode *int   `json:"exit_code"`
	ShimPid  int    `json:"shim_pid"`
	Uptime   string `json:"uptime"`
	Address  string `json:"address"`
}

func (h *harness) ps() []psEntry {
	h.t.Helper()
	r := h.run("ps", "--json")
	if r.code != 0 {
		h.t.Errorf("ps --json: %v", r)
		return nil
	}
	var out []psEntry
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		h.t.Errorf("ps --json output %q: %v", r.stdout, err)
	}
	return out
}

func (h *harness) psOf(name string) psEntry {
	h.t.Helper()
	for _, e := range h.ps() {
		if e.Name == name {
			return e
		}
	}
	h.t.Fatalf("%s not in ps", name)
	return psEntry{}
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

func TestRunAttached(t *testing.T) {
	h := newHarness(t)
	r := h.run("run", "--rm", "--rootfs", h.rootfs, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
	if r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Fatalf("run: %v; want exit 7, out, err", r)
	}
	// stdin, -i
	r = h.runIn("echo from stdin\nexit 4\n", "run", "--rm", "-i", "--rootfs", h.rootfs, "--", "sh")
	if r.code != 4 || r.stdout != "from stdin\n" {
		t.Fatalf("run -i: %v", r)
	}
	// --env, --name, a non --rm run that stays listed as stopped.
	r = h.run("run", "--name", "envy", "--env", "FOO=bar", "--rootfs", h.rootfs, "--", "sh", "-c", "echo $FOO $(hostname)")
	if r.code != 0 || r.stdout != "bar envy\n" {
		t.Fatalf("run --env: %v", r)
	}
	e := h.psOf("envy")
	if e.Status != "stopped" || e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("ps after exit: %+v", e)
	}
	h.ok("rm", "envy")

	// --bundle: a bundle made by `runc spec` (root "rootfs", relative),
	// left as it was.
	bundle := t.TempDir()
	spec := exec.Command("runc", "spec")
	spec.Dir = bundle
	if out, err := spec.CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v %s", err, out)
	}
	if err := os.Symlink(h.rootfs, filepath.Join(bundle, "rootfs")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	r = h.run("run", "--rm", "--bundle", bundle, "--", "sh", "-c", "echo from the bundle; exit 3")
	if r.code != 3 || r.stdout != "from the bundle\n" {
		t.Errorf("run --bundle: %v", r)
	}
	after, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	if !bytes.Equal(before, after) {
		t.Error("run --bundle changed the bundle's config.json")
	}
	if entries, _ := os.ReadDir(bundle); len(entries) != 2 {
		t.Errorf("run --bundle left files in the bundle: %v", entries)
	}
}

func TestLifecycle(t *testing.T) {
	h := newHarness(t)
	id := strings.TrimSpace(h.ok("run", "-d", "--name", "web", "--memory", "64m", "--rootfs", h.rootfs, "--",
		"sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; echo oops $i >&2; sleep 0.2; done"))
	if len(id) != 32 {
		t.Fatalf("run -d printed %q, want the container ID", id)
	}
	e := h.psOf("web")
	if e.ID != id || e.Status != "running" || e.Pid <= 0 || e.ShimPid <= 0 || e.ExitCode != nil || e.Group == "" {
		t.Fatalf("ps: %+v", e)
	}
	table := h.ok("ps")
	if !strings.Contains(table, "NAME") || !strings.Contains(table, "web") || !strings.Contains(table, "running") {
		t.Errorf("ps table:\n%s", table)
	}

	// logs: both streams, tail, since.
	testutil.Eventually(t, 10*time.Second, func() error {
		// The tail counts lines of both streams together, as docker's does.
		r := h.run("logs", "--tail", "4", "web")
		if r.code != 0 || strings.Count(r.stdout, "tick") != 2 || strings.Count(r.stderr, "oops") != 2 {
			return fmt.Errorf("logs --tail 4: %v", r)
		}
		return nil
	})
	if r := h.run("logs", "--since", "1h", "web"); r.code != 0 || !strings.Contains(r.stdout, "tick 1\n") {
		t.Errorf("logs --since 1h: %v", r)
	}
	if r := h.run("logs", "--since", time.Now().Add(time.Hour).Format(time.RFC3339), "web"); r.code != 0 || r.stdout != "" {
		t.Errorf("logs --since <future>: %v", r)
	}

	// exec: output and exit code, stdin.
	if r := h.run("exec", "web", "--", "sh", "-c", "echo in $(hostname); exit 3"); r.code != 3 || r.stdout != "in web\n" {
		t.Errorf("exec: %v", r)
	}
	// Repeated: a lost input used to show up in a few runs out of a hundred.
	for i := 0; i < 20; i++ {
		if r := h.runIn("echo piped\n", "exec", "-i", "web", "--", "sh"); r.code != 0 || r.stdout != "piped\n" {
			t.Fatalf("exec -i, run %d: %v", i, r)
		}
	}

	// pause / resume
	h.ok("pause", "web")
	if e := h.psOf("web"); e.Status != "paused" {
		t.Errorf("after pause: %+v", e)
	}
	h.ok("resume", "web")
	if e := h.psOf("web"); e.Status != "running" {
		t.Errorf("after resume: %+v", e)
	}

	// stats
	var stats []struct {
		Name        string `json:"name"`
		MemoryBytes uint64 `json:"memory_bytes"`
		MemoryLimit uint64 `json:"memory_limit"`
		Pids        uint64 `json:"pids"`
	}
	out := h.ok("stats", "--no-stream", "--json", "web")
	if err := json.Unmarshal([]byte(out), &stats); err != nil || len(stats) != 1 {
		t.Fatalf("stats --json %q: %v", out, err)
	}
	if s := stats[0]; s.Name != "web" || s.MemoryBytes == 0 || s.MemoryLimit != 64<<20 || s.Pids == 0 {
		t.Errorf("stats: %+v", s)
	}
	if out := h.ok("stats", "--no-stream"); !strings.Contains(out, "MEM USAGE / LIMIT") || !strings.Contains(out, "web") {
		t.Errorf("stats table:\n%s", out)
	}
	// update, seen by stats; top lists the container's processes.
	h.ok("update", "--memory", "96m", "web")
	if err := json.Unmarshal([]byte(h.ok("stats", "--no-stream", "--json", "web")), &stats); err != nil || len(stats) != 1 || stats[0].MemoryLimit != 96<<20 {
		t.Errorf("stats after update --memory 96m: %+v %v", stats, err)
	}
	if out := h.ok("top", "web"); !strings.Contains(out, strconv.Itoa(e.Pid)) || !strings.Contains(out, "sh -c") {
		t.Errorf("top:\n%s", out)
	}
	// logs -t: each line starts with its time.
	if r := h.run("logs", "-t", "--tail", "2", "web"); r.code != 0 || !strings.HasPrefix(r.stdout, time.Now().UTC().Format("2006-01-02T")) {
		t.Errorf("logs -t: %v", r)
	}

	// shims
	var shims []struct {
		Pid        int      `json:"pid"`
		Group      string   `json:"group"`
		Containers []string `json:"containers"`
		RSSKB      uint64   `json:"rss_kb"`
		PSSKB      uint64   `json:"pss_kb"`
	}
	out = h.ok("shims", "--json")
	if err := json.Unmarshal([]byte(out), &shims); err != nil || len(shims) != 1 {
		t.Fatalf("shims --json %q: %v", out, err)
	}
	if s := shims[0]; s.Pid != e.ShimPid || len(s.Containers) != 1 || s.Containers[0] != "web" || s.RSSKB == 0 || s.PSSKB == 0 {
		t.Errorf("shims: %+v (ps said shim pid %d)", s, e.ShimPid)
	}

	// kill with a signal the shell handles: it keeps running.
	h.ok("exec", "web", "--", "true")
	h.ok("kill", "-s", "WINCH", "web")
	if e := h.psOf("web"); e.Status != "running" {
		t.Errorf("after kill -s WINCH: %+v", e)
	}

	// wait in the background, stop, and the waiter prints the code.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waiter := h.cmd(ctx, "wait", "web")
	var wout bytes.Buffer
	waiter.Stdout = &wout
	if err := waiter.Start(); err != nil {
		t.Fatal(err)
	}
	h.ok("stop", "-t", "1", "web")
	err := waiter.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 137 || strings.TrimSpace(wout.String()) != "137" {
		t.Errorf("wait: %v, printed %q; want exit 137 (sh as pid 1 ignores TERM)", err, wout.String())
	}
	if r := h.run("wait", "web"); r.code != 137 || strings.TrimSpace(r.stdout) != "137" {
		t.Errorf("wait after the exit: %v", r)
	}
	e = h.psOf("web")
	if e.Status != "stopped" || e.ExitCode == nil || *e.ExitCode != 137 {
		t.Errorf("after stop: %+v", e)
	}
	h.ok("rm", "web")
	if len(h.ps()) != 0 {
		t.Errorf("ps after rm not empty")
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if processAlive(e.ShimPid) {
			return fmt.Errorf("shim %d still running after its last container was removed", e.ShimPid)
		}
		return nil
	})
}

func TestStopIgnoringTERM(t *testing.T) {
	h := newHarness(t)
	// Not pid 1 of its namespace: a shell that traps TERM away, with a child.
	h.ok("run", "-d", "--name", "stubborn", "--rootfs", h.rootfs, "--", "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done")
	testutil.Eventually(t, 10*time.Second, func() error {
		if r := h.run("logs", "stubborn"); !strings.Contains(r.stdout, "ready") {
			return fmt.Errorf("not ready: %v", r)
		}
		return nil
	})
	h.ok("stop", "-t", "1", "stubborn")
	// 137 = 128+KILL: TERM was ignored, KILL ended it.
	e := h.psOf("stubborn")
	if e.Status != "stopped" || e.ExitCode == nil || *e.ExitCode != 137 {
		t.Errorf("after stop: %+v, want stopped with 137", e)
	}
	// A second stop of a stopped container succeeds.
	h.ok("stop", "stubborn")
	h.ok("rm", "stubborn")

	// rm -f of a running container.
	h.ok("run", "-d", "--name", "doomed", "--rootfs", h.rootfs, "--", "sleep", "1000")
	if r := h.run("rm", "doomed"); r.code == 0 || !strings.Contains(r.stderr, "running") {
		t.Errorf("rm of a running container: %v; want a refusal naming its state", r)
	}
	h.ok("rm", "-f", "doomed")
}

// TestDeadShim: after its shim is killed, a container is listed as
// unknown, and rm cleans up with the shim's delete action.
func TestDeadShim(t *testing.T) {
	h := newHarness(t)
	h.ok("run", "-d", "--name", "orphan", "--rootfs", h.rootfs, "--", "sleep", "1000")
	e := h.psOf("orphan")
	if err := syscall.Kill(e.ShimPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		if e := h.psOf("orphan"); e.Status != "unknown" || e.ExitCode != nil {
			return fmt.Errorf("ps after the shim was killed: %+v, want unknown", e)
		}
		return nil
	})
	h.ok("rm", "orphan")
	for _, p := range []string{
		strings.TrimPrefix(e.Address, "unix://"),              // the dead shim's socket
		filepath.Join("/run/conmon-v2/state/conmonctl", e.ID), // the shim's task record
	} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	out, err := exec.Command("runc", "--root", "/run/conmon-v2/runc/conmonctl", "list", "-q").Output()
	if err != nil {
		t.Fatalf("runc list: %v", err)
	}
	if strings.Contains(string(out), e.ID) {
		t.Errorf("runc still knows %s after rm", e.ID)
	}
	// The container was killed (it may stay a zombie when pid 1 does not reap).
	testutil.Eventually(t, 10*time.Second, func() error {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", e.Pid))
		if err == nil && !strings.Contains(string(stat), ") Z ") {
			return fmt.Errorf("container process %d still running: %s", e.Pid, stat)
		}
		return nil
	})
}

func TestGroup(t *testing.T) {
	h := newHarness(t)
	h.ok("run", "-d", "--name", "a", "--group", "pod1", "--rootfs", h.rootfs, "--", "sleep", "1000")
	h.ok("run", "-d", "--name", "b", "--group", "pod1", "--rootfs", h.rootfs, "--", "sleep", "1000")
	h.ok("run", "-d", "--name", "c", "--rootfs", h.rootfs, "--", "sleep", "1000")
	a, b, c := h.psOf("a"), h.psOf("b"), h.psOf("c")
	if a.ShimPid != b.ShimPid || a.Group != "pod1" || b.Group != "pod1" {
		t.Errorf("a and b not in one shim: %+v %+v", a, b)
	}
	if c.ShimPid == a.ShimPid {
		t.Errorf("c shares pod1's shim: %+v", c)
	}
	var shims []struct {
		Pid        int      `json:"pid"`
		Group      string   `json:"group"`
		Containers []string `json:"containers"`
	}
	if err := json.Unmarshal([]byte(h.ok("shims", "--json")), &shims); err != nil || len(shims) != 2 {
		t.Fatalf("shims: %+v %v", shims, err)
	}
	for _, s := range shims {
		if s.Pid == a.ShimPid && (s.Group != "pod1" || strings.Join(s.Containers, ",") != "a,b") {
			t.Errorf("pod1 shim: %+v", s)
		}
	}
	// The group's shim outlives its first container.
	h.ok("rm", "-f", "a")
	if e := h.psOf("b"); e.Status != "running" || e.ShimPid != a.ShimPid {
		t.Errorf("b after a was removed: %+v", e)
	}
	h.ok("rm", "-f", "b", "c")
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, pid := range []int{a.ShimPid, c.ShimPid} {
			if processAlive(pid) {
				return fmt.Errorf("shim %d still running", pid)
			}
		}
		return nil
	})
}

// TestTerminal runs -t under script(1), which gives conmonctl a pty of a
// known size.
func TestTerminal(t *testing.T) {
	h := newHarness(t)
	script := testutil.NeedCommand(t, "script")
	base := fmt.Sprintf("%s --root %s --shim %s", h.bin, h.root, h.shim)
	cases := []struct {
		name, cmd, want string
		code            int
	}{
		{"run -t", "run --rm -t --rootfs " + h.rootfs + " -- sh -c 'stty size; tty; exit 5'", "30 100", 5},
		{"run -it", "run --rm -it --rootfs " + h.rootfs + " -- sh -c 'read x; echo got $x'", "got hello", 0},
		// The terminal is resized while the container runs: SIGWINCH
		// reaches conmonctl, which forwards the size (ResizePty).
		{"resize", "run --rm -t --rootfs " + h.rootfs + " -- sh -c 'sleep 2; stty size'", "40 120", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			resize := "(sleep 0.8; stty rows 40 cols 120 </dev/tty) & "
			c := exec.CommandContext(ctx, script, "-qec", "stty rows 30 cols 100; "+resize+base+" "+tc.cmd, "/dev/null")
			c.Stdin = strings.NewReader("hello\n")
			out, err := c.CombinedOutput()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			}
			if code != tc.code || !strings.Contains(string(out), tc.want) {
				t.Errorf("%s: exit %d, output %q; want %d and %q", tc.cmd, code, out, tc.code, tc.want)
			}
		})
	}
	// exec -t in a running container: a pty inside.
	h.ok("run", "-d", "--name", "tty", "--rootfs", h.rootfs, "--", "sleep", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, "-qec", base+" exec -t tty -- tty", "/dev/null").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/dev/pts/") {
		t.Errorf("exec -t: %v, %q", err, out)
	}
	h.ok("rm", "-f", "tty")
}

func TestLogsFollowRotation(t *testing.T) {
	h := newHarness(t)
	logPath := filepath.Join(t.TempDir(), "web.log")
	const n = 300
	h.ok("run", "-d", "--name", "chatty", "--rootfs", h.rootfs,
		"--log-opt", "path="+logPath, "--log-opt", "max-size=2k", "--log-opt", "max-files=3", "--",
		"sh", "-c", fmt.Sprintf("sleep 1; i=1; while [ $i -le %d ]; do echo line-$i; i=$((i+1)); usleep 10000; done", n))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	follow := h.cmd(ctx, "logs", "-f", "chatty")
	var out bytes.Buffer
	follow.Stdout = &out
	if err := follow.Run(); err != nil {
		t.Fatalf("logs -f: %v (it must end by itself when the container exits)", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != n {
		t.Errorf("logs -f printed %d lines, want %d", len(lines), n)
	}
	for i, l := range lines {
		if want := fmt.Sprintf("line-%d", i+1); l != want {
			t.Fatalf("line %d is %q, want %q (lost or duplicated across a rotation)", i+1, l, want)
		}
	}
	if _, err := os.Stat(logPath + ".1"); err != nil {
		t.Errorf("no rotation happened (--log-opt path, max-size): %v", err)
	}
	// A later read sees only what the kept files hold, ending with the last line.
	if r := h.run("logs", "--tail", "1", "chatty"); strings.TrimSpace(r.stdout) != fmt.Sprintf("line-%d", n) {
		t.Errorf("logs --tail 1: %v", r)
	}
	h.ok("rm", "chatty")
}

func TestAttach(t *testing.T) {
	h := newHarness(t)
	h.ok("run", "-d", "--name", "att", "--rootfs", h.rootfs, "--",
		"sh", "-c", "sleep 1; for i in 1 2 3; do echo att-$i; sleep 0.3; done; exit 3")
	r := h.run("attach", "att")
	if r.code != 3 || !strings.Contains(r.stdout, "att-1\natt-2\natt-3\n") {
		t.Errorf("attach: %v; want the output and exit 3", r)
	}
	if r := h.run("attach", "att"); r.code == 0 || !strings.Contains(r.stderr, "not running") {
		t.Errorf("attach to a stopped container: %v", r)
	}
	h.ok("rm", "att")

	// run -d -i: the first attach's input reaches the container.
	h.ok("run", "-d", "-i", "--name", "reader", "--rootfs", h.rootfs, "--",
		"sh", "-c", "read a; echo got $a; read b; echo then $b; exit 4")
	r = h.runIn("one\ntwo\n", "attach", "reader")
	if r.code != 4 || !strings.Contains(r.stdout, "got one\nthen two\n") {
		t.Errorf("attach with input: %v; want both lines echoed and exit 4", r)
	}
	h.ok("rm", "reader")
}

func TestEvents(t *testing.T) {
	h := newHarness(t)
	// A running container whose shim events subscribes to.
	h.ok("run", "-d", "--name", "ev", "--group", "evg", "--rootfs", h.rootfs, "--", "sleep", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ev := h.cmd(ctx, "events", "--json")
	var out testutil.SyncBuffer
	ev.Stdout = &out
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = ev.Wait()
	}()
	time.Sleep(1500 * time.Millisecond) // events looks for shims every second
	h.ok("exec", "ev", "--", "true")
	if r := h.run("run", "--rm", "--name", "ev2", "--group", "evg", "--rootfs", h.rootfs, "--", "sh", "-c", "exit 2"); r.code != 2 {
		t.Errorf("run: %v", r)
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		s := out.String()
		for _, want := range []string{`"topic":"/tasks/exec-added"`, `"topic":"/tasks/exec-started"`,
			`"topic":"/tasks/create"`, `"topic":"/tasks/start"`, `"topic":"/tasks/exit"`, `"name":"ev2"`} {
			if !strings.Contains(s, want) {
				return fmt.Errorf("events output lacks %s:\n%s", want, s)
			}
		}
		return nil
	})
	// The group's shim goes with its last container; a new one for the
	// same group (same socket) is followed too.
	pid := h.psOf("ev").ShimPid
	h.ok("rm", "-f", "ev")
	testutil.Eventually(t, 15*time.Second, func() error {
		if processAlive(pid) {
			return fmt.Errorf("shim %d still running", pid)
		}
		return nil
	})
	h.ok("run", "-d", "--name", "ev3", "--group", "evg", "--rootfs", h.rootfs, "--", "sleep", "1000")
	time.Sleep(1500 * time.Millisecond)
	h.ok("exec", "ev3", "--", "true")
	testutil.Eventually(t, 10*time.Second, func() error {
		if s := out.String(); !strings.Contains(s, `"topic":"/tasks/exec-started","namespace":"conmonctl","type":"containerd.events.TaskExecStarted","container":"`+h.psOf("ev3").ID) {
			return fmt.Errorf("no exec event of ev3 after the shim was replaced:\n%s", s)
		}
		return nil
	})
	h.ok("rm", "-f", "ev3")
}

func TestBadInput(t *testing.T) {
	h := newHarness(t)
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	emptyDir := t.TempDir()
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"bad flag", []string{"ps", "--frob"}, 2, "flag provided but not defined: -frob"},
		{"bad flag value", []string{"stop", "-t", "soon", "x"}, 2, `invalid value "soon"`},
		{"run without rootfs", []string{"run", "--", "true"}, 2, "--rootfs"},
		{"run without command", []string{"run", "--rootfs", h.rootfs}, 2, "missing the command"},
		{"missing rootfs", []string{"run", "--rootfs", "/nonexistent/rootfs", "--", "true"}, 125, "is not a directory"},
		{"rootfs is a file", []string{"run", "--rootfs", notDir, "--", "true"}, 125, "is not a directory"},
		{"empty rootfs", []string{"run", "--rootfs", emptyDir, "--", "true"}, 125, "does not look like a root filesystem"},
		{"bad bundle", []string{"run", "--bundle", emptyDir}, 125, "config.json"},
		{"bad log size", []string{"run", "--rootfs", h.rootfs, "--log-opt", "max-size=huge", "--", "true"}, 125, `max-size="huge"`},
		{"unknown log option", []string{"run", "--rootfs", h.rootfs, "--log-opt", "colour=blue", "--", "true"}, 125, `unknown log option "colour"`},
		{"log option without =", []string{"run", "--rootfs", h.rootfs, "--log-opt", "max-size", "--", "true"}, 125, "is not K=V"},
		{"unknown log driver", []string{"run", "--rootfs", h.rootfs, "--log-driver", "carrier-pigeon", "--", "true"}, 125, `unknown log driver`},
		{"log path in a missing dir", []string{"run", "--rootfs", h.rootfs, "--log-opt", "path=/nonexistent/dir/x.log", "--", "true"}, 125, "does not exist"},
		{"bad name", []string{"run", "--name", "no/slash", "--rootfs", h.rootfs, "--", "true"}, 125, `invalid ID "no/slash"`},
		{"bad memory", []string{"run", "--memory", "lots", "--rootfs", h.rootfs, "--", "true"}, 2, `--memory "lots"`},
		{"missing program", []string{"run", "--rootfs", h.rootfs, "--", "/no/such/program"}, 125, "/no/such/program"},
		{"bad signal", []string{"kill", "-s", "SIGFROB", "x"}, 2, `unknown signal "SIGFROB"`},
		{"logs of unknown", []string{"logs", "ghost"}, 1, "no such container: ghost"},
		{"exec in unknown", []string{"exec", "ghost", "--", "true"}, 125, "no such container: ghost"},
		{"attach to unknown", []string{"attach", "ghost"}, 125, "no such container: ghost"},
		{"kill unknown", []string{"kill", "ghost"}, 1, "no such container: ghost"},
		{"stop unknown", []string{"stop", "ghost"}, 1, "no such container: ghost"},
		{"wait unknown", []string{"wait", "ghost"}, 125, "no such container: ghost"},
		{"rm unknown", []string{"rm", "ghost"}, 1, "no such container: ghost"},
		{"pause unknown", []string{"pause", "ghost"}, 1, "no such container: ghost"},
		{"resume unknown", []string{"resume", "ghost"}, 1, "no such container: ghost"},
		{"stats unknown", []string{"stats", "--no-stream", "ghost"}, 1, "no such container: ghost"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.run(tc.args...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("conmonctl %s: %v; want exit %d and a message with %q", strings.Join(tc.args, " "), r, tc.code, tc.want)
			}
			if strings.Count(strings.TrimSpace(r.stderr), "\n") > 1 {
				t.Errorf("message is more than two lines: %q", r.stderr)
			}
			if n := len(h.ps()); n != 0 {
				t.Errorf("%d containers left behind", n)
			}
		})
	}
	// A second container with a taken name is refused, the first untouched.
	h.ok("run", "-d", "--name", "dup", "--rootfs", h.rootfs, "--", "sleep", "1000")
	if r := h.run("run", "-d", "--name", "dup", "--rootfs", h.rootfs, "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "exists already") {
		t.Errorf("duplicate name: %v", r)
	}
	if e := h.psOf("dup"); e.Status != "running" {
		t.Errorf("first dup: %+v", e)
	}
	h.ok("rm", "-f", "dup")
	testutil.Eventually(t, 10*time.Second, func() error {
		if pids := h.shims(); len(pids) > 0 {
			return fmt.Errorf("shims left behind: %v", pids)
		}
		return nil
	})
}

// shims returns the pids of conmonctl's shim daemons (namespace
// conmonctl) that were not running when the harness was made.
func (h *harness) shims() []int {
	var out []int
	for _, pid := range shimPids() {
		if !h.before[pid] {
			out = append(out, pid)
		}
	}
	return out
}

// shimPids lists the running shim daemons of namespace conmonctl.
func shimPids() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 2 && strings.HasSuffix(args[0], "containerd-shim-conmon-v2") &&
			strings.Contains(string(cmdline), "-namespace\x00conmonctl\x00") {
			out = append(out, pid)
		}
	}
	return out
}

func TestHelpAndCompletion(t *testing.T) {
	h := newHarness(t)
	cmds := []string{"run", "ps", "logs", "exec", "attach", "kill", "stop", "wait", "rm", "pause", "resume", "stats", "events", "shims", "top", "update", "completion"}
	top := h.ok("help")
	for _, c := range cmds {
		if !strings.Contains(top, "\n  "+c+" ") {
			t.Errorf("help does not list %s", c)
		}
		out := h.ok(c, "--help")
		if !strings.Contains(out, "Usage: conmonctl "+c) || !strings.Contains(out, "Example:\n  conmonctl") {
			t.Errorf("%s --help lacks usage or example:\n%s", c, out)
		}
	}
	script := filepath.Join(t.TempDir(), "conmonctl.bash")
	if err := os.WriteFile(script, []byte(h.ok("completion", "bash")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Errorf("completion script does not parse: %v %s", err, out)
	}
	// Complete "conmonctl st" in a bash that loaded it.
	probe := fmt.Sprintf(`source %s; COMP_WORDS=(conmonctl st); COMP_CWORD=1; _conmonctl; echo "${COMPREPLY[*]}"`, script)
	out, err := exec.Command("bash", "-c", probe).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "stats stop" {
		t.Errorf("completion of 'st': %v %q", err, out)
	}
}

// TestLogsOfOtherDrivers: with a driver that cannot be read back (none
// here; journald, syslog and fluentd alike), logs reads the shim's local
// k8s-file cache, and json-file logs read back too.
func TestLogsOfOtherDrivers(t *testing.T) {
	h := newHarness(t)
	for _, driver := range []string{"none", "json-file"} {
		name := "drv-" + driver
		h.ok("run", "-d", "--name", name, "--log-driver", driver, "--rootfs", h.rootfs, "--",
			"sh", "-c", "echo via "+driver+"; echo err via "+driver+" >&2; sleep 1000")
		testutil.Eventually(t, 10*time.Second, func() error {
			r := h.run("logs", name)
			if r.code != 0 || r.stdout != "via "+driver+"\n" || r.stderr != "err via "+driver+"\n" {
				return fmt.Errorf("logs with %s: %v", driver, r)
			}
			return nil
		})
		h.ok("rm", "-f", name)
	}
}
