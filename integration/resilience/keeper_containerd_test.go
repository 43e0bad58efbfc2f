package resilience

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/process"
)

// TestKeeperCustodyContainerd: under a private containerd 1.6 (driven by
// ctr), with keeper = true, the shim daemon of a container is killed with
// SIGKILL twice while the container prints numbered lines into a file://
// log. containerd deletes a task as soon as its shim's connection closes
// ("shim disconnected"); here the keeper holds that connection and the
// new daemon serves it, so containerd never notices: the task stays
// RUNNING, an exec works after each kill, the kill's 137 is reported,
// and the log holds every number in order (gaps only of a killed
// daemon's in-flight read). A second container, with a daemon and keeper
// of its own, prints beside it and is not touched: same daemon, every
// number in its log. containerd publishes each container's exit once.
//
// ctr gives no sandbox id, so in both groupings each container has a
// daemon of its own; the pod mode's daemon lists the namespace's task
// records when it starts, the container mode's reads its own record only,
// which the test checks (fanotify).
func TestKeeperCustodyContainerd(t *testing.T) {
	for _, m := range []struct {
		name, toml string
		ownOnly    bool // the restarted daemon opens its own record only
	}{
		{name: "pod"},
		{name: "container", toml: "grouping = \"container\"\n", ownOnly: true},
	} {
		t.Run(m.name, func(t *testing.T) {
			testKeeperCustodyContainerd(t, "keeper = true\n"+m.toml, m.ownOnly)
		})
	}
}

func testKeeperCustodyContainerd(t *testing.T, toml string, ownOnly bool) {
	c := startContainerd(t, "ctrd-kc", toml)
	events := c.watchEvents()
	outLog, otherLog := filepath.Join(c.Dir, "kc.log"), filepath.Join(c.Dir, "kc2.log")
	addr := c.runCounter("kc", outLog)
	otherAddr := c.runCounter("kc2", otherLog)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info := func(addr string) (client.ShimInfo, error) {
		s, err := client.Connect(ctx, addr)
		if err != nil {
			return client.ShimInfo{}, err
		}
		defer s.Close()
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		defer ccancel()
		return s.Info(cctx)
	}
	in, err := info(addr)
	if err != nil {
		t.Fatal(err)
	}
	other, err := info(otherAddr)
	if err != nil {
		t.Fatal(err)
	}
	if in.Pid == other.Pid || in.Tasks != 1 || other.Tasks != 1 {
		t.Fatalf("daemons %+v and %+v: want one of its own for each container", in, other)
	}
	var watch *recordWatch
	if ownOnly {
		watch = watchRecords(t, filepath.Join(c.Dir, "shimstate", "default"), "kc", "kc2")
	}
	daemon := int(in.Pid)
	keeper := ppid(t, daemon)
	for round := 1; round <= 2; round++ {
		time.Sleep(time.Second)
		if err := syscall.Kill(daemon, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, func() error {
			in, err := info(addr)
			if err != nil || int(in.Pid) == daemon {
				return fmt.Errorf("no new daemon yet: %+v %v", in, err)
			}
			daemon = int(in.Pid)
			return nil
		})
		t.Logf("round %d: daemon killed; new daemon %d, parent %d (keeper %d)", round, daemon, ppid(t, daemon), keeper)
		if watch != nil {
			watch.checkOwnOnly(daemon, "kc")
		}
		c.checkServes("kc", round, "kill", "after-crash")
	}
	if in, err := info(otherAddr); err != nil || in.Pid != other.Pid || in.Tasks != 1 {
		t.Errorf("the other container's daemon after the kills: %+v %v, want pid %d with 1 task", in, err, other.Pid)
	}
	c.checkConnectionKept()
	c.killAndRemove("kc")
	c.killAndRemove("kc2")
	for _, x := range []struct{ what, path string }{{"file:// log", outLog}, {"the other container's file:// log", otherLog}} {
		data, err := os.ReadFile(x.path)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(data), "\n")
		checkCustodySeq(t, x.what, lines[:len(lines)-1], 0, 0)
	}
	for _, id := range []string{"kc", "kc2"} {
		if got := events.exits(id); !slices.Equal(got, []uint32{137}) {
			t.Errorf("containerd published the exits %v of %s, want one, 137", got, id)
		}
	}
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{daemon, keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}
