package conmon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/reaper"
)

// fakeExecRuntime is `runtime exec --detach` as a shell script: it records
// its arguments and environment, starts the "exec process" (a subshell
// that sleeps CTR_SLEEP and exits 7) orphaned, so that the monitor, as
// subreaper, reaps it even while the runtime runs, writes its pid to
// --pid-file and exits after RT_SLEEP.
const fakeExecRuntime = `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_RT_DIR/args"
env > "$FAKE_RT_DIR/env"
pidfile=
prev=
for a in "$@"; do
	[ "$prev" = --pid-file ] && pidfile=$a
	prev=$a
done
( ( sleep "$CTR_SLEEP"; exit 7 ) & echo $! > "$pidfile" )
exec sleep "$RT_SLEEP"
`

// discardLogs is a LogPipeline that reads the container's output and
// drops it.
type discardLogs struct{ wg sync.WaitGroup }

func (d *discardLogs) ReadFrom(_ logging.Stream, r io.Reader) {
	d.wg.Add(1)
	go func() { defer d.wg.Done(); _, _ = io.Copy(io.Discard, r) }()
}
func (d *discardLogs) Reopen() error { return nil }
func (d *discardLogs) Close() error  { d.wg.Wait(); return nil }

// TestExecRuntime runs the legacy exec path (CRI-O's ExecSync) against a
// fake runtime: the runtime's command line is conmon's (runtime args,
// then `exec --process SPEC --detach --pid-file ABS`, the runtime opts,
// the ID), the spec file is passed as it is, NOTIFY_SOCKET is not passed
// on, and the exec process's status reaches the sync pipe and the exit
// code whether it exits before the runtime (its exit is queued while the
// monitor waits for the runtime) or after.
func TestExecRuntime(t *testing.T) {
	if err := reaper.SetSubreaper(); err != nil {
		t.Skipf("cannot be a subreaper: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	for _, tc := range []struct {
		name             string
		ctrSleep, rtWait string
	}{
		{"exits before the runtime", "0", "0.3"},
		{"exits after the runtime", "0.3", "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rt := filepath.Join(dir, "runtime")
			if err := os.WriteFile(rt, []byte(fakeExecRuntime), 0o755); err != nil {
				t.Fatal(err)
			}
			spec := filepath.Join(dir, "process.json")
			if err := os.WriteFile(spec, []byte(`{"args":["true"]}`), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv("FAKE_RT_DIR", dir)
			t.Setenv("CTR_SLEEP", tc.ctrSleep)
			t.Setenv("RT_SLEEP", tc.rtWait)
			t.Setenv("NOTIFY_SOCKET", "/nonexistent/notify")
			syncR, syncW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer syncR.Close()
			defer syncW.Close()

			pidFile := filepath.Join(dir, "pid")
			cfg := &Config{Options: &Options{
				CID: "ctr1", Exec: true, Sync: true, ExecProcessSpec: spec, Runtime: rt,
				RuntimeArgs: []string{"--root=/run/x"}, RuntimeOpts: []string{"--preserve-fds=0"},
				ContainerPidfile: pidFile,
			}, Level: LevelWarn}
			boot := &Bootstrap{SyncFD: int(syncW.Fd()), StartFD: -1, AttachFD: -1}
			r := reaper.New()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			done := make(chan struct{})
			go func() { defer close(done); _ = r.Run(ctx) }()
			open := func(context.Context, *Config, func(logging.Stream, []byte)) (LogPipeline, error) {
				return &discardLogs{}, nil
			}
			code := NewMonitor(cfg, boot, r, NewDiag(LevelWarn, io.Discard, false, cfg.CID), open).Run(ctx)
			cancel()
			<-done
			syncW.Close()

			if code != 7 {
				t.Errorf("exit code %d, want 7", code)
			}
			msg, _ := io.ReadAll(syncR)
			if string(msg) != "{\"exit_code\": 7}\n" {
				t.Errorf("sync pipe %q, want the exit code 7", msg)
			}
			args, err := os.ReadFile(filepath.Join(dir, "args"))
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"--root=/run/x", "exec", "--process", spec, "--detach", "--pid-file", pidFile, "--preserve-fds=0", "ctr1"}
			if got := strings.Split(strings.TrimSuffix(string(args), "\n"), "\n"); !slices.Equal(got, want) {
				t.Errorf("runtime arguments\n got %q\nwant %q", got, want)
			}
			env, err := os.ReadFile(filepath.Join(dir, "env"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(env), "NOTIFY_SOCKET=") {
				t.Errorf("NOTIFY_SOCKET passed to the runtime")
			}
		})
	}
}
