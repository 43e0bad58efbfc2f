package plugin

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	loggingv1 "github.com/containers/conmon-v2/api/logging/v1"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/loggingtest"
)

// The test binary doubles as an executable plugin: started with
// CONMON_LOG_PLUGIN_FD set, it serves fileService and exits.
func TestMain(m *testing.M) {
	if os.Getenv(EnvFD) != "" {
		if err := Serve(context.Background(), &fileService{}); err != nil {
			fmt.Fprintln(os.Stderr, "test plugin:", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type memRecord struct {
	Handle  string
	Stream  int32
	Line    []byte
	Partial bool
	Time    int64
}

// fileService appends each record as JSON to the file named by option
// "file"; option "crash-after" exits the process after that many records,
// "reject" refuses every Write with an error of the plugin's own.
type fileService struct {
	mu      sync.Mutex
	files   map[string]*os.File
	crash   int
	hang    int
	reject  bool
	written int
}

func (s *fileService) Open(_ context.Context, req *loggingv1.OpenRequest) (*loggingv1.OpenResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string]*os.File{}
	}
	var path string
	for k, v := range req.Options {
		switch k {
		case "file":
			path = v
		case "crash-after":
			s.crash, _ = strconv.Atoi(v)
		case "hang-after":
			s.hang, _ = strconv.Atoi(v)
		case "reject":
			s.reject = v == "true"
		default:
			return nil, errgrpc.ToGRPC(fmt.Errorf("unknown option %q: %w", k, errdefs.ErrInvalidArgument))
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("option file: %w", errors.Join(err, errdefs.ErrInvalidArgument)))
	}
	h := strconv.Itoa(len(s.files) + 1)
	s.files[h] = f
	return &loggingv1.OpenResponse{Handle: h}, nil
}

func (s *fileService) Write(_ context.Context, req *loggingv1.WriteRequest) (*loggingv1.WriteResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[req.Handle]
	if s.reject {
		return nil, errgrpc.ToGRPC(fmt.Errorf("destination full: %w", errdefs.ErrResourceExhausted))
	}
	for _, r := range req.Records {
		b, _ := json.Marshal(memRecord{Handle: req.Handle, Stream: int32(r.Stream), Line: r.Line, Partial: r.Partial, Time: r.TimeUnixNano})
		f.Write(append(b, '\n'))
		s.written++
		if s.crash > 0 && s.written >= s.crash {
			os.Exit(1)
		}
		if s.hang > 0 && s.written >= s.hang {
			select {} // a stuck plugin
		}
	}
	return &loggingv1.WriteResponse{}, nil
}

func (s *fileService) Reopen(context.Context, *loggingv1.ReopenRequest) (*loggingv1.ReopenResponse, error) {
	return &loggingv1.ReopenResponse{}, nil
}

func (s *fileService) Close(_ context.Context, req *loggingv1.CloseRequest) (*loggingv1.CloseResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[req.Handle]; f != nil {
		f.Close()
		delete(s.files, req.Handle)
	}
	return &loggingv1.CloseResponse{}, nil
}

func readRecords(t *testing.T, path string) []logging.Record {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logging.Record
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m memRecord
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("plugin output: %v", err)
		}
		out = append(out, logging.Record{Stream: logging.Stream(m.Stream), Line: m.Line, Partial: m.Partial, Time: time.Unix(0, m.Time)})
	}
	return out
}

func self(t *testing.T) (exe, dir string) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe, filepath.Dir(exe)
}

var meta = logging.Metadata{ID: "0123456789abcdef", Name: "web", Labels: map[string]string{"a": "b"}}

func TestConformanceExecutable(t *testing.T) {
	exe, dir := self(t)
	f := NewFactory(Config{AllowedDirs: []string{dir}})
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		out := filepath.Join(t.TempDir(), "out.jsonl")
		d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": exe, "file": out, logging.OptMaxSize: "1"}})
		if err != nil {
			t.Fatal(err)
		}
		return d, func() []logging.Record { return readRecords(t, out) }
	})
}

func TestConformanceSocket(t *testing.T) {
	sockDir := t.TempDir()
	sock := filepath.Join(sockDir, "plugin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeSocket(ctx, sock, &fileService{}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("ServeSocket: %v", err)
		}
	})
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	f := NewFactory(Config{SocketDirs: []string{sockDir}})
	loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
		out := filepath.Join(t.TempDir(), "out.jsonl")
		d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"socket": sock, "file": out, "batch-size": "7"}})
		if err != nil {
			t.Fatal(err)
		}
		return d, func() []logging.Record { return readRecords(t, out) }
	})
}

func TestRefusals(t *testing.T) {
	exe, dir := self(t)
	other := t.TempDir()
	f := NewFactory(Config{AllowedDirs: []string{dir}, SocketDirs: []string{dir}})
	for _, tc := range []struct {
		name string
		opts map[string]string
		want string
	}{
		{"no target", map[string]string{"file": "x"}, "path"},
		{"both", map[string]string{"path": exe, "socket": "/x"}, "exclude"},
		{"outside", map[string]string{"path": "/bin/sh"}, `"/bin/sh"`},
		{"socket outside", map[string]string{"socket": filepath.Join(other, "s")}, filepath.Join(other, "s")},
		{"bad batch", map[string]string{"path": exe, "batch-size": "0"}, "batch-size"},
		{"plugin refuses option", map[string]string{"path": exe, "file": filepath.Join(other, "f"), "colour": "red"}, `"colour"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := f(context.Background(), logging.Info{Meta: meta, Options: tc.opts})
			if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want InvalidArgument naming %s", err, tc.want)
			}
		})
	}
}

// TestCrashRestart: the plugin dies in the middle of a batch; it is
// restarted and the batch sent again, so nothing is lost (records before
// the crash may come twice).
func TestCrashRestart(t *testing.T) {
	exe, dir := self(t)
	f := NewFactory(Config{AllowedDirs: []string{dir}, MinBackoff: 10 * time.Millisecond})
	out := filepath.Join(t.TempDir(), "out.jsonl")
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": exe, "file": out, "crash-after": "15", "batch-size": "10"}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 100
	for i := 0; i < n; i++ {
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("r%03d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	next := 0
	for _, r := range readRecords(t, out) {
		if string(r.Line) == fmt.Sprintf("r%03d", next) {
			next++
		}
	}
	if next != n {
		t.Errorf("records delivered in order up to %d, want %d", next, n)
	}
	if r := d.(*Driver).Restarts(); r < 1 {
		t.Errorf("Restarts() = %d", r)
	}
	if lines, _ := d.(*Driver).Lost(); lines != 0 {
		t.Errorf("Lost() = %d lines", lines)
	}
}

type nullService struct{ fileService }

func (*nullService) Open(context.Context, *loggingv1.OpenRequest) (*loggingv1.OpenResponse, error) {
	return &loggingv1.OpenResponse{Handle: "1"}, nil
}

func (*nullService) Write(context.Context, *loggingv1.WriteRequest) (*loggingv1.WriteResponse, error) {
	return &loggingv1.WriteResponse{}, nil
}

func (*nullService) Close(context.Context, *loggingv1.CloseRequest) (*loggingv1.CloseResponse, error) {
	return &loggingv1.CloseResponse{}, nil
}

// BenchmarkWrite: 80-byte lines to a plugin on a socket that discards them,
// flushed every 64 lines (about one 8 KiB read of the pipeline).
func BenchmarkWrite(b *testing.B) {
	dir := b.TempDir()
	sock := filepath.Join(dir, "p.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ServeSocket(ctx, sock, &nullService{})
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	d, err := NewFactory(Config{SocketDirs: []string{dir}})(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"socket": sock}})
	if err != nil {
		b.Fatal(err)
	}
	rec := &logging.Record{Stream: logging.Stdout, Line: []byte(strings.Repeat("x", 79))}
	b.SetBytes(80)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := d.Write(rec); err != nil {
			b.Fatal(err)
		}
		if i++; i%64 == 0 {
			d.(*Driver).Flush()
		}
	}
	if err := d.Close(); err != nil {
		b.Fatal(err)
	}
}

// TestHungPlugin: a Write that outlives call-timeout counts as a broken
// connection: the plugin is stopped (SIGTERM, SIGKILL) and restarted, and
// the batch sent again.
func TestHungPlugin(t *testing.T) {
	exe, dir := self(t)
	f := NewFactory(Config{AllowedDirs: []string{dir}, MinBackoff: 10 * time.Millisecond, StopTimeout: 100 * time.Millisecond})
	out := filepath.Join(t.TempDir(), "out.jsonl")
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"path": exe, "file": out, "hang-after": "15", "batch-size": "10", "call-timeout": "500ms"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if err := d.Write(&logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(fmt.Sprintf("r%03d", i))}); err != nil {
			t.Fatal(err)
		}
	}
	// The hung plugin holds its lock: Close's own call may time out too,
	// but nothing may be lost.
	d.Close()
	next := 0
	for _, r := range readRecords(t, out) {
		if string(r.Line) == fmt.Sprintf("r%03d", next) {
			next++
		}
	}
	if next != 20 {
		t.Errorf("records delivered in order up to %d, want 20", next)
	}
	if lines, _ := d.(*Driver).Lost(); lines != 0 {
		t.Errorf("Lost() = %d lines", lines)
	}
	if r := d.(*Driver).Restarts(); r != 1 {
		t.Errorf("Restarts() = %d, want 1", r)
	}
}

// TestNoFDLeak: a driver's life, a crash and restart included, leaves no
// descriptor behind.
func TestNoFDLeak(t *testing.T) {
	exe, dir := self(t)
	f := NewFactory(Config{AllowedDirs: []string{dir}, MinBackoff: 10 * time.Millisecond})
	out := filepath.Join(t.TempDir(), "out.jsonl")
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	// The runtime's poller opens its descriptors on first use: use it first.
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	before := count()
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{"path": exe, "file": out, "crash-after": "5", "batch-size": "4"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		d.Write(&logging.Record{Stream: logging.Stdout, Line: []byte("x")})
	}
	d.Close()
	if after := count(); after != before {
		t.Errorf("%d descriptors before, %d after", before, after)
	}
}

// TestRejectedBatchCountedOnce: the records of batches the plugin refuses
// are counted lost once each, the one whose Write sent the batch included
// (it is not counted failed as well), and the driver shows as failing.
func TestRejectedBatchCountedOnce(t *testing.T) {
	exe, dir := self(t)
	f := NewFactory(Config{AllowedDirs: []string{dir}})
	d, err := f(context.Background(), logging.Info{Meta: meta, Options: map[string]string{
		"path": exe, "file": filepath.Join(t.TempDir(), "out.jsonl"), "reject": "true", "batch-size": "10"}})
	if err != nil {
		t.Fatal(err)
	}
	p := logging.NewPipeline(meta, []logging.Driver{d}, logging.PipelineOptions{})
	p.ReadFrom(logging.Stdout, strings.NewReader(strings.Repeat("a line\n", 25)))
	if err := p.Close(); err == nil {
		t.Error("Close: no error after rejected batches")
	}
	st := p.Stats()
	ds := st.Drivers[0]
	if ds.Lost.Lines != 25 || ds.Errors.Lines != 0 || st.WriteError.Lines != 25 {
		t.Errorf("25 records rejected: %d failed, %d lost, write_error %d; want 0, 25, 25", ds.Errors.Lines, ds.Lost.Lines, st.WriteError.Lines)
	}
	if ds.Failures == 0 || ds.LastError == "" {
		t.Errorf("failures %d, last error %q", ds.Failures, ds.LastError)
	}
}
