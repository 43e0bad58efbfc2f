package monitor

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/events"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/service"

	"github.com/containers/conmon-v2/shim/launch"
)

type fakeTasks []service.TaskInfo

func (f fakeTasks) List(context.Context) []service.TaskInfo { return f }

// fakeEvents hands out one subscription fed by publish.
type fakeEvents struct {
	mu   sync.Mutex
	subs []chan *apitypes.Envelope
}

func (f *fakeEvents) Subscribe(ctx context.Context) (<-chan *apitypes.Envelope, func()) {
	ch := make(chan *apitypes.Envelope, 16)
	f.mu.Lock()
	f.subs = append(f.subs, ch)
	f.mu.Unlock()
	return ch, func() {}
}

func (f *fakeEvents) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeEvents) publish(t *testing.T, topic string, ev any) {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(ev)
	if err != nil {
		t.Fatal(err)
	}
	env := &apitypes.Envelope{Timestamp: timestamppb.Now(), Namespace: "ns", Topic: topic, Event: a}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.subs {
		s <- env
	}
}

// serve runs m on a unix socket and returns a client connected to it.
func serve(t *testing.T, m *Monitor) *client.Shim {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	Register(srv, m)
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	s, err := client.Connect(context.Background(), "unix://"+sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestInfoAndList(t *testing.T) {
	started := time.Unix(1700000000, 0)
	tasks := fakeTasks{
		{ID: "a", Namespace: "ns", Bundle: "/b/a", Pid: 42, Status: "running", CreatedAt: started, StartedAt: started},
		{ID: "b", Namespace: "ns", Status: "stopped", ExitStatus: 137, ExitedAt: started.Add(time.Minute), ExecIDs: []string{"e1"}},
	}
	s := serve(t, New(Config{Tasks: tasks, Group: "pod1", Namespace: "ns", Version: "v9"}))
	ctx := context.Background()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pid != uint32(os.Getpid()) || info.Group != "pod1" || info.Namespace != "ns" || info.Version != "v9" || info.Tasks != 2 {
		t.Errorf("info = %+v", info)
	}
	if info.RSSKB == 0 {
		t.Errorf("rss of a running test process is 0")
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("list = %+v", list)
	}
	tests := []struct {
		got, want client.TaskInfo
	}{
		{list[0], client.TaskInfo{ID: "a", Namespace: "ns", Bundle: "/b/a", Pid: 42, Status: client.Running, CreatedAt: started, StartedAt: started}},
		{list[1], client.TaskInfo{ID: "b", Namespace: "ns", Status: client.Stopped, ExitStatus: 137, ExitedAt: started.Add(time.Minute), Execs: 1}},
	}
	for _, tc := range tests {
		g, w := tc.got, tc.want
		if g.ID != w.ID || g.Pid != w.Pid || g.Status != w.Status || g.ExitStatus != w.ExitStatus || g.Execs != w.Execs ||
			!g.CreatedAt.Equal(w.CreatedAt) || !g.StartedAt.Equal(w.StartedAt) || !g.ExitedAt.Equal(w.ExitedAt) {
			t.Errorf("task = %+v, want %+v", g, w)
		}
	}
}

func TestSubscribe(t *testing.T) {
	ev := &fakeEvents{}
	s := serve(t, New(Config{Events: ev}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evc, errc, err := s.Subscribe(ctx, "/tasks/exit", "/tasks/start")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ev.count() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("server never subscribed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ev.publish(t, "/tasks/create", &apievents.TaskCreate{ContainerID: "c"})
	ev.publish(t, "/tasks/start", &apievents.TaskStart{ContainerID: "c", Pid: 7})
	ev.publish(t, "/tasks/exit", &apievents.TaskExit{ContainerID: "c", ExitStatus: 3})
	var got []any
	for len(got) < 2 {
		select {
		case e, ok := <-evc:
			if !ok {
				t.Fatalf("stream ended: %v", <-errc)
			}
			m, err := e.Decode()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, m)
		case <-time.After(5 * time.Second):
			t.Fatal("no event")
		}
	}
	if st, ok := got[0].(*apievents.TaskStart); !ok || st.Pid != 7 {
		t.Errorf("first event = %#v, want TaskStart pid 7 (create filtered out)", got[0])
	}
	if ex, ok := got[1].(*apievents.TaskExit); !ok || ex.ExitStatus != 3 {
		t.Errorf("second event = %#v, want TaskExit 3", got[1])
	}
}

func TestBadTopicAndMissingParts(t *testing.T) {
	s := serve(t, New(Config{}))
	ctx := context.Background()
	if _, err := s.List(ctx); !errdefs.IsNotImplemented(err) {
		t.Errorf("List without tasks: %v, want NotImplemented", err)
	}
	s2 := serve(t, New(Config{Events: &fakeEvents{}}))
	evc, errc, err := s2.Subscribe(ctx, "tasks")
	if err == nil {
		for range evc {
		}
		err = <-errc
	}
	if !errdefs.IsInvalidArgument(err) {
		t.Errorf("Subscribe with a bad topic: %v, want InvalidArgument", err)
	}
}

func TestResolveBinary(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to the umask
			t.Fatal(err)
		}
		return p
	}
	// A build of the running program (this test binary), and another
	// program that passes every rule but that one.
	good := copyFile(t, selfBinary(t), filepath.Join(dir, "good"), 0o755)
	other := copyFile(t, "/bin/true", filepath.Join(dir, "true"), 0o755)
	script := file("script", 0o755)
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	otherOwner := copyFile(t, good, filepath.Join(dir, "other"), 0o755)
	if os.Geteuid() == 0 {
		if err := os.Chown(otherOwner, 4242, 4242); err != nil {
			t.Fatal(err)
		}
	}
	selfReal := selfBinary(t)
	// The shim's launcher stands for the daemon file beside it (here a
	// copy of the running program); without one it is refused.
	launcherDir := filepath.Join(dir, "launcher")
	if err := os.Mkdir(launcherDir, 0o755); err != nil {
		t.Fatal(err)
	}
	launcher := buildLauncher(t, launcherDir)
	daemon := copyFile(t, selfReal, filepath.Join(launcherDir, launch.DaemonBinary), 0o755)
	lonely := copyFile(t, launcher, filepath.Join(dir, "lonely-launcher"), 0o755)
	tests := []struct {
		name, binary, want string
		class              func(error) bool
	}{
		{"absolute regular executable", good, good, nil},
		{"symbolic link resolved", link, good, nil},
		{"empty: the running binary", "", selfReal, nil},
		{"relative", "bin/shim", "", errdefs.IsInvalidArgument},
		{"missing", filepath.Join(dir, "nope"), "", errdefs.IsNotFound},
		{"directory", dir, "", errdefs.IsInvalidArgument},
		{"not executable", file("plain", 0o644), "", errdefs.IsInvalidArgument},
		{"group-writable", file("gw", 0o775), "", errdefs.IsPermissionDenied},
		{"world-writable", file("ww", 0o757), "", errdefs.IsPermissionDenied},
		{"another program", other, "", errdefs.IsInvalidArgument},
		{"a script", script, "", errdefs.IsInvalidArgument},
		{"the launcher: its daemon", launcher, daemon, nil},
		{"a launcher without its daemon", lonely, "", errdefs.IsNotFound},
	}
	if os.Geteuid() == 0 {
		tests = append(tests, struct {
			name, binary, want string
			class              func(error) bool
		}{"owned by another user", otherOwner, "", errdefs.IsPermissionDenied})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveBinary(tc.binary)
			if tc.class == nil {
				if err != nil || got != tc.want {
					t.Fatalf("got %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !tc.class(err) {
				t.Fatalf("got %q, %v; want an error of the right class", got, err)
			}
			t.Log(err)
		})
	}
}

// buildLauncher builds the shim's launcher into dir.
func buildLauncher(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "containerd-shim-conmon-v2")
	cmd := exec.Command("go", "build", "-o", out, launch.LauncherPath)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", launch.LauncherPath, err, b)
	}
	if err := os.Chmod(out, 0o755); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestUpgrade(t *testing.T) {
	ctx := context.Background()
	if _, err := serve(t, New(Config{})).Upgrade(ctx, ""); !errdefs.IsNotImplemented(err) {
		t.Errorf("Upgrade without a hook: %v, want NotImplemented", err)
	}

	bin := copyFile(t, selfBinary(t), filepath.Join(t.TempDir(), "shim"), 0o700)
	var mu sync.Mutex
	var calls []string
	hookErr := error(nil)
	m := New(Config{Upgrade: func(ctx context.Context, binary string) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, binary)
		return hookErr
	}})
	s := serve(t, m)
	got, err := s.Upgrade(ctx, bin)
	if err != nil || got != bin {
		t.Fatalf("Upgrade(%s) = %q, %v", bin, got, err)
	}
	if _, err := s.Upgrade(ctx, "relative/shim"); !errdefs.IsInvalidArgument(err) {
		t.Errorf("Upgrade of a relative path: %v, want InvalidArgument", err)
	}
	mu.Lock()
	hookErr = fmt.Errorf("one is under way: %w", errdefs.ErrFailedPrecondition)
	mu.Unlock()
	if _, err := s.Upgrade(ctx, bin); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "under way") {
		t.Errorf("Upgrade refused by the hook: %v, want its FailedPrecondition", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || calls[0] != bin || calls[1] != bin {
		t.Errorf("hook calls %q, want the checked binary twice (not the relative one)", calls)
	}

	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ExecAt.IsZero() || info.Binary == "" {
		t.Errorf("Info: exec_at %v binary %q, want both set", info.ExecAt, info.Binary)
	}
}

// selfBinary is the running test binary, symbolic links resolved.
func selfBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		t.Fatal(err)
	}
	return self
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) string {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(to, mode); err != nil {
		t.Fatal(err)
	}
	return to
}

// TestWaitUpgraded: the client waits for a newer binary, and stops at an
// upgrade failure the shim reports.
func TestWaitUpgraded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var failedAt time.Time
	m := New(Config{
		Upgrade: func(context.Context, string) error {
			// The handover fails after the answer.
			go func() {
				mu.Lock()
				failedAt = time.Now()
				mu.Unlock()
			}()
			return nil
		},
		UpgradeFailure: func() (time.Time, error) {
			mu.Lock()
			defer mu.Unlock()
			return failedAt, fmt.Errorf("freezing the server: 1 requests still in flight")
		},
	})
	s := serve(t, m)
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.UpgradeError != "" || !before.UpgradeFailedAt.IsZero() {
		t.Fatalf("no upgrade yet, but Info reports a failure: %q", before.UpgradeError)
	}
	// A binary started later answers: done.
	older := before
	older.ExecAt = before.ExecAt.Add(-time.Second)
	if info, err := s.WaitUpgraded(ctx, older); err != nil || !info.ExecAt.Equal(before.ExecAt) {
		t.Fatalf("WaitUpgraded with a newer binary serving: %+v, %v", info, err)
	}
	if _, err := s.Upgrade(ctx, ""); err != nil {
		t.Fatal(err)
	}
	_, err = s.WaitUpgraded(ctx, before)
	if !errdefs.IsAborted(err) || !strings.Contains(err.Error(), "still in flight") {
		t.Fatalf("WaitUpgraded after a failed upgrade: %v, want Aborted with the shim's reason", err)
	}
	t.Log(err)
}

// fakeLogs answers LogStats from a map (a missing id: NotFound).
type fakeLogs map[string]service.LogStats

func (f fakeLogs) LogStats(_ context.Context, id string) (service.LogStats, error) {
	st, ok := f[id]
	if !ok {
		return service.LogStats{}, fmt.Errorf("task %q: %w", id, errdefs.ErrNotFound)
	}
	return st, nil
}

func TestLogStats(t *testing.T) {
	failedAt := time.Unix(1700000000, 5)
	logs := fakeLogs{
		"plain": {ID: "plain"},
		"full": {
			ID: "full", Pipeline: true,
			Stats: logging.Stats{
				Read: logging.Counter{Lines: 10, Bytes: 100}, Written: logging.Counter{Lines: 8, Bytes: 80},
				Filtered: logging.Counter{Lines: 1, Bytes: 5}, Redacted: 2,
				RateLimited: logging.Counter{Lines: 1, Bytes: 15}, BufferFull: logging.Counter{Lines: 3, Bytes: 30},
				WriteError: logging.Counter{Lines: 4, Bytes: 40}, ReadErrors: 1,
			},
			Drivers: []service.LogDriverStats{{
				DriverStats: logging.DriverStats{
					Name: "k8s-file", Written: logging.Counter{Lines: 4, Bytes: 40},
					Errors: logging.Counter{Lines: 3, Bytes: 30}, Lost: logging.Counter{Lines: 1, Bytes: 10},
					Failures:  7, // more calls than records: held records failed again
					LastError: "write ctr.log: no space left on device",
				},
				Failing: true, LastErrorAt: failedAt,
			}},
		},
	}
	s := serve(t, New(Config{Logs: logs}))
	ctx := context.Background()
	tests := []struct {
		id      string
		want    client.LogStats
		wantErr func(error) bool
	}{
		{id: "", wantErr: errdefs.IsInvalidArgument},
		{id: "nope", wantErr: errdefs.IsNotFound},
		{id: "plain", want: client.LogStats{ID: "plain"}},
		{id: "full", want: client.LogStats{
			ID: "full", Pipeline: true,
			Read: client.LogCounter{Lines: 10, Bytes: 100}, Written: client.LogCounter{Lines: 8, Bytes: 80},
			Filtered: client.LogCounter{Lines: 1, Bytes: 5}, Redacted: 2,
			RateLimited: client.LogCounter{Lines: 1, Bytes: 15}, BufferFull: client.LogCounter{Lines: 3, Bytes: 30},
			WriteError: client.LogCounter{Lines: 4, Bytes: 40}, ReadErrors: 1,
			Drivers: []client.LogDriverStats{{
				Name: "k8s-file", Written: client.LogCounter{Lines: 4, Bytes: 40},
				Errors: client.LogCounter{Lines: 3, Bytes: 30}, Lost: client.LogCounter{Lines: 1, Bytes: 10},
				LastError: "write ctr.log: no space left on device", LastErrorAt: failedAt, Failing: true,
				Failures: 7,
			}},
		}},
	}
	for _, tc := range tests {
		got, err := s.LogStats(ctx, tc.id)
		if tc.wantErr != nil {
			if !tc.wantErr(err) {
				t.Errorf("LogStats(%q): %v", tc.id, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("LogStats(%q): %v", tc.id, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.want) || (len(got.Drivers) == 1 && !got.Drivers[0].LastErrorAt.Equal(failedAt)) {
			t.Errorf("LogStats(%q) =\n%+v\nwant\n%+v", tc.id, got, tc.want)
		}
	}
	if l := (client.LogStats{RateLimited: client.LogCounter{Lines: 1}, BufferFull: client.LogCounter{Lines: 3}, WriteError: client.LogCounter{Lines: 4}}).Dropped(); l.Lines != 4 {
		t.Errorf("Dropped() = %+v, want 4 lines", l)
	}
	if _, err := serve(t, New(Config{})).LogStats(ctx, "x"); !errdefs.IsNotImplemented(err) {
		t.Errorf("LogStats without Logs: %v, want NotImplemented", err)
	}
}

// A log driver's event reaches a subscriber of /conmon-v2/log/ with its
// type, as the shim's exchange envelopes it, and decodes on the client.
func TestSubscribeLogEvents(t *testing.T) {
	ev := &fakeEvents{}
	s := serve(t, New(Config{Events: ev}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evc, errc, err := s.Subscribe(ctx, "/conmon-v2/log/")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for ev.count() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("server never subscribed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, err := events.MarshalAny(&conmonapi.LogDriverEvent{ContainerId: "c", Driver: "k8s-file", Error: "no space left on device"})
	if err != nil {
		t.Fatal(err)
	}
	ev.publish(t, "/tasks/exit", &apievents.TaskExit{ContainerID: "c"})
	ev.publish(t, client.TopicLogFailing, &conmonapi.LogDriverEvent{ContainerId: "c", Driver: "k8s-file", Error: "no space left on device"})
	select {
	case e, ok := <-evc:
		if !ok {
			t.Fatalf("stream ended: %v", <-errc)
		}
		m, err := e.Decode()
		if err != nil {
			t.Fatal(err)
		}
		le, ok := m.(*conmonapi.LogDriverEvent)
		if e.Topic != client.TopicLogFailing || e.TypeURL != a.GetTypeUrl() || !ok || le.GetDriver() != "k8s-file" {
			t.Errorf("event %s %s %#v", e.Topic, e.TypeURL, m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
}
