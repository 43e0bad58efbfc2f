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

	"github.com/containers/conmon-v2/process"
)

// TestUpgradeSIGHUPStorm: SIGHUP every millisecond for two seconds, from
// the one that starts a live upgrade on: some land while the new binary
// starts, between its execve and its registration for SIGHUP, where the
// signal's default action would end the daemon (the old binary sets it to
// SIG_IGN before the exec; the new one registers before it starts
// anything). The daemon lives on with the same pid, has upgraded, serves
// on the connection opened before, and the container's output through the
// upgrades is complete.
func TestUpgradeSIGHUPStorm(t *testing.T) {
	e := newEnv(t)
	e.configure("hupstorm", "grouping = \"namespace\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tk := e.start(ctx, "hs", []string{"sh", "-c", counterScript}, true, nil)
	s := tk.shim
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := int(before.Pid)
	sent := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); sent++ {
		if err := unix.Kill(pid, unix.SIGHUP); err != nil {
			t.Fatalf("SIGHUP %d: %v", sent+1, err)
		}
		time.Sleep(time.Millisecond)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	info, err := s.WaitUpgraded(wctx, before)
	wcancel()
	if ps := process.ProcStatus(pid); !ps.Exists || ps.Zombie {
		t.Fatalf("the daemon %d died during %d SIGHUPs (%+v)", pid, sent, ps)
	}
	if err != nil {
		t.Fatalf("after %d SIGHUPs: %v", sent, err)
	}
	if info.Pid != before.Pid || !info.StartedAt.Equal(before.StartedAt) {
		t.Fatalf("daemon pid %d started %v, was %d started %v", info.Pid, info.StartedAt, before.Pid, before.StartedAt)
	}
	t.Logf("%d SIGHUPs in 2 s: daemon %d upgraded (binary started %v after the first), %s", sent, pid,
		info.ExecAt.Sub(before.ExecAt).Round(time.Millisecond), info.Binary)
	time.Sleep(time.Second) // a last upgrade may still run: requests wait for it
	// A container the upgraded daemon starts has SIGHUP neither ignored
	// nor blocked: the SIG_IGN of the exec ended with the registration.
	late := e.start(ctx, "hs-late", []string{"sleep", "1000"}, false, nil)
	defer late.remove(t)
	st, err := late.shim.State(ctx, late.id, "")
	if err != nil {
		t.Fatal(err)
	}
	if ign, blk := sigMask(t, int(st.Pid), "SigIgn"), sigMask(t, int(st.Pid), "SigBlk"); ign&1 != 0 || blk&1 != 0 {
		t.Errorf("a container started after the upgrades has SIGHUP ignored or blocked: SigIgn %x SigBlk %x", ign, blk)
	}
	killTasks(ctx, t, s, []*task{tk})
	if !tk.io.Wait(10 * time.Second) {
		t.Errorf("FIFO output did not end")
	}
	tk.done = true
	if _, err := s.Delete(ctx, tk.id, ""); err != nil {
		t.Errorf("delete: %v", err)
	}
	tk.io.Close()
	checkSeqText(t, "FIFO", tk.out.String())
}

// sigMask returns the mask named field (SigIgn, SigBlk, ...) of pid's
// /proc status: bit n-1 is signal n.
func sigMask(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
