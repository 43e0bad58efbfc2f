package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
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
	// IdleTimeout stops a daemon that holds no task for this long, for
	// example because containerd died between start and Create (default
	// 2 minutes).
	IdleTimeout time.Duration
}

// Serve runs the daemon until its last task is gone (Shutdown on an empty
// service, or the service reporting empty), or ctx is done (a signal).
// It returns the reason it stopped, or the error that kept it from serving.
func (d Daemon) Serve(ctx context.Context) (string, error) {
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := make(chan string, 1)
	var once sync.Once
	exit := func(reason string) {
		once.Do(func() { stop <- reason })
	}
	emptied := make(chan struct{}, 1)
	onEmpty := func() {
		select {
		case emptied <- struct{}{}:
		default:
		}
	}

	svc, err := d.NewService(ctx, onEmpty)
	if err != nil {
		d.ready(err)
		d.removeSocket()
		return "", fmt.Errorf("task service: %w", err)
	}
	defer svc.Close()

	srv, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()),
		ttrpc.WithUnaryServerInterceptor(ErrorInterceptor(log)),
	)
	if err != nil {
		d.ready(err)
		d.removeSocket()
		return "", err
	}
	RegisterTaskService(srv, shutdownHook{TaskService: svc, exit: exit})
	if d.Register != nil {
		d.Register(srv, svc)
	}

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, d.Listener) }()
	d.ready(nil)
	log.Info("serving", "socket", d.SocketPath)

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
	wasEmpty := false // at the previous tick
	var reason string
	var graceTimer <-chan time.Time
loop:
	for {
		select {
		case reason = <-stop:
			break loop
		case <-emptied:
			if !svc.Empty() {
				continue
			}
			// No new group member may find this daemon from now on; the
			// ones already connected finish during the grace.
			d.removeSocket()
			graceTimer = time.After(grace)
		case <-graceTimer:
			if svc.Empty() {
				reason = "last task deleted"
				break loop
			}
			graceTimer = nil
		case <-idleTicker.C:
			empty := svc.Empty()
			if empty && wasEmpty {
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

// shutdownHook stops the daemon after a Shutdown request that finds the
// service empty. With tasks left (other members of the group) the request
// is answered and otherwise ignored, as containerd expects.
type shutdownHook struct {
	TaskService
	exit func(reason string)
}

func (h shutdownHook) Shutdown(ctx context.Context, req *taskv2.ShutdownRequest) (*emptypb.Empty, error) {
	resp, err := h.TaskService.Shutdown(ctx, req)
	if err != nil {
		return nil, err
	}
	if h.Empty() {
		h.exit("shutdown requested")
	}
	return resp, nil
}
