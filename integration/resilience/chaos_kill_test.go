package resilience

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
)

// killingRuntime runs runc, but kills it (SIGKILL) mid-command once per
// container: the plan file named after the container id (runc's last
// argument) says which command and after how long.
const killingRuntime = `#!/bin/sh
for id; do :; done
plan=PLANDIR/$id
cmd=
for a; do
	case $a in create|start|exec|delete) cmd=$a; break;; esac
done
if [ -n "$cmd" ] && [ -f "$plan" ] && read victim delay < "$plan" && [ "$victim" = "$cmd" ] && mkdir "$plan.done" 2>/dev/null; then
	runc "$@" &
	pid=$!
	sleep "$delay"
	kill -9 $pid 2>/dev/null
	wait $pid
	rc=$?
	echo $rc > "$plan.done/rc"
	exit $rc
fi
exec runc "$@"
`

// TestChaosRuntimeKilled: the OCI runtime is killed with SIGKILL in the
// middle of create, start, exec or delete, at different points. Every
// failed request is an error naming the runtime's end; once the client
// has killed and deleted each container (retrying a delete that failed),
// nothing is left: no runc state, task record, mount, process or cgroup of
// the test's containers, and the dense daemon exits.
func TestChaosRuntimeKilled(t *testing.T) {
	e := newEnv(t)
	planDir := filepath.Join(e.dir, "plan")
	if err := os.MkdirAll(planDir, 0o700); err != nil {
		t.Fatal(err)
	}
	wrapper := filepath.Join(e.dir, "killing-runtime")
	if err := os.WriteFile(wrapper, []byte(strings.ReplaceAll(killingRuntime, "PLANDIR", planDir)), 0o755); err != nil {
		t.Fatal(err)
	}
	e.configure("kill", fmt.Sprintf("grouping = \"namespace\"\nruntime = %q\n", wrapper))
	ns := e.opts.Namespace

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	commands := []string{"create", "start", "exec", "delete"}
	delays := []string{"0", "0.005", "0.02", "0.06"}
	var ids []string
	var failed int
	for i := range len(commands) * len(delays) {
		id := fmt.Sprintf("kill%d-%s", i, e.suffix)
		ids = append(ids, id)
		victim, delay := commands[i%len(commands)], delays[i/len(commands)]
		if err := os.WriteFile(filepath.Join(planDir, id), []byte(victim+" "+delay+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		// Hostname = id: the container's cgroup is /conmon-v2/<id>.
		bundle, _, s := e.launch(ctx, id, client.SpecOpts{Args: []string{"sleep", "1000"}, Hostname: id})
		step := func(what string, f func(context.Context) error) bool {
			cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
			defer ccancel()
			err := f(cctx)
			if err == nil {
				return true
			}
			failed++
			t.Logf("%s %s (runtime killed in %s after %ss): %v", what, id, victim, delay, err)
			if msg := err.Error(); !strings.Contains(msg, "exit status 137") && !strings.Contains(msg, "signal: killed") &&
				!strings.Contains(msg, "did not terminate successfully") {
				t.Errorf("%s %s: the error does not say the runtime failed: %v", what, id, err)
			}
			return false
		}
		created := step("create", func(c context.Context) error {
			_, err := s.Create(c, client.CreateOpts{ID: id, Bundle: bundle})
			return err
		})
		started := created && step("start", func(c context.Context) error { _, err := s.Start(c, id, ""); return err })
		if started {
			execID := "x-" + id
			ok := step("exec", func(c context.Context) error {
				return s.Exec(c, id, execID, &specs.Process{Args: []string{"sh", "-c", "exit 3"}, Env: []string{"PATH=/bin:/usr/bin"}, Cwd: "/"}, client.Stdio{})
			}) && step("exec start", func(c context.Context) error { _, err := s.Start(c, id, execID); return err })
			if ok {
				if w, err := s.Wait(ctx, id, execID); err != nil || w.Status != 3 {
					t.Errorf("exec in %s: %+v %v, want exit 3", id, w, err)
				}
			}
			_, _ = s.Delete(ctx, id, execID)
		}
		// Whatever happened, remove the container: a client retries a
		// delete that failed.
		_ = s.Kill(ctx, id, "", uint32(unix.SIGKILL), true)
		if created {
			wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
			if _, err := s.Wait(wctx, id, ""); err != nil && !errdefs.IsNotFound(err) {
				t.Errorf("wait %s: %v", id, err)
			}
			wcancel()
		}
		var derr error
		for range 3 {
			_, derr = s.Delete(ctx, id, "")
			if derr == nil || errdefs.IsNotFound(derr) {
				derr = nil
				break
			}
			t.Logf("delete %s: %v", id, derr)
		}
		if derr != nil {
			t.Errorf("delete %s, three times: %v", id, derr)
		}
		s.Close()
	}
	t.Logf("%d containers, %d failed steps", len(ids), failed)
	for i, id := range ids {
		rc, _ := os.ReadFile(filepath.Join(planDir, id+".done", "rc"))
		if strings.TrimSpace(string(rc)) == "137" {
			t.Logf("%s: runtime killed in %s after %ss", id, commands[i%len(commands)], delays[i/len(commands)])
		}
	}

	// Nothing left behind.
	checkNothingLeft(t, e)
	eventually(t, 30*time.Second, func() error {
		if left := leftovers(ids); len(left) > 0 {
			return fmt.Errorf("left behind: %s", strings.Join(left, "; "))
		}
		return daemonGone(ns)
	})
}

// leftovers lists the processes and cgroups (v1: a directory per
// controller; v2: one) that belong to one of the container ids.
func leftovers(ids []string) []string {
	var left []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cg, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		for _, id := range ids {
			if strings.Contains(string(cg), "/"+id+"\n") || strings.Contains(string(cmdline), id) {
				left = append(left, fmt.Sprintf("process %s (%s) of %s", p.Name(), strings.ReplaceAll(string(cmdline), "\x00", " "), id))
			}
		}
	}
	for _, id := range ids {
		matches, _ := filepath.Glob("/sys/fs/cgroup/*/conmon-v2/" + id)
		m2, _ := filepath.Glob("/sys/fs/cgroup/conmon-v2/" + id)
		for _, m := range append(matches, m2...) {
			left = append(left, "cgroup "+m)
		}
	}
	return left
}
