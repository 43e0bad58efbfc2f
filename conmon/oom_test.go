package conmon

import (
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestOOMCountsKillsBeforeWatch: a kill the container's cgroup counted
// before the watch was armed (runc init killed between create and the
// watch) is reported once at Final; a cgroup that counted none reports
// nothing. The files stand in for the cgroup's: the watch reads only
// memory.oom_control (v1) or memory.events (v2) at Final.
func TestOOMCountsKillsBeforeWatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		v2    bool
		file  string
		text  string
		fires int32
	}{
		{"v1 killed before", false, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", 1},
		{"v1 none", false, "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n", 0},
		{"v2 killed before", true, "memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n", 1},
		{"v2 none", true, "memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			var fired atomic.Int32
			w := watchOOMDir(dir, tc.v2, func() { fired.Add(1) }, NewDiag(LevelTrace, io.Discard, false, "oom-test"))
			if w == nil {
				t.Fatal("no watcher")
			}
			w.Final()
			if got := fired.Load(); got != tc.fires {
				t.Errorf("onOOM ran %d times, want %d", got, tc.fires)
			}
		})
	}
}

func TestIsCgroupRoot(t *testing.T) {
	for dir, want := range map[string]bool{
		"/sys/fs/cgroup":                    true,
		"/sys/fs/cgroup/":                   true,
		"/sys/fs/cgroup/memory":             true,
		"/sys/fs/cgroup/memory/libpod-1234": false,
		"/sys/fs/cgroup/machine.slice/x":    false,
	} {
		if got := isCgroupRoot(dir); got != want {
			t.Errorf("isCgroupRoot(%q) = %v, want %v", dir, got, want)
		}
	}
}
