package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"google.golang.org/protobuf/proto"

	"github.com/containers/conmon-v2/shim/launch"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestDelete runs the delete action with a fake runtime that records its
// arguments.
func TestDelete(t *testing.T) {
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "runtime-args")
	runtime := filepath.Join(dir, "fake-runc")
	testutil.WriteFile(t, runtime, "#!/bin/sh\necho \"$@\" >> "+argsFile+"\n", 0o755)

	cfg := launch.DefaultConfig()
	cfg.Runtime = runtime
	cfg.RuntimeRoot = filepath.Join(dir, "root")
	cfg.StateDir = filepath.Join(dir, "state")
	bundle := filepath.Join(dir, "bundle")
	if err := os.MkdirAll(filepath.Join(bundle, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	// start left its configuration in the bundle.
	testutil.WriteFile(t, filepath.Join(bundle, launch.ConfigFile), string(cfg.Encode()), 0o600)
	testutil.WriteFile(t, filepath.Join(bundle, "init.pid"), "4242\n", 0o644)

	run := func() *taskv2.DeleteResponse {
		t.Helper()
		var out, errOut bytes.Buffer
		f := launch.Flags{Namespace: "ns", ID: "c1", Bundle: bundle, Action: launch.ActionDelete}
		if err := Delete(context.Background(), f, DeleteEnv{Stdout: &out, Stderr: &errOut}); err != nil {
			t.Fatal(err)
		}
		var resp taskv2.DeleteResponse
		if err := proto.Unmarshal(out.Bytes(), &resp); err != nil {
			t.Fatalf("stdout %x is not a DeleteResponse: %v", out.Bytes(), err)
		}
		return &resp
	}

	// The runtime knows no such container: it is not called at all.
	resp := run()
	if resp.Pid != 4242 || resp.ExitStatus != 137 || resp.ExitedAt == nil {
		t.Fatalf("response %v", resp)
	}
	if _, err := os.Stat(argsFile); err == nil {
		t.Fatal("runtime called for a container it does not have")
	}

	// The container exists in the namespace's runtime root: delete --force.
	if err := os.MkdirAll(filepath.Join(cfg.RuntimeRoot, "ns", "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The task record of a dead daemon is removed, and its pid used.
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "ns", "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	testutil.WriteFile(t, filepath.Join(cfg.StateDir, "ns", "c1", "state.json"), `{"id":"c1","pid":777}`, 0o600)
	if resp := run(); resp.Pid != 777 {
		t.Fatalf("pid %d, want the record's 777", resp.Pid)
	}
	args, _ := os.ReadFile(argsFile)
	want := fmt.Sprintf("--root %s delete --force c1", filepath.Join(cfg.RuntimeRoot, "ns"))
	if strings.TrimSpace(string(args)) != want {
		t.Fatalf("runtime called with %q, want %q", args, want)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "ns", "c1")); !os.IsNotExist(err) {
		t.Fatalf("task record left: %v", err)
	}
	// Idempotent.
	run()
}

func TestDeleteValidates(t *testing.T) {
	var out bytes.Buffer
	for _, f := range []launch.Flags{
		{Namespace: "ns", ID: "../etc", Bundle: "/b"},
		{Namespace: "", ID: "c1", Bundle: "/b"},
		{Namespace: "ns", ID: "c1", Bundle: "relative"},
	} {
		if err := Delete(context.Background(), f, DeleteEnv{Stdout: &out, Stderr: &out}); err == nil {
			t.Errorf("Delete(%+v) accepted bad input", f)
		}
	}
	if out.Len() != 0 {
		t.Errorf("a refused delete printed %q", out.String())
	}
}
