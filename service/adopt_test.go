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
