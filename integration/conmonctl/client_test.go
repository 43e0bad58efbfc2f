package conmonctl

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
)

// TestClient drives the Go client against the real shim: every task RPC,
// the Monitor API, and errors arriving with their errdefs classes.
func TestClient(t *testing.T) {
	h := newHarness(t) // for its leak checks and rootfs
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opts := client.ShimOpts{Binary: h.shim, Namespace: "conmonctl"}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle")
	const id = "client-test"
	spec, err := client.NewSpec(client.SpecOpts{
		Rootfs: h.rootfs, Args: []string{"sh", "-c", "read line; echo got $line; sleep 1000"}, Hostname: id,
		MemoryLimit: 32 << 20, CgroupsPath: "/conmon-v2/" + id,
		Annotations: map[string]string{client.GroupAnnotation: "client-group"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.WriteSpec(bundle, spec); err != nil {
		t.Fatal(err)
	}
	addr, err := client.StartShim(ctx, opts, id, bundle)
	if err != nil {
		t.Fatal(err)
	}
	s, err := client.Connect(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fifos, err := client.NewFIFOSet(filepath.Join(dir, "io"), "init", true, true, true, false)
	if err != nil {
		t.Fatal(err)
	}
	stdin := &blockingReader{data: make(chan []byte, 1)}
	var stdout, stderr testutil.SyncBuffer
	cio, err := client.OpenIO(ctx, fifos, client.Streams{Stdin: stdin, Stdout: &stdout, Stderr: &stderr}, func() {
		_ = s.CloseStdin(context.WithoutCancel(ctx), id, "")
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cio.Close()
	created := false
	defer func() {
		if created {
			cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer ccancel()
			_ = s.Kill(cctx, id, "", uint32(unix.SIGKILL), true)
			_, _ = s.Wait(cctx, id, "")
			_, _ = s.Delete(cctx, id, "")
			_ = s.Shutdown(cctx, id, false)
		}
	}()
	if _, err := s.Create(ctx, client.CreateOpts{ID: id, Bundle: bundle, Stdio: fifos.Stdio}); err != nil {
		t.Fatal(err)
	}
	created = true
	if _, err := s.Create(ctx, client.CreateOpts{ID: id, Bundle: bundle}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("second Create: %v, want AlreadyExists", err)
	}
	if st, err := s.State(ctx, id, ""); err != nil || st.Status != client.Created {
		t.Errorf("State after Create: %+v %v", st, err)
	}
	pid, err := s.Start(ctx, id, "")
	if err != nil || pid == 0 {
		t.Fatalf("Start: %d %v", pid, err)
	}

	// Input reaches the process, output comes back.
	stdin.data <- []byte("hello\n")
	testutil.Eventually(t, 10*time.Second, func() error {
		if !strings.Contains(stdout.String(), "got hello") {
			return fmt.Errorf("stdout %q", stdout.String())
		}
		return nil
	})

	// Errors keep their class across ttrpc.
	checks := []struct {
		name string
		err  error
		is   func(error) bool
	}{
		{"State of an unknown task", func() error { _, err := s.State(ctx, "nope", ""); return err }(), errdefs.IsNotFound},
		{"Kill of an unknown exec", s.Kill(ctx, id, "nope", 9, false), errdefs.IsNotFound},
		{"Exec with a bad exec id", s.Exec(ctx, id, "bad/id", &specs.Process{Args: []string{"true"}, Cwd: "/"}, client.Stdio{}), errdefs.IsInvalidArgument},
		{"Delete of a running task", func() error { _, err := s.Delete(ctx, id, ""); return err }(), errdefs.IsFailedPrecondition},
	}
	for _, c := range checks {
		if !c.is(c.err) {
			t.Errorf("%s: %v (%T)", c.name, c.err, c.err)
		}
	}

	// Exec, its exit code, a duplicate exec id.
	proc := *spec.Process
	proc.Args = []string{"sh", "-c", "exit 5"}
	if err := s.Exec(ctx, id, "e1", &proc, client.Stdio{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Exec(ctx, id, "e1", &proc, client.Stdio{}); !errdefs.IsAlreadyExists(err) {
		t.Errorf("duplicate exec id: %v, want AlreadyExists", err)
	}
	waitc := make(chan client.Exit, 1)
	go func() {
		e, _ := s.Wait(ctx, id, "e1")
		waitc <- e
	}()
	if _, err := s.Start(ctx, id, "e1"); err != nil {
		t.Fatal(err)
	}
	if e := <-waitc; e.Status != 5 {
		t.Errorf("exec exit %d, want 5", e.Status)
	}
	if _, err := s.Delete(ctx, id, "e1"); err != nil {
		t.Errorf("Delete exec: %v", err)
	}

	// Pids, Stats, Update, Pause/Resume, Connect, Checkpoint.
	if pids, err := s.Pids(ctx, id); err != nil || len(pids) == 0 {
		t.Errorf("Pids: %v %v", pids, err)
	}
	st, err := s.Stats(ctx, id)
	if err != nil || st.MemoryLimit != 32<<20 || st.Pids == 0 {
		t.Errorf("Stats: %+v %v", st, err)
	}
	limit := int64(48 << 20)
	if err := s.Update(ctx, id, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}, nil); err != nil {
		t.Errorf("Update: %v", err)
	} else if st, err := s.Stats(ctx, id); err != nil || st.MemoryLimit != 48<<20 {
		t.Errorf("Stats after Update: %+v %v", st, err)
	}
	if err := s.Pause(ctx, id); err != nil {
		t.Errorf("Pause: %v", err)
	}
	if st, _ := s.State(ctx, id, ""); st.Status != client.Paused {
		t.Errorf("State after Pause: %+v", st)
	}
	if err := s.Resume(ctx, id); err != nil {
		t.Errorf("Resume: %v", err)
	}
	ci, err := s.ConnectTask(ctx, id)
	if err != nil || ci.ShimPid == 0 || ci.TaskPid != pid {
		t.Errorf("Connect: %+v %v (task pid %d)", ci, err, pid)
	}
	if err := s.Checkpoint(ctx, id, t.TempDir()); err == nil {
		t.Error("Checkpoint without criu succeeded")
	}

	// The Monitor API.
	info, err := s.Info(ctx)
	if err != nil || info.Pid != ci.ShimPid || info.Group != "client-group" || info.Tasks != 1 || info.RSSKB == 0 {
		t.Errorf("Info: %+v %v", info, err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Status != client.Running || list[0].StartedAt.IsZero() {
		t.Errorf("List: %+v %v", list, err)
	}
	evctx, evcancel := context.WithCancel(ctx)
	defer evcancel()
	events, _, err := s.Subscribe(evctx, "/tasks/exit")
	if err != nil {
		t.Fatal(err)
	}

	// The end: kill, the exit event, Wait, Delete, and the shim goes.
	if err := s.Kill(ctx, id, "", uint32(unix.SIGKILL), true); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Topic != "/tasks/exit" || ev.TypeURL != "containerd.events.TaskExit" {
			t.Errorf("event %+v", ev)
		}
	case <-time.After(10 * time.Second):
		t.Error("no exit event")
	}
	if e, err := s.Wait(ctx, id, ""); err != nil || e.Status != 137 {
		t.Errorf("Wait: %+v %v", e, err)
	}
	if e, err := s.Delete(ctx, id, ""); err != nil || e.Status != 137 {
		t.Errorf("Delete: %+v %v", e, err)
	}
	created = false
	if err := s.Shutdown(ctx, id, false); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if !cio.Wait(5 * time.Second) {
		t.Error("output fifos not closed after the task was deleted")
	}
}

// blockingReader is a stdin that yields what is sent on data, and blocks
// otherwise (a terminal's stdin never ends by itself).
type blockingReader struct {
	data chan []byte
	rest []byte
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if len(b.rest) == 0 {
		b.rest = <-b.data
	}
	n := copy(p, b.rest)
	b.rest = b.rest[n:]
	return n, nil
}
