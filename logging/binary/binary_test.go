package binary

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

// logger writes a shell-script logger into dir and returns its path. The
// script gets OUT (a directory for its files) as its first argument pair.
func logger(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// copier is a well-behaved logger: ready byte, then both streams copied to
// files until EOF. It records its environment and arguments.
const copier = `out=$2
tr '\0' '\n' < /proc/$$/environ > "$out/env"
echo "$@" > "$out/args"
printf R >&5
exec 5>&-
cat <&3 >> "$out/stdout" &
cat <&4 >> "$out/stderr"
wait
`

func factory(dir string) logging.Factory {
	return NewFactory(Config{AllowedDirs: []string{dir}, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, StopTimeout: 2 * time.Second})
}

var meta = logging.Metadata{ID: "0123456789abcdef", Namespace: "k8s.io", Name: "web"}

func TestCopier(t *testing.T) {
	dir := t.TempDir()
	out := t.TempDir()
	bin := logger(t, dir, "copier", copier)
	d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"path": bin, "arg.out": out, "arg.z": "", logging.OptMaxSize: "10"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []logging.Record{
		{Stream: logging.Stdout, Line: []byte("one")},
		{Stream: logging.Stderr, Line: []byte("err")},
		{Stream: logging.Stdout, Line: []byte("par"), Partial: true},
		{Stream: logging.Stdout, Line: []byte("tial")},
	} {
		if err := d.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"stdout": "one\npartial\n",
		"stderr": "err\n",
		"env":    "CONTAINER_ID=0123456789abcdef\nCONTAINER_NAMESPACE=k8s.io\n",
		"args":   "out " + out + " z\n",
	} {
		got, _ := os.ReadFile(filepath.Join(out, file))
		if string(got) != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("late")}); err == nil {
		t.Error("write after close succeeded")
	}
}

func TestAllowList(t *testing.T) {
	allowedDir, otherDir := t.TempDir(), t.TempDir()
	good := logger(t, allowedDir, "ok", copier)
	outside := logger(t, otherDir, "evil", copier)
	link := filepath.Join(allowedDir, "link")
	if err := os.Symlink(outside, link); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(allowedDir, "noexec")
	os.WriteFile(noexec, []byte("#!/bin/sh\n"), 0o644)
	for _, tc := range []struct {
		name, path, want string
	}{
		{"outside", outside, "not inside an allowed directory"},
		{"symlink out", link, "not inside an allowed directory"},
		{"dot-dot", allowedDir + "/../" + filepath.Base(otherDir) + "/evil", "not inside"},
		{"relative", "ok", "absolute"},
		{"not executable", noexec, "not an executable"},
		{"missing", filepath.Join(allowedDir, "nope"), "no such file"},
		{"the directory", allowedDir, "not inside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := factory(allowedDir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": tc.path}})
			if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want InvalidArgument naming %s (%s)", err, tc.path, tc.want)
			}
		})
	}
	if _, err := factory(allowedDir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": good, "colour": "x"}}); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown option: err = %v", err)
	}
	if _, err := factory(allowedDir)(context.Background(), logging.Info{Meta: meta}); err == nil || !strings.Contains(err.Error(), "path") {
		t.Errorf("no path: err = %v", err)
	}
}

// TestCheckInDirs: the whole refusal message as the drivers give it, and
// the socket kind that package plugin asks for.
func TestCheckInDirs(t *testing.T) {
	dir := t.TempDir()
	exe := logger(t, dir, "ok", copier)
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": "ok"}})
	if want := `binary: logger "ok" refused: not an absolute path: invalid argument`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %s", err, want)
	}
	for _, tc := range []struct {
		name       string
		path       string
		executable bool
		want       string // "" for accepted
	}{
		{"executable", exe, true, ""},
		{"socket", sock, false, ""},
		{"socket for an executable", sock, true, "not an executable file"},
		{"executable for a socket", exe, false, "not a socket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckInDirs(tc.path, []string{dir}, tc.executable)
			resolved, _ := filepath.EvalSymlinks(tc.path)
			switch {
			case tc.want == "" && (err != nil || got != resolved):
				t.Errorf("got %q, %v; want %q accepted", got, err, resolved)
			case tc.want != "" && (err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), tc.want)):
				t.Errorf("err = %v, want InvalidArgument %q", err, tc.want)
			}
		})
	}
}

func TestNotReady(t *testing.T) {
	dir := t.TempDir()
	bin := logger(t, dir, "sleeper", "exec sleep 30\n")
	f := NewFactory(Config{AllowedDirs: []string{dir}, ReadyTimeout: 200 * time.Millisecond})
	_, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin}})
	if err == nil || !strings.Contains(err.Error(), "ready") {
		t.Fatalf("err = %v, want a ready timeout", err)
	}
}

// TestRestart: a logger that handles one line and dies is restarted; every
// line reaches one of its incarnations, in order.
func TestRestart(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	// sh's read takes one line from a pipe byte by byte: nothing is
	// consumed beyond it, so what the dead logger did not read stays in
	// the pipe for its successor.
	bin := logger(t, dir, "oneshot", `exec 5>&-
IFS= read -r line <&3 && echo "$line" >> "$2/stdout"
exit 3
`)
	d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	for i := 0; i < n; i++ {
		if err := d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte{'a' + byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := os.ReadFile(filepath.Join(out, "stdout"))
		if string(got) == "a\nb\nc\nd\ne\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stdout = %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := d.(*Driver).Restarts(); r < n-1 {
		t.Errorf("Restarts() = %d, want >= %d", r, n-1)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestStubbornLogger: one that ignores EOF and SIGTERM is killed.
func TestStubbornLogger(t *testing.T) {
	dir := t.TempDir()
	bin := logger(t, dir, "stubborn", `trap '' TERM
exec 5>&-
while :; do sleep 1; done
`)
	f := NewFactory(Config{AllowedDirs: []string{dir}, StopTimeout: 100 * time.Millisecond})
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin}})
	if err != nil {
		t.Fatal(err)
	}
	err = d.Close()
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Close = %v, want a kill report", err)
	}
}

func TestConformance(t *testing.T) {
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		dir, out := t.TempDir(), t.TempDir()
		bin := logger(t, dir, "copier", copier)
		d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
		if err != nil {
			t.Fatal(err)
		}
		return d, func() []logging.Record {
			o, _ := os.ReadFile(filepath.Join(out, "stdout"))
			e, _ := os.ReadFile(filepath.Join(out, "stderr"))
			return append(loggingtest.SplitStream(logging.Stdout, o), loggingtest.SplitStream(logging.Stderr, e)...)
		}
	})
}

// TestWriteAllocs: a line reaches the pipe without allocating.
func TestWriteAllocs(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	bin := logger(t, dir, "copier", copier)
	d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rec := &logging.Record{Stream: logging.Stdout, Line: []byte("a line of container output")}
	d.Write(rec)
	if allocs := testing.AllocsPerRun(20, func() { d.Write(rec) }); allocs > 0 {
		t.Errorf("Write allocates %.1f times per line", allocs)
	}
}

// BenchmarkWrite: 80-byte lines into a logger that discards them.
func BenchmarkWrite(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "null")
	os.WriteFile(p, []byte("#!/bin/sh\nexec 5>&-\ncat <&4 >/dev/null &\nexec cat <&3 >/dev/null\n"), 0o755)
	d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": p}})
	if err != nil {
		b.Fatal(err)
	}
	rec := &logging.Record{Stream: logging.Stdout, Line: []byte(strings.Repeat("x", 79))}
	b.SetBytes(80)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
}

func fdCount(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestNoFDLeak: a driver's life, restart included, leaves no descriptor.
func TestNoFDLeak(t *testing.T) {
	dir, out := t.TempDir(), t.TempDir()
	bin := logger(t, dir, "oneshot", `exec 5>&-
IFS= read -r line <&3 && echo "$line" >> "$2/stdout"
exit 3
`)
	// The runtime's poller opens its descriptors on first use: use it first.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := fdCount(t)
	d, err := factory(dir)(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": bin, "arg.out": out}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("x")})
	}
	for deadline := time.Now().Add(10 * time.Second); d.(*Driver).Restarts() < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	d.Close()
	if after := fdCount(t); after != before {
		t.Errorf("%d descriptors before, %d after", before, after)
	}
}
