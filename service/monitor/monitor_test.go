package monitor

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/service"
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
