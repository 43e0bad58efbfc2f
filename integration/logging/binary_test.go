package logging_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/binary"
	"github.com/containers/conmon-v2/reaper"
)

// binaryLogger is a logger in containerd's binary protocol, as people write
// them: signal ready on fd 5, then copy fds 3 and 4 to files, prefixing
// each line with the container ID it was given in the environment.
const binaryLogger = `#!/bin/sh
set -e
out=$2
exec 5>&- # ready (EOF on the ready pipe)
sed "s/^/$CONTAINER_NAMESPACE\/$CONTAINER_ID: /" <&3 > "$out/stdout" &
sed "s/^/$CONTAINER_NAMESPACE\/$CONTAINER_ID: /" <&4 > "$out/stderr"
wait
`

// binaryWithReaper runs the driver as conmon-v2 does: children through a
// reaper that owns every exit of the process.
func binaryWithReaper(t *testing.T, allowed string, cfg binary.Config) logging.Factory {
	t.Helper()
	r := reaper.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	cfg.AllowedDirs = []string{allowed}
	cfg.Runner = r
	return binary.NewFactory(cfg)
}

func writeLogger(t *testing.T, dir, name, script string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, _ := os.ReadFile(path)
		if string(got) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:\n got  %q\n want %q", filepath.Base(path), got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pipedPipeline returns a Pipeline for d reading the container's stdout
// and stderr from two in-memory pipes, and the pipes' write ends.
func pipedPipeline(meta logging.Metadata, d logging.Driver) (p *logging.Pipeline, stdout, stderr *io.PipeWriter) {
	p = logging.NewPipeline(meta, []logging.Driver{d}, logging.PipelineOptions{})
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	p.ReadFrom(logging.Stdout, outR)
	p.ReadFrom(logging.Stderr, errR)
	return p, outW, errW
}

// TestBinaryThroughPipeline feeds raw container output through a Pipeline
// into a containerd-protocol shell logger.
func TestBinaryThroughPipeline(t *testing.T) {
	testutil.RequiresRoot(t)
	testutil.NeedCommand(t, "sed")
	allowed, out := t.TempDir(), t.TempDir()
	bin := writeLogger(t, allowed, "sed-logger", binaryLogger)
	meta := logging.Metadata{ID: "c0ffee", Namespace: "default"}
	d, err := binaryWithReaper(t, allowed, binary.Config{})(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
	if err != nil {
		t.Fatal(err)
	}
	p, outW, errW := pipedPipeline(meta, d)
	var want strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(outW, "line %d\n", i)
		fmt.Fprintf(&want, "default/c0ffee: line %d\n", i)
	}
	long := strings.Repeat("x", 20000) // several pipeline reads, one line
	fmt.Fprintf(outW, "%s\n", long)
	fmt.Fprintf(&want, "default/c0ffee: %s\n", long)
	fmt.Fprint(errW, "oops\n")
	outW.Close()
	errW.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(out, "stdout"), want.String())
	waitFile(t, filepath.Join(out, "stderr"), "default/c0ffee: oops\n")
}

// TestBinaryCrashRestart kills the logger in the middle: it is restarted and
// the lines written meanwhile reach its successor.
func TestBinaryCrashRestart(t *testing.T) {
	testutil.RequiresRoot(t)
	allowed, out := t.TempDir(), t.TempDir()
	// Appends, so every incarnation adds to the same file; records its pid.
	bin := writeLogger(t, allowed, "cat-logger", `#!/bin/sh
echo $$ >> "$2/pids"
printf 1 >&5
exec 5>&-
exec cat <&3 >> "$2/stdout"
`)
	meta := logging.Metadata{ID: "deadbeef", Namespace: "ns"}
	d, err := binaryWithReaper(t, allowed, binary.Config{MinBackoff: 20 * time.Millisecond})(context.Background(),
		logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(s string) {
		t.Helper()
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(s), Meta: &meta}); err != nil {
			t.Fatal(err)
		}
	}
	write("before")
	waitFile(t, filepath.Join(out, "stdout"), "before\n")
	pids, _ := os.ReadFile(filepath.Join(out, "pids"))
	var pid int
	fmt.Sscanf(string(pids), "%d", &pid)
	if err := killPid(pid); err != nil {
		t.Fatal(err)
	}
	// Wait until it is gone (reaped): a line a dying logger already read
	// is lost with it, which is not what this test is about.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logger %d still there after SIGKILL", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
	write("during")
	write("after")
	waitFile(t, filepath.Join(out, "stdout"), "before\nduring\nafter\n")
	if n := d.(*binary.Driver).Restarts(); n != 1 {
		t.Errorf("Restarts() = %d, want 1", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func killPid(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Kill()
}
