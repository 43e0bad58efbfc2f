package service

import (
	"context"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"

	"github.com/containers/conmon-v2/process"
)

// spawn starts a child that nobody reaps (the test's reaper is fake), so
// that after its exit it stays a zombie, as an orphaned container does
// under an init that has not reaped it yet.
func spawn(t *testing.T, args ...string) int {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	return pid
}

func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(testBound)
	for !process.ProcStatus(pid).Zombie {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not exit", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAdopt: a service started over the records of a dead monitor takes
// its tasks back: a running init is watched and its exit status reported
// when it ends; one that exited while no monitor ran gets its zombie's
// status; one that is gone entirely gets 255; stopped ones keep theirs.
func TestAdopt(t *testing.T) {
	h := newHarness(t)
	live := spawn(t, "sleep", "100")
	dead := spawn(t, "sh", "-c", "exit 7")
	waitZombie(t, dead)
	now := time.Now()
	for _, r := range []process.Record{
		{ID: "live", Bundle: "/nonexistent", Pid: live, Status: "running", CreatedAt: now, StartedAt: &now},
		{ID: "dead", Bundle: "/nonexistent", Pid: dead, Status: "running", CreatedAt: now, StartedAt: &now},
		{ID: "gone", Bundle: "/nonexistent", Pid: 1 << 22, Status: "running", CreatedAt: now, StartedAt: &now},
		{ID: "done", Bundle: "/nonexistent", Pid: 1 << 22, Status: "stopped", ExitStatus: 3, CreatedAt: now, ExitedAt: &now},
		{ID: "other", Bundle: "/nonexistent", Pid: live, Status: "running", CreatedAt: now},
	} {
		if err := process.WriteRecord(h.s.cfg.StateDir, r); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := h.s.Adopt(context.Background(), func(r process.Record) bool { return r.ID != "other" })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"dead", "done", "gone", "live"}) {
		t.Fatalf("adopted %q", ids)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testBound)
	defer cancel()
	for id, want := range map[string]uint32{"dead": 7, "gone": 255, "done": 3} {
		w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: id})
		if err != nil || w.ExitStatus != want {
			t.Errorf("Wait %s: %v %v, want status %d", id, w, err, want)
		}
	}
	st, err := h.s.State(ctx, &taskv2.StateRequest{ID: "live"})
	if err != nil || st.Status != task.Status_RUNNING || st.Pid != uint32(live) {
		t.Fatalf("State of the live task: %v %v", st, err)
	}
	if err := exec.Command("kill", "-9", strconv.Itoa(live)).Run(); err != nil {
		t.Fatal(err)
	}
	w, err := h.s.Wait(ctx, &taskv2.WaitRequest{ID: "live"})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("Wait of the live task after SIGKILL: %v %v, want 137", w, err)
	}
	for _, id := range []string{"dead", "gone", "done", "live"} {
		if _, err := h.s.Delete(ctx, &taskv2.DeleteRequest{ID: id}); err != nil {
			t.Errorf("Delete %s: %v", id, err)
		}
	}
}

// TestAdoptTasks: a daemon that names the tasks it can own adopts those
// only, skips a named task without a record (a new container's daemon),
// and refuses a name that is no task ID (it would name another path).
func TestAdoptTasks(t *testing.T) {
	h := newHarness(t)
	now := time.Now()
	for _, id := range []string{"mine", "theirs"} {
		r := process.Record{ID: id, Bundle: "/nonexistent", Pid: 1 << 22, Status: "stopped", ExitStatus: 3, CreatedAt: now, ExitedAt: &now}
		if err := process.WriteRecord(h.s.cfg.StateDir, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		ids     []string
		want    []string
		wantErr bool
	}{
		{ids: []string{"new"}},
		{ids: []string{"mine"}, want: []string{"mine"}},
		{ids: []string{"mine"}}, // held already
		{ids: []string{"../theirs"}, wantErr: true},
	} {
		got, err := h.s.AdoptTasks(context.Background(), tt.ids, nil)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("AdoptTasks(%q) = %q, %v; want %q, error %v", tt.ids, got, err, tt.want, tt.wantErr)
		}
	}
	if _, err := h.s.State(context.Background(), &taskv2.StateRequest{ID: "theirs"}); err == nil {
		t.Error("a task not named was adopted")
	}
}

// BenchmarkAdoptStart is what a per-container daemon's start spends on
// adoption in a namespace of 300 tasks, none of them its own: reading
// every record (all) or its own only (own).
func BenchmarkAdoptStart(b *testing.B) {
	h := newHarness(b)
	now := time.Now()
	for i := range 300 {
		r := process.Record{ID: "c" + strconv.Itoa(i), Bundle: "/nonexistent", Pid: 1 << 22, Status: "running", CreatedAt: now, StartedAt: &now}
		if err := process.WriteRecord(h.s.cfg.StateDir, r); err != nil {
			b.Fatal(err)
		}
	}
	none := func(process.Record) bool { return false }
	b.Run("all", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.s.Adopt(context.Background(), none); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("own", func(b *testing.B) {
		for b.Loop() {
			if _, err := h.s.AdoptTasks(context.Background(), []string{"new"}, none); err != nil {
				b.Fatal(err)
			}
		}
	})
}
