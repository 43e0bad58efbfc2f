// Package client is the Go API for driving conmon-v2 without containerd:
// it starts a shim for a group of containers (or finds the running one),
// speaks containerd's task API v2 to it over ttrpc exactly as containerd
// does, and conmon-v2's own conmon.v1.Monitor API for what containerd's
// task API lacks (events without containerd, the list of tasks, the shim's
// own pid and memory).
//
// Errors returned by calls to a shim carry the errdefs classes the shim
// sent (errdefs.IsNotFound, IsAlreadyExists, IsInvalidArgument,
// IsFailedPrecondition, ...). Every call takes a context; its deadline is
// sent to the shim as the request timeout.
//
// A container engine uses it in this order: write a bundle (NewSpec helps),
// StartShim, Connect, Create, Start, Wait; later Delete and Close. The
// group of a container is its spec annotation GroupAnnotation: containers
// with the same group share one shim process, which exits by itself after
// its last task is deleted.
package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
)

// GroupAnnotation is the OCI annotation the shim groups containers by:
// containers with the same value are served by one shim process. CRI sets
// it to the pod sandbox ID; conmonctl's --group sets it.
const GroupAnnotation = "io.kubernetes.cri.sandbox-id"

// LogAnnotationPrefix starts the OCI annotations that configure a
// container's logging in the shim: <prefix>driver, <prefix>path,
// <prefix>max-size, ... (see docs/logging.md).
const LogAnnotationPrefix = "io.containers.conmon-v2.log."

// DefaultShimBinary is the shim's executable name, looked up in $PATH when
// ShimOpts.Binary is empty.
const DefaultShimBinary = "containerd-shim-conmon-v2"

// ShimOpts says how to run the shim binary for the start and delete actions.
type ShimOpts struct {
	// Binary is the shim executable (a path or a name looked up in $PATH);
	// empty means DefaultShimBinary.
	Binary string
	// Namespace is passed as -namespace (containerd's namespace; any
	// identifier when there is no containerd).
	Namespace string
	// Debug adds -debug.
	Debug bool
	// Env is added to the shim's environment.
	Env []string
}

func (o ShimOpts) binary() (string, error) {
	b := o.Binary
	if b == "" {
		b = DefaultShimBinary
	}
	p, err := exec.LookPath(b)
	if err != nil {
		return "", fmt.Errorf("shim binary %q: %w", b, errdefs.ErrNotFound)
	}
	return p, nil
}

func (o ShimOpts) args(id, action string, extra ...string) []string {
	ns := o.Namespace
	if ns == "" {
		ns = "default"
	}
	// -address names containerd's socket. There is none: an empty value
	// (and no TTRPC_ADDRESS in the environment) tells the shim that events
	// only go to local subscribers.
	args := []string{"-namespace", ns, "-id", id, "-address", ""}
	if o.Debug {
		args = append(args, "-debug")
	}
	args = append(args, extra...)
	return append(args, action)
}

func (o ShimOpts) env() []string {
	env := make([]string, 0, len(os.Environ())+len(o.Env))
	for _, kv := range os.Environ() {
		// A client without containerd must not make the shim forward
		// events to a containerd it inherited from our environment.
		if strings.HasPrefix(kv, "TTRPC_ADDRESS=") || strings.HasPrefix(kv, "GRPC_ADDRESS=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, o.Env...)
}

// StartShim runs `<shim> -namespace NS -id ID -address "" start` in bundle
// (which must hold config.json) as containerd does, and returns the address
// the shim printed: a new shim's, or the running shim's of the container's
// group. The shim daemon outlives the caller.
func StartShim(ctx context.Context, opts ShimOpts, id, bundle string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(bundle, "config.json")); err != nil {
		return "", fmt.Errorf("bundle %s: no config.json: %w", bundle, errdefs.ErrInvalidArgument)
	}
	bin, err := opts.binary()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, bin, opts.args(id, "start")...)
	cmd.Dir = bundle
	cmd.Env = opts.env()
	// Its own process group, so a ^C at the terminal that runs conmonctl
	// does not reach the shim daemon forked from it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("start shim for %s: %s: %w", id, strings.TrimSpace(string(out)), err)
	}
	addr := strings.TrimSpace(string(out))
	if !strings.HasPrefix(addr, "unix://") && !strings.HasPrefix(addr, "/") {
		return "", fmt.Errorf("start shim for %s: unexpected output %q", id, addr)
	}
	return addr, nil
}

// DeleteShim runs the shim's `delete` action for id in bundle, which kills
// what is left of the container and unmounts its rootfs without stopping a
// shim that serves other containers. It is what containerd does after a
// shim died; a client that deleted the task normally does not need it.
func DeleteShim(ctx context.Context, opts ShimOpts, id, bundle string) (*taskv2.DeleteResponse, error) {
	bin, err := opts.binary()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, opts.args(id, "delete", "-bundle", bundle)...)
	cmd.Dir = bundle
	cmd.Env = opts.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("shim delete %s: %s: %w", id, strings.TrimSpace(stderr.String()), err)
	}
	var resp taskv2.DeleteResponse
	if err := proto.Unmarshal(stdout.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("shim delete %s: bad response: %w", id, err)
	}
	return &resp, nil
}

// Shim is a connection to one shim process. Its methods may be called
// concurrently. Close it when done; the shim keeps running.
type Shim struct {
	address string
	client  *ttrpc.Client
	task    taskv2.TTRPCTaskService
	monitor conmonapi.MonitorClient
}

// Connect dials a shim's address ("unix:///path" or a plain path). The
// dial is bounded by ctx.
func Connect(ctx context.Context, address string) (*Shim, error) {
	path := strings.TrimPrefix(address, "unix://")
	if path == "" {
		return nil, fmt.Errorf("empty shim address: %w", errdefs.ErrInvalidArgument)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("shim at %s is gone: %w: %w", address, err, errdefs.ErrUnavailable)
		}
		return nil, fmt.Errorf("connect to shim at %s: %w", address, err)
	}
	c := ttrpc.NewClient(conn)
	return &Shim{
		address: address,
		client:  c,
		task:    taskv2.NewTTRPCTaskClient(c),
		monitor: conmonapi.NewMonitorClient(c),
	}, nil
}

// Address is the address the shim was reached at.
func (s *Shim) Address() string { return s.address }

// Close closes the connection (never the shim).
func (s *Shim) Close() error {
	err := s.client.Close()
	if errors.Is(err, ttrpc.ErrClosed) {
		return nil
	}
	return err
}

// Task is the raw task API client, for what the typed calls leave out.
func (s *Shim) Task() taskv2.TTRPCTaskService { return s.task }

// Monitor is the raw conmon.v1.Monitor client.
func (s *Shim) Monitor() conmonapi.MonitorClient { return s.monitor }

// native maps an error received from the shim back to its errdefs class,
// and says which call and container it was about.
func native(call, id string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ttrpc.ErrClosed) {
		return fmt.Errorf("%s %s: shim connection closed: %w", call, id, errdefs.ErrUnavailable)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s %s: %w", call, id, err)
	}
	return fmt.Errorf("%s %s: %w", call, id, errgrpc.ToNative(err))
}

// Ping checks that the shim answers, within d.
func (s *Shim) Ping(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := s.monitor.Info(ctx, &conmonapi.InfoRequest{})
	return native("info", "", err)
}
