package podman

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// rootlessUID is the unprivileged user of TestRootless: nobody, which
// needs no change to the host's users. It has no subordinate ID ranges, so
// Podman maps it alone to root in the container (its "single mapping");
// with a user that has /etc/subuid ranges Podman uses newuidmap instead,
// which docs/conmon.md reports as tried by hand.
const rootlessUID = 65534

// TestRootless runs rootless Podman (as uid 65534, its own store and
// runtime directory) with conmon-v2 as the monitor: run attached and
// detached, logs, exec with an exit code and stdin, stop with the
// container's status, the log annotations, rm. The monitor runs as the
// user, inside Podman's user namespace.
func TestRootless(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "podman")
	testutil.NeedCommand(t, "runc")
	// Everything the user touches lives in a world-readable directory of
	// its own: the repository (and t.TempDir()) may not be reachable for it.
	dir, err := os.MkdirTemp("", "conmon-v2-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	home, run, bin := filepath.Join(dir, "home"), filepath.Join(dir, "run"), filepath.Join(dir, "bin")
	for _, d := range []string{home, run, bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"conmon-v2", "conmon-v2-full"} {
		copyExecutable(t, testutil.Bin(t, name), filepath.Join(bin, name))
	}
	rootfs := testutil.BusyboxRootfs(t, filepath.Join(dir, "rootfs"))
	// Podman creates mount targets (/etc/mtab, /etc/hosts, ...) in the
	// rootfs: it must be the user's, as an unpacked image would be.
	for _, d := range []string{home, run, rootfs} {
		err := filepath.Walk(d, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, rootlessUID, rootlessUID)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	_ = os.Chmod(run, 0o700)
	conmon := filepath.Join(bin, "conmon-v2")

	podman := func(stdin string, args ...string) result {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		all := append([]string{"--storage-driver", "vfs", "--events-backend", "file", "--runtime", "runc",
			"--cgroup-manager", "cgroupfs", "--conmon", conmon}, args...)
		cmd := exec.CommandContext(ctx, "podman", all...)
		cmd.Dir = home
		cmd.Env = []string{"HOME=" + home, "XDG_RUNTIME_DIR=" + run, "PATH=" + os.Getenv("PATH")}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: rootlessUID, Gid: rootlessUID}}
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r := result{stdout: out.String(), stderr: errb.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("podman %s: %v", strings.Join(args, " "), err)
		}
		return r
	}
	ok := func(args ...string) string {
		t.Helper()
		r := podman("", args...)
		if r.code != 0 {
			t.Fatalf("rootless podman %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
		}
		return r.stdout
	}
	t.Cleanup(func() {
		podman("", "rm", "-af", "-t", "0")
		// Rootless Podman leaves a pause process holding its user
		// namespace; it is this test's to end.
		if b, err := os.ReadFile(filepath.Join(run, "libpod", "tmp", "pause.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = os.RemoveAll(dir)
	})
	runArgs := func(opts []string, cmd ...string) []string {
		a := []string{"--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}
		a = append(append(a, opts...), "--rootfs", rootfs)
		return append(a, cmd...)
	}

	r := podman("", append([]string{"run", "--rm"}, runArgs(nil, "sh", "-c", "echo out; echo err >&2; exit 5")...)...)
	if r.code != 5 || r.stdout != "out\n" || !strings.Contains(r.stderr, "err\n") {
		t.Fatalf("attached rootless run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}

	jlog := filepath.Join(home, "ctr.json")
	id := strings.TrimSpace(ok(append([]string{"run", "-d"}, runArgs(annotations("driver", "json-file", "opt.json-file.path", jlog),
		"sh", "-c", "echo started; trap 'echo got-term; exit 3' TERM; while :; do sleep 0.1; done")...)...))
	pid := strings.TrimSpace(ok("inspect", "--format", "{{.State.ConmonPid}}", id))
	exe, _ := os.Readlink("/proc/" + pid + "/exe")
	if exe != conmon {
		t.Fatalf("monitor %q, want %s", exe, conmon)
	}
	if st, err := os.Stat("/proc/" + pid); err != nil || st.Sys().(*syscall.Stat_t).Uid != rootlessUID {
		t.Fatalf("monitor %s does not run as uid %d: %v", pid, rootlessUID, err)
	}
	waitLogs := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := ok("logs", id)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("podman logs %q, want %q", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitLogs("started\n")
	if r := podman("", "exec", id, "sh", "-c", "echo in-exec; exit 4"); r.code != 4 || r.stdout != "in-exec\n" {
		t.Fatalf("rootless exec: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := podman("piped\n", "exec", "-i", id, "cat"); r.code != 0 || r.stdout != "piped\n" {
		t.Fatalf("rootless exec -i: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	ok("stop", "-t", "10", id)
	if code := strings.TrimSpace(ok("inspect", "--format", "{{.State.ExitCode}}", id)); code != "3" {
		t.Fatalf("exit code after stop %s, want 3 (the container's trap)", code)
	}
	waitLogs("started\ngot-term\n")
	b, err := os.ReadFile(jlog)
	if err != nil || !strings.Contains(string(b), `"log":"got-term\n"`) {
		t.Fatalf("json-file from the annotation: %q %v", b, err)
	}
	ok("rm", id)
}

func copyExecutable(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
