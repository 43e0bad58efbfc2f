package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/process"
)

// pipeFDs returns a pipe's read end as a raw descriptor (to hand to
// Restore, which owns it) and its write end as a file.
func pipeFDs(t *testing.T) (int, *os.File) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	w := os.NewFile(uintptr(p[1]), "w")
	t.Cleanup(func() { w.Close() })
	return p[0], w
}

// TestRestore: the receiving side of a live upgrade rebuilds each task
// from its record and the handed descriptors. Live processes that are
// this process's children get their exits from the reaper (here the fake
// exit source); output written to a handed pipe reaches the task's
// destination; init's exit held back for a running exec comes after the
// exec's; a created exec can still be started (its spec is recorded); a
// task whose record is missing is refused and its descriptors closed. A
// task with a count of the OOM kills the previous binary reported gets a
// watch that reports the kills counted since (the others: from now).
func TestRestore(t *testing.T) {
	h := newHarness(t)
	var (
		armMu sync.Mutex
		armed []string // "pid" (from now) or "pid from N"
	)
	h.s.watchOOMFn = func(pid int, _ func(uint64)) (*process.OOMWatch, error) {
		armMu.Lock()
		defer armMu.Unlock()
		armed = append(armed, fmt.Sprint(pid))
		return nil, errors.New("no cgroups in unit tests")
	}
	h.s.watchOOMFromFn = func(pid int, seen uint64, _ func(uint64)) (*process.OOMWatch, error) {
		armMu.Lock()
		defer armMu.Unlock()
		armed = append(armed, fmt.Sprint(pid, " from ", seen))
		return nil, errors.New("no cgroups in unit tests")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testBound)
	defer cancel()
	now := time.Now()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "out.log")

	initA := spawn(t, "sleep", "100")
	initB := spawn(t, "sleep", "100")
	execB := spawn(t, "sleep", "100")
	initC := spawn(t, "sleep", "100")
	records := []process.Record{
		{ID: "a", Bundle: h.bundle(t, "a"), Pid: initA, Status: "running", CreatedAt: now, StartedAt: &now,
			Stdio: process.Stdio{Stdout: "file://" + logPath},
			Execs: map[string]process.Record{
				"y": {ID: "y", Status: "created", CreatedAt: now, Spec: &specs.Process{Args: []string{"/bin/true"}}},
			}},
		{ID: "b", Bundle: h.bundle(t, "b"), Pid: initB, Status: "running", CreatedAt: now, StartedAt: &now,
			InitExitDeferred: &process.Exit{Pid: initB, Status: 3, Timestamp: now},
			Execs: map[string]process.Record{
				"x": {ID: "x", Pid: execB, Status: "running", CreatedAt: now, StartedAt: &now},
			}},
		{ID: "c", Bundle: h.bundle(t, "c"), Pid: initC, Status: "running", CreatedAt: now, StartedAt: &now},
	}
	for _, r := range records {
		if err := process.WriteRecord(h.s.cfg.StateDir, r); err != nil {
			t.Fatal(err)
		}
	}
	// The previous binary had reported five OOM kills of a.
	if err := process.WriteOOMCount(h.s.cfg.StateDir, "a", 5); err != nil {
		t.Fatal(err)
	}
	outR, outW := pipeFDs(t)
	stray, strayW := pipeFDs(t)
	ids, err := h.s.Restore(ctx, []TaskFDs{
		{ID: "a", Init: process.IOFDs{Stdout: outR}},
		{ID: "b"},
		{ID: "c"},
		{ID: "missing", Init: process.IOFDs{Stdout: stray}},
	})
	if err == nil || !strings.Contains(err.Error(), `"missing"`) {
		t.Errorf("Restore: %v, want an error naming the task without a record", err)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("restored %q", ids)
	}
	testutil.Eventually(t, testBound, func() error {
		armMu.Lock()
		defer armMu.Unlock()
		got := slices.Sorted(slices.Values(armed))
		// b's init has exited (its exit is held for its exec): no watch.
		want := []string{fmt.Sprint(initA, " from 5"), fmt.Sprint(initC)}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			return fmt.Errorf("OOM watches armed: %q, want %q", got, want)
		}
		return nil
	})
	// Its read end closed (its number may be reused at once): a write to
	// the pipe fails. A child forked meanwhile by this process (another
	// test's runc, close-on-exec) holds a copy until its exec, so the
	// write may succeed for a moment.
	werr := error(nil)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, werr = strayW.Write([]byte("x")); errors.Is(werr, unix.EPIPE) {
			break
		}
	}
	if !errors.Is(werr, unix.EPIPE) {
		t.Errorf("the descriptor of the refused task is still open (write: %v)", werr)
	}

	// a: the created exec starts (its spec was recorded), output goes
	// through the handed pipe, exits come through the reaper.
	if _, err := h.s.Start(ctx, &taskv2.StartRequest{ID: "a", ExecID: "y"}); err != nil {
		t.Fatalf("start of the created exec: %v", err)
	}
	yst, _ := h.s.State(ctx, &taskv2.StateRequest{ID: "a", ExecID: "y"})
	h.exits.exit(t, int(yst.Pid), 0)
	if w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "a", ExecID: "y"}); err != nil || w.ExitStatus != 0 {
		t.Fatalf("Wait exec y: %v %v", w, err)
	}
	if _, err := outW.WriteString("after the upgrade\n"); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	st, err := h.s.State(ctx, &taskv2.StateRequest{ID: "a"})
	if err != nil || st.Status != task.Status_RUNNING || st.Pid != uint32(initA) {
		t.Fatalf("State of a: %v %v", st, err)
	}
	h.exits.exit(t, initA, 137)
	if w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "a"}); err != nil || w.ExitStatus != 137 {
		t.Fatalf("Wait a: %v %v, want 137", w, err)
	}
	if _, err := h.s.Delete(ctx, &taskv2.DeleteRequest{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(logPath); string(data) != "after the upgrade\n" {
		t.Errorf("log %q", data)
	}

	// b: init's held-back exit follows the running exec's.
	waited := make(chan uint32, 1)
	go func() {
		w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "b"})
		if err != nil {
			t.Error(err)
		}
		waited <- w.GetExitStatus()
	}()
	select {
	case s := <-waited:
		t.Fatalf("init of b reported %d before its exec exited", s)
	case <-time.After(100 * time.Millisecond):
	}
	h.exits.exit(t, execB, 9)
	if w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "b", ExecID: "x"}); err != nil || w.ExitStatus != 9 {
		t.Fatalf("Wait exec x: %v %v, want 9", w, err)
	}
	select {
	case s := <-waited:
		if s != 3 {
			t.Errorf("init of b: %d, want its held-back 3", s)
		}
	case <-time.After(testBound):
		t.Fatal("init of b: no exit after its execs'")
	}
}

// TestFreezeThawCommit: Freeze refuses a second freeze; Thaw lets another
// one happen; Commit stops the exit loop (calling stopReaper first) and
// writes every task's record.
func TestFreezeThawCommit(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), testBound)
	defer cancel()
	h.create(t, "a")
	pid := h.start(t, "a", "")
	f, err := h.s.Freeze(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Freeze(ctx); err == nil {
		t.Fatal("a second Freeze succeeded")
	}
	fds, err := f.FDs()
	if err != nil || len(fds) != 1 || fds[0].ID != "a" {
		t.Fatalf("FDs: %+v %v", fds, err)
	}
	for _, x := range fds {
		x.Close()
	}
	f.Thaw()
	if f, err = h.s.Freeze(ctx); err != nil {
		t.Fatalf("Freeze after Thaw: %v", err)
	}
	_ = os.Remove(filepath.Join(h.s.cfg.StateDir, "a", process.RecordFile))
	stopped := false
	f.Commit(time.Second, func() { stopped = true })
	if !stopped {
		t.Error("Commit did not stop the reaper")
	}
	rec, err := process.ReadRecord(h.s.cfg.StateDir, "a")
	if err != nil || rec.Pid != int(pid) || rec.Status != "running" {
		t.Fatalf("record after Commit: %+v %v", rec, err)
	}
	if h.s.stopExits() {
		t.Error("the exit loop was still running after Commit")
	}
}
