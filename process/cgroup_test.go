package process

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// memoryDirV1Of maps /proc/PID/cgroup's memory path through the mount of
// the memory hierarchy that shows it: the mount's root (mountinfo's field
// 4) is taken off the path, as inside a container whose cgroup subtree is
// bind-mounted at /sys/fs/cgroup/memory.
func TestMemoryDirV1Of(t *testing.T) {
	const (
		hostMounts = `25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 25 0:28 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:13 - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
`
		// A container without its own cgroup namespace: the host's
		// /docker/abc subtree is bind-mounted at /sys/fs/cgroup/memory.
		containerMounts = `700 690 0:80 / / rw,relatime master:200 - overlay overlay rw
705 700 0:84 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs ro,mode=755
708 705 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:13 - cgroup cgroup rw,memory
709 705 0:29 /docker/abc /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime master:10 - cgroup cgroup rw,cpu
`
		// The same hierarchy mounted twice: whole, and a subtree.
		twoMounts = `35 31 0:32 / /host/memory rw,relatime - cgroup cgroup rw,memory
708 705 0:32 /docker/abc /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
`
		// Memory co-mounted with cpuacct, and a mount point with a space
		// (mountinfo escapes it as \040).
		escapedMounts = `40 31 0:35 /a\040b /sys/fs/cgroup/cpuacct,memory\040x rw,relatime - cgroup cgroup rw,cpuacct,memory
`
	)
	for _, tc := range []struct {
		name      string
		cgroup    string
		mountinfo string
		want      string
		wantErr   string // NotFound naming this
	}{
		{name: "host", cgroup: "12:cpu:/x\n4:memory:/process_api/c1\n0::/\n", mountinfo: hostMounts,
			want: "/sys/fs/cgroup/memory/process_api/c1"},
		{name: "host root cgroup", cgroup: "4:memory:/\n", mountinfo: hostMounts, want: "/sys/fs/cgroup/memory"},
		{name: "bind-mounted subtree", cgroup: "9:memory:/docker/abc/runc/c1\n", mountinfo: containerMounts,
			want: "/sys/fs/cgroup/memory/runc/c1"},
		{name: "bind-mounted subtree, its own root", cgroup: "9:memory:/docker/abc\n", mountinfo: containerMounts,
			want: "/sys/fs/cgroup/memory"},
		{name: "outside the mounted subtree", cgroup: "9:memory:/docker/abcdef/c1\n", mountinfo: containerMounts,
			wantErr: `"/docker/abcdef/c1"`},
		{name: "two mounts, the closer root wins", cgroup: "9:memory:/docker/abc/c1\n", mountinfo: twoMounts,
			want: "/sys/fs/cgroup/memory/c1"},
		{name: "two mounts, only the whole one shows it", cgroup: "9:memory:/other/c1\n", mountinfo: twoMounts,
			want: "/host/memory/other/c1"},
		{name: "co-mounted, escaped", cgroup: "3:cpuacct,memory:/a b/c1\n", mountinfo: escapedMounts,
			want: "/sys/fs/cgroup/cpuacct,memory x/c1"},
		{name: "no memory cgroup (unified)", cgroup: "0::/c1\n", mountinfo: hostMounts, wantErr: "no memory cgroup"},
		{name: "no memory mount", cgroup: "4:memory:/c1\n", mountinfo: "36 31 0:33 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			wantErr: "no cgroup v1 memory mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := memoryDirV1Of(tc.cgroup, tc.mountinfo)
			if tc.wantErr != "" {
				if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want NotFound naming %s", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
