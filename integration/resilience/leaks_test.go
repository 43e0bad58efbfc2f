package resilience

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/containers/conmon-v2/client"
)

// TestShimReturnsToBaseline: a group's shim serves one long-lived
// container; five more containers come and go through it, each with FIFO
// output, an exec and a log annotation. Afterwards the shim's goroutine
// and descriptor counts (Monitor API Info; descriptors also from /proc)
// are back at what they were with the first container alone.
func TestShimReturnsToBaseline(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base := e.start(ctx, "base", []string{"sleep", "1000"}, true, nil)
	defer base.remove(t)
	info, err := base.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Goroutines == 0 || info.FDs == 0 {
		t.Fatalf("Info without counts: %+v", info)
	}
	before := info
	t.Logf("baseline: %d goroutines, %d fds (/proc: %d)", before.Goroutines, before.FDs, fdCount(t, int(before.Pid)))

	for i := range 5 {
		id := fmt.Sprintf("churn-%d", i)
		tk := e.start(ctx, id, []string{"sh", "-c", "echo hello; sleep 1000"}, true, map[string]string{
			client.LogAnnotationPrefix + "driver": "k8s-file",
		})
		id = tk.id
		eventually(t, 20*time.Second, func() error {
			if !strings.Contains(tk.out.String(), "hello") {
				return fmt.Errorf("%s: output %q", id, tk.out.String())
			}
			return nil
		})
		if err := tk.shim.Exec(ctx, id, "x", &specs.Process{Args: []string{"true"}, Env: []string{"PATH=/bin:/usr/bin"}, Cwd: "/"}, client.Stdio{}); err != nil {
			t.Fatal(err)
		}
		if _, err := tk.shim.Start(ctx, id, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := tk.shim.Wait(ctx, id, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := tk.shim.Delete(ctx, id, "x"); err != nil {
			t.Fatal(err)
		}
		tk.remove(t)
	}

	var last client.ShimInfo
	eventually(t, 20*time.Second, func() error {
		last, err = base.shim.Info(ctx)
		if err != nil {
			return err
		}
		if last.Pid != before.Pid {
			return fmt.Errorf("the shim changed: pid %d, was %d", last.Pid, before.Pid)
		}
		if last.Goroutines > before.Goroutines || last.FDs > before.FDs {
			return fmt.Errorf("after 5 containers: %d goroutines, %d fds; baseline %d, %d", last.Goroutines, last.FDs, before.Goroutines, before.FDs)
		}
		return nil
	})
	t.Logf("after 5 containers: %d goroutines, %d fds", last.Goroutines, last.FDs)
}
