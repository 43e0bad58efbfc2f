// Package plugin is the log plugin driver: it sends a container's records,
// in ordered batches, to an out-of-process log driver over ttrpc (service
// conmon.logging.v1.LogDriver, api/logging/v1). Unlike a binary logger
// (package binary), a plugin receives records - time, stream, line, partial
// flag - and the container's metadata, not raw bytes.
//
// A plugin is either
//   - an executable, started per container from an allow-listed directory
//     and spoken to over a socketpair (the plugin's end is its fd 3, named
//     by CONMON_LOG_PLUGIN_FD); it is restarted, with backoff, when it
//     crashes; or
//   - a running service reached on a unix socket inside an allow-listed
//     directory, re-dialled when the connection breaks.
//
// Plugin authors use Serve (see docs/log-plugins.md).
//
// Options:
//
//	path         the plugin executable (one of path or socket)
//	socket       the plugin's unix socket
//	batch-size   records per Write call at most (default 512)
//	call-timeout bound on one call (default 30s); a call that times out
//	             counts as a broken connection
//
// Every other option, common file options excepted, is passed to the
// plugin in OpenRequest.options for it to validate.
//
// Records are batched until the pipeline's Flush (after every read) or a
// full batch. A batch that fails on a broken connection is sent again once
// after reconnecting (and re-opening); a batch the plugin rejects, or that
// fails twice, is counted as lost (Lost) and the error returned (from Write
// as logging.ErrHeld, so that the pipeline does not count it again).
package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"

	loggingv1 "github.com/containers/conmon-v2/api/logging/v1"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/binary"
)

// Name is the driver's registry name.
const Name = "plugin"

// EnvFD names the environment variable that tells an executable plugin
// which of its fds is its end of the connection.
const EnvFD = "CONMON_LOG_PLUGIN_FD"

// DefaultAllowedDirs are where plugin executables may live.
var DefaultAllowedDirs = []string{"/usr/libexec/conmon-v2/loggers", "/usr/local/libexec/conmon-v2/loggers"}

// DefaultSocketDirs are where plugin sockets may be.
var DefaultSocketDirs = []string{"/run/conmon-v2/log-plugins"}

// Runner starts and waits for plugin processes (a *reaper.Reaper in a
// process that runs one).
type Runner interface {
	Start(cmd *exec.Cmd) (chan runc.Exit, error)
	Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error)
}

// Config is what the process running the driver decides.
type Config struct {
	AllowedDirs []string // plugin executables; default DefaultAllowedDirs
	SocketDirs  []string // plugin sockets; default DefaultSocketDirs
	Runner      Runner   // default os/exec
	// MinBackoff and MaxBackoff bound the wait between restarts or
	// re-dials (default 100ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	// StopTimeout: how long Close waits for an executable plugin to exit
	// after its connection closed, then after SIGTERM (default 5s).
	StopTimeout time.Duration
}

// NewFactory returns the driver's logging.Factory.
func NewFactory(cfg Config) logging.Factory {
	if len(cfg.AllowedDirs) == 0 {
		cfg.AllowedDirs = DefaultAllowedDirs
	}
	if len(cfg.SocketDirs) == 0 {
		cfg.SocketDirs = DefaultSocketDirs
	}
	if cfg.Runner == nil {
		cfg.Runner = binary.ExecRunner{}
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 5 * time.Second
	}
	return func(ctx context.Context, info logging.Info) (logging.Driver, error) {
		return open(ctx, cfg, info)
	}
}

// Driver sends records to a plugin. Safe for concurrent use.
type Driver struct {
	cfg         Config
	exe, socket string
	batchSize   int
	callTimeout time.Duration
	openReq     *loggingv1.OpenRequest

	mu       sync.Mutex // guards everything below; held while sending
	c        *conn      // nil when disconnected
	batch    []*loggingv1.Record
	spare    []*loggingv1.Record // records to reuse
	seq      uint64
	closed   bool
	restarts int
	lastTry  time.Time
	backoff  time.Duration
	lost     logging.Counter
}

var (
	_ logging.Driver  = (*Driver)(nil)
	_ logging.Flusher = (*Driver)(nil)
	_ logging.Loser   = (*Driver)(nil)
)

// conn is one connection, and for an executable one process.
type conn struct {
	client *ttrpc.Client
	svc    loggingv1.LogDriverService
	handle string
	cmd    *exec.Cmd     // nil for a socket plugin
	exited chan struct{} // closed when cmd was reaped
}

func (c *conn) dead() bool {
	if c.cmd == nil {
		return false
	}
	select {
	case <-c.exited:
		return true
	default:
		return false
	}
}

func open(ctx context.Context, cfg Config, info logging.Info) (*Driver, error) {
	d := &Driver{cfg: cfg, batchSize: 512, callTimeout: 30 * time.Second}
	pluginOpts := map[string]string{}
	for k, v := range info.Options {
		switch k {
		case logging.OptPath:
			d.exe = v
		case "socket":
			d.socket = v
		case "batch-size":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1<<16 {
				return nil, fmt.Errorf("plugin: option batch-size=%q: want 1..65536: %w", v, errdefs.ErrInvalidArgument)
			}
			d.batchSize = n
		case "call-timeout":
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				return nil, fmt.Errorf("plugin: option call-timeout=%q: want a positive duration: %w", v, errdefs.ErrInvalidArgument)
			}
			d.callTimeout = t
		default:
			if !logging.IsCommonOption(k) {
				pluginOpts[k] = v
			}
		}
	}
	switch {
	case d.exe == "" && d.socket == "":
		return nil, fmt.Errorf("plugin: one of the options path (an executable) or socket is required: %w", errdefs.ErrInvalidArgument)
	case d.exe != "" && d.socket != "":
		return nil, fmt.Errorf("plugin: options path and socket exclude each other: %w", errdefs.ErrInvalidArgument)
	case d.exe != "":
		p, err := allowed("plugin", d.exe, cfg.AllowedDirs, true)
		if err != nil {
			return nil, err
		}
		d.exe = p
	default:
		p, err := allowed("plugin socket", d.socket, cfg.SocketDirs, false)
		if err != nil {
			return nil, err
		}
		d.socket = p
	}
	m := info.Meta
	d.openReq = &loggingv1.OpenRequest{
		Metadata: &loggingv1.Metadata{Id: m.ID, Name: m.Name, Namespace: m.Namespace, Tag: m.Tag, Labels: m.Labels},
		Options:  pluginOpts,
	}
	// Connect now, so that a plugin refusing its options fails the
	// container's creation with the plugin's message.
	c, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	d.c = c
	return d, nil
}

// allowed resolves path and checks it lies in one of dirs; for an
// executable, that it is an executable regular file. A refusal is an
// InvalidArgument naming the path.
func allowed(what, path string, dirs []string, executable bool) (string, error) {
	resolved, err := binary.CheckInDirs(path, dirs, executable)
	if err != nil {
		return "", fmt.Errorf("plugin: %s %q refused: %w", what, path, err)
	}
	return resolved, nil
}

// connect starts or dials the plugin and opens the container's handle.
func (d *Driver) connect(ctx context.Context) (_ *conn, retErr error) {
	c := &conn{}
	var nc net.Conn
	if d.socket != "" {
		var dialer net.Dialer
		dctx, cancel := context.WithTimeout(ctx, d.callTimeout)
		defer cancel()
		var err error
		if nc, err = dialer.DialContext(dctx, "unix", d.socket); err != nil {
			return nil, fmt.Errorf("plugin: dial %s: %w", d.socket, errors.Join(err, errdefs.ErrUnavailable))
		}
	} else {
		var err error
		if nc, err = d.startExe(c); err != nil {
			return nil, err
		}
	}
	c.client = ttrpc.NewClient(nc)
	c.svc = loggingv1.NewLogDriverClient(c.client)
	defer func() {
		if retErr != nil {
			d.stopConn(c)
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, d.callTimeout)
	defer cancel()
	resp, err := c.svc.Open(cctx, d.openReq)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: open: %w", d.target(), errgrpc.ToNative(err))
	}
	c.handle = resp.GetHandle()
	return c, nil
}

func (d *Driver) target() string {
	if d.socket != "" {
		return d.socket
	}
	return d.exe
}

// startExe runs the executable with its end of a socketpair as fd 3.
func (d *Driver) startExe(c *conn) (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("plugin: socketpair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "plugin"), os.NewFile(uintptr(fds[1]), "plugin-peer")
	defer theirs.Close()
	cmd := exec.Command(d.exe)
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.Env = []string{EnvFD + "=3", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stderr = os.Stderr // a plugin's complaints belong in the monitor's log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	ec, err := d.cfg.Runner.Start(cmd)
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("plugin: start %s: %w", d.exe, errors.Join(err, errdefs.ErrUnavailable))
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	// The process's owner: it ends when the plugin is reaped, which Close
	// and stopConn make sure of.
	go func() {
		_, _ = d.cfg.Runner.Wait(cmd, ec)
		close(c.exited)
	}()
	nc, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		_ = cmd.Process.Kill()
		<-c.exited
		return nil, fmt.Errorf("plugin: %w", err)
	}
	return nc, nil
}

// stopConn closes c; an executable plugin gets EOF, then SIGTERM, then
// SIGKILL, each after StopTimeout. It returns an error if the plugin had to
// be killed.
func (d *Driver) stopConn(c *conn) error {
	c.client.Close()
	if c.cmd == nil {
		return nil
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t := time.NewTimer(d.cfg.StopTimeout)
		select {
		case <-c.exited:
			t.Stop()
			return nil
		case <-t.C:
		}
		_ = c.cmd.Process.Signal(sig)
	}
	<-c.exited
	return fmt.Errorf("plugin %s killed after ignoring EOF and SIGTERM for %v each", d.exe, d.cfg.StopTimeout)
}

// ensureLocked returns a live connection, restarting or re-dialling the
// plugin (after the backoff since the last attempt) if there is none.
func (d *Driver) ensureLocked() (*conn, error) {
	if d.c != nil && !d.c.dead() {
		return d.c, nil
	}
	if d.c != nil {
		_ = d.stopConn(d.c)
		d.c = nil
	}
	if wait := time.Until(d.lastTry.Add(d.backoff)); wait > 0 {
		time.Sleep(wait) // holding mu: writers wait, which is backpressure
	}
	d.lastTry = time.Now()
	c, err := d.connect(context.Background())
	if err != nil {
		d.backoff = min(max(2*d.backoff, d.cfg.MinBackoff), d.cfg.MaxBackoff)
		return nil, err
	}
	d.backoff = 0
	d.restarts++
	d.c = c
	return c, nil
}

// Restarts returns how many times the plugin was restarted or re-dialled.
func (d *Driver) Restarts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restarts
}

// Write adds r to the batch, sending it when full.
func (d *Driver) Write(r *logging.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("plugin: write after close: %w", errdefs.ErrFailedPrecondition)
	}
	var rec *loggingv1.Record
	if n := len(d.spare); n > 0 {
		rec, d.spare = d.spare[n-1], d.spare[:n-1]
	} else {
		rec = &loggingv1.Record{}
	}
	ts := r.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	rec.TimeUnixNano = ts.UnixNano()
	rec.Stream = loggingv1.Stream(r.Stream)
	rec.Line = append(rec.Line[:0], r.Line...)
	rec.Partial = r.Partial
	d.batch = append(d.batch, rec)
	if len(d.batch) >= d.batchSize {
		// A batch that failed was counted lost, r with it: the
		// pipeline counts the failure, not r again.
		return logging.Held(d.sendLocked())
	}
	return nil
}

// Flush sends the pending batch.
func (d *Driver) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sendLocked()
}

func (d *Driver) sendLocked() error {
	if len(d.batch) == 0 {
		return nil
	}
	d.seq++
	req := &loggingv1.WriteRequest{Records: d.batch, Seq: d.seq}
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var c *conn
		if c, err = d.ensureLocked(); err != nil {
			continue
		}
		req.Handle = c.handle
		ctx, cancel := context.WithTimeout(context.Background(), d.callTimeout)
		_, err = c.svc.Write(ctx, req)
		cancel()
		if err == nil {
			break
		}
		if !brokenConn(err) {
			err = fmt.Errorf("plugin %s: write: %w", d.target(), errgrpc.ToNative(err))
			break
		}
		// The plugin crashed or hung: drop the connection; the next
		// attempt restarts it.
		_ = d.stopConn(c)
		d.c = nil
		err = fmt.Errorf("plugin %s: write: %w", d.target(), errors.Join(err, errdefs.ErrUnavailable))
	}
	if err != nil {
		for _, r := range d.batch {
			d.lost.Lines++
			d.lost.Bytes += uint64(len(r.Line))
		}
	}
	d.spare = append(d.spare, d.batch...)
	clear(d.batch)
	d.batch = d.batch[:0]
	return err
}

// brokenConn tells transport failures (retry on a new connection) from
// the plugin's own answers (a status it returned).
func brokenConn(err error) bool {
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	_, isStatus := status.FromError(err)
	return !isStatus
}

// Lost returns the records (and their bytes) that never reached the plugin.
func (d *Driver) Lost() (lines, bytes uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lost.Lines, d.lost.Bytes
}

// Reopen asks the plugin to reopen its destination.
func (d *Driver) Reopen() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.sendLocked(); err != nil {
		return err
	}
	c, err := d.ensureLocked()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.callTimeout)
	defer cancel()
	if _, err := c.svc.Reopen(ctx, &loggingv1.ReopenRequest{Handle: c.handle}); err != nil {
		return fmt.Errorf("plugin %s: reopen: %w", d.target(), errgrpc.ToNative(err))
	}
	return nil
}

// Close sends what is pending, closes the handle and the connection, and
// waits for an executable plugin to exit.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	errs := []error{d.sendLocked()}
	d.closed = true
	if c := d.c; c != nil && !c.dead() {
		ctx, cancel := context.WithTimeout(context.Background(), d.callTimeout)
		if _, err := c.svc.Close(ctx, &loggingv1.CloseRequest{Handle: c.handle}); err != nil {
			errs = append(errs, fmt.Errorf("plugin %s: close: %w", d.target(), errgrpc.ToNative(err)))
		}
		cancel()
	}
	if d.c != nil {
		errs = append(errs, d.stopConn(d.c))
		d.c = nil
	}
	if d.lost.Lines > 0 {
		errs = append(errs, fmt.Errorf("plugin %s: %d records (%d bytes) lost: %w", d.target(), d.lost.Lines, d.lost.Bytes, errdefs.ErrUnavailable))
	}
	return errors.Join(errs...)
}
