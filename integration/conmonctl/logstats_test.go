package conmonctl

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
)

// logStats is what the test reads of `logs --stats --json`.
type logStats struct {
	Pipeline bool `json:"pipeline"`
	Drivers  []struct {
		Name   string `json:"name"`
		Failed struct {
			Lines uint64 `json:"lines"`
		} `json:"failed"`
		Lost struct {
			Lines uint64 `json:"lines"`
		} `json:"lost"`
		Failing     bool       `json:"failing"`
		Failures    uint64     `json:"failures"`
		LastError   string     `json:"last_error"`
		LastErrorAt *time.Time `json:"last_error_at"`
	} `json:"drivers"`
}

// TestLogStatsDiskFull runs a container whose k8s-file log is on a small,
// nearly full tmpfs: `logs --stats` reports the lost lines, the driver
// failing and its error, and `events` the /conmon-v2/log/failing event.
func TestLogStatsDiskFull(t *testing.T) {
	h := newHarness(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	if err := os.WriteFile(filepath.Join(mnt, "filler"), make([]byte, 40<<10), 0o600); err != nil {
		t.Fatal(err)
	}

	// A container of the group first, so that events follows its shim
	// before the one that fills the disk starts.
	h.ok("run", "-d", "--name", "idle", "--group", "lsg", "--rootfs", h.rootfs, "--", "sleep", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ev := h.cmd(ctx, "events", "--json")
	var events testutil.SyncBuffer
	ev.Stdout = &events
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = ev.Wait()
	}()
	time.Sleep(1500 * time.Millisecond) // events looks for shims every second

	// About 2.6 MiB of log entries into 24 KiB of free space: more than the
	// file driver holds back (1 MiB), so lines are lost.
	h.ok("run", "-d", "--name", "full", "--group", "lsg", "--log-opt", "path="+filepath.Join(mnt, "ctr.log"),
		"--rootfs", h.rootfs, "--", "sh", "-c", "yes "+strings.Repeat("z", 90)+" | head -n 20000; sleep 1000")
	var st logStats
	testutil.Eventually(t, 30*time.Second, func() error {
		r := h.run("logs", "--stats", "--json", "full")
		if r.code != 0 {
			return fmt.Errorf("logs --stats --json: %v", r)
		}
		st = logStats{}
		if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
			return fmt.Errorf("logs --stats --json output %q: %v", r.stdout, err)
		}
		if !st.Pipeline || len(st.Drivers) != 1 || st.Drivers[0].Lost.Lines == 0 {
			return fmt.Errorf("no lost lines reported yet: %s", r.stdout)
		}
		return nil
	})
	d := st.Drivers[0]
	if !d.Failing || !strings.Contains(d.LastError, "no space left on device") || d.LastErrorAt == nil {
		t.Errorf("driver %+v: want failing with a last error naming ENOSPC and its time", d)
	}
	// Every failed or lost line was in a failed call at least once (a
	// held line's retries fail again, so calls may be more).
	if d.Failures == 0 {
		t.Errorf("driver %+v: no failures (failed driver calls) reported", d)
	}
	t.Logf("driver %s: %d failed, %d lost, %d failures, last error %q", d.Name, d.Failed.Lines, d.Lost.Lines, d.Failures, d.LastError)

	out := h.ok("logs", "--stats", "full")
	t.Logf("logs --stats:\n%s", out)
	for _, want := range []string{"dropped", "DRIVER", "FAILURES", "failing", "no space left on device"} {
		if !strings.Contains(out, want) {
			t.Errorf("logs --stats lacks %q:\n%s", want, out)
		}
	}
	id := h.psOf("full").ID
	testutil.Eventually(t, 10*time.Second, func() error {
		s := events.String()
		if !strings.Contains(s, `"topic":"/conmon-v2/log/failing"`) || !strings.Contains(s, `"container":"`+id+`"`) {
			return fmt.Errorf("no /conmon-v2/log/failing event of %s:\n%s", id, s)
		}
		if n := strings.Count(s, `"topic":"/conmon-v2/log/failing"`); n != 1 {
			return fmt.Errorf("%d failing events, want one per transition:\n%s", n, s)
		}
		return nil
	})
	h.ok("rm", "-f", "full", "idle")
}
