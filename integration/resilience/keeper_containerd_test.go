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

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
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
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	ctrd := testutil.NeedCommand(t, "containerd")
	ctrBin := testutil.NeedCommand(t, "ctr")
	shimBin := testutil.Bin(t, "containerd-shim-conmon-v2")
	dir, err := os.MkdirTemp("", "ctrd-kc") // short: socket paths must fit 106 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	address := filepath.Join(dir, "c.sock")
	for _, d := range []string{"bin", "fifo", "log"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(shimBin, filepath.Join(dir, "bin", "containerd-shim-conmon-v2")); err != nil {
		t.Fatal(err)
	}
	shimCfg := filepath.Join(dir, "shim.toml")
	write := func(path, content string) {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(shimCfg, fmt.Sprintf("keeper = true\nsocket_dir = %q\nruntime_root = %q\nstate_dir = %q\n",
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
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), address, address+".ttrpc", filepath.Join(dir, "opt")))
	logPath := filepath.Join(dir, "log", "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(ctrd, "--config", filepath.Join(dir, "config.toml"))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "PATH="+filepath.Join(dir, "bin")+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ctr := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, ctrBin, append([]string{"--address", address}, args...)...)
		c.Dir = dir
		out, err := c.CombinedOutput()
		return string(out), err
	}
	mustCtr := func(args ...string) string {
		t.Helper()
		out, err := ctr(args...)
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	t.Cleanup(func() {
		ctr("task", "kill", "-a", "-s", "SIGKILL", "kc")
		time.Sleep(200 * time.Millisecond)
		ctr("task", "rm", "-f", "kc")
		ctr("c", "rm", "kc")
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
			data, _ := os.ReadFile(logPath)
			t.Logf("containerd log:\n%s", data)
		}
	})
	eventually(t, 20*time.Second, func() error { _, err := ctr("version"); return err })
	status := func() string {
		out, _ := ctr("task", "ls")
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "kc" {
				return f[2]
			}
		}
		return ""
	}

	outLog := filepath.Join(dir, "kc.log")
	mustCtr("run", "-d", "--runtime", "io.containerd.conmon.v2", "--runtime-config-path", shimCfg,
		"--log-uri", "file://"+outLog, "--rootfs", rootfs, "kc", "/bin/sh", "-c", counterScript)
	eventually(t, 10*time.Second, func() error {
		if s := status(); s != "RUNNING" {
			return fmt.Errorf("task kc is %q", s)
		}
		return nil
	})
	addr, err := os.ReadFile(filepath.Join(dir, "state", "io.containerd.runtime.v2.task", "default", "kc", "address"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info := func() (client.ShimInfo, error) {
		s, err := client.Connect(ctx, string(addr))
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
		if st := status(); st != "RUNNING" {
			t.Fatalf("round %d: task kc is %q after the kill", round, st)
		}
		out := mustCtr("task", "exec", "--fifo-dir", filepath.Join(dir, "fifo"), "--exec-id", fmt.Sprintf("e%d", round), "kc", "/bin/echo", "after-crash")
		if !strings.Contains(out, "after-crash") {
			t.Fatalf("exec after the kill: %q", out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if ld, _ := os.ReadFile(logPath); strings.Contains(string(ld), "shim disconnected") {
		t.Errorf("containerd saw the shim's connection close")
	}
	mustCtr("task", "kill", "-s", "SIGKILL", "kc")
	eventually(t, 10*time.Second, func() error {
		if s := status(); s != "STOPPED" {
			return fmt.Errorf("task kc is %q", s)
		}
		return nil
	})
	if out := mustCtr("task", "rm", "kc"); !strings.Contains(out, "137") {
		t.Errorf("task rm after SIGKILL reports %q, want exit code 137", out)
	}
	mustCtr("c", "rm", "kc")
	data, err := os.ReadFile(outLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	checkCustodySeq(t, "file:// log", lines[:len(lines)-1], 2, 128<<10)
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{daemon, keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}
