package process

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
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

// TestOOMWatchCountsEarlierKills: a new container's watch reports the
// kills its cgroup counted before the watch was armed (runc init OOM-killed
// between runc create and the arming), once, and not again when the
// kernel's wake-up for that kill arrives; a re-armed watch (WatchOOM)
// takes them as reported. A temporary directory stands for the cgroup: the
// v1 registration is then a plain write, and inotify works on any file.
func TestOOMWatchCountsEarlierKills(t *testing.T) {
	for _, tc := range []struct {
		name, file, format string
		arm                func(dir string, from *uint64, onOOM func(uint64)) (*OOMWatch, error)
	}{
		{"v1", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill %d\n",
			func(dir string, from *uint64, onOOM func(uint64)) (*OOMWatch, error) {
				if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), nil, 0o600); err != nil {
					return nil, err
				}
				return watchOOMv1(dir, from, onOOM)
			}},
		{"v2", "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill %d\noom_group_kill 0\n",
			func(dir string, from *uint64, onOOM func(uint64)) (*OOMWatch, error) {
				return watchOOMv2(filepath.Join(dir, "memory.events"), from, onOOM)
			}},
	} {
		// The counter holds 3 kills when the watch is armed: a new
		// container's watch (from 0) reports all three, a re-armed one
		// (nil) none, one handed a count of 1 (a live upgrade) the two
		// counted since; each before its constructor returns.
		for _, from := range []struct {
			name string
			from *uint64
			want int32
		}{{"new", ptr(0), 3}, {"re-armed", nil, 0}, {"handed 1", ptr(1), 2}} {
			t.Run(tc.name+"/"+from.name, func(t *testing.T) {
				dir := t.TempDir()
				file := filepath.Join(dir, tc.file)
				writeCounter(t, file, tc.format, 3)
				var n atomic.Int32
				var last atomic.Uint64 // the count the last report carried
				w, err := tc.arm(dir, from.from, func(seen uint64) { n.Add(1); last.Store(seen) })
				if err != nil {
					t.Fatal(err)
				}
				defer w.Stop()
				want := from.want
				if got := n.Load(); got != want {
					t.Fatalf("after arming on oom_kill 3: %d reports, want %d", got, want)
				}
				// The kernel's wake-up for the same kill (v1: the
				// registration while under_oom) is no second report.
				w.poll(true)
				w.Poll()
				if got := n.Load(); got != want {
					t.Fatalf("after a wake-up for the same kill: %d reports, want %d", got, want)
				}
				// A later kill is reported once.
				writeCounter(t, file, tc.format, 4)
				w.Poll()
				w.poll(true)
				if got := n.Load(); got != want+1 {
					t.Fatalf("after another kill: %d reports, want %d", got, want+1)
				}
				if got := last.Load(); got != 4 {
					t.Fatalf("the last report carried the count %d, want 4", got)
				}
			})
		}
	}
}

// writeCounter writes the counter file in place, in one write: no
// truncation a woken watch could read as a file without its counter.
func writeCounter(t *testing.T, file, format string, n int) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE, 0o644)
	if err == nil {
		_, err = f.WriteAt([]byte(fmt.Sprintf(format, n)), 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

func TestUnifiedPathOf(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"0::/conmon-v2-test/c1\n", "/conmon-v2-test/c1"},
		{"12:memory:/a\n1:name=systemd:/b\n0::/c\n", "/c"},
		{"12:memory:/a\n", ""},
	} {
		got, err := unifiedPathOf(tc.text)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("unifiedPathOf(%q) = %q, %v; want %q", tc.text, got, err, tc.want)
		}
	}
}

func ptr(n uint64) *uint64 { return &n }

// TestOOMWatchV1WakeBeforeKill: cgroup v1 signals the eventfd when the
// cgroup goes under OOM, before the OOM killer has counted its victim, and
// not again for the kill. A wake-up that finds the counter unchanged is
// followed by later looks, which report the kill once it is counted.
func TestOOMWatchV1WakeBeforeKill(t *testing.T) {
	const format = "oom_kill_disable 0\nunder_oom 1\noom_kill %d\n"
	dir := t.TempDir()
	file := filepath.Join(dir, "memory.oom_control")
	writeCounter(t, file, format, 0)
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	reports := make(chan uint64, 4)
	w, err := watchOOMv1(dir, nil, func(seen uint64) { reports <- seen })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// The kernel's signal: the eventfd counts up.
	wake := func() {
		t.Helper()
		var one [8]byte
		one[0] = 1
		if _, err := unix.Write(int(w.f.Fd()), one[:]); err != nil {
			t.Fatal(err)
		}
	}
	wake()
	time.Sleep(20 * time.Millisecond) // the wake-up's first look found nothing
	writeCounter(t, file, format, 1)  // the OOM killer's count, later
	select {
	case seen := <-reports:
		if seen != 1 {
			t.Fatalf("reported with count %d, want 1", seen)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the kill counted after the wake-up was not reported")
	}
	// A wake-up with nothing to find, and Stop while the watch looks
	// again: no report.
	wake()
	time.Sleep(5 * time.Millisecond)
	w.Stop()
	if len(reports) != 0 {
		t.Errorf("%d more reports, want none", len(reports))
	}
}
