package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/reaper"
)

// testBound bounds every wait of these tests; it is a deadlock guard, not
// a timing assertion.
const testBound = 10 * time.Second

// fakeExits is an unbuffered exit source: a send returns once the
// service's exit loop has taken the exit, and a second send returns only
// after the first was fully handled (the loop is single-threaded).
type fakeExits struct {
	ch   chan reaper.Exit
	once sync.Once
	done chan struct{}
}

func newFakeExits() *fakeExits {
	return &fakeExits{ch: make(chan reaper.Exit), done: make(chan struct{})}
}

func (f *fakeExits) Recv(ctx context.Context) (reaper.Exit, error) {
	select {
	case e := <-f.ch:
		return e, nil
	case <-ctx.Done():
		return reaper.Exit{}, ctx.Err()
	case <-f.done:
		return reaper.Exit{}, errors.New("closed")
	}
}

func (f *fakeExits) Close() { f.once.Do(func() { close(f.done) }) }

// exit delivers an exit and returns once the service handled it.
func (f *fakeExits) exit(t *testing.T, pid, status int) {
	t.Helper()
	for _, e := range []reaper.Exit{{Pid: pid, Status: status, Timestamp: time.Now()}, {Pid: -1}} {
		select {
		case f.ch <- e:
		case <-time.After(testBound):
			t.Fatalf("exit loop did not take the exit of pid %d", pid)
		}
	}
}

// fakeRuntime hands out pids from a range no real process has here (they
// are never signalled: the service's killPid is replaced too).
type fakeRuntime struct {
	mu         sync.Mutex
	next       int
	pids       map[string]int // container id -> init pid
	onStart    func(id string, pid int)
	onExec     func(id string, pid int)
	panicOn    string
	killed     []string
	onKill     func(id string, sig int) // runs inside Kill, as a slow runc kill would
	lastCreate runc.CreateOpts
}

func newFakeRuntime() *fakeRuntime {
	return &fakeRuntime{next: 1 << 30, pids: make(map[string]int)}
}

func (f *fakeRuntime) newPid(path string) (int, error) {
	f.mu.Lock()
	f.next++
	pid := f.next
	f.mu.Unlock()
	return pid, os.WriteFile(path, []byte(strconv.Itoa(pid)), 0o600)
}

func (f *fakeRuntime) Create(ctx context.Context, id, bundle string, opts *runc.CreateOpts) error {
	pid, err := f.newPid(opts.PidFile)
	f.mu.Lock()
	f.pids[id] = pid
	f.lastCreate = *opts
	f.mu.Unlock()
	return err
}

func (f *fakeRuntime) Start(ctx context.Context, id string) error {
	f.mu.Lock()
	pid, hook := f.pids[id], f.onStart
	f.mu.Unlock()
	if hook != nil {
		hook(id, pid)
	}
	return nil
}

func (f *fakeRuntime) Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error {
	pid, err := f.newPid(opts.PidFile)
	if err != nil {
		return err
	}
	f.mu.Lock()
	hook := f.onExec
	f.mu.Unlock()
	if hook != nil {
		hook(id, pid)
	}
	return nil
}

func (f *fakeRuntime) Kill(ctx context.Context, id string, sig int, opts *runc.KillOpts) error {
	f.mu.Lock()
	f.killed = append(f.killed, fmt.Sprintf("%s:%d", id, sig))
	hook := f.onKill
	f.mu.Unlock()
	if hook != nil {
		hook(id, sig)
	}
	return nil
}

func (f *fakeRuntime) Delete(ctx context.Context, id string, opts *runc.DeleteOpts) error {
	return nil
}

func (f *fakeRuntime) Pause(ctx context.Context, id string) error {
	if f.panicOn == "pause" {
		panic("fake runtime: pause exploded")
	}
	return nil
}
func (f *fakeRuntime) Resume(ctx context.Context, id string) error { return nil }
func (f *fakeRuntime) Ps(ctx context.Context, id string) ([]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return []int{f.pids[id]}, nil
}
func (f *fakeRuntime) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	return nil
}
func (f *fakeRuntime) Checkpoint(ctx context.Context, id string, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error {
	return nil
}

// recorder is a Publisher that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []string
	more   chan struct{}
}

func newRecorder() *recorder { return &recorder{more: make(chan struct{}, 1)} }

func (r *recorder) Publish(ctx context.Context, topic string, ev proto.Message) error {
	desc := topic
	switch e := ev.(type) {
	case *eventsapi.TaskExit:
		desc = fmt.Sprintf("%s %s %d", topic, e.ID, e.ExitStatus)
	case *eventsapi.TaskExecStarted:
		desc = fmt.Sprintf("%s %s", topic, e.ExecID)
	case *eventsapi.TaskExecAdded:
		desc = fmt.Sprintf("%s %s", topic, e.ExecID)
	}
	r.mu.Lock()
	r.events = append(r.events, desc)
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
	return nil
}

// wait returns the events once there are n of them.
func (r *recorder) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(testBound)
	for {
		r.mu.Lock()
		if len(r.events) >= n {
			out := append([]string(nil), r.events...)
			r.mu.Unlock()
			return out
		}
		r.mu.Unlock()
		select {
		case <-r.more:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("got events %q, want %d", r.events, n)
		}
	}
}

type harness struct {
	s     *Service
	rt    *fakeRuntime
	exits *fakeExits
	pub   *recorder
	dir   string
	empty chan struct{}
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{rt: newFakeRuntime(), exits: newFakeExits(), pub: newRecorder(), dir: t.TempDir(), empty: make(chan struct{}, 8)}
	s, err := newService(context.Background(), Config{
		Namespace: "test",
		StateDir:  filepath.Join(h.dir, "state"),
		Publisher: h.pub,
		Runtime:   h.rt,
		OnEmpty: func() { // may run once per task (TestConcurrentTasks): never blocks
			select {
			case h.empty <- struct{}{}:
			default:
			}
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, h.exits, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.killPid = func(pid int, sig uint32) error { return nil }
	s.procCgroupFn = func(int) (string, error) { return "", nil }
	s.watchNewOOMFn = func(string, func(uint64)) (*process.OOMWatch, error) {
		return nil, errors.New("no cgroups in unit tests")
	}
	s.watchOOMFn = func(int, func(uint64)) (*process.OOMWatch, error) { return nil, errors.New("no cgroups in unit tests") }
	s.watchOOMFromFn = func(int, uint64, func(uint64)) (*process.OOMWatch, error) {
		return nil, errors.New("no cgroups in unit tests")
	}
	h.s = s
	t.Cleanup(func() { _ = s.Close() })
	return h
}

func (h *harness) bundle(t *testing.T, id string) string {
	t.Helper()
	b := filepath.Join(h.dir, "bundles", id)
	if err := os.MkdirAll(b, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"/bin/sh"}}}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func (h *harness) create(t *testing.T, id string) uint32 {
	t.Helper()
	r, err := h.s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: id, Bundle: h.bundle(t, id)})
	if err != nil {
		t.Fatalf("Create %s: %v", id, err)
	}
	return r.Pid
}

func (h *harness) start(t *testing.T, id, execID string) uint32 {
	t.Helper()
	r, err := h.s.Start(context.Background(), &taskv2.StartRequest{ID: id, ExecID: execID})
	if err != nil {
		t.Fatalf("Start %s/%s: %v", id, execID, err)
	}
	return r.Pid
}

func (h *harness) exec(t *testing.T, id, execID string) {
	t.Helper()
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/true"}})
	_, err := h.s.Exec(context.Background(), &taskv2.ExecProcessRequest{
		ID: id, ExecID: execID,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec},
	})
	if err != nil {
		t.Fatalf("Exec %s/%s: %v", id, execID, err)
	}
}

func wantEvents(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events:\n got %q\nwant %q", got, want)
		}
	}
}

func wantErr(t *testing.T, err error, class error) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Fatalf("error %v, want class %v", err, class)
	}
}

func TestExitOrderingExecsBeforeInit(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "e1")
	epid := h.start(t, "c1", "e1")
	// Init dies first; its exit must wait for the exec's.
	h.exits.exit(t, int(pid), 137)
	st, err := h.s.State(context.Background(), &taskv2.StateRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Status == task.Status_STOPPED {
		t.Fatalf("init reported stopped while its exec is alive")
	}
	h.exits.exit(t, int(epid), 137)
	got := h.pub.wait(t, 6)
	wantEvents(t, got, "/tasks/create", "/tasks/start", "/tasks/exec-added e1",
		"/tasks/exec-started e1", "/tasks/exit e1 137", "/tasks/exit c1 137")
}

func TestInitExitsBeforeStartReturns(t *testing.T) {
	h := newHarness(t)
	h.rt.onStart = func(id string, pid int) { h.exits.exit(t, pid, 3) }
	h.create(t, "c1")
	h.start(t, "c1", "")
	w, err := h.s.Wait(context.Background(), &taskv2.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 3 {
		t.Fatalf("exit status %d, want 3", w.ExitStatus)
	}
	wantEvents(t, h.pub.wait(t, 3), "/tasks/create", "/tasks/start", "/tasks/exit c1 3")
}

func TestExecExitsBeforeStartReturns(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "e1")
	h.rt.onExec = func(id string, pid int) { h.exits.exit(t, pid, 5) }
	h.start(t, "c1", "e1")
	w, err := h.s.Wait(context.Background(), &taskv2.WaitRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 5 {
		t.Fatalf("exit status %d, want 5", w.ExitStatus)
	}
	wantEvents(t, h.pub.wait(t, 5), "/tasks/create", "/tasks/start", "/tasks/exec-added e1",
		"/tasks/exec-started e1", "/tasks/exit e1 5")
}

func TestExecAfterInitExit(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "early")
	h.exits.exit(t, int(pid), 0)
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/true"}})
	_, err := h.s.Exec(context.Background(), &taskv2.ExecProcessRequest{
		ID: "c1", ExecID: "e2", Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec},
	})
	wantErr(t, err, errdefs.ErrFailedPrecondition)
	_, err = h.s.Start(context.Background(), &taskv2.StartRequest{ID: "c1", ExecID: "early"})
	wantErr(t, err, errdefs.ErrFailedPrecondition)
}

func TestWaitOnExitedProcess(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exits.exit(t, int(pid), 7)
	for i := 0; i < 2; i++ {
		w, err := h.s.Wait(context.Background(), &taskv2.WaitRequest{ID: "c1"})
		if err != nil {
			t.Fatal(err)
		}
		if w.ExitStatus != 7 || w.ExitedAt == nil {
			t.Fatalf("wait = %v, want status 7 with a time", w)
		}
	}
}

func TestWaitBeforeStart(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	res := make(chan *taskv2.WaitResponse, 1)
	go func() {
		w, err := h.s.Wait(context.Background(), &taskv2.WaitRequest{ID: "c1"})
		if err != nil {
			t.Error(err)
		}
		res <- w
	}()
	h.start(t, "c1", "")
	select {
	case w := <-res:
		t.Fatalf("Wait returned %v before the exit", w)
	default:
	}
	h.exits.exit(t, int(pid), 1)
	select {
	case w := <-res:
		if w == nil || w.ExitStatus != 1 {
			t.Fatalf("wait = %v, want status 1", w)
		}
	case <-time.After(testBound):
		t.Fatal("Wait did not return after the exit")
	}
}

func TestWaitCancelled(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "c1"})
	wantErr(t, err, context.Canceled)
}

func TestDoubleDelete(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	// Create's record is on disk before it answers (no flush): a
	// restarted daemon knows every task containerd was told of.
	if _, err := process.ReadRecord(filepath.Join(h.dir, "state"), "c1"); err != nil {
		t.Fatalf("no state record when Create answered: %v", err)
	}
	h.start(t, "c1", "")
	_, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"})
	wantErr(t, err, errdefs.ErrFailedPrecondition) // still running
	h.exits.exit(t, int(pid), 9)
	d, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.Pid != pid || d.ExitStatus != 9 || d.ExitedAt == nil {
		t.Fatalf("delete = %v, want pid %d status 9", d, pid)
	}
	_, err = h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"})
	wantErr(t, err, errdefs.ErrNotFound)
	wantEvents(t, h.pub.wait(t, 4), "/tasks/create", "/tasks/start", "/tasks/exit c1 9", "/tasks/delete")
	select {
	case <-h.empty:
	case <-time.After(testBound):
		t.Fatal("OnEmpty not called after the last delete")
	}
	if !h.s.Empty() {
		t.Fatal("service not empty after the last delete")
	}
	// The init's Delete removes the record before it answers (no flush).
	if _, err := os.Stat(filepath.Join(h.dir, "state", "c1")); !os.IsNotExist(err) {
		t.Fatalf("state record left after delete: %v", err)
	}
}

func TestDeleteCreatedTask(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	d, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.ExitStatus != 137 {
		t.Fatalf("delete of a created task: status %d, want 137", d.ExitStatus)
	}
}

func TestKillExitedProcess(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "e1")
	_, err := h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", ExecID: "e1", Signal: 9})
	wantErr(t, err, errdefs.ErrFailedPrecondition) // exec not started
	epid := h.start(t, "c1", "e1")
	h.exits.exit(t, int(epid), 0)
	_, err = h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", ExecID: "e1", Signal: 9})
	wantErr(t, err, errdefs.ErrNotFound)
	if _, err := h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", Signal: 15}); err != nil {
		t.Fatalf("kill of running init: %v", err)
	}
	h.exits.exit(t, int(pid), 143)
	_, err = h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", Signal: 9})
	wantErr(t, err, errdefs.ErrNotFound)
	// All still reaches the runtime: processes left in the container's
	// cgroup after init's exit must be killable.
	if _, err := h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", Signal: 9, All: true}); err != nil {
		t.Fatalf("kill all after init's exit: %v", err)
	}
	h.rt.mu.Lock()
	last := h.rt.killed[len(h.rt.killed)-1]
	h.rt.mu.Unlock()
	if last != "c1:9" {
		t.Fatalf("last runtime kill %q, want c1:9", last)
	}
}

// TestKillAnsweredBeforeExit: init dies of a Kill before the runtime's kill
// command returns. Its exit must be published only after Kill answered:
// containerd deletes a task on its exit and closes the task's connection,
// which would fail the pending Kill ("ttrpc: closed", seen with critest).
func TestKillAnsweredBeforeExit(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	before := len(h.pub.wait(t, 2)) // /tasks/create and /tasks/start, published behind the requests
	var during []string
	var onKill func()
	var once sync.Once // the service's own kill of the rest (killRestLocked) comes later
	h.rt.mu.Lock()
	h.rt.onKill = func(string, int) { once.Do(func() { onKill() }) }
	h.rt.mu.Unlock()
	onKill = func() {
		h.exits.exit(t, int(pid), 137) // reaped while runc kill still runs
		// Events go out through a queue: give a wrongly published exit
		// time to arrive.
		deadline := time.After(300 * time.Millisecond)
		for {
			h.pub.mu.Lock()
			during = append(during[:0], h.pub.events[before:]...)
			h.pub.mu.Unlock()
			select {
			case <-h.pub.more:
				continue
			case <-deadline:
			}
			break
		}
	}
	if _, err := h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range during {
		if strings.HasPrefix(ev, "/tasks/exit") {
			t.Fatalf("exit published while Kill was in flight: %q", during)
		}
	}
	evs := h.pub.wait(t, before+1)
	if got := evs[len(evs)-1]; got != "/tasks/exit c1 137" {
		t.Fatalf("after Kill: events %q, want the exit last", evs[before:])
	}
	if _, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatalf("delete after the exit: %v", err)
	}
}

func TestStateOfExecAndRecord(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	h.exec(t, "c1", "e1")
	st, err := h.s.State(context.Background(), &taskv2.StateRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if st.ID != "e1" || st.Status != task.Status_CREATED || st.Pid != 0 {
		t.Fatalf("state of a registered exec = %v", st)
	}
	_, err = h.s.State(context.Background(), &taskv2.StateRequest{ID: "c1", ExecID: "nope"})
	wantErr(t, err, errdefs.ErrNotFound)
	h.start(t, "c1", "")
	h.s.rec.flush() // records are written behind the requests
	rec, err := process.ReadRecord(filepath.Join(h.dir, "state"), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Status != "running" || rec.Pid == 0 || rec.StartedAt == nil || rec.Execs["e1"].Status != "created" {
		t.Fatalf("record = %+v", rec)
	}
}

func TestConnect(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	r, err := h.s.Connect(context.Background(), &taskv2.ConnectRequest{ID: "c1"})
	if err != nil || r.TaskPid != pid || r.ShimPid != uint32(os.Getpid()) {
		t.Fatalf("connect = %v, %v", r, err)
	}
	r, err = h.s.Connect(context.Background(), &taskv2.ConnectRequest{ID: "unknown"})
	if err != nil || r.TaskPid != 0 {
		t.Fatalf("connect to an unknown task = %v, %v", r, err)
	}
}

func TestCreateRefusals(t *testing.T) {
	h := newHarness(t)
	good := h.bundle(t, "good")
	h.create(t, "dup")
	loggerDir := t.TempDir()
	for _, tc := range []struct {
		name  string
		req   *taskv2.CreateTaskRequest
		class error
	}{
		{"bad id", &taskv2.CreateTaskRequest{ID: "../x", Bundle: good}, errdefs.ErrInvalidArgument},
		{"relative bundle", &taskv2.CreateTaskRequest{ID: "a", Bundle: "rel/dir"}, errdefs.ErrInvalidArgument},
		{"missing bundle", &taskv2.CreateTaskRequest{ID: "a", Bundle: "/nonexistent/bundle"}, errdefs.ErrInvalidArgument},
		{"no config.json", &taskv2.CreateTaskRequest{ID: "a", Bundle: loggerDir}, errdefs.ErrInvalidArgument},
		{"unknown scheme", &taskv2.CreateTaskRequest{ID: "a", Bundle: good, Stdout: "http://x/y"}, errdefs.ErrInvalidArgument},
		{"binary logger not allowed", &taskv2.CreateTaskRequest{ID: "a", Bundle: good, Stdout: "binary:///bin/sh"}, errdefs.ErrInvalidArgument},
		{"relative fifo", &taskv2.CreateTaskRequest{ID: "a", Bundle: good, Stdout: "out"}, errdefs.ErrInvalidArgument},
		{"duplicate", &taskv2.CreateTaskRequest{ID: "dup", Bundle: good}, errdefs.ErrAlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.s.Create(context.Background(), tc.req)
			wantErr(t, err, tc.class)
		})
	}
}

func TestExecRefusals(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	h.exec(t, "c1", "e1")
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/true"}})
	procURL := "types.containerd.io/opencontainers/runtime-spec/1/Process"
	for _, tc := range []struct {
		name  string
		req   *taskv2.ExecProcessRequest
		class error
	}{
		{"bad exec id", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "-x", Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrInvalidArgument},
		{"no spec", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e2"}, errdefs.ErrInvalidArgument},
		{"wrong spec type", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e2", Spec: &anypb.Any{TypeUrl: "x.Y", Value: proc}}, errdefs.ErrInvalidArgument},
		{"bad json", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e2", Spec: &anypb.Any{TypeUrl: procURL, Value: []byte("{")}}, errdefs.ErrInvalidArgument},
		{"unknown task", &taskv2.ExecProcessRequest{ID: "c9", ExecID: "e2", Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrNotFound},
		{"duplicate", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrAlreadyExists},
		{"relative stdin", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e3", Stdin: "in", Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrInvalidArgument},
		{"binary logger refused", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e3", Stdout: "binary:///bin/sh", Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrInvalidArgument},
		{"no args", &taskv2.ExecProcessRequest{ID: "c1", ExecID: "e3", Spec: &anypb.Any{TypeUrl: procURL, Value: []byte(`{"cwd":"/"}`)}}, errdefs.ErrInvalidArgument},
		{"long exec id", &taskv2.ExecProcessRequest{ID: "c1", ExecID: strings.Repeat("x", 77), Spec: &anypb.Any{TypeUrl: procURL, Value: proc}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.s.Exec(context.Background(), tc.req)
			wantErr(t, err, tc.class)
		})
	}
}

func TestPanicBecomesError(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	h.start(t, "c1", "")
	h.rt.panicOn = "pause"
	_, err := h.s.Pause(context.Background(), &taskv2.PauseRequest{ID: "c1"})
	wantErr(t, err, errdefs.ErrInternal)
	// The service still answers.
	if _, err := h.s.State(context.Background(), &taskv2.StateRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}

func TestPauseResume(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	_, err := h.s.Pause(context.Background(), &taskv2.PauseRequest{ID: "c1"})
	wantErr(t, err, errdefs.ErrFailedPrecondition) // not running yet
	h.start(t, "c1", "")
	if _, err := h.s.Pause(context.Background(), &taskv2.PauseRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	st, _ := h.s.State(context.Background(), &taskv2.StateRequest{ID: "c1"})
	if st.Status != task.Status_PAUSED {
		t.Fatalf("status %v after pause", st.Status)
	}
	if _, err := h.s.Resume(context.Background(), &taskv2.ResumeRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, h.pub.wait(t, 4), "/tasks/create", "/tasks/start", "/tasks/paused", "/tasks/resumed")
}

func TestListAndEmpty(t *testing.T) {
	h := newHarness(t)
	if !h.s.Empty() {
		t.Fatal("new service not empty")
	}
	h.create(t, "c1")
	h.exec(t, "c1", "e1")
	l := h.s.List(context.Background())
	if len(l) != 1 || l[0].ID != "c1" || l[0].Status != "created" || len(l[0].ExecIDs) != 1 {
		t.Fatalf("list = %+v", l)
	}
}

func TestCreateRuncOptions(t *testing.T) {
	h := newHarness(t)
	o, _ := proto.Marshal(&options.Options{NoPivotRoot: true, NoNewKeyring: true})
	_, err := h.s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c1", Bundle: h.bundle(t, "c1"),
		Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: o}})
	if err != nil {
		t.Fatal(err)
	}
	h.rt.mu.Lock()
	got := h.rt.lastCreate
	h.rt.mu.Unlock()
	if !got.NoPivot || !got.NoNewKeyring {
		t.Fatalf("runtime create options %+v, want no-pivot and no-new-keyring", got)
	}
	_, err = h.s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c2", Bundle: h.bundle(t, "c2"),
		Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: []byte{0xff, 0xff}}})
	wantErr(t, err, errdefs.ErrInvalidArgument)
}

func TestInitExitWaitsForEveryExec(t *testing.T) {
	h := newHarness(t)
	var killedMu sync.Mutex
	var killed []int
	h.s.killPid = func(pid int, sig uint32) error {
		killedMu.Lock()
		defer killedMu.Unlock()
		killed = append(killed, pid)
		return nil
	}
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "a")
	h.exec(t, "c1", "b")
	h.exec(t, "c1", "idle") // registered, never started: not waited for
	apid := h.start(t, "c1", "a")
	bpid := h.start(t, "c1", "b")
	h.exits.exit(t, int(pid), 137)
	killedMu.Lock()
	if len(killed) != 2 {
		t.Errorf("execs killed when init died: %v, want a's and b's pids", killed)
	}
	killedMu.Unlock()
	_, err := h.s.Start(context.Background(), &taskv2.StartRequest{ID: "c1", ExecID: "idle"})
	wantErr(t, err, errdefs.ErrFailedPrecondition)
	_, err = h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"})
	wantErr(t, err, errdefs.ErrFailedPrecondition) // its exit is not out yet
	h.exits.exit(t, int(bpid), 137)
	h.exits.exit(t, int(apid), 137)
	got := h.pub.wait(t, 10)
	wantEvents(t, got[7:], "/tasks/exit b 137", "/tasks/exit a 137", "/tasks/exit c1 137")
	if _, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}

func TestInitExitsWhileExecStarts(t *testing.T) {
	h := newHarness(t)
	pid := h.create(t, "c1")
	h.start(t, "c1", "")
	h.exec(t, "c1", "e1")
	var killed []int
	h.s.killPid = func(p int, sig uint32) error { killed = append(killed, p); return nil }
	// init dies while runc exec runs: the exec is killed as soon as its pid
	// is known, and init's exit waits for the exec's.
	h.rt.onExec = func(id string, _ int) { h.exits.exit(t, int(pid), 137) }
	epid := h.start(t, "c1", "e1")
	if len(killed) != 1 || killed[0] != int(epid) {
		t.Fatalf("killed %v, want the exec %d", killed, epid)
	}
	h.exits.exit(t, int(epid), 137)
	wantEvents(t, h.pub.wait(t, 6), "/tasks/create", "/tasks/start", "/tasks/exec-added e1",
		"/tasks/exec-started e1", "/tasks/exit e1 137", "/tasks/exit c1 137")
}

// TestConcurrentTasks drives many tasks at once through their whole life
// (under -race) and checks each task's events are in order.
func TestConcurrentTasks(t *testing.T) {
	h := newHarness(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("t%d", i)
		b := h.bundle(t, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			cr, err := h.s.Create(ctx, &taskv2.CreateTaskRequest{ID: id, Bundle: b})
			if err != nil {
				errs <- err
				return
			}
			waited := make(chan error, 1)
			go func() {
				_, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: id})
				waited <- err
			}()
			if _, err := h.s.Start(ctx, &taskv2.StartRequest{ID: id}); err != nil {
				errs <- err
				return
			}
			for k := 0; k < 5; k++ {
				if _, err := h.s.State(ctx, &taskv2.StateRequest{ID: id}); err != nil {
					errs <- err
					return
				}
			}
			select {
			case h.exits.ch <- reaper.Exit{Pid: int(cr.Pid), Status: 0, Timestamp: time.Now()}:
			case <-time.After(testBound):
				errs <- fmt.Errorf("%s: exit not taken", id)
				return
			}
			if err := <-waited; err != nil {
				errs <- err
				return
			}
			if _, err := h.s.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	events := h.pub.wait(t, 4*n)
	if len(events) != 4*n {
		t.Fatalf("%d events, want %d", len(events), 4*n)
	}
	if !h.s.Empty() {
		t.Fatal("tasks left")
	}
}

func TestCreateRefusesBadLogAnnotation(t *testing.T) {
	h := newHarness(t)
	b := h.bundle(t, "c1")
	spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"/bin/sh"}},
		Annotations: map[string]string{"io.containers.conmon-v2.log.driver": "no-such-driver"}}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := h.s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c1", Bundle: b})
	wantErr(t, err, errdefs.ErrInvalidArgument)
	if !strings.Contains(err.Error(), "no-such-driver") {
		t.Fatalf("error %q does not name the driver", err)
	}
	if !h.s.Empty() {
		t.Fatal("a refused create left a task")
	}
}

// TestEmptyRequests sends every RPC an empty request, for an unknown task
// and for a real one: each answers (an error or not) without panicking.
func TestEmptyRequests(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	ctx := context.Background()
	for _, id := range []string{"", "nope", "c1"} {
		calls := map[string]func() error{
			"State":      func() error { _, err := h.s.State(ctx, &taskv2.StateRequest{ID: id}); return err },
			"Start":      func() error { _, err := h.s.Start(ctx, &taskv2.StartRequest{ID: id, ExecID: "x"}); return err },
			"Pids":       func() error { _, err := h.s.Pids(ctx, &taskv2.PidsRequest{ID: id}); return err },
			"Pause":      func() error { _, err := h.s.Pause(ctx, &taskv2.PauseRequest{ID: id}); return err },
			"Resume":     func() error { _, err := h.s.Resume(ctx, &taskv2.ResumeRequest{ID: id}); return err },
			"Checkpoint": func() error { _, err := h.s.Checkpoint(ctx, &taskv2.CheckpointTaskRequest{ID: id}); return err },
			"Kill":       func() error { _, err := h.s.Kill(ctx, &taskv2.KillRequest{ID: id, ExecID: "x"}); return err },
			"Exec":       func() error { _, err := h.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: id}); return err },
			"ResizePty":  func() error { _, err := h.s.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: id}); return err },
			"CloseIO":    func() error { _, err := h.s.CloseIO(ctx, &taskv2.CloseIORequest{ID: id, Stdin: true}); return err },
			"Update":     func() error { _, err := h.s.Update(ctx, &taskv2.UpdateTaskRequest{ID: id}); return err },
			"Stats":      func() error { _, err := h.s.Stats(ctx, &taskv2.StatsRequest{ID: id}); return err },
			"Connect":    func() error { _, err := h.s.Connect(ctx, &taskv2.ConnectRequest{ID: id}); return err },
			"Create":     func() error { _, err := h.s.Create(ctx, &taskv2.CreateTaskRequest{ID: id}); return err },
			"Delete":     func() error { _, err := h.s.Delete(ctx, &taskv2.DeleteRequest{ID: id, ExecID: "x"}); return err },
			"Shutdown":   func() error { _, err := h.s.Shutdown(ctx, &taskv2.ShutdownRequest{ID: id}); return err },
		}
		for name, call := range calls {
			err := call()
			if errors.Is(err, errdefs.ErrInternal) {
				t.Errorf("%s(%q): %v", name, id, err)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	if _, err := h.s.Wait(wctx, &taskv2.WaitRequest{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Wait of no task: %v", err)
	}
}
