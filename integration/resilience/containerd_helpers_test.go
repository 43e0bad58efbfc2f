package resilience

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// containerd is a private containerd 1.6 of one test, driven by ctr, with
// the shim installed as the runtime io.containerd.conmon.v2.
type containerd struct {
	t       *testing.T
	dir     string // everything of it: short, socket paths must fit 106 bytes
	address string // its gRPC socket
	ctrBin  string
	logPath string // its log, with the shim's
	rootfs  string // a busybox rootfs for the container
	shimCfg string // the shim's configuration (--runtime-config-path)
}

// startContainerd starts a private containerd in a new directory named
// after prefix, and waits until it answers. The shim's configuration is
// shimTOML followed by a socket, runtime and state directory of its own.
// At the end of the test the container id is killed and removed, then
// containerd is stopped (its log shown if the test failed) and the
// directory removed.
func startContainerd(t *testing.T, prefix, shimTOML, id string) *containerd {
	t.Helper()
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	ctrd := testutil.NeedCommand(t, "containerd")
	c := &containerd{t: t, ctrBin: testutil.NeedCommand(t, "ctr")}
	shimBin := testutil.Bin(t, "containerd-shim-conmon-v2")
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c.dir = dir
	c.rootfs = testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	c.address = filepath.Join(dir, "c.sock")
	for _, d := range []string{"bin", "fifo", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(shimBin, filepath.Join(dir, "bin", "containerd-shim-conmon-v2")); err != nil {
		t.Fatal(err)
	}
	c.shimCfg = filepath.Join(dir, "shim.toml")
	write := func(path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(c.shimCfg, shimTOML+fmt.Sprintf("socket_dir = %q\nruntime_root = %q\nstate_dir = %q\n",
		filepath.Join(dir, "s"), filepath.Join(dir, "runc"), filepath.Join(dir, "shimstate")))
	write(filepath.Join(dir, "config.toml"), fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.address, c.address+".ttrpc", filepath.Join(dir, "opt")))
	c.logPath = filepath.Join(dir, "log", "containerd.log")
	logf, err := os.Create(c.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // containerd has its own
	cmd := exec.Command(ctrd, "--config", filepath.Join(dir, "config.toml"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dir, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.ctr("task", "kill", "-a", "-s", "SIGKILL", id)
		time.Sleep(200 * time.Millisecond)
		c.ctr("task", "rm", "-f", id)
		c.ctr("c", "rm", id)
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", c.log())
		}
	})
	eventually(t, 20*time.Second, func() error { _, err := c.ctr("version"); return err })
	return c
}

// ctr runs ctr with args against the containerd, and returns its output.
func (c *containerd) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctrBin, append([]string{"--address", c.address}, args...)...)
	cmd.Dir = c.dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustCtr is ctr, failing the test if ctr fails.
func (c *containerd) mustCtr(args ...string) string {
	c.t.Helper()
	out, err := c.ctr(args...)
	if err != nil {
		c.t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// log is containerd's log so far.
func (c *containerd) log() string {
	data, _ := os.ReadFile(c.logPath)
	return string(data)
}

// status is the status of task id as ctr task ls says ("" if not listed).
func (c *containerd) status(id string) string {
	out, _ := c.ctr("task", "ls")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// waitStatus waits until task id has the status want.
func (c *containerd) waitStatus(id, want string) {
	c.t.Helper()
	eventually(c.t, 10*time.Second, func() error {
		if s := c.status(id); s != want {
			return fmt.Errorf("task %s is %q", id, s)
		}
		return nil
	})
}

// runCounter runs the container id printing counterScript's numbers into
// the file:// log outLog, and waits until it runs. It returns the address
// of the container's shim.
func (c *containerd) runCounter(id, outLog string) string {
	c.t.Helper()
	c.mustCtr("run", "-d", "--runtime", "io.containerd.conmon.v2", "--runtime-config-path", c.shimCfg,
		"--log-uri", "file://"+outLog, "--rootfs", c.rootfs, id, "/bin/sh", "-c", counterScript)
	c.waitStatus(id, "RUNNING")
	addr, err := os.ReadFile(filepath.Join(c.dir, "state", "io.containerd.runtime.v2.task", "default", id, "address"))
	if err != nil {
		c.t.Fatal(err)
	}
	return string(addr)
}

// checkServes checks, after the round-th upgrade or crash (what), that
// task id still runs and that an exec (echo word) in it works.
func (c *containerd) checkServes(id string, round int, what, word string) {
	c.t.Helper()
	if st := c.status(id); st != "RUNNING" {
		c.t.Fatalf("round %d: task %s is %q after the %s", round, id, st, what)
	}
	out := c.mustCtr("task", "exec", "--fifo-dir", filepath.Join(c.dir, "fifo"), "--exec-id", fmt.Sprintf("e%d", round), id, "/bin/echo", word)
	if !strings.Contains(out, word) {
		c.t.Fatalf("exec after the %s: %q", what, out)
	}
}

// killAndRemove kills task id with SIGKILL, checks that its removal
// reports the exit code 137, and removes the container.
func (c *containerd) killAndRemove(id string) {
	c.t.Helper()
	c.mustCtr("task", "kill", "-s", "SIGKILL", id)
	c.waitStatus(id, "STOPPED")
	if out := c.mustCtr("task", "rm", id); !strings.Contains(out, "137") {
		c.t.Errorf("task rm after SIGKILL reports %q, want exit code 137", out)
	}
	c.mustCtr("c", "rm", id)
}

// checkConnectionKept fails the test if containerd logged that a shim's
// connection closed ("shim disconnected": it deletes the task then).
func (c *containerd) checkConnectionKept() {
	c.t.Helper()
	time.Sleep(500 * time.Millisecond)
	if strings.Contains(c.log(), "shim disconnected") {
		c.t.Errorf("containerd saw the shim's connection close")
	}
}
