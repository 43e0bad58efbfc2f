package service

import (
	"context"
	"errors"
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
	h.s.watchOOMFn = func(int, func()) (*process.OOMWatch, error) {
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
