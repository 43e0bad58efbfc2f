package process

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// removeEmptyCgroups removes the container's empty cgroups in every
// hierarchy, and leaves one that holds a process.
func TestRemoveEmptyCgroups(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	roots := cgroupMounts()
	if len(roots) == 0 {
		t.Skip("no cgroup hierarchy mounted")
	}
	rel := fmt.Sprintf("/conmon-v2-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	spec := &specs.Spec{Linux: &specs.Linux{CgroupsPath: rel}}
	var made []string
	for _, r := range roots {
		d := filepath.Join(r, rel)
		if err := os.Mkdir(d, 0o755); err == nil {
			made = append(made, d)
		}
	}
	if len(made) == 0 {
		t.Skip("cannot make a cgroup here")
	}
	t.Cleanup(func() {
		for _, d := range made {
			_ = os.Remove(d)
		}
	})
	// A process in one of them keeps it (cpuset refuses processes until
	// its cpus are set: try each).
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	busy := ""
	for _, d := range made {
		if os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644) == nil {
			busy = d
			break
		}
	}
	if busy == "" {
		t.Skip("cannot move a process into a new cgroup")
	}

	removeEmptyCgroups(spec)
	for _, d := range made {
		_, err := os.Stat(d)
		if d == busy && err != nil {
			t.Errorf("%s with a process was removed", d)
		}
		if d != busy && err == nil {
			t.Errorf("%s left", d)
		}
	}
	// Paths it must not touch.
	for _, p := range []string{"", "/", "relative/x", "system.slice:conmon:x"} {
		removeEmptyCgroups(&specs.Spec{Linux: &specs.Linux{CgroupsPath: p}})
	}
	removeEmptyCgroups(nil)
	removeEmptyCgroups(&specs.Spec{})
}
