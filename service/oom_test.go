package service

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"

	"github.com/containers/conmon-v2/process"
)

// TestOOMArmedBeforeStart: Create answers before its task's OOM watch is
// armed, and init's Start runs the container's process (runc start) only
// once it is, so no OOM kill of the container goes unwatched. Delete of
// a task never started waits for the arming too.
func TestOOMArmedBeforeStart(t *testing.T) {
	h := newHarness(t)
	release := make(chan struct{})
	var armed atomic.Int32
	h.s.watchNewOOMFn = func(string, func(uint64)) (*process.OOMWatch, error) {
		<-release
		armed.Add(1)
		return nil, errors.New("no cgroups in unit tests")
	}
	startedUnarmed := make(chan bool, 2)
	h.rt.onStart = func(string, int) { startedUnarmed <- armed.Load() == 0 }

	h.create(t, "c1") // returns while the watch waits for release
	started := make(chan error, 1)
	go func() {
		_, err := h.s.Start(context.Background(), &taskv2.StartRequest{ID: "c1"})
		started <- err
	}()
	close(release)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	if <-startedUnarmed {
		t.Fatal("runc start ran before the OOM watch was armed")
	}

	h.create(t, "c2")
	if _, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	h.s.mu.Lock()
	pending := len(h.s.oomArming)
	h.s.mu.Unlock()
	if pending != 0 || armed.Load() != 2 {
		t.Fatalf("after Delete: %d watches being armed, %d armed; want 0 and 2", pending, armed.Load())
	}
}

// TestOOMBeforeWatchArmed: runc init is OOM-killed between Create's answer
// and the arming of its watch. The new watch reports the kill the cgroup
// counted (process.WatchNewOOM calls onOOM before it returns), from the
// cgroup Create read while init lived, and init's exit, which arrived
// first, is held until then: /tasks/oom precedes /tasks/exit.
func TestOOMBeforeWatchArmed(t *testing.T) {
	h := newHarness(t)
	h.s.procCgroupFn = func(pid int) (string, error) { return fmt.Sprintf("cgroup of %d", pid), nil }
	release := make(chan struct{})
	var armedOn atomic.Value
	h.s.watchNewOOMFn = func(cg string, onOOM func(uint64)) (*process.OOMWatch, error) {
		<-release
		armedOn.Store(cg)
		onOOM(1) // oom_kill was 1 when the watch was armed
		return nil, errors.New("no cgroups in unit tests")
	}
	pid := h.create(t, "c1")
	h.exits.exit(t, int(pid), 128+9) // the kill, reaped before the watch exists
	close(release)
	wantEvents(t, h.pub.wait(t, 3), "/tasks/create", "/tasks/oom", fmt.Sprintf("/tasks/exit c1 %d", 128+9))
	if got, want := armedOn.Load(), fmt.Sprintf("cgroup of %d", pid); got != want {
		t.Fatalf("watch armed on %q, want %q (read by Create)", got, want)
	}
	if _, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
}
