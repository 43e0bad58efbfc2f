// Package shim is the containerd shim v2 daemon of conmon-v2: a ttrpc
// server for the containerd.task.v2 and v3 Task services (over the task
// service that package service implements), with its request limits, its
// side of the group's Join, its idle and shutdown rules; and the `delete`
// and `-info` actions. The command line, the configuration and the `start`
// action are package launch, which the launcher binary runs without this
// package.
package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containers/conmon-v2/shim/drain"
	"github.com/containers/conmon-v2/shim/launch"
)

// TaskService is what the daemon serves: the task API plus the two
// questions the daemon asks before it exits.
type TaskService interface {
	taskv2.TTRPCTaskService
	// Empty reports whether the service holds no task.
	Empty() bool
	// Close releases the service; running containers are left running.
	Close() error
}

// Daemon is the shim daemon's wiring, built by main.
type Daemon struct {
	Log *slog.Logger
	// Listener is the group's socket, inherited from start as fd 3.
	Listener net.Listener
	// SocketPath is removed when the daemon stops serving ("" = none).
	SocketPath string
	// Ready, if set, gets "ok" once the daemon serves, or the error that
	// stopped it, and is closed.
	Ready io.WriteCloser
	// NewService builds the task service. onEmpty is to be called when the
	// last task was deleted.
	NewService func(ctx context.Context, onEmpty func()) (TaskService, error)
	// Register, if set, adds more services (conmon's own Monitor API) to
	// the server before it serves.
	Register func(srv *ttrpc.Server, svc TaskService)
	// EmptyGrace is how long the daemon, once empty, waits for the
	// Shutdown request containerd sends after Delete before it exits by
	// itself (containerd 2.x sends none for pod containers).
	EmptyGrace time.Duration
	// OnCreate, if set, is called with the bundle of every Create before
	// the task service sees it (main re-points the daemon's log there when
	// the first container's log FIFO is gone).
	OnCreate func(bundle string)
	// Config is the daemon's configuration (TOML), handed to members that
	// join the group.
	Config []byte
	// IdleTimeout stops a daemon that holds no task for this long, for
	// example because containerd died between start and Create (default
	// 2 minutes).
	IdleTimeout time.Duration
	// OnQuiet, if set, is called once the daemon has served no request
	// for QuietDelay (default DefaultQuietDelay): after start-up and after
	// every burst of requests. main gives memory back to the kernel there;
	// an idle daemon keeps only what its containers need. Calls do not
	// overlap, and none starts once Serve returns.
	OnQuiet    func()
	QuietDelay time.Duration
	// Limits bound the requests served at once (zero: DefaultLimits).
	Limits launch.Limits
	// Handed are connections a previous daemon handed over (live upgrade,
	// package drain): the server serves them before accepting new ones,
	// each from its pending bytes.
	Handed []drain.Conn
	// Drain, if set, gets the drain.Listener the server serves (wrapping
	// Listener) before it serves: the live upgrade freezes it there.
	Drain func(*drain.Listener)
	// PendingJoins are members a previous binary had announced and not
	// seen created yet (live upgrade), by task ID, with their expiry.
	PendingJoins map[string]time.Time
	// Joins, if set, gets a function returning the pending members, for
	// a live upgrade to hand them on.
	Joins func(func() map[string]time.Time)
	// Upgraded: this daemon goes on from a previous binary (live
	// upgrade). If it holds no task it leaves after EmptyGrace, as the
	// previous one would have after its last Delete.
	Upgraded bool
}

// Serve runs the daemon until its last task is gone (Shutdown on an empty
// service, the service reporting empty, or an idle timeout), or ctx is done
// (a signal). It returns the reason it stopped, or the error that kept it
// from serving.
//
// Exit and join are serialised by a lock on the socket directory: the
// daemon decides to exit and removes its socket under the lock, and
// `start` finds the socket and announces the new member (Join) under the
// same lock. So a member that joins is never left with a daemon that is
// leaving: either its start sees no socket and spawns a new daemon, or the
// daemon sees the pending member and stays.
func (d Daemon) Serve(ctx context.Context) (string, error) {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	shutdownReq := make(chan bool, 1) // carries ShutdownRequest.now
	emptied := make(chan struct{}, 1)
	notify := func(c chan struct{}) func() {
		return func() {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	members := newMembership(joinTTL)
	for id, exp := range d.PendingJoins {
		members.pending[id] = exp
	}
	if d.Joins != nil {
		d.Joins(func() map[string]time.Time {
			members.mu.Lock()
			defer members.mu.Unlock()
			out := make(map[string]time.Time, len(members.pending))
			for id, exp := range members.pending {
				out[id] = exp
			}
			return out
		})
	}

	svc, err := d.NewService(ctx, notify(emptied))
	if err != nil {
		d.ready(err)
		d.removeSocket()
		return "", fmt.Errorf("task service: %w", err)
	}
	defer svc.Close()

	interceptor := ErrorInterceptor(log)
	var quiet *quietTimer
	if d.OnQuiet != nil {
		delay := d.QuietDelay
		if delay <= 0 {
			delay = DefaultQuietDelay
		}
		quiet = newQuietTimer(delay, d.OnQuiet)
		defer quiet.stop()
		interceptor = quiet.interceptor(interceptor)
	}
	limits := newLimiter(d.Limits)
	srv, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(limits.handshaker(drain.Handshaker(ttrpc.UnixSocketRequireSameUser()))),
		ttrpc.WithUnaryServerInterceptor(limits.interceptor(interceptor)),
	)
	if err != nil {
		d.ready(err)
		d.removeSocket()
		return "", err
	}
	shutdown := func(now bool) {
		select {
		case shutdownReq <- now:
		default:
		}
	}
	RegisterTaskService(srv, groupHooks{TaskService: svc, members: members, shutdown: shutdown, onCreate: d.OnCreate})
	registerGroupService(srv, members, d.Config)
	if d.Register != nil {
		d.Register(srv, svc)
	}

	listener := drain.NewListener(d.Listener, d.Handed)
	if d.Drain != nil {
		d.Drain(listener)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, listener) }()
	d.ready(nil)
	log.Info("serving", "socket", d.SocketPath)
	if quiet != nil {
		quiet.kick() // start-up is a burst too
	}

	grace := d.EmptyGrace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	idle := d.IdleTimeout
	if idle <= 0 {
		idle = 2 * time.Minute
	}
	idleTicker := time.NewTicker(idle)
	defer idleTicker.Stop()
	wasEmpty := false // at the previous idle tick
	var reason string
	var graceTimer <-chan time.Time
	if d.Upgraded && svc.Empty() {
		graceTimer = time.After(grace)
	}
loop:
	for {
		select {
		case now := <-shutdownReq:
			if now {
				members.clear() // "now": do not wait for announced members
			}
			if d.tryExit(svc, members) {
				reason = "shutdown requested"
				break loop
			}
		case <-emptied:
			// containerd normally follows Delete with Shutdown; wait a
			// little for it, then go by ourselves.
			graceTimer = time.After(grace)
		case <-graceTimer:
			graceTimer = nil
			if d.tryExit(svc, members) {
				reason = "last task deleted"
				break loop
			}
			if svc.Empty() {
				graceTimer = time.After(grace) // a member joined: wait for its Create
			}
		case <-idleTicker.C:
			empty := svc.Empty()
			if empty && wasEmpty && d.tryExit(svc, members) {
				reason = "idle: no task for " + idle.String()
				break loop
			}
			wasEmpty = empty
		case <-ctx.Done():
			reason = "signal: " + context.Cause(ctx).Error()
			break loop
		case err := <-served:
			if err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
				d.removeSocket()
				return "", fmt.Errorf("ttrpc server: %w", err)
			}
			reason = "server closed"
			break loop
		}
	}
	log.Info("stopping", "reason", reason)
	d.removeSocket()
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	return reason, nil
}

// tryExit decides, under the socket directory's lock, whether the daemon
// may exit: no task and no member announced by start. If so the socket is
// removed before the lock is released.
func (d Daemon) tryExit(svc TaskService, members *membership) bool {
	if d.SocketPath != "" {
		unlock, err := launch.LockDir(filepath.Dir(d.SocketPath))
		if err != nil {
			if d.Log != nil {
				d.Log.Warn("socket directory lock", "error", err)
			}
		} else {
			defer unlock()
		}
	}
	// Announced members first: a member's Create adds its task before it
	// ends the announcement (groupHooks.Create), so asked in this order a
	// Create that completes between the two questions is seen by the
	// second; asked the other way round it could be seen by neither. No
	// new member is announced meanwhile: start joins under the same lock.
	if members.waiting() || !svc.Empty() {
		return false
	}
	d.removeSocket()
	return true
}

func (d Daemon) ready(err error) {
	if d.Ready == nil {
		return
	}
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	io.WriteString(d.Ready, msg)
	d.Ready.Close()
}

func (d Daemon) removeSocket() {
	if d.SocketPath != "" {
		if err := os.Remove(d.SocketPath); err != nil && !os.IsNotExist(err) && d.Log != nil {
			d.Log.Warn("remove socket", "error", err)
		}
	}
}

// groupHooks watches the task requests that matter to the group: Create
// ends a member's pending join, Shutdown asks the daemon to exit (it does
// only when nothing is left; with tasks left the request is answered and
// otherwise ignored, as containerd expects).
type groupHooks struct {
	TaskService
	members  *membership
	shutdown func(now bool)
	onCreate func(bundle string)
}

func (h groupHooks) Create(ctx context.Context, req *taskv2.CreateTaskRequest) (*taskv2.CreateTaskResponse, error) {
	defer h.members.created(req.GetID())
	if h.onCreate != nil {
		h.onCreate(req.GetBundle())
	}
	return h.TaskService.Create(ctx, req)
}

func (h groupHooks) Shutdown(ctx context.Context, req *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	resp, err := h.TaskService.Shutdown(ctx, req)
	if err != nil {
		return nil, err
	}
	h.shutdown(req.GetNow())
	return resp, nil
}
