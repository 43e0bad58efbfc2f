package testutil

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ContainerdRuntime is the runtime name under which Containerd installs
// the shim.
const ContainerdRuntime = "io.containerd.conmon.v2"

// ContainerdOptions configure StartContainerd.
type ContainerdOptions struct {
	// Prefix starts the name of the test's directory (made in the
	// system's temporary directory, not t.TempDir(): socket paths must
	// fit 108 bytes).
	Prefix string
	// ShimConfig is appended to the shim's configuration after the keys
	// the harness sets (socket_dir, runtime_root, state_dir,
	// logger_dirs), which it must not repeat.
	ShimConfig string
	// BinDir, if set, holds a containerd 2.x and its ctr to use instead of
	// the installed 1.6 (configuration version 3).
	BinDir string
	// Debug sets containerd's log level to debug.
	Debug bool
}

// Containerd is a private containerd of one test, driven by ctr, with the
// shim (bin/containerd-shim-conmon-v2) installed as the runtime
// ContainerdRuntime. Everything of it lives under Dir: its root, state and
// sockets, and the shim's sockets (SocketDir), runc root (RuncRoot),
// state (Dir/shimstate) and logger directory (LoggerDir).
type Containerd struct {
	T         *testing.T
	Dir       string
	Address   string // containerd's gRPC socket
	CtrBin    string
	Rootfs    string // a busybox rootfs for containers
	ShimCfg   string // the shim's configuration, for --runtime-config-path
	SocketDir string
	RuncRoot  string
	LoggerDir string
	LogPath   string // containerd's log (the shims' with it)
	Version   int    // containerd's configuration version: 2 (1.6) or 3 (2.x)

	ctrdBin string
	cmd     *exec.Cmd
	logf    *os.File
}

// StartContainerd makes the test's directory, starts containerd and waits
// until it answers. At the end of the test every task is killed and
// removed with its container, containerd stopped (the tail of its log
// shown if the test failed), shim daemons left serving it killed, and the
// directory removed.
func StartContainerd(t *testing.T, o ContainerdOptions) *Containerd {
	t.Helper()
	RequiresRoot(t)
	NeedCommand(t, "runc")
	c := &Containerd{T: t, Version: 2}
	if o.BinDir != "" {
		c.ctrdBin, c.CtrBin, c.Version = filepath.Join(o.BinDir, "containerd"), filepath.Join(o.BinDir, "ctr"), 3
	} else {
		c.ctrdBin, c.CtrBin = NeedCommand(t, "containerd"), NeedCommand(t, "ctr")
	}
	shimBin := Bin(t, "containerd-shim-conmon-v2")
	prefix := o.Prefix
	if prefix == "" {
		prefix = "ctrd"
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c.Dir = dir
	c.Rootfs = BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	c.Address = filepath.Join(dir, "c.sock")
	c.SocketDir, c.RuncRoot, c.LoggerDir = filepath.Join(dir, "s"), filepath.Join(dir, "runc"), filepath.Join(dir, "loggers")
	c.LogPath = filepath.Join(dir, "log", "containerd.log")
	for _, d := range []string{"bin", "fifo", "log", "loggers"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(shimBin, filepath.Join(dir, "bin", "containerd-shim-conmon-v2")); err != nil {
		t.Fatal(err)
	}
	c.ShimCfg = filepath.Join(dir, "shim.toml")
	writeFile(t, c.ShimCfg, fmt.Sprintf("socket_dir = %q\nruntime_root = %q\nstate_dir = %q\nlogger_dirs = [%q]\n",
		c.SocketDir, c.RuncRoot, filepath.Join(dir, "shimstate"), c.LoggerDir)+o.ShimConfig)
	writeFile(t, filepath.Join(dir, "config.toml"), c.config(o.Debug))
	c.Start()
	t.Cleanup(c.cleanup)
	return c
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// config is containerd's configuration: no CRI, everything under Dir.
func (c *Containerd) config(debug bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version = %d\nroot = %q\nstate = %q\n", c.Version, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"))
	if c.Version == 3 {
		b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images",
  "io.containerd.nri.v1.nri", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.sandbox.controller.v1.shim"]
`)
	} else {
		b.WriteString(`disabled_plugins = ["io.containerd.grpc.v1.cri"]` + "\n")
	}
	fmt.Fprintf(&b, "[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n", c.Address, c.Address+".ttrpc")
	if debug {
		b.WriteString("[debug]\n  level = \"debug\"\n")
	}
	if c.Version != 3 {
		fmt.Fprintf(&b, "[plugins.\"io.containerd.internal.v1.opt\"]\n  path = %q\n", filepath.Join(c.Dir, "opt"))
	}
	return b.String()
}

// Start starts containerd (again, after Stop: its log is appended to) and
// waits until it answers.
func (c *Containerd) Start() {
	t := c.T
	t.Helper()
	logf, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.ctrdBin, "--config", filepath.Join(c.Dir, "config.toml"))
	cmd.Dir = c.Dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(c.Dir, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	c.cmd, c.logf = cmd, logf
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := c.Ctr("version")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.logTail()
			t.Fatalf("containerd did not come up: %v", err)
		}
	}
}

// Stop sends SIGTERM to containerd (by pid) and waits for it (10 s, then
// SIGKILL). The shims keep running.
func (c *Containerd) Stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.logf.Close()
	c.cmd = nil
}

// cleanup removes what the test left, stops containerd and kills the shim
// daemons still serving it.
func (c *Containerd) cleanup() {
	if c.T.Failed() {
		c.logTail()
	}
	if c.cmd != nil {
		out, _ := c.Ctr("task", "ls", "-q")
		for _, id := range strings.Fields(out) {
			c.Ctr("task", "kill", "-a", "-s", "SIGKILL", id)
		}
		time.Sleep(200 * time.Millisecond)
		for _, id := range strings.Fields(out) {
			c.Ctr("task", "rm", "-f", id)
		}
		out, _ = c.Ctr("c", "ls", "-q")
		for _, id := range strings.Fields(out) {
			c.Ctr("c", "rm", id)
		}
	}
	c.Stop()
	for _, pid := range c.ShimPids() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// logTail logs the last 120 lines of containerd's log.
func (c *Containerd) logTail() {
	lines := strings.Split(c.Log(), "\n")
	if len(lines) > 120 {
		lines = lines[len(lines)-120:]
	}
	c.T.Logf("containerd log (tail):\n%s", strings.Join(lines, "\n"))
}

// Log is containerd's log so far.
func (c *Containerd) Log() string {
	data, _ := os.ReadFile(c.LogPath)
	return string(data)
}

// Ctr runs ctr with args against this containerd (30 s at most) and
// returns its combined output.
func (c *Containerd) Ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.CtrBin, append([]string{"--address", c.Address}, args...)...)
	cmd.Dir = c.Dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// MustCtr is Ctr, failing the test (with ctr's output) if ctr fails.
func (c *Containerd) MustCtr(args ...string) string {
	c.T.Helper()
	out, err := c.Ctr(args...)
	if err != nil {
		c.T.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TaskStatus is the STATUS column of `ctr task ls` for task id ("" if it
// is not listed).
func (c *Containerd) TaskStatus(id string) string {
	out, _ := c.Ctr("task", "ls")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// WaitStatus waits (10 s at most) until task id has the status want.
func (c *Containerd) WaitStatus(id, want string) {
	c.T.Helper()
	Eventually(c.T, 10*time.Second, func() error {
		if st := c.TaskStatus(id); st != want {
			return fmt.Errorf("task %s: status %q, want %q", id, st, want)
		}
		return nil
	})
}

// ShimPids lists the shim daemons serving this containerd (by their
// -address argument).
func (c *Containerd) ShimPids() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, d := range ents {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasSuffix(args[0], "containerd-shim-conmon-v2") {
			continue
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == c.Address {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
