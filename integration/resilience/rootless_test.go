package resilience

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
)

// rootlessEnv switches the test binary into the rootless scenario (see
// TestMain): its value is the scenario's directory.
const rootlessEnv = "CONMON_V2_RESILIENCE_ROOTLESS"

// rootlessScenario runs as an unprivileged user: it starts the shim
// (dir/shim-rootless, which passes dir/config.toml), runs one container
// through it (rootless runc: a user namespace mapping the user to root),
// and prints "ok status=N out=TEXT" or the first error.
func rootlessScenario(dir string) int {
	err := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		bundle := filepath.Join(dir, "bundle")
		if err := os.MkdirAll(bundle, 0o700); err != nil {
			return err
		}
		cmd := exec.Command("runc", "spec", "--rootless", "--bundle", bundle)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("runc spec --rootless: %v: %s", err, out)
		}
		data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
		if err != nil {
			return err
		}
		var spec specs.Spec
		if err := json.Unmarshal(data, &spec); err != nil {
			return err
		}
		spec.Root.Path = filepath.Join(dir, "rootfs")
		spec.Process.Terminal = false
		spec.Process.Args = []string{"sh", "-c", "echo rootless-hello; exit 7"}
		if err := client.WriteSpec(bundle, &spec); err != nil {
			return err
		}
		opts := client.ShimOpts{Binary: filepath.Join(dir, "shim-rootless"), Namespace: "rootless"}
		addr, err := client.StartShim(ctx, opts, "rl", bundle)
		if err != nil {
			return err
		}
		s, err := client.Connect(ctx, addr)
		if err != nil {
			return err
		}
		defer s.Close()
		fifos, err := client.NewFIFOSet(filepath.Join(dir, "io"), "init", false, true, true, false)
		if err != nil {
			return err
		}
		var out testutil.SyncBuffer
		cio, err := client.OpenIO(ctx, fifos, client.Streams{Stdout: &out, Stderr: &out}, nil)
		if err != nil {
			return err
		}
		defer cio.Close()
		if _, err := s.Create(ctx, client.CreateOpts{ID: "rl", Bundle: bundle, Stdio: fifos.Stdio}); err != nil {
			return err
		}
		if _, err := s.Start(ctx, "rl", ""); err != nil {
			_, _ = s.Delete(ctx, "rl", "")
			return err
		}
		w, err := s.Wait(ctx, "rl", "")
		if err != nil {
			return err
		}
		cio.Wait(10 * time.Second)
		if _, err := s.Delete(ctx, "rl", ""); err != nil {
			return err
		}
		_ = s.Shutdown(ctx, "rl", false)
		fmt.Printf("ok status=%d out=%s\n", w.Status, strings.TrimSpace(out.String()))
		return nil
	}()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

// TestRootless: the shim runs for an unprivileged user (uid 65534 here)
// with its sockets, state and runc root under a directory of that user,
// and runs a rootless container (runc in a user namespace mapping the user
// to root; no cgroup limits, which cgroup v1 does not delegate): output
// and exit status come back, and the socket is that user's, 0600, in a
// 0700 directory.
func TestRootless(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "runc")
	if data, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err != nil || strings.TrimSpace(string(data)) == "0" {
		t.Skip("user namespaces are disabled")
	}
	dir, err := os.MkdirTemp("", "conmon-v2-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	// The launcher and the daemon it runs, side by side, where the user
	// can read them.
	for _, name := range []string{"containerd-shim-conmon-v2", "containerd-shim-conmon-v2-daemon"} {
		b, err := os.ReadFile(testutil.Bin(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conf := fmt.Sprintf("grouping = \"container\"\nruntime_root = %q\nstate_dir = %q\nsocket_dir = %q\nlogger_dirs = []\n",
		filepath.Join(dir, "runc"), filepath.Join(dir, "state"), filepath.Join(dir, "s"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := "#!/bin/sh\nexec " + filepath.Join(dir, "containerd-shim-conmon-v2") + " -config " + filepath.Join(dir, "config.toml") + " \"$@\"\n"
	if err := os.WriteFile(filepath.Join(dir, "shim-rootless"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	// The user owns its directory (the rootfs stays root's: readable).
	if err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(p, filepath.Join(dir, "rootfs")) {
			return nil
		}
		return os.Lchown(p, 65534, 65534)
	}); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	exe := probeBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe)
	cmd.Dir = dir
	cmd.Env = []string{rootlessEnv + "=" + dir, "HOME=" + dir, "XDG_RUNTIME_DIR=" + dir,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("rootless scenario: %s", strings.TrimSpace(string(out)))
	if err != nil || !strings.Contains(string(out), "ok status=7 out=rootless-hello") {
		t.Fatalf("rootless scenario failed: %v", err)
	}
	// Its socket directory, and no daemon left.
	eventually(t, 30*time.Second, func() error {
		out, _ := exec.Command("pgrep", "-f", dir).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			return fmt.Errorf("processes left: %v", pids)
		}
		return nil
	})
	ents, _ := os.ReadDir(filepath.Join(dir, "s"))
	st, err := os.Stat(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); st.Mode().Perm() != 0o700 || sys.Uid != 65534 {
		t.Errorf("socket directory: mode %v uid %d, want 0700 and 65534", st.Mode(), sys.Uid)
	}
	if len(ents) > 0 {
		t.Errorf("socket directory not empty after the daemon left: %d entries", len(ents))
	}
}
