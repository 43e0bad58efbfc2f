package conmonctl

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
)

// TestMakeDemo runs the README's first command, `make demo`, in a fresh
// local clone of the repository (committed files only, no network).
func TestMakeDemo(t *testing.T) {
	testutil.RequiresRoot(t)
	git := testutil.NeedCommand(t, "git")
	testutil.NeedCommand(t, "make")
	dir := filepath.Join(t.TempDir(), "conmon-v2")
	if out, err := exec.Command(git, "clone", "-q", "--no-hardlinks", testutil.RepoRoot(), dir).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "demo")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make demo: %v\n%s", err, out)
	}
	for _, want := range []string{
		"$ conmonctl ps", "running", // ps while it runs
		"$ conmonctl shims",
		"tick ",                   // logs, read back from the k8s-file log
		" stdout F tick ",         // the k8s-file line format itself
		"hello from exec in demo", // exec
		"MEM USAGE / LIMIT",       // stats
		"stopped", "137",          // stop: TERM, then KILL (sh as pid 1 ignores TERM)
		"demo: done",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("make demo output lacks %q:\n%s", want, out)
		}
	}
}
