package service

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// When init exits, a container without a PID namespace of its own (a pod's
// shared one, or the host's) has the rest of its processes killed by the
// shim, as runc's shim does; one with its own PID namespace is left to the
// kernel. critest F1: an nginx worker outliving its master held the output
// pipes open forever.
func TestInitExitKillsRestOfSharedPIDContainer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ns       []specs.LinuxNamespace
		wantKill bool
	}{
		{"host pid namespace", nil, true},
		{"pod pid namespace by path", []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/1/ns/pid"}}, true},
		{"own pid namespace", []specs.LinuxNamespace{{Type: specs.PIDNamespace}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			b := h.bundle(t, "c1")
			spec := specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"/bin/sh"}}}
			if tc.ns != nil {
				spec.Linux = &specs.Linux{Namespaces: tc.ns}
			}
			data, _ := json.Marshal(spec)
			if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := h.s.Create(context.Background(), &taskv2.CreateTaskRequest{ID: "c1", Bundle: b})
			if err != nil {
				t.Fatal(err)
			}
			h.start(t, "c1", "")
			h.exits.exit(t, int(r.Pid), 0)
			if _, err := h.s.Wait(context.Background(), &taskv2.WaitRequest{ID: "c1"}); err != nil {
				t.Fatal(err)
			}
			killed := func() bool {
				h.rt.mu.Lock()
				defer h.rt.mu.Unlock()
				return slices.Contains(h.rt.killed, "c1:9")
			}
			deadline := time.Now().Add(5 * time.Second)
			for tc.wantKill && !killed() && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if !tc.wantKill {
				time.Sleep(100 * time.Millisecond)
			}
			if got := killed(); got != tc.wantKill {
				t.Fatalf("runtime kill after init's exit: %v, want %v", got, tc.wantKill)
			}
			// containerd's Kill(All) before Delete: it reaches the runtime
			// only when something may be left (a shared PID namespace);
			// either way it succeeds.
			h.rt.mu.Lock()
			before := len(h.rt.killed)
			h.rt.mu.Unlock()
			if _, err := h.s.Kill(context.Background(), &taskv2.KillRequest{ID: "c1", Signal: 9, All: true}); err != nil {
				t.Fatalf("kill all after init's exit: %v", err)
			}
			h.rt.mu.Lock()
			after := len(h.rt.killed)
			h.rt.mu.Unlock()
			if ran := after > before; ran != tc.wantKill {
				t.Fatalf("runtime kill for Kill(All) after init's exit: %v, want %v", ran, tc.wantKill)
			}
		})
	}
}
