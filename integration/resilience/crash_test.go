package resilience

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
)

// killDaemon kills the group's daemon with SIGKILL and waits until it is
// gone (its parent, init, may leave it a zombie).
func killDaemon(t *testing.T, ctx context.Context, tk *task) int {
	t.Helper()
	info, err := tk.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(info.Pid)
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
			return fmt.Errorf("daemon %d still runs", pid)
		}
		return nil
	})
	return pid
}

// TestShimCrashReadoption: kill -9 of a group's daemon while its
// containers run. The containers keep running; one that exits while no
// daemon runs is recorded by its zombie; the next start in the group
// brings up a new daemon that re-adopts both from their records: State
// answers with the same pid, Wait gives the status of the one that
// exited while the daemon was down, and Kill, Wait and Delete work on the
// running one.
func TestShimCrashReadoption(t *testing.T) {
	t.Run("pod", func(t *testing.T) { testCrashReadoption(t, newEnv(t)) })
	t.Run("dense", func(t *testing.T) { e := newEnv(t); e.dense(); testCrashReadoption(t, e) })
}

func testCrashReadoption(t *testing.T, e *env) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := e.start(ctx, "runs", []string{"sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"}, true, nil)
	b := e.start(ctx, "exits", []string{"sleep", "1000"}, false, nil)
	sa, err := a.shim.State(ctx, a.id, "")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.shim.State(ctx, b.id, "")
	if err != nil {
		t.Fatal(err)
	}
	old := killDaemon(t, ctx, a)
	a.shim.Close()
	b.shim.Close()
	t.Logf("killed daemon %d; containers %d and %d", old, sa.Pid, sb.Pid)

	// b ends now, while no daemon runs (SIGKILL: a container's init
	// ignores signals it has no handler for).
	if err := unix.Kill(int(sb.Pid), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(int(sb.Pid)); ps.Exists && !ps.Zombie {
			return fmt.Errorf("container %d still runs", sb.Pid)
		}
		return nil
	})
	zombie := process.ProcStatus(int(sb.Pid))
	if !alive(int(sa.Pid)) || process.ProcStatus(int(sa.Pid)).Zombie {
		t.Fatalf("container %d died with its daemon", sa.Pid)
	}

	// The next container of the group starts a new daemon.
	c := e.start(ctx, "next", []string{"sleep", "1000"}, false, nil)
	defer c.remove(t)
	info, err := c.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if int(info.Pid) == old {
		t.Fatalf("the dead daemon %d answered", old)
	}
	t.Logf("new daemon %d, group %q", info.Pid, info.Group)
	if info.Tasks != 3 {
		t.Errorf("new daemon %d serves %d tasks, want 3 (2 adopted)", info.Pid, info.Tasks)
	}
	st, err := c.shim.State(ctx, a.id, "")
	if err != nil || st.Status != client.Running || st.Pid != sa.Pid {
		t.Fatalf("State of the adopted running task: %+v %v", st, err)
	}
	w, err := c.shim.Wait(ctx, b.id, "")
	switch {
	case err != nil:
		t.Fatalf("Wait of the task that exited while no daemon ran: %v", err)
	case zombie.Exists && w.Status != 137:
		t.Errorf("exit status %d, want 137 (SIGKILL), as its zombie says", w.Status)
	case !zombie.Exists && w.Status != 255:
		t.Errorf("exit status %d of a reaped container, want 255 (unknown)", w.Status)
	}
	t.Logf("exited while down: status %d (zombie seen: %v)", w.Status, zombie.Exists)

	if err := c.shim.Kill(ctx, a.id, "", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	w, err = c.shim.Wait(ctx, a.id, "")
	if err != nil || w.Status != 137 {
		t.Errorf("Wait of the adopted task after SIGKILL: %+v %v, want 137", w, err)
	}
	for _, tk := range []*task{a, b} {
		if _, err := c.shim.Delete(ctx, tk.id, ""); err != nil {
			t.Errorf("Delete %s: %v", tk.id, err)
		}
		tk.done = true
	}
	if a.io != nil {
		a.io.Close()
	}
}

// TestDeadShimDelete: what containerd does when a shim dies - it runs the
// shim binary's delete action for each of the shim's tasks. delete kills
// the container, removes the runtime's state, the task record and the
// dead daemon's socket, and reports 137.
func TestDeadShimDelete(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tk := e.start(ctx, "orphan", []string{"sleep", "1000"}, false, nil)
	st, err := tk.shim.State(ctx, tk.id, "")
	if err != nil {
		t.Fatal(err)
	}
	killDaemon(t, ctx, tk)
	tk.shim.Close()
	tk.done = true
	resp, err := client.DeleteShim(ctx, e.opts, tk.id, tk.bundle)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ExitStatus != 137 || resp.Pid != st.Pid {
		t.Errorf("delete answered %+v, want pid %d status 137", resp, st.Pid)
	}
	eventually(t, 20*time.Second, func() error {
		if ps := process.ProcStatus(int(st.Pid)); ps.Exists && !ps.Zombie {
			return fmt.Errorf("container %d still runs", st.Pid)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join("/run/conmon-v2/runc", e.opts.Namespace, tk.id)); !os.IsNotExist(err) {
		t.Errorf("runc state left: %v", err)
	}
	if _, err := os.Stat(filepath.Join("/run/conmon-v2/state", e.opts.Namespace, tk.id)); !os.IsNotExist(err) {
		t.Errorf("task record left: %v", err)
	}
	if _, err := os.Stat(socketPath(tk.addr)); !os.IsNotExist(err) {
		t.Errorf("dead daemon's socket left: %v", err)
	}
	// A second delete (containerd retries) is harmless.
	if _, err := client.DeleteShim(ctx, e.opts, tk.id, tk.bundle); err != nil {
		t.Errorf("second delete: %v", err)
	}
}
