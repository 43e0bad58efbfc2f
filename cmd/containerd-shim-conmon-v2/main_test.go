package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/shim/launch"
)

// TestLauncher runs a build of the launcher with a stand-in daemon beside
// it: start is served by the launcher, which spawns the daemon under its
// own argv[0]; every other invocation is the daemon, exec'd with the same
// arguments (its exit status is the launcher's); a missing daemon is an
// error naming the file.
func TestLauncher(t *testing.T) {
	dir, err := os.MkdirTemp("", "launcher") // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	launcher := filepath.Join(dir, "containerd-shim-conmon-v2")
	daemon := filepath.Join(dir, launch.DaemonBinary)
	for pkg, out := range map[string]string{".": launcher, "./testdata/standin": daemon} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	record := filepath.Join(dir, "record")
	t.Setenv("STANDIN_RECORD", record)
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "shim.toml")
	testutil.WriteFile(t, cfg, "grouping = \"container\"\nsocket_dir = \""+filepath.Join(dir, "s")+"\"\n", 0o644)
	ident := []string{"-namespace", "ns", "-id", "c1", "-address", "/run/c.sock"}

	for _, tc := range []struct {
		name       string
		args       []string
		noDaemon   bool
		wantCode   int
		wantRecord string // the stand-in's line ("" = not run)
		wantStdout string
		wantStderr string
	}{
		{
			name: "start spawns the daemon under the launcher's name",
			args: append(append([]string{}, ident...), "-bundle", bundle, "-config", cfg, "start"),
			// The daemon gets the identity, not the action.
			wantRecord: launcher + " -namespace ns -id c1 -address /run/c.sock",
			wantStdout: "unix://" + filepath.Join(dir, "s") + "/",
		},
		{
			name:       "delete is the daemon binary's, with its exit status",
			args:       append(append([]string{}, ident...), "-bundle", bundle, "delete"),
			wantCode:   3,
			wantRecord: launcher + " -namespace ns -id c1 -address /run/c.sock -bundle " + bundle + " delete",
		},
		{
			name:       "-v is the daemon binary's",
			args:       []string{"-v"},
			wantCode:   3,
			wantRecord: launcher + " -v",
		},
		{
			name:       "a bad command line is the daemon binary's to report",
			args:       []string{"start", "extra"},
			wantCode:   3,
			wantRecord: launcher + " start extra",
		},
		{
			name:       "no daemon beside the launcher",
			args:       append(append([]string{}, ident...), "-bundle", bundle, "delete"),
			noDaemon:   true,
			wantCode:   1,
			wantStderr: "run the shim daemon " + daemon + " (installed beside this launcher)",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.Remove(record)
			if tc.noDaemon {
				if err := os.Rename(daemon, daemon+".away"); err != nil {
					t.Fatal(err)
				}
				defer os.Rename(daemon+".away", daemon)
			}
			cmd := exec.Command(launcher, tc.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode {
				t.Fatalf("exit status %d, want %d (stderr %q)", code, tc.wantCode, stderr.String())
			}
			rec, _ := os.ReadFile(record)
			if got := strings.TrimSpace(string(rec)); got != tc.wantRecord {
				t.Fatalf("the daemon binary ran as %q, want %q", got, tc.wantRecord)
			}
			if !strings.HasPrefix(stdout.String(), tc.wantStdout) {
				t.Fatalf("stdout %q, want it to start with %q", stdout.String(), tc.wantStdout)
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Fatalf("stderr %q, want it to contain %q", stderr.String(), tc.wantStderr)
			}
		})
	}
}
