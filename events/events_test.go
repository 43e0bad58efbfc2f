package events

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fakeContainerd records what a containerd events service would receive.
type fakeContainerd struct {
	mu       sync.Mutex
	got      []*Envelope
	ns       []string
	rejectN  int // reject this many calls first
	received chan struct{}
}

func (f *fakeContainerd) Forward(ctx context.Context, req *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.rejectN > 0 {
		f.rejectN--
		return nil, errgrpc.ToGRPC(fmt.Errorf("bad event: %w", errdefs.ErrInvalidArgument))
	}
	ns, _ := ttrpc.GetMetadataValue(ctx, NamespaceKey)
	f.ns = append(f.ns, ns)
	f.got = append(f.got, req.Envelope)
	select {
	case f.received <- struct{}{}:
	default:
	}
	return &emptypb.Empty{}, nil
}

func (f *fakeContainerd) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.got)
}

// serve starts a fake containerd on path and returns a stop function.
func serve(t *testing.T, path string, f *fakeContainerd) func() {
	t.Helper()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterTTRPCEventsService(srv, f)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	var once sync.Once
	stop := func() { once.Do(func() { srv.Close() }) }
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exitEvent(i int) *eventstypes.TaskExit {
	return &eventstypes.TaskExit{ContainerID: "c1", ID: "c1", Pid: uint32(1000 + i), ExitStatus: uint32(i)}
}

func TestForwardOrderTypeURLAndNamespace(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctrd.sock")
	f := &fakeContainerd{received: make(chan struct{}, 1)}
	serve(t, sock, f)
	e := New("ns1", "unix://"+sock, nil)
	const n = 50
	for i := range n {
		if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
		// conmon-v2's own topics stay local: containerd gets none.
		if err := e.Publish(context.Background(), LocalTopicPrefix+"log/failing", exitEvent(1000)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if f.count() != n {
		t.Fatalf("forwarded %d events, want %d", f.count(), n)
	}
	for i, env := range f.got {
		if env.Event.GetTypeUrl() != "containerd.events.TaskExit" {
			t.Fatalf("type URL %q, want the bare name containerd.events.TaskExit", env.Event.GetTypeUrl())
		}
		if env.Namespace != "ns1" || f.ns[i] != "ns1" || env.Topic != "/tasks/exit" {
			t.Fatalf("event %d: namespace %q metadata %q topic %q", i, env.Namespace, f.ns[i], env.Topic)
		}
		var ev eventstypes.TaskExit
		if err := proto.Unmarshal(env.Event.GetValue(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ExitStatus != uint32(i) {
			t.Fatalf("event %d out of order: exit status %d", i, ev.ExitStatus)
		}
	}
}

func TestForwardWaitsForContainerdAndReconnects(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctrd.sock")
	e := newExchange("default", sock, nil)
	e.maxBackoff = 20 * time.Millisecond
	go e.forward()
	defer e.Close(context.Background())
	for i := range 3 {
		if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // containerd is not there yet
	f := &fakeContainerd{received: make(chan struct{}, 1)}
	stop := serve(t, sock, f)
	waitFor(t, "first three events", func() bool { return f.count() == 3 })

	// containerd restarts: the next events wait and arrive in order.
	stop()
	f2 := &fakeContainerd{received: make(chan struct{}, 1)}
	for i := 3; i < 6; i++ {
		if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	serve(t, sock, f2)
	waitFor(t, "events after restart", func() bool { return f2.count() == 3 })
	for i, env := range f2.got {
		var ev eventstypes.TaskExit
		if err := proto.Unmarshal(env.Event.GetValue(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ExitStatus != uint32(3+i) {
			t.Fatalf("after restart, event %d has exit status %d", i, ev.ExitStatus)
		}
	}
}

func TestRejectedEventDoesNotBlockTheQueue(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctrd.sock")
	f := &fakeContainerd{received: make(chan struct{}, 1), rejectN: rejectRetries}
	serve(t, sock, f)
	e := newExchange("default", sock, nil)
	e.maxBackoff = 5 * time.Millisecond
	go e.forward()
	defer e.Close(context.Background())
	for i := range 2 {
		if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the second event", func() bool { return f.count() == 1 })
}

func TestCloseGivesUpWhenContainerdIsGone(t *testing.T) {
	e := New("default", filepath.Join(t.TempDir(), "nobody.sock"), nil)
	if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(1)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.Close(ctx); err == nil {
		t.Fatal("Close reported no loss although containerd never answered")
	}
	if err := e.Publish(context.Background(), "/tasks/exit", exitEvent(2)); !errdefs.IsUnavailable(err) {
		t.Fatalf("Publish after Close: %v, want Unavailable", err)
	}
}

func TestPublishValidatesTopic(t *testing.T) {
	e := New("default", "", nil)
	defer e.Close(context.Background())
	if err := e.Publish(context.Background(), "tasks/exit", exitEvent(1)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
}

func TestSubscribe(t *testing.T) {
	e := New("default", "", nil) // no containerd: local delivery only
	ctx := context.Background()
	ch, cancel := e.Subscribe(ctx)
	const n = 100
	for i := range n {
		if err := e.Publish(ctx, "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		env := <-ch
		var ev eventstypes.TaskExit
		if err := proto.Unmarshal(env.Event.GetValue(), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.ExitStatus != uint32(i) {
			t.Fatalf("event %d: exit status %d", i, ev.ExitStatus)
		}
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Fatal("channel still open after cancel")
	}

	// Close delivers what is queued, then closes the channel.
	ch2, cancel2 := e.Subscribe(ctx)
	defer cancel2()
	for i := range 3 {
		if err := e.Publish(ctx, "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := 0
	for range ch2 {
		got++
	}
	if got != 3 {
		t.Fatalf("after Close got %d queued events, want 3", got)
	}
}

// TestSubscriptionOverflow: a subscriber that stops reading is cut off once
// MaxSubscriptionQueue events wait for it: it then gets one TopicOverflow
// envelope and nothing more, and Publish never waited for it.
func TestSubscriptionOverflow(t *testing.T) {
	e := New("default", "", nil)
	ctx := context.Background()
	ch, cancel := e.Subscribe(ctx)
	defer cancel()
	for i := range MaxSubscriptionQueue + 10 {
		if err := e.Publish(ctx, "/tasks/exit", exitEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	var before int
	for env := range ch {
		if env.Topic == TopicOverflow {
			break
		}
		before++
	}
	if before > 1 {
		t.Fatalf("%d events before the overflow marker, want at most the one the pump held", before)
	}
	if err := e.Publish(ctx, "/tasks/exit", exitEvent(0)); err != nil {
		t.Fatal(err)
	}
	select {
	case env, ok := <-ch:
		if ok {
			t.Fatalf("event after the overflow marker: %v", env.Topic)
		}
	case <-time.After(100 * time.Millisecond):
		// nothing more: as wanted (not a timing assertion: any wait works)
	}
}
