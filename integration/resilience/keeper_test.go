package resilience

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
)

// ppid returns the parent of pid.
func ppid(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	p, _ := strconv.Atoi(f[1])
	return p
}

// TestKeeper: with keeper = true, a group's daemon runs under a keeper.
// kill -9 of the daemon, and at once of one of its containers: the keeper
// restarts the daemon by itself (no client call), the new daemon serves
// the same socket and re-adopts both tasks, and the container that died
// while no daemon ran has its real status (137), taken from the keeper,
// which reaped it. Deleting the tasks ends the daemon and the keeper.
func TestKeeper(t *testing.T) {
	e := newEnv(t)
	e.configure("keeper", "keeper = true\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := e.start(ctx, "kept", []string{"sleep", "1000"}, false, nil)
	b := e.start(ctx, "dies", []string{"sleep", "1000"}, false, nil)
	info, err := a.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d1 := int(info.Pid)
	keeper := ppid(t, d1)
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", keeper)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmRSS:") {
				t.Logf("keeper %d %s; daemon %d RSS %d KiB", keeper, strings.Join(strings.Fields(l), " "), d1, info.RSSKB)
			}
		}
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", keeper)); !strings.HasPrefix(string(comm), "containerd-shim") {
		t.Fatalf("daemon %d's parent %d is %q, not a keeper", d1, keeper, comm)
	}
	sa, err := a.shim.State(ctx, a.id, "")
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.shim.State(ctx, b.id, "")
	if err != nil {
		t.Fatal(err)
	}
	a.shim.Close()
	b.shim.Close()
	if err := unix.Kill(d1, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(int(sb.Pid), unix.SIGKILL); err != nil {
		t.Fatal(err)
	}

	var s *client.Shim
	eventually(t, 30*time.Second, func() error {
		c, err := client.Connect(ctx, a.addr)
		if err != nil {
			return err
		}
		in, err := c.Info(ctx)
		if err != nil || int(in.Pid) == d1 {
			c.Close()
			return fmt.Errorf("no new daemon yet: %+v %v", in, err)
		}
		s = c
		info = in
		return nil
	})
	defer s.Close()
	t.Logf("daemon %d (keeper %d) killed; new daemon %d, parent %d, %d tasks", d1, keeper, info.Pid, ppid(t, int(info.Pid)), info.Tasks)
	if ppid(t, int(info.Pid)) != keeper {
		t.Errorf("new daemon's parent is %d, want the keeper %d", ppid(t, int(info.Pid)), keeper)
	}
	if ps := process.ProcStatus(int(sb.Pid)); ps.Exists {
		t.Errorf("the dead container %d is still a process (zombie %v): the keeper did not reap it", sb.Pid, ps.Zombie)
	}
	w, err := s.Wait(ctx, b.id, "")
	if err != nil || w.Status != 137 {
		t.Errorf("Wait of the container killed while no daemon ran: %+v %v, want 137", w, err)
	}
	st, err := s.State(ctx, a.id, "")
	if err != nil || st.Status != client.Running || st.Pid != sa.Pid {
		t.Fatalf("State of the adopted running task: %+v %v", st, err)
	}
	if err := s.Kill(ctx, a.id, "", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	if w, err := s.Wait(ctx, a.id, ""); err != nil || w.Status != 137 {
		t.Errorf("Wait of the adopted task after SIGKILL: %+v %v, want 137", w, err)
	}
	for _, tk := range []*task{a, b} {
		if _, err := s.Delete(ctx, tk.id, ""); err != nil {
			t.Errorf("Delete %s: %v", tk.id, err)
		}
		tk.done = true
	}
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{int(info.Pid), keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}
