package service

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestExecLimit: a task holds at most MaxExecs exec processes; one more is
// a ResourceExhausted error naming the limit, and deleting one makes room.
func TestExecLimit(t *testing.T) {
	h := newHarness(t)
	h.s.cfg.MaxExecs = 3
	h.create(t, "c")
	h.start(t, "c", "")
	for i := range 3 {
		h.exec(t, "c", fmt.Sprintf("e%d", i))
	}
	spec, _ := json.Marshal(specs.Process{Args: []string{"/bin/true"}})
	req := &taskv2.ExecProcessRequest{ID: "c", ExecID: "e3",
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}
	_, err := h.s.Exec(context.Background(), req)
	if !errdefs.IsResourceExhausted(err) {
		t.Fatalf("exec over the limit: %v, want ResourceExhausted", err)
	}
	t.Log(err)
	if _, err := h.s.Delete(context.Background(), &taskv2.DeleteRequest{ID: "c", ExecID: "e0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.Exec(context.Background(), req); err != nil {
		t.Fatalf("exec after a delete made room: %v", err)
	}
}
