package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containers/conmon-v2/shim/launch"
)

// fakeService answers State with the request's ids, fails Kill with a
// configurable error, panics in Pause, and counts tasks for Empty.
type fakeService struct {
	unimplemented
	mu       sync.Mutex
	killErr  error
	tasks    int
	onEmpty  func()
	shutdown int
}

func (f *fakeService) State(ctx context.Context, r *taskv2.StateRequest) (*taskv2.StateResponse, error) {
	return &taskv2.StateResponse{ID: r.ID, ExecID: r.ExecID, Pid: 42, Bundle: "/b"}, nil
}

func (f *fakeService) Kill(ctx context.Context, r *taskv2.KillRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return nil, f.killErr
}

func (f *fakeService) Pause(ctx context.Context, r *taskv2.PauseRequest) (*emptypb.Empty, error) {
	var m map[string]int
	m["boom"] = 1 // a bug in a handler
	return &emptypb.Empty{}, nil
}

func (f *fakeService) Create(ctx context.Context, r *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks++
	return &taskv2.CreateTaskResponse{Pid: 1}, nil
}

func (f *fakeService) Delete(ctx context.Context, r *taskv2.DeleteRequest) (*taskv2.DeleteResponse, error) {
	f.mu.Lock()
	f.tasks--
	empty := f.tasks == 0
	f.mu.Unlock()
	if empty && f.onEmpty != nil {
		f.onEmpty()
	}
	return &taskv2.DeleteResponse{}, nil
}

func (f *fakeService) Shutdown(ctx context.Context, r *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown++
	return &emptypb.Empty{}, nil
}

func (f *fakeService) Empty() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tasks == 0
}

func (f *fakeService) Close() error { return nil }

func shortTempSocket(t *testing.T) string {
	t.Helper()
	// t.TempDir paths can exceed the unix socket limit.
	dir, err := os.MkdirTemp("", "shimtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

func startServer(t *testing.T, svc taskv2.TTRPCTaskService) *ttrpc.Client {
	t.Helper()
	sock := shortTempSocket(t)
	srv, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()),
		ttrpc.WithUnaryServerInterceptor(ErrorInterceptor(nil)),
	)
	if err != nil {
		t.Fatal(err)
	}
	RegisterTaskService(srv, svc)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), l)
	t.Cleanup(func() { srv.Close() })
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestV2AndV3ServeTheSameService(t *testing.T) {
	c := startServer(t, &fakeService{})
	ctx := context.Background()
	r2, err := taskv2.NewTTRPCTaskClient(c).State(ctx, &taskv2.StateRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	r3, err := taskv3.NewTTRPCTaskClient(c).State(ctx, &taskv3.StateRequest{ID: "c1", ExecID: "e1"})
	if err != nil {
		t.Fatal(err)
	}
	if r2.ID != "c1" || r2.ExecID != "e1" || r2.Pid != 42 || r3.ID != "c1" || r3.ExecID != "e1" || r3.Pid != 42 || r3.Bundle != "/b" {
		t.Fatalf("v2 %v, v3 %v", r2, r3)
	}
	// Every v2 method exists under v3.
	if got, want := len(TaskServiceDesc(&fakeService{}).Methods), 17; got != want {
		t.Fatalf("v3 service has %d methods, want %d", got, want)
	}
	// An unimplemented method is Unimplemented on both.
	_, err = taskv3.NewTTRPCTaskClient(c).Pids(ctx, &taskv3.PidsRequest{ID: "c1"})
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("v3 Pids: %v, want Unimplemented", err)
	}
}

func TestErrorInterceptor(t *testing.T) {
	svc := &fakeService{}
	c := startServer(t, svc)
	client := taskv2.NewTTRPCTaskClient(c)
	tests := []struct {
		err  error
		code codes.Code
		is   func(error) bool
	}{
		{fmt.Errorf("process e1: %w", errdefs.ErrNotFound), codes.NotFound, errdefs.IsNotFound},
		{fmt.Errorf("exec e1: %w", errdefs.ErrAlreadyExists), codes.AlreadyExists, errdefs.IsAlreadyExists},
		{fmt.Errorf("bad id: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument, errdefs.IsInvalidArgument},
		{fmt.Errorf("not started: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition, errdefs.IsFailedPrecondition},
		{fmt.Errorf("criu: %w", errdefs.ErrNotImplemented), codes.Unimplemented, errdefs.IsNotImplemented},
		{errors.New("plain"), codes.Unknown, func(error) bool { return true }},
		{status.Error(codes.Aborted, "already a status"), codes.Aborted, errdefs.IsAborted},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			svc.mu.Lock()
			svc.killErr = tt.err
			svc.mu.Unlock()
			_, err := client.Kill(context.Background(), &taskv2.KillRequest{ID: "c1"})
			if status.Code(err) != tt.code {
				t.Fatalf("code %v (%v), want %v", status.Code(err), err, tt.code)
			}
			if st, _ := status.FromError(err); st.Message() != tt.err.Error() && tt.code != codes.Aborted {
				t.Fatalf("message %q, want %q", st.Message(), tt.err.Error())
			}
		})
	}
	// A panic is an Internal error, and the server keeps serving.
	_, err := client.Pause(context.Background(), &taskv2.PauseRequest{ID: "c1"})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panicking handler: %v, want Internal", err)
	}
	if _, err := client.State(context.Background(), &taskv2.StateRequest{ID: "c1"}); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
}

func runDaemon(t *testing.T, svc *fakeService) (sock string, client taskv2.TTRPCTaskService, done chan string) {
	t.Helper()
	sock = shortTempSocket(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	d := Daemon{
		Listener:   l,
		SocketPath: sock,
		EmptyGrace: 50 * time.Millisecond,
		NewService: func(ctx context.Context, onEmpty func()) (TaskService, error) {
			svc.onEmpty = onEmpty
			return svc, nil
		},
	}
	done = make(chan string, 1)
	go func() {
		reason, err := d.Serve(context.Background())
		if err != nil {
			reason = err.Error()
		}
		done <- reason
	}()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() { c.Close() })
	return sock, taskv2.NewTTRPCTaskClient(c), done
}

func TestDaemonShutdownOnlyWhenEmpty(t *testing.T) {
	svc := &fakeService{}
	sock, client, done := runDaemon(t, svc)
	ctx := context.Background()
	for range 2 {
		if _, err := client.Create(ctx, &taskv2.CreateTaskRequest{ID: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	// svc.onEmpty is set; keep the daemon from exiting through it by
	// checking Shutdown with tasks left first.
	if _, err := client.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		t.Fatalf("daemon stopped (%s) although it holds tasks", r)
	case <-time.After(100 * time.Millisecond):
	}
	svc.mu.Lock()
	svc.tasks = 0
	svc.mu.Unlock()
	client.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "c"}) // ErrClosed is tolerated
	select {
	case r := <-done:
		if r != "shutdown requested" {
			t.Fatalf("stopped for %q", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop after Shutdown on an empty service")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestDaemonStopsWhenLastTaskDeleted(t *testing.T) {
	svc := &fakeService{}
	sock, client, done := runDaemon(t, svc)
	ctx := context.Background()
	if _, err := client.Create(ctx, &taskv2.CreateTaskRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Delete(ctx, &taskv2.DeleteRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r != "last task deleted" {
			t.Fatalf("stopped for %q", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop after its last task was deleted")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestDaemonStopsWhenIdle(t *testing.T) {
	sock := shortTempSocket(t)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	d := Daemon{
		Listener:    l,
		SocketPath:  sock,
		IdleTimeout: 20 * time.Millisecond,
		NewService: func(ctx context.Context, onEmpty func()) (TaskService, error) {
			return &fakeService{}, nil
		},
	}
	reason, err := d.Serve(context.Background())
	if err != nil || !strings.HasPrefix(reason, "idle") {
		t.Fatalf("Serve: %q %v, want an idle stop", reason, err)
	}
}

func TestDaemonWaitsForAJoinedMember(t *testing.T) {
	svc := &fakeService{}
	sock, client, done := runDaemon(t, svc)
	ctx := context.Background()
	if _, err := client.Create(ctx, &taskv2.CreateTaskRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	// start of c2 announces it, then c1 goes away before c2's Create.
	if _, ok := launch.Join(sock, "c2"); !ok {
		t.Fatal("join failed")
	}
	if _, err := client.Delete(ctx, &taskv2.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	client.Shutdown(ctx, &taskv2.ShutdownRequest{ID: "c1"})
	select {
	case r := <-done:
		t.Fatalf("daemon stopped (%s) while a member was joining", r)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("socket removed while a member was joining: %v", err)
	}
	if _, err := client.Create(ctx, &taskv2.CreateTaskRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Delete(ctx, &taskv2.DeleteRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop after its last member left")
	}
}

// createDuringEmpty is a fakeService whose Empty, asked while a member
// is announced, lets that member's Create complete right after it
// answered: the task is added, then the announcement ends.
type createDuringEmpty struct {
	*fakeService
	members *membership
	id      string
}

func (c createDuringEmpty) Empty() bool {
	empty := c.fakeService.Empty()
	if c.members.waiting() {
		c.fakeService.Create(context.Background(), &taskv2.CreateTaskRequest{ID: c.id})
		c.members.created(c.id)
	}
	return empty
}

// TestTryExitSeesACreateBetweenItsQuestions: a daemon deciding whether to
// exit never misses a member whose Create completes while it decides
// (TestDaemonWaitsForAJoinedMember failed once in CI that way: the daemon
// left with c2's task, and c2's Delete found the connection closed).
func TestTryExitSeesACreateBetweenItsQuestions(t *testing.T) {
	members := newMembership(time.Minute)
	members.join("c2")
	svc := createDuringEmpty{fakeService: &fakeService{}, members: members, id: "c2"}
	if (Daemon{}).tryExit(svc, members) {
		t.Fatal("the daemon would exit while c2, announced, was being created")
	}
	if (Daemon{}).tryExit(svc, members) {
		t.Fatal("the daemon would exit with c2's task")
	}
}
