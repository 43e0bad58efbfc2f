package conmon

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
)

// startKeeper runs `conmon-v2 --exit-keeper SOCKET` and points the drop-in
// at it through a configuration file. It returns the keeper's pid and log.
func startKeeper(t *testing.T, h *harness) (int, *testutil.SyncBuffer) {
	t.Helper()
	sock := filepath.Join(h.dir, "keeper", "exit-keeper.sock")
	pid, out := testutil.StartExitKeeper(t, h.bin, sock)
	conf := filepath.Join(h.dir, "config.toml")
	if err := os.WriteFile(conf, []byte("[conmon]\nexit-keeper = \""+sock+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONMON_V2_CONFIG", conf)
	return pid, out
}

func parentPid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ppid ...
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func gone(pid int) bool {
	if err := unix.Kill(pid, 0); err == unix.ESRCH {
		return true
	}
	// A zombie is gone as far as we care: its parent reaps it.
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err != nil || strings.Contains(string(b), ") Z ")
}

// TestExitKeeperMonitorKilled: with [conmon] exit-keeper configured, the
// keeper starts the monitor (the pid file names it, its parent is the
// keeper). After kill -9 of the monitor the container keeps running; when
// it exits with 7 the keeper writes 7 to the exit file and the persist
// dir's exit file, and runs the exit command.
func TestExitKeeperMonitorKilled(t *testing.T) {
	testutil.RequiresRoot(t)
	h := newHarness(t, testutil.Bin(t, "conmon-v2"), sharedRootfs(t))
	keeper, klog := startKeeper(t, h)

	id := uniqueID("k1")
	bundle := h.bundle(id, []string{"sh", "-c", `trap "exit 7" USR1; echo up; while true; do sleep 0.1; done`})
	marker := filepath.Join(h.dir, "exit-command-ran")
	h.createOK(id, bundle, "--exit-command", "/bin/sh", "--exit-command-arg", "-c", "--exit-command-arg", "echo ran > "+marker)
	h.runcCmd("start", id)
	t.Cleanup(func() { _ = exec.Command(h.runc, "--root", h.runcRoot, "delete", "-f", id).Run() })
	waitLog(t, filepath.Join(h.dir, id+".log"), "up")
	mpid, err := strconv.Atoi(waitFile(t, filepath.Join(bundle, "conmon-pidfile")))
	if err != nil {
		t.Fatal(err)
	}
	if pp := parentPid(t, mpid); pp != keeper {
		t.Fatalf("monitor %d has parent %d, want the keeper %d", mpid, pp, keeper)
	}
	cpid, err := strconv.Atoi(strings.TrimSpace(waitFile(t, filepath.Join(bundle, "pidfile"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(mpid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !gone(mpid); {
		if time.Now().After(deadline) {
			t.Fatalf("monitor %d still there", mpid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for deadline := time.Now().Add(10 * time.Second); parentPid(t, cpid) != keeper; {
		if time.Now().After(deadline) {
			t.Fatalf("container %d has parent %d, want the keeper %d", cpid, parentPid(t, cpid), keeper)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(h.exits, id)); err == nil {
		t.Fatal("exit file written while the container runs")
	}
	h.runcCmd("kill", id, "USR1")
	if got := waitFile(t, filepath.Join(h.exits, id)); got != "7" {
		t.Fatalf("exit file %q, want 7", got)
	}
	if got := waitFile(t, filepath.Join(h.dir, "persist", id, "exit")); got != "7" {
		t.Fatalf("persist exit file %q, want 7", got)
	}
	if got := waitFile(t, marker); !strings.HasPrefix(got, "ran") {
		t.Fatalf("exit command wrote %q", got)
	}
	if !strings.Contains(klog.String(), "exited with status 7 after its monitor") {
		t.Fatalf("keeper log lacks the recovered exit:\n%s", klog.String())
	}
}

// TestExitKeeperNormalExit: under the keeper a monitor that lives to the
// end writes the exit file itself and the keeper only forgets it.
func TestExitKeeperNormalExit(t *testing.T) {
	testutil.RequiresRoot(t)
	h := newHarness(t, testutil.Bin(t, "conmon-v2"), sharedRootfs(t))
	keeper, klog := startKeeper(t, h)
	id := uniqueID("k2")
	bundle := h.bundle(id, []string{"sh", "-c", "echo hello; exit 3"})
	h.createOK(id, bundle)
	mpid, err := strconv.Atoi(waitFile(t, filepath.Join(bundle, "conmon-pidfile")))
	if err != nil {
		t.Fatal(err)
	}
	if pp := parentPid(t, mpid); pp != keeper {
		t.Fatalf("monitor %d has parent %d, want the keeper %d", mpid, pp, keeper)
	}
	h.runcCmd("start", id)
	if got := waitFile(t, filepath.Join(h.exits, id)); got != "3" {
		t.Fatalf("exit file %q, want 3", got)
	}
	h.runcCmd("delete", "-f", id)
	if got := logLines(t, filepath.Join(h.dir, id+".log")); len(got) != 1 || got[0] != "stdout F hello" {
		t.Fatalf("log %q", got)
	}
	for deadline := time.Now().Add(10 * time.Second); !gone(mpid); {
		if time.Now().After(deadline) {
			t.Fatalf("monitor %d still there", mpid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Contains(klog.String(), "died") {
		t.Fatalf("keeper saw a death:\n%s", klog.String())
	}
}

// TestExitKeeperNotListening: a configured keeper that is not running is
// warned about and the monitor daemonizes as without one.
func TestExitKeeperNotListening(t *testing.T) {
	testutil.RequiresRoot(t)
	h := newHarness(t, testutil.Bin(t, "conmon-v2"), sharedRootfs(t))
	conf := filepath.Join(h.dir, "config.toml")
	if err := os.WriteFile(conf, []byte("[conmon]\nexit-keeper = \""+filepath.Join(h.dir, "none.sock")+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONMON_V2_CONFIG", conf)
	id := uniqueID("k3")
	bundle := h.bundle(id, []string{"sh", "-c", "exit 4"})
	h.createOK(id, bundle)
	h.runcCmd("start", id)
	if got := waitFile(t, filepath.Join(h.exits, id)); got != "4" {
		t.Fatalf("exit file %q, want 4", got)
	}
	h.runcCmd("delete", "-f", id)
}
