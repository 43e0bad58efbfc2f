package process

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestRuncContainer drives a real runc container through the domain API
// alone (no task service): create, start, exec, pids, stats, pause,
// resume, update, kill, destroy. The test binary runs no reaper, so
// go-runc's own monitor waits for runc here.
func TestRuncContainer(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	dir := t.TempDir()
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	bundle := filepath.Join(dir, "bundle")
	if out, err := exec.Command("runc", "spec", "--bundle", dir).CombinedOutput(); err != nil {
		t.Fatalf("runc spec: %v: %s", err, out)
	}
	var spec specs.Spec
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatal(err)
	}
	spec.Root = &specs.Root{Path: rootfs, Readonly: true}
	spec.Process.Terminal = false
	spec.Process.Args = []string{"/bin/sleep", "1000"}
	spec.Linux.CgroupsPath = "/conmon-v2-process-test/p1"
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ = json.Marshal(&spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	rt := NewRuncRuntime(filepath.Join(dir, "runc"))
	ctx := context.Background()
	c, err := Create(ctx, CreateConfig{ID: "p1", Namespace: "test", Bundle: bundle, Runtime: rt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Kill(ctx, 9, true)
		_ = c.Destroy(ctx)
		parents, _ := filepath.Glob("/sys/fs/cgroup/*/conmon-v2-process-test")
		for _, p := range parents {
			_ = os.Remove(p)
		}
	})
	if c.Init.Pid <= 0 || c.Init.Status != Created {
		t.Fatalf("init after create: pid %d status %s", c.Init.Pid, c.Init.Status)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}

	logFile := filepath.Join(dir, "exec.log")
	uri := "file://" + logFile
	p, err := c.NewExec("e1", Stdio{Stdout: uri, Stderr: uri}, &specs.Process{Args: []string{"/bin/echo", "from-exec"}, Cwd: "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid, pio, err := c.StartExec(ctx, p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pid <= 0 {
		t.Fatalf("exec pid %d", pid)
	}
	pio.Close() // waits for the output to reach the file
	if got, _ := os.ReadFile(logFile); string(got) != "from-exec\n" {
		t.Fatalf("exec output %q", got)
	}

	// The spec and runc's log travel in memfds (Runc.Exec): neither
	// reaches the exec'd process, runc's error reaches the caller, and
	// the bundle holds no file of an exec afterwards.
	fdsFile := filepath.Join(dir, "fds.log")
	p, err = c.NewExec("e2", Stdio{Stdout: "file://" + fdsFile}, &specs.Process{Args: []string{"/bin/ls", "-l", "/proc/self/fd/"}, Cwd: "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, pio, err = c.StartExec(ctx, p, nil, nil); err != nil {
		t.Fatal(err)
	}
	pio.Close()
	if got, _ := os.ReadFile(fdsFile); len(got) == 0 || strings.Contains(string(got), "memfd") {
		t.Errorf("descriptors of an exec:\n%s\nwant some, none of them a memfd", got)
	}
	p, err = c.NewExec("e3", Stdio{}, &specs.Process{Args: []string{"/nonexistent-binary"}, Cwd: "/"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err = c.StartExec(ctx, p, nil, nil); err == nil || !strings.Contains(err.Error(), "nonexistent-binary") {
		t.Errorf("exec of a missing binary: %v, want runc's error naming it", err)
	}
	if left, _ := filepath.Glob(filepath.Join(bundle, "exec-*")); len(left) > 0 {
		t.Errorf("files of execs left in the bundle: %q", left)
	}

	pids, err := c.Pids(ctx)
	if err != nil || len(pids) == 0 {
		t.Fatalf("pids %v, %v", pids, err)
	}
	st, err := Stats(c.Init.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st.TypeUrl, "io.containerd.cgroups.v") {
		t.Fatalf("stats type %q", st.TypeUrl)
	}
	if err := c.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	limit := int64(32 << 20)
	if err := c.Update(ctx, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(ctx, 9, false); err != nil {
		t.Fatal(err)
	}
	// Without a reaper here, watch runc's view until the init is gone.
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := rt.State(ctx, "p1")
		if err == nil && s.Status == "stopped" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not stopped after SIGKILL: %+v %v", s, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := c.Kill(ctx, 9, false); err == nil {
		t.Fatal("kill of a stopped container succeeded")
	}
	if err := c.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.State(ctx, "p1"); err == nil {
		t.Fatal("runc still knows the container after Destroy")
	}
}
