package process

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// removeEmptyCgroups removes the container's cgroup directories that are
// left empty: one per hierarchy the host mounts (v1 controllers, the v2
// tree). A runtime killed in the middle of create or delete (SIGKILL, the
// kill of a request's deadline) never gets to remove what it made, and
// `runc delete` of a container whose state was never written does
// nothing, so the directories would stay for the life of the host.
//
// Only a cgroupfs path that is absolute (from the hierarchy's root) is
// handled; a systemd path (slice:prefix:name) is the systemd manager's.
// rmdir refuses a cgroup that still has a process or a child, so a cgroup
// in use (by this container's processes, or shared with another) is never
// removed. A cgroup that is busy is tried again for up to cgroupRemoveWait:
// the runtime's init process, whose parent was killed, takes a moment to
// notice and exit. Best effort: errors are ignored.
func removeEmptyCgroups(spec *specs.Spec) {
	if spec == nil || spec.Linux == nil {
		return
	}
	p := spec.Linux.CgroupsPath
	if !filepath.IsAbs(p) || strings.Contains(p, ":") || filepath.Clean(p) == "/" {
		return
	}
	deadline := time.Now().Add(cgroupRemoveWait)
	for _, root := range cgroupMounts() {
		dir := filepath.Join(root, filepath.Clean(p))
		for {
			err := unix.Rmdir(dir)
			if err != unix.EBUSY || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// cgroupRemoveWait bounds how long removeEmptyCgroups waits for busy
// cgroups to empty, in all.
const cgroupRemoveWait = time.Second

// cgroupMounts returns the mount points of the cgroup hierarchies
// (cgroup and cgroup2 mounts of their root) in this mount namespace.
func cgroupMounts() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var roots []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// id parent dev root mountpoint opts [optional...] - fstype source super
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fs := fields[sep+1]; (fs == "cgroup" || fs == "cgroup2") && fields[3] == "/" {
			roots = append(roots, fields[4])
		}
	}
	return roots
}
