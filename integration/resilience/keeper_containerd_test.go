package resilience

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
)

// TestKeeperCustodyContainerd: under a private containerd 1.6 (driven by
// ctr), with keeper = true, the shim daemon is killed with SIGKILL twice
// while a container prints numbered lines into a file:// log. containerd
// deletes a task as soon as its shim's connection closes ("shim
// disconnected"); here the keeper holds that connection and the new
// daemon serves it, so containerd never notices: the task stays RUNNING,
// an exec works after each kill, the kill's 137 is reported, and the log
// holds every number in order (gaps only of a killed daemon's in-flight
// read).
func TestKeeperCustodyContainerd(t *testing.T) {
	c := startContainerd(t, "ctrd-kc", "keeper = true\n")
	outLog := filepath.Join(c.Dir, "kc.log")
	addr := c.runCounter("kc", outLog)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info := func() (client.ShimInfo, error) {
		s, err := client.Connect(ctx, addr)
		if err != nil {
			return client.ShimInfo{}, err
		}
		defer s.Close()
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		return s.Info(cctx)
	}
	in, err := info()
	if err != nil {
		t.Fatal(err)
	}
	daemon := int(in.Pid)
	keeper := ppid(t, daemon)
	for round := 1; round <= 2; round++ {
		time.Sleep(time.Second)
		if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, func() error {
			in, err := info()
			if err != nil || int(in.Pid) == daemon {
				return fmt.Errorf("no new daemon yet: %+v %v", in, err)
			}
			daemon = int(in.Pid)
			return nil
		})
		t.Logf("round %d: daemon killed; new daemon %d, parent %d (keeper %d)", round, daemon, ppid(t, daemon), keeper)
		c.checkServes("kc", round, "kill", "after-crash")
	}
	c.checkConnectionKept()
	c.killAndRemove("kc")
	data, err := os.ReadFile(outLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	checkCustodySeq(t, "file:// log", lines[:len(lines)-1], 0, 0)
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{daemon, keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}
