package service

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestUnknownTaskOrExec: every request that names a task (and an exec)
// the service does not hold answers NotFound naming it, and leaves the
// service's lock free (lockTask releases it on error).
func TestUnknownTaskOrExec(t *testing.T) {
	h := newHarness(t)
	h.create(t, "c1")
	ctx := context.Background()
	res, _ := json.Marshal(map[string]any{})
	proc, _ := json.Marshal(map[string]any{"args": []string{"/bin/true"}})
	type call func(id, execID string) error
	ignore := func(_ any, err error) error { return err }
	calls := []struct {
		name  string
		execs bool // the request names an exec too
		call  call
	}{
		{"Start", true, func(id, x string) error { return ignore(h.s.Start(ctx, &taskv2.StartRequest{ID: id, ExecID: x})) }},
		{"Delete", true, func(id, x string) error { return ignore(h.s.Delete(ctx, &taskv2.DeleteRequest{ID: id, ExecID: x})) }},
		{"State", true, func(id, x string) error { return ignore(h.s.State(ctx, &taskv2.StateRequest{ID: id, ExecID: x})) }},
		{"Pids", false, func(id, _ string) error { return ignore(h.s.Pids(ctx, &taskv2.PidsRequest{ID: id})) }},
		{"Pause", false, func(id, _ string) error { return ignore(h.s.Pause(ctx, &taskv2.PauseRequest{ID: id})) }},
		{"Resume", false, func(id, _ string) error { return ignore(h.s.Resume(ctx, &taskv2.ResumeRequest{ID: id})) }},
		{"Checkpoint", false, func(id, _ string) error {
			return ignore(h.s.Checkpoint(ctx, &taskv2.CheckpointTaskRequest{ID: id, Path: t.TempDir()}))
		}},
		{"Kill", true, func(id, x string) error {
			return ignore(h.s.Kill(ctx, &taskv2.KillRequest{ID: id, ExecID: x, Signal: 9}))
		}},
		{"Exec", false, func(id, _ string) error {
			return ignore(h.s.Exec(ctx, &taskv2.ExecProcessRequest{ID: id, ExecID: "e1", Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}}))
		}},
		{"ResizePty", true, func(id, x string) error {
			return ignore(h.s.ResizePty(ctx, &taskv2.ResizePtyRequest{ID: id, ExecID: x, Width: 80, Height: 24}))
		}},
		{"CloseIO", true, func(id, x string) error {
			return ignore(h.s.CloseIO(ctx, &taskv2.CloseIORequest{ID: id, ExecID: x, Stdin: true}))
		}},
		{"Update", false, func(id, _ string) error {
			return ignore(h.s.Update(ctx, &taskv2.UpdateTaskRequest{ID: id, Resources: &anypb.Any{Value: res}}))
		}},
		{"Wait", true, func(id, x string) error { return ignore(h.s.Wait(ctx, &taskv2.WaitRequest{ID: id, ExecID: x})) }},
		{"Stats", false, func(id, _ string) error { return ignore(h.s.Stats(ctx, &taskv2.StatsRequest{ID: id})) }},
		{"LogStats", false, func(id, _ string) error { return ignore(h.s.LogStats(ctx, id)) }},
	}
	for _, c := range calls {
		cases := []struct{ id, execID, want string }{{"c9", "", `task "c9": not found`}}
		if c.execs {
			cases = append(cases, struct{ id, execID, want string }{"c1", "e9", `exec "e9" of task "c1": not found`})
		}
		for _, tc := range cases {
			err := c.call(tc.id, tc.execID)
			if !errors.Is(err, errdefs.ErrNotFound) || !strings.HasSuffix(err.Error(), tc.want) {
				t.Errorf("%s(%q, %q): %v; want NotFound ending %q", c.name, tc.id, tc.execID, err, tc.want)
			}
			if !h.s.mu.TryLock() {
				t.Fatalf("%s(%q, %q) left the service's lock held", c.name, tc.id, tc.execID)
			}
			h.s.mu.Unlock()
		}
	}
}
