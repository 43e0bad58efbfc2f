package resilience

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// containerd is a private containerd 1.6 of one test
// (testutil.Containerd), with the shim installed as the runtime
// io.containerd.conmon.v2.
type containerd struct {
	*testutil.Containerd
}

// startContainerd starts a private containerd in a new directory named
// after prefix, and waits until it answers. The shim's configuration is
// the harness's (a socket, runtime and state directory of its own)
// followed by shimTOML. At the end of the test every task and container
// is removed, containerd stopped (its log shown if the test failed) and
// the directory removed.
func startContainerd(t *testing.T, prefix, shimTOML string) *containerd {
	t.Helper()
	return &containerd{testutil.StartContainerd(t, testutil.ContainerdOptions{Prefix: prefix, ShimConfig: shimTOML})}
}

// runCounter runs the container id printing counterScript's numbers into
// the file:// log outLog, and waits until it runs. It returns the address
// of the container's shim.
func (c *containerd) runCounter(id, outLog string) string {
	c.T.Helper()
	c.MustCtr("run", "-d", "--runtime", testutil.ContainerdRuntime, "--runtime-config-path", c.ShimCfg,
		"--log-uri", "file://"+outLog, "--rootfs", c.Rootfs, id, "/bin/sh", "-c", counterScript)
	c.WaitStatus(id, "RUNNING")
	addr, err := os.ReadFile(filepath.Join(c.Dir, "state", "io.containerd.runtime.v2.task", "default", id, "address"))
	if err != nil {
		c.T.Fatal(err)
	}
	return string(addr)
}

// checkServes checks, after the round-th upgrade or crash (what), that
// task id still runs and that an exec (echo word) in it works.
func (c *containerd) checkServes(id string, round int, what, word string) {
	c.T.Helper()
	if st := c.TaskStatus(id); st != "RUNNING" {
		c.T.Fatalf("round %d: task %s is %q after the %s", round, id, st, what)
	}
	out := c.MustCtr("task", "exec", "--fifo-dir", filepath.Join(c.Dir, "fifo"), "--exec-id", fmt.Sprintf("e%d", round), id, "/bin/echo", word)
	if !strings.Contains(out, word) {
		c.T.Fatalf("exec after the %s: %q", what, out)
	}
}

// killAndRemove kills task id with SIGKILL, checks that its removal
// reports the exit code 137, and removes the container.
func (c *containerd) killAndRemove(id string) {
	c.T.Helper()
	c.MustCtr("task", "kill", "-s", "SIGKILL", id)
	c.WaitStatus(id, "STOPPED")
	if out := c.MustCtr("task", "rm", id); !strings.Contains(out, "137") {
		c.T.Errorf("task rm after SIGKILL reports %q, want exit code 137", out)
	}
	c.MustCtr("c", "rm", id)
}

// checkConnectionKept fails the test if containerd logged that a shim's
// connection closed ("shim disconnected": it deletes the task then).
func (c *containerd) checkConnectionKept() {
	c.T.Helper()
	time.Sleep(500 * time.Millisecond)
	if strings.Contains(c.Log(), "shim disconnected") {
		c.T.Errorf("containerd saw the shim's connection close")
	}
}

// ctrEvents is `ctr events` running for the test: the events containerd
// publishes, one a line ("<time> <namespace> <topic> <json>").
type ctrEvents struct {
	c   *containerd
	out *testutil.SyncBuffer
}

// watchEvents runs `ctr events` until the end of the test.
func (c *containerd) watchEvents() *ctrEvents {
	c.T.Helper()
	cmd := exec.Command(c.CtrBin, "--address", c.Address, "events")
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		c.T.Fatal(err)
	}
	c.T.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return &ctrEvents{c: c, out: out}
}

// exits waits until containerd published the deletion of task id, and
// returns the exit statuses it published for the task's init before.
func (e *ctrEvents) exits(id string) []uint32 {
	t := e.c.T
	t.Helper()
	var exits []uint32
	testutil.Eventually(t, 10*time.Second, func() error {
		exits = nil
		for _, l := range strings.Split(e.out.String(), "\n") {
			f := strings.Fields(l)
			k := slices.IndexFunc(f, func(s string) bool { return strings.HasPrefix(s, "/tasks/") })
			j := strings.IndexByte(l, '{')
			if k < 0 || j < 0 {
				continue
			}
			var ev struct {
				ContainerID string `json:"container_id"`
				ID          string `json:"id"`
				ExitStatus  uint32 `json:"exit_status"`
			}
			if err := json.Unmarshal([]byte(l[j:]), &ev); err != nil || ev.ContainerID != id {
				continue
			}
			switch f[k] {
			case "/tasks/exit":
				if ev.ID == id {
					exits = append(exits, ev.ExitStatus)
				}
			case "/tasks/delete":
				return nil
			}
		}
		return fmt.Errorf("no /tasks/delete of %s from containerd yet; events:\n%s", id, e.out.String())
	})
	return exits
}
