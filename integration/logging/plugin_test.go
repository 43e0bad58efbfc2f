package logging_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/plugin"
	"github.com/containers/conmon-v2/reaper"
)

// pluginLine is one line of the example plugin's output.
type pluginLine struct {
	Time          string            `json:"time"`
	Stream        string            `json:"stream"`
	Log           string            `json:"log"`
	Partial       bool              `json:"partial"`
	ContainerID   string            `json:"container_id"`
	ContainerName string            `json:"container_name"`
	Tag           string            `json:"tag"`
	Labels        map[string]string `json:"labels"`
}

func readPluginFile(t *testing.T, path string) []pluginLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []pluginLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l pluginLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: %v: %q", path, err, sc.Text())
		}
		out = append(out, l)
	}
	return out
}

// pluginFactory returns the plugin driver with the repository's bin/ as
// the allowed directory and a running reaper as the runner.
func pluginFactory(t *testing.T, cfg plugin.Config) (logging.Factory, string) {
	t.Helper()
	exe := testutil.Bin(t, "conmon-log-plugin-example")
	r := reaper.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	cfg.AllowedDirs = []string{filepath.Dir(exe)}
	cfg.Runner = r
	return plugin.NewFactory(cfg), exe
}

// TestPluginThroughPipeline: container output through a Pipeline into the
// example plugin, started as an executable per container.
func TestPluginThroughPipeline(t *testing.T) {
	testutil.RequiresRoot(t)
	f, exe := pluginFactory(t, plugin.Config{})
	out := filepath.Join(t.TempDir(), "ctr.jsonl")
	meta := logging.Metadata{ID: "0123456789abcdef", Name: "web", Tag: "web-tag", Labels: map[string]string{"team": "core"}}
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": exe, "file": out}})
	if err != nil {
		t.Fatal(err)
	}
	p, outW, errW := pipedPipeline(meta, d)
	const n = 2000
	go func() {
		for i := 0; i < n; i++ {
			fmt.Fprintf(outW, "out %d\n", i)
		}
		fmt.Fprint(outW, "no newline at exit")
		outW.Close()
	}()
	fmt.Fprint(errW, "err line\n")
	errW.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readPluginFile(t, out)
	var outs []pluginLine
	var errs []pluginLine
	for _, l := range lines {
		if l.ContainerID != meta.ID || l.ContainerName != "web" || l.Tag != "web-tag" || l.Labels["team"] != "core" {
			t.Fatalf("metadata: %+v", l)
		}
		if l.Stream == "stderr" {
			errs = append(errs, l)
		} else {
			outs = append(outs, l)
		}
	}
	if len(outs) != n+1 || len(errs) != 1 {
		t.Fatalf("got %d stdout and %d stderr lines, want %d and 1", len(outs), len(errs), n+1)
	}
	for i := 0; i < n; i++ {
		if outs[i].Log != fmt.Sprintf("out %d", i) || outs[i].Partial {
			t.Fatalf("stdout %d: %+v", i, outs[i])
		}
	}
	if last := outs[n]; last.Log != "no newline at exit" || !last.Partial {
		t.Errorf("trailing line: %+v", last)
	}
	if errs[0].Log != "err line" {
		t.Errorf("stderr: %+v", errs[0])
	}
	if _, err := time.Parse(time.RFC3339Nano, outs[0].Time); err != nil {
		t.Errorf("time %q: %v", outs[0].Time, err)
	}
}

// TestPluginSocketShared: one plugin process on a socket serves two
// containers.
func TestPluginSocketShared(t *testing.T) {
	testutil.RequiresRoot(t)
	exe := testutil.Bin(t, "conmon-log-plugin-example")
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "example.sock")
	cmd := exec.Command(exe, "--socket", sock)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(unix.SIGTERM); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("plugin socket did not appear")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f := plugin.NewFactory(plugin.Config{SocketDirs: []string{sockDir}})
	dir := t.TempDir()
	var drivers []logging.Driver
	for i := 0; i < 2; i++ {
		meta := logging.Metadata{ID: fmt.Sprintf("ctr%d", i)}
		d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"socket": sock, "file": filepath.Join(dir, meta.ID)}})
		if err != nil {
			t.Fatal(err)
		}
		drivers = append(drivers, d)
	}
	for i := 0; i < 10; i++ {
		for j, d := range drivers {
			if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("c%d l%d", j, i))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, d := range drivers {
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for j := range drivers {
		lines := readPluginFile(t, filepath.Join(dir, fmt.Sprintf("ctr%d", j)))
		if len(lines) != 10 {
			t.Fatalf("ctr%d: %d lines", j, len(lines))
		}
		for i, l := range lines {
			if l.Log != fmt.Sprintf("c%d l%d", j, i) || l.ContainerID != fmt.Sprintf("ctr%d", j) {
				t.Errorf("ctr%d line %d: %+v", j, i, l)
			}
		}
	}
}

// TestPluginCrashAndReopen: the plugin exits after some records and is
// restarted (nothing lost, the batch in flight comes again); Reopen after
// a rename starts a new file.
func TestPluginCrashAndReopen(t *testing.T) {
	testutil.RequiresRoot(t)
	f, exe := pluginFactory(t, plugin.Config{MinBackoff: 10 * time.Millisecond})
	dir := t.TempDir()
	out := filepath.Join(dir, "ctr.jsonl")
	meta := logging.Metadata{ID: "crashy"}
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"path": exe, "file": out, "exit-after-records": "25", "batch-size": "10"}})
	if err != nil {
		t.Fatal(err)
	}
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("l%03d", i))}); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.(logging.Flusher).Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(0, 20) // the plugin exits at record 25 of its life, in batch 3
	write(20, 40)
	if err := os.Rename(out, out+".1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Reopen(); err != nil {
		t.Fatal(err)
	}
	write(40, 50)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if r := d.(*plugin.Driver).Restarts(); r < 1 {
		t.Errorf("Restarts() = %d, want at least 1", r)
	}
	var got []string
	for _, l := range append(readPluginFile(t, out+".1"), readPluginFile(t, out)...) {
		got = append(got, l.Log)
	}
	next := 0
	for _, s := range got {
		if s == fmt.Sprintf("l%03d", next) {
			next++
		}
	}
	if next != 50 {
		t.Errorf("delivered in order up to l%03d of l049: %s", next-1, strings.Join(got, " "))
	}
	for _, l := range readPluginFile(t, out) {
		if l.Log < "l040" {
			t.Errorf("%s in the reopened file", l.Log)
		}
	}
}
