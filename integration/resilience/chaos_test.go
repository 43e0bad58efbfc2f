package resilience

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
)

// chaosRuntime fails (exit 1) or hangs (sleep in place of runc) on one in
// five create, start and exec commands, and is runc otherwise.
const chaosRuntime = `#!/bin/sh
r=$(( $(od -An -N2 -tu2 /dev/urandom) % 5 ))
case " $* " in
*" create "*|*" start "*|*" exec "*)
	if [ $r -eq 0 ]; then echo "chaos: refusing $*" >&2; exit 1; fi
	if [ $r -eq 1 ]; then exec sleep 3600; fi
	;;
esac
exec runc "$@"
`

// TestChaosRuntime: a runtime that fails or hangs at random. Every failed
// create or start reaches the client as an error that names the runtime
// (or its deadline), and once every container is deleted nothing is left:
// no runc container, task record, rootfs mount or stray process, and the
// dense daemon exits.
func TestChaosRuntime(t *testing.T) {
	e := newEnv(t)
	wrapper := filepath.Join(e.dir, "chaos-runtime")
	if err := os.WriteFile(wrapper, []byte(chaosRuntime), 0o755); err != nil {
		t.Fatal(err)
	}
	e.configure("chaos", fmt.Sprintf("grouping = \"namespace\"\nruntime = %q\n", wrapper))
	ns := e.opts.Namespace

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var failed, ran int
	for i := range 12 {
		id := fmt.Sprintf("chaos%d-%s", i, e.suffix)
		bundle, _, s := e.launch(ctx, id, client.SpecOpts{Args: []string{"sleep", "1000"}, Hostname: "c"})
		step := func(what string, f func(context.Context) error) bool {
			cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
			defer ccancel()
			err := f(cctx)
			if err == nil {
				return true
			}
			failed++
			msg := err.Error()
			// runc create's own stderr is the container's (runc passes
			// its stdio on), so a refused create is known by the
			// runtime's exit status; real runc's message comes from its
			// --log file.
			if !strings.Contains(msg, "chaos: refusing") && !strings.Contains(msg, "did not terminate successfully") &&
				!errors.Is(err, context.DeadlineExceeded) &&
				!strings.Contains(msg, "signal: killed") && !errdefs.IsUnavailable(err) {
				t.Errorf("%s %s: an error that names neither the runtime's message nor a deadline: %v", what, id, err)
			}
			t.Logf("%s %s: %v", what, id, err)
			return false
		}
		created := step("create", func(c context.Context) error {
			_, err := s.Create(c, client.CreateOpts{ID: id, Bundle: bundle})
			return err
		})
		if created && step("start", func(c context.Context) error { _, err := s.Start(c, id, ""); return err }) {
			ran++
		}
		// Whatever happened, remove the task (a refused create left none).
		dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
		_ = s.Kill(dctx, id, "", uint32(unix.SIGKILL), true)
		if created {
			if _, err := s.Wait(dctx, id, ""); err != nil && !errdefs.IsNotFound(err) {
				t.Errorf("wait %s: %v", id, err)
			}
		}
		if _, err := s.Delete(dctx, id, ""); err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("delete %s: %v", id, err)
		}
		dcancel()
		s.Close()
	}
	t.Logf("%d runs, %d failed steps", ran, failed)

	// Nothing left behind.
	checkNothingLeft(t, e)
	eventually(t, 30*time.Second, func() error {
		out, _ := exec.Command("pgrep", "-f", e.dir).Output()
		if pids := strings.Fields(string(out)); len(pids) > 0 {
			return fmt.Errorf("processes left: %v", pids)
		}
		return daemonGone(ns)
	})
}

// checkNothingLeft checks that the env's namespace has no runc container
// and no task record left, and that nothing is mounted under its
// directory.
func checkNothingLeft(t *testing.T, e *env) {
	t.Helper()
	ns := e.opts.Namespace
	if out, err := exec.Command("runc", "--root", filepath.Join("/run/conmon-v2/runc", ns), "list", "-q").CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("runc containers left: %q %v", out, err)
	}
	if ents, _ := os.ReadDir(filepath.Join("/run/conmon-v2/state", ns)); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("task records left: %v", names)
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), e.dir) {
		t.Errorf("mounts left under %s", e.dir)
	}
}

// daemonGone is an error while a daemon of the namespace ns runs.
func daemonGone(ns string) error {
	out, _ := exec.Command("pgrep", "-f", "-namespace "+ns).Output()
	if pids := strings.Fields(string(out)); len(pids) > 0 {
		return fmt.Errorf("daemon still runs: %v", pids)
	}
	return nil
}
