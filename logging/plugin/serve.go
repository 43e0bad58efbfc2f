package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/containerd/ttrpc"

	loggingv1 "github.com/containers/conmon-v2/api/logging/v1"
)

// Serve is the main loop of an executable plugin: it serves svc on the
// connection conmon-v2 passed (the fd named by CONMON_LOG_PLUGIN_FD) and
// returns when conmon-v2 closes it (nil) or ctx is done. Run it from main
// and exit when it returns.
func Serve(ctx context.Context, svc loggingv1.LogDriverService) error {
	v := os.Getenv(EnvFD)
	if v == "" {
		return fmt.Errorf("%s is not set: this program is a conmon-v2 log plugin, started by conmon-v2", EnvFD)
	}
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return fmt.Errorf("%s=%q: want a file descriptor number >= 3", EnvFD, v)
	}
	f := os.NewFile(uintptr(fd), "conmon-v2")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s=%d: %w", EnvFD, fd, err)
	}
	return serveListener(ctx, newOneConnListener(nc), svc)
}

// ServeSocket serves svc on a unix socket at path (created, and removed on
// return), for a plugin that runs as a service shared by many containers.
// It returns when ctx is done.
func ServeSocket(ctx context.Context, path string, svc loggingv1.LogDriverService) error {
	_ = os.Remove(path) // a stale socket of an earlier run
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	return serveListener(ctx, l, svc)
}

func serveListener(ctx context.Context, l net.Listener, svc loggingv1.LogDriverService) error {
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	loggingv1.RegisterLogDriverService(srv, svc)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = ctx.Err()
	}
	_ = srv.Close()
	if errors.Is(err, errConnDone) || errors.Is(err, ttrpc.ErrServerClosed) {
		return nil
	}
	return err
}

var errConnDone = errors.New("connection closed")

// oneConnListener hands out one connection, then reports errConnDone once
// that connection is closed, so that the server's Serve returns.
type oneConnListener struct {
	mu   sync.Mutex
	conn net.Conn // nil once accepted
	done chan struct{}
	once sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	l := &oneConnListener{done: make(chan struct{})}
	l.conn = &notifyConn{Conn: c, closed: func() { l.once.Do(func() { close(l.done) }) }}
	return l
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, errConnDone
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "conmon-v2", Net: "unix"} }

type notifyConn struct {
	net.Conn
	closed func()
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.closed()
	return err
}
