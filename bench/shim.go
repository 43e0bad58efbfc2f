package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	runcopts "github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
)

const benchNamespace = "conmonbench"

// shimSystem drives a containerd shim v2 binary the way containerd 1.6
// does, with no containerd: the `start` action (with a fake -address and
// TTRPC_ADDRESS pointing at the harness's event sink), then Create, Start,
// Wait, Delete and Shutdown over ttrpc. Several containers may share one
// shim process: the shim decides, from the sandbox-id annotation or its
// configuration, and answers `start` with an address already served.
type shimSystem struct {
	env    *Env
	name   string
	bin    string
	prefix string
	// group, if set, gives each container its sandbox-id annotation.
	group func(i int) string
	// extraEnv is added to the shim's environment (a config file for the
	// dense mode, for instance).
	extraEnv []string

	startArgs []string // extra flags of the start action

	sinkPath string
	sink     *ttrpc.Server
	fakeAddr string

	mu    sync.Mutex
	shims map[string]*shimConn // by socket address
	locks map[string]*sync.Mutex
}

// shimConn is one running shim process and the harness's client to it.
type shimConn struct {
	addr   string
	client *ttrpc.Client
	task   taskv2.TTRPCTaskService
	pid    int
	users  int
	logR   *os.File // read end of the bundle's log FIFO, drained
}

type shimState struct {
	conn *shimConn
}

func newShimSystem(env *Env, name, bin, prefix string) *shimSystem {
	return &shimSystem{
		env: env, name: name, bin: bin, prefix: prefix,
		shims: map[string]*shimConn{}, locks: map[string]*sync.Mutex{},
	}
}

func (s *shimSystem) Name() string { return s.name }

// eventSink accepts every event a shim publishes and drops it: the
// harness needs the shim to have a working events endpoint, not the events.
type eventSink struct{}

func (eventSink) Forward(context.Context, *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (s *shimSystem) startSink() error {
	if s.sink != nil {
		return nil
	}
	s.sinkPath = filepath.Join(s.env.Dir, s.prefix+"-ev.sock")
	s.fakeAddr = filepath.Join(s.env.Dir, s.prefix+"-containerd.sock")
	l, err := net.Listen("unix", s.sinkPath)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		l.Close()
		return err
	}
	eventsapi.RegisterTTRPCEventsService(srv, eventSink{})
	s.sink = srv
	go func() { _ = srv.Serve(context.Background(), l) }() // stopped by Close
	return nil
}

func (s *shimSystem) ctx(ctx context.Context) context.Context {
	return ttrpc.WithMetadata(ctx, ttrpc.MD{"containerd-namespace-ttrpc": {benchNamespace}})
}

// groupLock serialises `start` within a group, as containerd's CRI does
// (the sandbox first); different groups start concurrently.
func (s *shimSystem) groupLock(key string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[key]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[key] = l
	}
	return l
}

// startShim runs `<shim> start` in c's bundle and returns a client to the
// address it prints, reusing the connection if that shim is known.
func (s *shimSystem) startShim(ctx context.Context, c *Container) (*shimConn, error) {
	if err := s.startSink(); err != nil {
		return nil, err
	}
	key := c.Group
	if key == "" {
		key = c.ID
	}
	gl := s.groupLock(key)
	gl.Lock()
	defer gl.Unlock()

	// containerd creates the bundle's log FIFO and holds it open before it
	// runs start; the shim daemon writes its own log there.
	logPath := filepath.Join(c.Bundle, "log")
	if err := unix.Mkfifo(logPath, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, err
	}
	logR, err := os.OpenFile(logPath, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	env := append([]string{"TTRPC_ADDRESS=" + s.sinkPath, "GOMAXPROCS=2", "NAMESPACE=" + benchNamespace}, s.extraEnv...)
	args := append([]string{"-namespace", benchNamespace, "-address", s.fakeAddr, "-publish-binary", "/bin/true", "-id", c.ID}, s.startArgs...)
	out, err := run(ctx, c.Bundle, env, s.bin, append(args, "start")...)
	if err != nil {
		logR.Close()
		return nil, err
	}
	addr := strings.TrimSpace(string(out))
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		logR.Close()
		return nil, fmt.Errorf("%s start printed %q, not a unix:// address", s.name, addr)
	}
	s.mu.Lock()
	sc := s.shims[addr]
	if sc != nil {
		sc.users++
		s.mu.Unlock()
		logR.Close() // the running shim logs into the first bundle's FIFO
		return sc, nil
	}
	s.mu.Unlock()
	conn, err := net.Dial("unix", path)
	if err != nil {
		logR.Close()
		return nil, fmt.Errorf("%s: dial %s: %w", s.name, path, err)
	}
	_ = logR.Close()
	// Reopen blocking for the drain goroutine (O_NONBLOCK made the open
	// not wait for a writer).
	logR, err = os.OpenFile(logPath, os.O_RDWR, 0)
	if err == nil {
		// The shim's own log is kept for error reports; the copy ends
		// when stopShim closes logR.
		logFile := filepath.Join(s.env.Dir, "shimlog-"+c.ID)
		if w, err := os.Create(logFile); err == nil {
			go func(r, w *os.File) {
				_, _ = io.Copy(w, r)
				w.Close()
			}(logR, w)
		}
	}
	client := ttrpc.NewClient(conn)
	sc = &shimConn{addr: addr, client: client, task: taskv2.NewTTRPCTaskClient(client), users: 1, logR: logR}
	resp, err := sc.task.Connect(s.ctx(ctx), &taskv2.ConnectRequest{ID: c.ID})
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("%s: Connect: %w", s.name, err)
	}
	sc.pid = int(resp.ShimPid)
	s.mu.Lock()
	if other := s.shims[addr]; other != nil {
		// A concurrent launch in the same group connected first. Two
		// records of one daemon would each count part of its users, and
		// the first to reach zero would stop (and at last SIGKILL) the
		// daemon under the other's containers.
		other.users++
		s.mu.Unlock()
		client.Close()
		if logR != nil {
			logR.Close()
		}
		return other, nil
	}
	s.shims[addr] = sc
	s.mu.Unlock()
	return sc, nil
}

func (s *shimSystem) Launch(ctx context.Context, c *Container) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	sc, err := s.startShim(ctx, c)
	if err != nil {
		return err
	}
	c.priv = &shimState{conn: sc}
	c.MonitorPID = sc.pid
	opts, err := proto.Marshal(&runcopts.Options{Root: s.env.RuncRoot})
	if err != nil {
		return err
	}
	req := &taskv2.CreateTaskRequest{
		ID:      c.ID,
		Bundle:  c.Bundle,
		Options: &anypb.Any{TypeUrl: "containerd.runc.v1.Options", Value: opts},
	}
	switch {
	case c.LogAnnotations:
		// conmon-v2's shim writes the k8s-file itself (the annotations say
		// where) and needs no stdio URI: like conmon, it is the only
		// reader of the container's output.
	case c.LogPath != "":
		// containerd's file:// URI: a raw copy of both streams into one
		// file (the runc shim needs stdout and stderr both set).
		req.Stdout = "file://" + c.LogPath
		req.Stderr = req.Stdout
	}
	cctx := s.ctx(ctx)
	cr, err := sc.task.Create(cctx, req)
	if err != nil {
		s.release(ctx, c, sc)
		return fmt.Errorf("%s: Create %s: %w", s.name, c.ID, err)
	}
	c.Pid = int(cr.Pid)
	if _, err := sc.task.Start(cctx, &taskv2.StartRequest{ID: c.ID}); err != nil {
		return fmt.Errorf("%s: Start %s: %w", s.name, c.ID, err)
	}
	return nil
}

func (s *shimSystem) Wait(ctx context.Context, c *Container) (int, error) {
	st := c.priv.(*shimState)
	r, err := st.conn.task.Wait(s.ctx(ctx), &taskv2.WaitRequest{ID: c.ID})
	if err != nil {
		return -1, fmt.Errorf("%s: Wait %s: %w", s.name, c.ID, err)
	}
	return int(r.ExitStatus), nil
}

func (s *shimSystem) Exec(ctx context.Context, c *Container, args []string) (int, error) {
	code, _, err := s.ExecPhases(ctx, c, args)
	return code, err
}

// ExecPhases is Exec that also returns how long each of its four calls
// took (Exec, Start, Wait, Delete), for the exec figure's breakdown.
func (s *shimSystem) ExecPhases(ctx context.Context, c *Container, args []string) (int, [4]time.Duration, error) {
	var ph [4]time.Duration
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	st := c.priv.(*shimState)
	spec, err := processSpec(args)
	if err != nil {
		return -1, ph, err
	}
	s.env.mu.Lock()
	s.env.seq++
	execID := fmt.Sprintf("e%d", s.env.seq)
	s.env.mu.Unlock()
	cctx := s.ctx(ctx)
	t := st.conn.task
	t0 := time.Now()
	lap := func(k int) {
		now := time.Now()
		ph[k] = now.Sub(t0)
		t0 = now
	}
	if _, err := t.Exec(cctx, &taskv2.ExecProcessRequest{
		ID: c.ID, ExecID: execID,
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec},
	}); err != nil {
		return -1, ph, fmt.Errorf("%s: Exec: %w", s.name, err)
	}
	lap(0)
	if _, err := t.Start(cctx, &taskv2.StartRequest{ID: c.ID, ExecID: execID}); err != nil {
		return -1, ph, fmt.Errorf("%s: Start exec: %w", s.name, err)
	}
	lap(1)
	r, err := t.Wait(cctx, &taskv2.WaitRequest{ID: c.ID, ExecID: execID})
	if err != nil {
		return -1, ph, fmt.Errorf("%s: Wait exec: %w", s.name, err)
	}
	lap(2)
	if _, err := t.Delete(cctx, &taskv2.DeleteRequest{ID: c.ID, ExecID: execID}); err != nil {
		return -1, ph, fmt.Errorf("%s: Delete exec: %w", s.name, err)
	}
	lap(3)
	return int(r.ExitStatus), ph, nil
}

func (s *shimSystem) Delete(ctx context.Context, c *Container) error {
	st, _ := c.priv.(*shimState)
	if st == nil {
		_, err := run(ctx, "", nil, s.env.Runc, "--root", s.env.RuncRoot, "delete", "-f", c.ID)
		return err
	}
	cctx := s.ctx(ctx)
	t := st.conn.task
	var errs []error
	// containerd's WithProcessKill: SIGKILL to everything, then Wait.
	if _, err := t.Kill(cctx, &taskv2.KillRequest{ID: c.ID, Signal: 9, All: true}); err == nil {
		wctx, cancel := context.WithTimeout(cctx, 10*time.Second)
		_, _ = t.Wait(wctx, &taskv2.WaitRequest{ID: c.ID})
		cancel()
	}
	if _, err := t.Delete(cctx, &taskv2.DeleteRequest{ID: c.ID}); err != nil {
		errs = append(errs, fmt.Errorf("%s: Delete %s: %w", s.name, c.ID, err))
	}
	s.release(ctx, c, st.conn)
	c.priv = nil
	return errors.Join(errs...)
}

// release drops c's use of sc; the last user shuts the shim down and
// reaps it.
func (s *shimSystem) release(ctx context.Context, c *Container, sc *shimConn) {
	s.mu.Lock()
	sc.users--
	last := sc.users == 0
	if last {
		delete(s.shims, sc.addr)
	}
	s.mu.Unlock()
	if !last {
		return
	}
	s.stopShim(ctx, c.ID, sc)
}

func (s *shimSystem) stopShim(ctx context.Context, id string, sc *shimConn) {
	sctx, cancel := context.WithTimeout(s.ctx(ctx), 3*time.Second)
	_, _ = sc.task.Shutdown(sctx, &taskv2.ShutdownRequest{ID: id})
	cancel()
	sc.client.Close()
	if sc.pid > 0 {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := reapChild(wctx, sc.pid, nil)
		cancel()
		if err != nil {
			killAndReap(sc.pid)
		}
	}
	if sc.logR != nil {
		sc.logR.Close()
	}
	_ = os.Remove(strings.TrimPrefix(sc.addr, "unix://"))
}

func (s *shimSystem) Close(ctx context.Context) error {
	s.mu.Lock()
	left := s.shims
	s.shims = map[string]*shimConn{}
	s.mu.Unlock()
	for _, sc := range left {
		s.stopShim(ctx, "", sc)
	}
	if s.sink != nil {
		s.sink.Close()
		s.sink = nil
	}
	return nil
}
