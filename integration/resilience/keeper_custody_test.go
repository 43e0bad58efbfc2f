package resilience

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
)

// TestKeeperCustody: under a keeper (keeper = true), the daemon gives the
// keeper a duplicate of every pipe it reads (descriptor custody). Two
// containers print numbered lines without pause, one into a k8s-file log,
// the other into the client's FIFOs and a k8s-file log; the daemon is
// killed with SIGKILL twice; the keeper restarts it each time with the
// held descriptors and a handover description, and the new daemon
// restores the tasks (service.Restore). Afterwards every number is in
// each log and FIFO, once and in order (the output written while no
// daemon ran waited in the pipes), the exit codes are right, and once the
// containers are deleted the keeper holds no more descriptors than
// before they were created.
func TestKeeperCustody(t *testing.T) {
	e := newEnv(t)
	e.configure("custody", "keeper = true\n")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logDir := filepath.Join(e.dir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// An idle container without stdio keeps the group (daemon and
	// keeper) alive; the keeper's descriptors are counted with it alone.
	anchor := e.start(ctx, "anchor", []string{"sleep", "1000"}, false, nil)
	info, err := anchor.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keeper := ppid(t, int(info.Pid))
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", keeper)); !strings.HasPrefix(string(comm), "containerd-shim") {
		t.Fatalf("daemon %d's parent %d is %q, not a keeper", info.Pid, keeper, comm)
	}
	baseline := fdCount(t, keeper)

	kfile := func(i int) map[string]string {
		return map[string]string{
			client.LogAnnotationPrefix + "driver": "k8s-file",
			client.LogAnnotationPrefix + "path":   filepath.Join(logDir, fmt.Sprintf("kc%d.log", i)),
		}
	}
	tasks := []*task{
		e.start(ctx, "kc0", []string{"sh", "-c", counterScript}, false, kfile(0)),
		e.start(ctx, "kc1", []string{"sh", "-c", counterScript}, true, kfile(1)),
	}
	held := fdCount(t, keeper)
	t.Logf("keeper %d: %d descriptors with the anchor alone, %d with the two counters", keeper, baseline, held)
	if held <= baseline {
		t.Errorf("the keeper holds no descriptor of the counters (%d, baseline %d)", held, baseline)
	}

	daemon := int(info.Pid)
	for round := 1; round <= 2; round++ {
		time.Sleep(time.Second)
		if err := unix.Kill(daemon, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		var s *client.Shim
		eventually(t, 30*time.Second, func() error {
			c, err := client.Connect(ctx, anchor.addr)
			if err != nil {
				return err
			}
			in, err := c.Info(ctx)
			if err != nil || int(in.Pid) == daemon {
				c.Close()
				return fmt.Errorf("no new daemon yet: %+v %v", in, err)
			}
			s, info = c, in
			return nil
		})
		t.Logf("round %d: daemon %d killed; daemon %d (parent %d) answers after %v with %d tasks",
			round, daemon, info.Pid, ppid(t, int(info.Pid)), time.Since(killed).Round(time.Millisecond), info.Tasks)
		if ppid(t, int(info.Pid)) != keeper {
			t.Errorf("new daemon's parent is %d, want the keeper %d", ppid(t, int(info.Pid)), keeper)
		}
		daemon = int(info.Pid)
		for _, tk := range append([]*task{anchor}, tasks...) {
			st, err := s.State(ctx, tk.id, "")
			if err != nil || st.Status != client.Running {
				t.Fatalf("round %d: State of %s: %+v %v", round, tk.id, st, err)
			}
			tk.shim.Close()
			tk.shim = s // the old connections died with the daemon
		}
	}
	time.Sleep(time.Second)
	s := anchor.shim
	for _, tk := range tasks {
		if err := s.Kill(ctx, tk.id, "", uint32(unix.SIGKILL), true); err != nil {
			t.Fatal(err)
		}
		w, err := s.Wait(ctx, tk.id, "")
		if err != nil {
			t.Fatal(err)
		}
		if w.Status != 137 {
			t.Errorf("%s exited %d, want 137", tk.id, w.Status)
		}
	}
	if !tasks[1].io.Wait(10 * time.Second) {
		t.Errorf("%s: FIFO output did not end", tasks[1].id)
	}
	for _, tk := range tasks {
		tk.done = true
		if _, err := s.Delete(ctx, tk.id, ""); err != nil {
			t.Errorf("delete %s: %v", tk.id, err)
		}
		if tk.io != nil {
			tk.io.Close()
		}
	}
	for i := range tasks {
		n, _ := checkSeqLog(t, filepath.Join(logDir, fmt.Sprintf("kc%d.log", i)), -1)
		t.Logf("kc%d.log: %d numbers in order", i, n)
		if n < 1000 {
			t.Errorf("kc%d.log: only %d numbers", i, n)
		}
	}
	checkSeqText(t, "kc1 FIFO", tasks[1].out.String())

	eventually(t, 10*time.Second, func() error {
		if n := fdCount(t, keeper); n != baseline {
			return fmt.Errorf("keeper holds %d descriptors after the counters were deleted, %d before they were created", n, baseline)
		}
		return nil
	})
	anchor.remove(t)
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{daemon, keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}
