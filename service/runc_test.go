package service

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/reaper"
)

// The root tests share one reaper (a process has exactly one wait loop),
// one busybox rootfs and runc's default spec, both made before the reaper
// runs: once it does, exec.Cmd.Wait elsewhere in the process loses its
// child to the loop.
var (
	rootOnce   sync.Once
	rootReaper *reaper.Reaper
	rootErr    error
	rootfsDir  string
	specJSON   []byte
)

func testReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.MkdirTemp("", "conmon-v2-service-test-")
		if err != nil {
			rootErr = err
			return
		}
		rootfsDir = filepath.Join(dir, "rootfs")
		if rootErr = testutil.MakeBusyboxRootfs(rootfsDir); rootErr != nil {
			return
		}
		if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
			rootErr = fmt.Errorf("runc spec: %v: %s", err, out)
			return
		}
		if specJSON, rootErr = os.ReadFile(filepath.Join(dir, "config.json")); rootErr != nil {
			return
		}
		if rootErr = reaper.SetSubreaper(); rootErr != nil {
			return
		}
		rootReaper = reaper.New()
		runc.Monitor = rootReaper
		go func() { _ = rootReaper.Run(context.Background()) }()
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootReaper
}

type runcEnv struct {
	s       *Service
	pub     *recorder
	dir     string
	rootfs  string
	loggers string
}

func newRuncEnv(t *testing.T) *runcEnv {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	r := testReaper(t)
	dir := t.TempDir()
	e := &runcEnv{pub: newRecorder(), dir: dir, rootfs: rootfsDir, loggers: filepath.Join(dir, "loggers")}
	if err := os.MkdirAll(e.loggers, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Config{
		Namespace:   "conmontest",
		StateDir:    filepath.Join(dir, "state"),
		Publisher:   e.pub,
		Reaper:      r,
		RuntimeRoot: filepath.Join(dir, "runc"),
		LoggerDirs:  []string{e.loggers},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.s = s
	t.Cleanup(func() {
		// A failed test must not leave containers behind.
		ctx := context.Background()
		for _, ti := range s.List(ctx) {
			_, _ = s.Kill(ctx, &taskv2.KillRequest{ID: ti.ID, Signal: 9, All: true})
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, _ = s.Wait(wctx, &taskv2.WaitRequest{ID: ti.ID})
			cancel()
			_, _ = s.Delete(ctx, &taskv2.DeleteRequest{ID: ti.ID})
		}
		_ = s.Close()
	})
	return e
}

// bundle writes a bundle running args on the busybox rootfs.
func (e *runcEnv) bundle(t *testing.T, id string, terminal bool, ann map[string]string, args ...string) string {
	t.Helper()
	b := filepath.Join(e.dir, "bundles", id)
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(specJSON, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: e.rootfs, Readonly: true}
	spec.Process.Terminal = terminal
	spec.Process.Args = args
	spec.Annotations = ann
	spec.Linux.CgroupsPath = "/conmon-v2-test/" + id
	data, err := json.Marshal(&spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// fifo makes a FIFO and reads all of it in the background.
func (e *runcEnv) fifo(t *testing.T, name string) (string, <-chan string) {
	t.Helper()
	p := filepath.Join(e.dir, "fifo", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	out := make(chan string, 1)
	go func() {
		f, err := os.OpenFile(p, os.O_RDONLY, 0)
		if err != nil {
			out <- "open: " + err.Error()
			return
		}
		defer f.Close()
		data, _ := io.ReadAll(f)
		out <- string(data)
	}()
	return p, out
}

func recvString(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no EOF on a stdio FIFO")
		return ""
	}
}

func (e *runcEnv) wait(t *testing.T, id, execID string) uint32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := e.s.Wait(ctx, &taskv2.WaitRequest{ID: id, ExecID: execID})
	if err != nil {
		t.Fatalf("Wait %s/%s: %v", id, execID, err)
	}
	return w.ExitStatus
}

// must returns v or panics with err (which fails the test, with cleanup).
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestRuncLifecycle(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	out, outC := e.fifo(t, "c1-stdout")
	errp, errC := e.fifo(t, "c1-stderr")
	b := e.bundle(t, "c1", false, nil, "/bin/sh", "-c", "echo hello; echo oops >&2; exec sleep 1000")
	cr := must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c1", Bundle: b, Stdout: out, Stderr: errp}))
	if cr.Pid == 0 {
		t.Fatal("no pid from Create")
	}
	st := must(e.s.State(ctx, &taskv2.StateRequest{ID: "c1"}))
	if st.Status != task.Status_CREATED {
		t.Fatalf("status after create %v", st.Status)
	}
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c1"}))

	// exec with its own stdout
	eout, eoutC := e.fifo(t, "e1-stdout")
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "echo exec-out; exit 3"}, Cwd: "/", Env: []string{"PATH=/bin"}})
	must(e.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e1", Stdout: eout,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c1", ExecID: "e1"}))
	if code := e.wait(t, "c1", "e1"); code != 3 {
		t.Fatalf("exec exit %d, want 3", code)
	}
	if got := recvString(t, eoutC); got != "exec-out\n" {
		t.Fatalf("exec stdout %q", got)
	}
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c1", ExecID: "e1"}))

	pids := must(e.s.Pids(ctx, &taskv2.PidsRequest{ID: "c1"}))
	found := false
	for _, p := range pids.Processes {
		found = found || p.Pid == cr.Pid
	}
	if !found {
		t.Fatalf("pids %v lack init %d", pids.Processes, cr.Pid)
	}
	stats := must(e.s.Stats(ctx, &taskv2.StatsRequest{ID: "c1"}))
	if !strings.HasPrefix(stats.Stats.TypeUrl, "io.containerd.cgroups.v") || len(stats.Stats.Value) == 0 {
		t.Fatalf("stats type %q, %d bytes", stats.Stats.TypeUrl, len(stats.Stats.Value))
	}
	must(e.s.Pause(ctx, &taskv2.PauseRequest{ID: "c1"}))
	if st := must(e.s.State(ctx, &taskv2.StateRequest{ID: "c1"})); st.Status != task.Status_PAUSED {
		t.Fatalf("status after pause %v", st.Status)
	}
	must(e.s.Resume(ctx, &taskv2.ResumeRequest{ID: "c1"}))
	res, _ := json.Marshal(specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: ptr(int64(64 << 20))}})
	must(e.s.Update(ctx, &taskv2.UpdateTaskRequest{ID: "c1", Resources: &anypb.Any{
		TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources", Value: res}}))
	if _, err := e.s.Checkpoint(ctx, &taskv2.CheckpointTaskRequest{ID: "c1", Path: filepath.Join(e.dir, "ckpt")}); err == nil {
		t.Log("checkpoint succeeded (criu installed)")
	} else if _, lerr := exec.LookPath("criu"); lerr != nil && !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("checkpoint without criu: %v, want FailedPrecondition", err)
	}

	must(e.s.Kill(ctx, &taskv2.KillRequest{ID: "c1", Signal: 9, All: true}))
	if code := e.wait(t, "c1", ""); code != 137 {
		t.Fatalf("init exit %d, want 137", code)
	}
	if got := recvString(t, outC); got != "hello\n" {
		t.Fatalf("stdout %q", got)
	}
	if got := recvString(t, errC); got != "oops\n" {
		t.Fatalf("stderr %q", got)
	}
	_, err := e.s.Kill(ctx, &taskv2.KillRequest{ID: "c1", Signal: 9})
	wantErr(t, err, errdefs.ErrNotFound)
	d := must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c1"}))
	if d.ExitStatus != 137 || d.Pid != cr.Pid {
		t.Fatalf("delete = %v", d)
	}
	wantEvents(t, e.pub.wait(t, 9), "/tasks/create", "/tasks/start", "/tasks/exec-added e1",
		"/tasks/exec-started e1", "/tasks/exit e1 3", "/tasks/paused", "/tasks/resumed", "/tasks/exit c1 137", "/tasks/delete")
}

func ptr[T any](v T) *T { return &v }

func TestRuncExitCodeAndFastExit(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	b := e.bundle(t, "c2", false, nil, "/bin/sh", "-c", "exit 7")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c2", Bundle: b}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c2"}))
	if code := e.wait(t, "c2", ""); code != 7 {
		t.Fatalf("exit %d, want 7", code)
	}
	_, err := e.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c2", ExecID: "late",
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: []byte(`{"args":["/bin/true"],"cwd":"/"}`)}})
	wantErr(t, err, errdefs.ErrFailedPrecondition)
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c2"}))
	wantEvents(t, e.pub.wait(t, 4), "/tasks/create", "/tasks/start", "/tasks/exit c2 7", "/tasks/delete")
}

func TestRuncTerminal(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	out, outC := e.fifo(t, "c3-stdout")
	b := e.bundle(t, "c3", true, nil, "/bin/sh", "-c", "stty size; tty")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c3", Bundle: b, Stdout: out, Terminal: true}))
	must(e.s.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: "c3", Width: 100, Height: 30}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c3"}))
	if code := e.wait(t, "c3", ""); code != 0 {
		t.Fatalf("exit %d", code)
	}
	got := recvString(t, outC)
	if !strings.Contains(got, "30 100") || !strings.Contains(got, "/dev/pts/") {
		t.Fatalf("terminal output %q, want the size 30 100 and a pts", got)
	}
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c3"}))
}

func TestRuncFileAndBinaryURIs(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	logFile := filepath.Join(e.dir, "logs", "c4.log")
	b := e.bundle(t, "c4", false, nil, "/bin/sh", "-c", "echo out-line; echo err-line >&2")
	uri := "file://" + logFile
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c4", Bundle: b, Stdout: uri, Stderr: uri}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c4"}))
	e.wait(t, "c4", "")
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c4"}))
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "out-line\n") || !strings.Contains(string(data), "err-line\n") {
		t.Fatalf("file log %q", data)
	}

	// binary:// logger: copies fd 3 and fd 4 to files, readiness by closing fd 5.
	outDir := filepath.Join(e.dir, "binlog")
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	logger := filepath.Join(e.loggers, "binlogger")
	script := "#!/bin/sh\nexec 5>&-\n/bin/cat <&3 > \"$1/$CONTAINER_ID.stdout\" &\n/bin/cat <&4 > \"$1/$CONTAINER_ID.stderr\" &\nwait\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// The query key is passed as the first argument (a key without value).
	buri := "binary://" + logger + "?" + outDir
	b = e.bundle(t, "c5", false, nil, "/bin/sh", "-c", "echo out-line; echo err-line >&2")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c5", Bundle: b, Stdout: buri, Stderr: buri}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c5"}))
	e.wait(t, "c5", "")
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c5"}))
	for name, want := range map[string]string{"c5.stdout": "out-line\n", "c5.stderr": "err-line\n"} {
		got, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil || string(got) != want {
			t.Fatalf("binary logger %s = %q, %v; want %q", name, got, err, want)
		}
	}
	// A logger outside the allowed directories is refused.
	_, err = e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c6", Bundle: b, Stdout: "binary:///bin/sh"})
	wantErr(t, err, errdefs.ErrInvalidArgument)
}

func TestRuncLogAnnotations(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	out, outC := e.fifo(t, "c7-stdout")
	k8s := filepath.Join(e.dir, "k8s", "c7.log")
	if err := os.MkdirAll(filepath.Dir(k8s), 0o755); err != nil {
		t.Fatal(err)
	}
	b := e.bundle(t, "c7", false, map[string]string{
		"io.containers.conmon-v2.log.driver": "k8s-file",
		"io.containers.conmon-v2.log.path":   k8s,
	}, "/bin/sh", "-c", "echo to-both")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c7", Bundle: b, Stdout: out}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c7"}))
	e.wait(t, "c7", "")
	if got := recvString(t, outC); got != "to-both\n" {
		t.Fatalf("fifo got %q", got)
	}
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c7"}))
	f, err := os.Open(k8s)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() || !strings.HasSuffix(sc.Text(), " stdout F to-both") {
		t.Fatalf("k8s-file log line %q", sc.Text())
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if rootfsDir != "" {
		_ = os.RemoveAll(filepath.Dir(rootfsDir))
		// runc removes a container's cgroup, not the parent the tests chose.
		parents, _ := filepath.Glob("/sys/fs/cgroup/*/conmon-v2-test")
		for _, p := range parents {
			_ = os.Remove(p)
		}
	}
	os.Exit(code)
}

func TestRuncOOM(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	b := e.bundle(t, "oom1", false, nil, "/bin/sh", "-c", memoryHog)
	limitMemory(t, b)
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "oom1", Bundle: b}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "oom1"}))
	if code := e.wait(t, "oom1", ""); code != 137 {
		t.Fatalf("exit %d, want 137 (OOM kill)", code)
	}
	// The OOM event comes before the exit it caused.
	wantEvents(t, e.pub.wait(t, 4), "/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit oom1 137")
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "oom1"}))
}

// memoryHog is a shell loop whose string doubling hits limitMemory's
// limit.
const memoryHog = "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"

// limitMemory gives bundle b's container a small memory limit (16 MiB)
// without swap, so going over it is an OOM kill.
func limitMemory(t *testing.T, b string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(b, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	limit := int64(16 << 20)
	mem := &specs.LinuxMemory{Limit: &limit}
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"); err == nil || cgroupsUnified() {
		mem.Swap = &limit // no swapping instead of the OOM kill
	}
	spec.Linux.Resources = &specs.LinuxResources{Memory: mem}
	data, _ = json.Marshal(&spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRuncOOMBeforeWatch: runc init is OOM-killed after runc create and
// before its task's OOM watch is armed (the arming is held back here).
// The watch, once armed, reports the kill its cgroup counted, and init's
// exit, reaped meanwhile, is published after it. The kill: init's
// oom_score_adj raised to 1000 makes it the OOM killer's choice when a
// shell joins its memory cgroup and goes over the limit.
func TestRuncOOMBeforeWatch(t *testing.T) {
	e := newRuncEnv(t)
	r := testReaper(t)
	ctx := context.Background()
	release := make(chan struct{})
	arm := e.s.watchNewOOMFn
	e.s.watchNewOOMFn = func(cg string, onOOM func(uint64)) (*process.OOMWatch, error) {
		<-release
		return arm(cg, onOOM)
	}
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	b := e.bundle(t, "oomw", false, nil, "/bin/true")
	limitMemory(t, b)
	pid := int(must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "oomw", Bundle: b})).Pid)
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte("1000"), 0o644); err != nil {
		t.Fatal(err)
	}
	procs := "/sys/fs/cgroup/memory/conmon-v2-test/oomw/cgroup.procs"
	if cgroupsUnified() {
		procs = "/sys/fs/cgroup/conmon-v2-test/oomw/cgroup.procs"
	}
	hog := exec.Command("/bin/sh", "-c", `echo $$ > "$0" && exec /bin/sh -c "$1"`, procs, memoryHog)
	ec, err := r.Start(hog)
	if err != nil {
		t.Fatal(err)
	}
	hogDone := make(chan int, 1)
	go func() {
		status, _ := r.Wait(hog, ec)
		hogDone <- status
	}()
	defer func() {
		_ = hog.Process.Kill()
		<-hogDone
	}()
	// init is killed and reaped while its watch waits.
	testutil.Eventually(t, 30*time.Second, func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
			return fmt.Errorf("runc init (pid %d) not OOM-killed and reaped yet", pid)
		}
		return nil
	})
	e.pub.mu.Lock()
	early := append([]string(nil), e.pub.events...)
	e.pub.mu.Unlock()
	if len(early) > 1 {
		t.Fatalf("before the watch is armed: events %q, want /tasks/create at most", early)
	}
	close(release)
	if code := e.wait(t, "oomw", ""); code != 137 {
		t.Fatalf("init's exit %d, want 137 (OOM kill)", code)
	}
	// One /tasks/oom per kill: init's, and the shell's if it went on.
	got := e.pub.wait(t, 3)
	if !strings.HasPrefix(got[len(got)-1], "/tasks/exit") {
		got = e.pub.wait(t, 4)
	}
	if got[0] != "/tasks/create" || got[1] != "/tasks/oom" || got[len(got)-1] != "/tasks/exit oomw 137" {
		t.Fatalf("events %q, want /tasks/create, /tasks/oom (one per kill: init's, maybe the shell's), /tasks/exit oomw 137", got)
	}
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "oomw"}))
}

// TestRuncOOMTakeover: a task's OOM kills are reported once across a
// change of monitor (a live upgrade's gap, a crashed daemon's absence).
// The daemon keeps the count of kills it reported beside the task's record
// (process.OOMCountFile); when its watch is gone (stopped here, as the
// upgrade and a crash stop it), a kill is counted by the cgroup alone; a
// watch armed from the count (rewatchOOM, process.WatchOOMFrom) reports
// that kill and not the earlier one, which a watch armed from now
// (process.WatchOOM) would lose. The kills: a shell with oom_score_adj
// 1000 joins the running container's memory cgroup and goes over its
// limit; init, a sleep, survives.
func TestRuncOOMTakeover(t *testing.T) {
	e := newRuncEnv(t)
	r := testReaper(t)
	ctx := context.Background()
	b := e.bundle(t, "oomu", false, nil, "/bin/sleep", "100")
	limitMemory(t, b)
	pid := int(must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "oomu", Bundle: b})).Pid)
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "oomu"}))
	defer func() {
		_, _ = e.s.Kill(ctx, &taskv2.KillRequest{ID: "oomu", Signal: 9})
		e.wait(t, "oomu", "")
		_, _ = e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "oomu"})
	}()
	e.s.awaitOOMArms("")
	procs := "/sys/fs/cgroup/memory/conmon-v2-test/oomu/cgroup.procs"
	if cgroupsUnified() {
		procs = "/sys/fs/cgroup/conmon-v2-test/oomu/cgroup.procs"
	}
	hogKilled := func() {
		t.Helper()
		hog := exec.Command("/bin/sh", "-c", `echo 1000 > /proc/$$/oom_score_adj && echo $$ > "$0" && exec /bin/sh -c "$1"`, procs, memoryHog)
		ec, err := r.Start(hog)
		if err != nil {
			t.Fatal(err)
		}
		if status, _ := r.Wait(hog, ec); status != 128+9 {
			t.Fatalf("the hog exited with %d, want 137 (OOM kill)", status)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			t.Fatalf("init was killed too: %v", err)
		}
	}

	// A kill under the daemon's watch: reported, and its count kept.
	hogKilled()
	e.pub.wait(t, 3) // /tasks/create, /tasks/start, /tasks/oom
	e.s.rec.flush()
	if n, ok := process.ReadOOMCount(e.s.cfg.StateDir, "oomu"); !ok || n != 1 {
		t.Fatalf("the count kept after one kill: %d, %v; want 1", n, ok)
	}

	// The watch is gone; a second kill meanwhile.
	e.s.mu.Lock()
	old := e.s.oom["oomu"]
	delete(e.s.oom, "oomu")
	e.s.mu.Unlock()
	old.Stop()
	hogKilled()

	var fromNow, fromCount atomic.Int32
	w1, err := process.WatchOOM(pid, func(uint64) { fromNow.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	w1.Stop()
	n, _ := process.ReadOOMCount(e.s.cfg.StateDir, "oomu")
	w2, err := process.WatchOOMFrom(pid, n, func(uint64) { fromCount.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Stop()
	if fromNow.Load() != 0 || fromCount.Load() != 1 {
		t.Fatalf("the kill between the watches: reported %d times from now, %d times from the kept count; want 0 and 1",
			fromNow.Load(), fromCount.Load())
	}
}

func TestRuncExecStdinCloseIO(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	b := e.bundle(t, "c8", false, nil, "/bin/sleep", "1000")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c8", Bundle: b}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c8"}))
	in := filepath.Join(e.dir, "fifo", "e1-stdin")
	if err := os.MkdirAll(filepath.Dir(in), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(in, 0o600); err != nil {
		t.Fatal(err)
	}
	// Like a client: hold the write end open before Exec.
	w, err := os.OpenFile(in, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	out, outC := e.fifo(t, "e1-stdout")
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/cat"}, Cwd: "/"})
	must(e.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c8", ExecID: "e1", Stdin: in, Stdout: out,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c8", ExecID: "e1"}))
	if _, err := w.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	// cat only ends at EOF on its stdin: CloseIO must deliver it.
	must(e.s.CloseIO(ctx, &taskv2.CloseIORequest{ID: "c8", ExecID: "e1", Stdin: true}))
	if code := e.wait(t, "c8", "e1"); code != 0 {
		t.Fatalf("cat exit %d", code)
	}
	if got := recvString(t, outC); got != "ping\n" {
		t.Fatalf("cat output %q", got)
	}
	must(e.s.Kill(ctx, &taskv2.KillRequest{ID: "c8", Signal: 9}))
	e.wait(t, "c8", "")
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c8"}))
}

func TestRuncKillPausedAndExecTerminal(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	b := e.bundle(t, "c9", false, nil, "/bin/sleep", "1000")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c9", Bundle: b}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c9"}))

	out, outC := e.fifo(t, "t1-stdout")
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/sh", "-c", "stty size"}, Cwd: "/", Terminal: true})
	must(e.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c9", ExecID: "t1", Stdout: out, Terminal: true,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c9", ExecID: "t1"}))
	e.wait(t, "c9", "t1")
	if got := recvString(t, outC); !strings.Contains(got, " ") {
		t.Fatalf("exec pty output %q, want a size", got)
	}

	// SIGKILL must end a frozen container too.
	must(e.s.Pause(ctx, &taskv2.PauseRequest{ID: "c9"}))
	must(e.s.Kill(ctx, &taskv2.KillRequest{ID: "c9", Signal: 9}))
	if code := e.wait(t, "c9", ""); code != 137 {
		t.Fatalf("exit %d, want 137", code)
	}
	must(e.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c9"}))
}

func cgroupsUnified() bool {
	var st unix.Statfs_t
	return unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// TestRuncCloseIOBeforeExecStart: a client whose stdin ended before it
// started the exec sends CloseIO first; the exec must still see EOF.
func TestRuncCloseIOBeforeExecStart(t *testing.T) {
	e := newRuncEnv(t)
	ctx := context.Background()
	b := e.bundle(t, "c10", false, nil, "/bin/sleep", "1000")
	must(e.s.Create(ctx, &taskv2.CreateTaskRequest{ID: "c10", Bundle: b}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c10"}))
	in := filepath.Join(e.dir, "fifo", "c10-e1-stdin")
	if err := os.MkdirAll(filepath.Dir(in), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(in, 0o600); err != nil {
		t.Fatal(err)
	}
	out, outC := e.fifo(t, "c10-e1-stdout")
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/cat"}, Cwd: "/"})
	must(e.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: "c10", ExecID: "e1", Stdin: in, Stdout: out,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}))
	must(e.s.CloseIO(ctx, &taskv2.CloseIORequest{ID: "c10", ExecID: "e1", Stdin: true}))
	must(e.s.Start(ctx, &taskv2.StartRequest{ID: "c10", ExecID: "e1"}))
	if code := e.wait(t, "c10", "e1"); code != 0 {
		t.Fatalf("cat exit %d", code)
	}
	if got := recvString(t, outC); got != "" {
		t.Fatalf("cat output %q", got)
	}
}
