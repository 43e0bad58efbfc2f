package podman

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestKeeperKill9 (a short name: Podman refuses a runroot over 50
// characters, and t.TempDir() names the test): with the exit keeper configured, `podman run
// -d`, kill -9 of its conmon-v2, then the container exits 7: `podman wait`
// says 7 (with conmon, or without the keeper, the exit code is lost:
// podman#12699). Podman does not pass its environment to the monitor, so
// a wrapper given as --conmon names the configuration file.
func TestKeeperKill9(t *testing.T) {
	e := newEnv(t)
	real := e.conmon
	sock := filepath.Join(e.dir, "keeper.sock")
	keeperPid, _ := testutil.StartExitKeeper(t, real, sock)
	conf := filepath.Join(e.dir, "config.toml")
	if err := os.WriteFile(conf, []byte("[conmon]\nexit-keeper = \""+sock+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(e.dir, "conmon-v2-keeper-wrapper")
	script := "#!/bin/sh\nCONMON_V2_CONFIG=" + conf + " exec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e.conmon = wrapper

	id := strings.TrimSpace(e.ok(append([]string{"run", "-d"}, e.runArgs(nil, "sh", "-c", `trap "exit 7" USR1; echo up; while true; do sleep 0.1; done`)...)...))
	pid, err := strconv.Atoi(e.inspect(id, "{{.State.ConmonPid}}"))
	if err != nil {
		t.Fatal(err)
	}
	if exe, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); strings.TrimSuffix(exe, " (deleted)") != real {
		t.Fatalf("container monitor is %q, want %s", exe, real)
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); f[1] != strconv.Itoa(keeperPid) {
		t.Fatalf("conmon-v2 %d has parent %s, want the keeper %d", pid, f[1], keeperPid)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(e.ok("logs", id), "up"); {
		if time.Now().After(deadline) {
			t.Fatal("container never logged up")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// An exec session's monitor goes through the keeper too (attach
	// pipe, second start byte, exit code on the sync pipe).
	if r := e.podman(nil, "exec", id, "sh", "-c", "echo from-exec; exit 3"); r.code != 3 || r.stdout != "from-exec\n" {
		t.Fatalf("podman exec under the keeper: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); unix.Kill(pid, 0) == nil; {
		if time.Now().After(deadline) {
			t.Fatalf("conmon-v2 %d still there", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.ok("kill", "-s", "USR1", id)
	// The keeper writes Podman's exit file (<tmpdir>/exits/<id>).
	exitFile := filepath.Join(e.dir, "tmp", "exits", id)
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b, err := os.ReadFile(exitFile); err == nil {
			if string(b) != "7" {
				t.Fatalf("exit file %q, want 7", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", exitFile)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := strings.TrimSpace(e.ok("wait", id)); got != "7" {
		t.Fatalf("podman wait after kill -9 of conmon-v2: %q, want 7", got)
	}
	if got := e.inspect(id, "{{.State.ExitCode}}"); got != "7" {
		t.Fatalf("ExitCode %s, want 7", got)
	}
}
