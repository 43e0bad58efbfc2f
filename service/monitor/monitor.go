// Package monitor serves conmon-v2's own API, conmon.v1.Monitor
// (api/conmon/v1), next to the task service on a shim's ttrpc socket: Info
// (the shim's pid, group and memory), List (its tasks with status and
// times), LogStats (a task's logging pipeline totals and driver errors), Subscribe (its events, for clients without containerd, such
// as conmonctl and package client) and Upgrade (a live upgrade, through
// the daemon's hook).
//
// Wiring, in the shim's main, once the ttrpc server and the task service
// exist:
//
//	monitor.Register(srv, monitor.New(monitor.Config{
//		Events:    exchange,            // *events.Exchange
//		Tasks:     svc,                 // *service.Service
//		Logs:      svc,                 // *service.Service
//		Group:     group,               // shim.GroupKey(cfg, id, annotations)
//		Namespace: f.Namespace,
//		Version:   version.Version,
//		Upgrade:   upgrader.Upgrade,    // a monitor.UpgradeFunc, or nil
//	}))
package monitor

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/events"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/service"
	"github.com/containers/conmon-v2/shim/launch"
)

// Events is what the monitor needs of the shim's event exchange
// (*events.Exchange): a lossless, ordered subscription that ends when ctx
// does or when cancel is called.
type Events interface {
	Subscribe(ctx context.Context) (<-chan *apitypes.Envelope, func())
}

// Tasks is what the monitor needs of the task service (*service.Service).
type Tasks interface {
	List(ctx context.Context) []service.TaskInfo
}

// Logs is what the monitor needs to report a task's logging pipeline
// (*service.Service): its totals now, NotFound for an unknown task.
type Logs interface {
	LogStats(ctx context.Context, id string) (service.LogStats, error)
}

// Config wires a Monitor.
type Config struct {
	Events    Events // required for Subscribe
	Tasks     Tasks  // required for List and Info's task count
	Logs      Logs   // required for LogStats
	Group     string
	Namespace string
	Version   string
	// Pid and StartedAt default to this process and New's call time.
	// After a live upgrade the new binary may keep StartedAt from the
	// handover; ExecAt (default: New's call time) and Binary (default:
	// os.Executable) always describe the running binary.
	Pid       int
	StartedAt time.Time
	ExecAt    time.Time
	Binary    string
	// Proc is the procfs root, for tests; default /proc.
	Proc string
	// Upgrade, if set, is the daemon's live upgrade (re-exec in place).
	// Without it Upgrade answers NotImplemented.
	Upgrade UpgradeFunc
	// UpgradeFailure, if set, reports the latest live upgrade that failed
	// after Upgrade answered (zero time: none), for Info: a client waiting
	// for the new binary learns why it will not come.
	UpgradeFailure func() (at time.Time, err error)
}

// UpgradeFunc starts a live upgrade of the daemon to binary, an absolute
// path that ResolveBinary accepted. It is the hook of both the Upgrade
// request and the daemon's SIGHUP.
//
// It returns once the upgrade is under way (or with the error that keeps
// it from starting), without waiting for the handover: the request's
// answer must be written before the daemon freezes its connections, since
// drain.Listener.Freeze waits for every request in flight, Upgrade
// included. ctx is the request's: it ends when the answer is sent, so the
// handover must not use it.
type UpgradeFunc func(ctx context.Context, binary string) error

// Monitor implements conmonapi.MonitorService.
type Monitor struct {
	cfg Config
}

var _ conmonapi.MonitorService = (*Monitor)(nil)

// New returns a Monitor.
func New(cfg Config) *Monitor {
	if cfg.Pid == 0 {
		cfg.Pid = os.Getpid()
	}
	now := time.Now()
	if cfg.StartedAt.IsZero() {
		cfg.StartedAt = now
	}
	if cfg.ExecAt.IsZero() {
		cfg.ExecAt = now
	}
	if cfg.Binary == "" {
		cfg.Binary, _ = os.Executable()
	}
	if cfg.Proc == "" {
		cfg.Proc = "/proc"
	}
	return &Monitor{cfg: cfg}
}

// Register adds m to srv as conmon.v1.Monitor. Its errors are converted to
// gRPC status codes here, at the edge (the shim's unary interceptor would
// do it too, but it does not see the Subscribe stream).
func Register(srv *ttrpc.Server, m *Monitor) {
	conmonapi.RegisterMonitorService(srv, edge{m})
}

// edge converts errdefs errors to status codes, once.
type edge struct{ m *Monitor }

func (e edge) Info(ctx context.Context, r *conmonapi.InfoRequest) (*conmonapi.InfoResponse, error) {
	resp, err := e.m.Info(ctx, r)
	return resp, errgrpc.ToGRPC(err)
}

func (e edge) List(ctx context.Context, r *conmonapi.ListRequest) (*conmonapi.ListResponse, error) {
	resp, err := e.m.List(ctx, r)
	return resp, errgrpc.ToGRPC(err)
}

func (e edge) Upgrade(ctx context.Context, r *conmonapi.UpgradeRequest) (*conmonapi.UpgradeResponse, error) {
	resp, err := e.m.Upgrade(ctx, r)
	return resp, errgrpc.ToGRPC(err)
}

func (e edge) LogStats(ctx context.Context, r *conmonapi.LogStatsRequest) (*conmonapi.LogStatsResponse, error) {
	resp, err := e.m.LogStats(ctx, r)
	return resp, errgrpc.ToGRPC(err)
}

func (e edge) Subscribe(ctx context.Context, r *conmonapi.SubscribeRequest, ss conmonapi.Monitor_SubscribeServer) error {
	return errgrpc.ToGRPC(e.m.Subscribe(ctx, r, ss))
}

// Info describes the shim process.
func (m *Monitor) Info(ctx context.Context, _ *conmonapi.InfoRequest) (*conmonapi.InfoResponse, error) {
	rss, pss := memory(m.cfg.Proc, m.cfg.Pid)
	r := &conmonapi.InfoResponse{
		Pid:       uint32(m.cfg.Pid),
		Group:     m.cfg.Group,
		Namespace: m.cfg.Namespace,
		Version:   m.cfg.Version,
		StartedAt: m.cfg.StartedAt.UnixNano(),
		RssKb:     rss,
		PssKb:     pss,
		// NumGoroutine counts this process, so Info is only meaningful
		// in the shim itself (m.cfg.Pid is then our pid).
		Goroutines: uint32(runtime.NumGoroutine()),
		Fds:        openFDs(m.cfg.Proc, m.cfg.Pid),
		ExecAt:     m.cfg.ExecAt.UnixNano(),
		Binary:     m.cfg.Binary,
	}
	if m.cfg.UpgradeFailure != nil {
		if at, err := m.cfg.UpgradeFailure(); !at.IsZero() && err != nil {
			r.UpgradeFailedAt, r.UpgradeError = at.UnixNano(), err.Error()
		}
	}
	if m.cfg.Tasks != nil {
		r.Tasks = uint32(len(m.cfg.Tasks.List(ctx)))
	}
	return r, nil
}

// List returns every task of the shim.
func (m *Monitor) List(ctx context.Context, _ *conmonapi.ListRequest) (*conmonapi.ListResponse, error) {
	if m.cfg.Tasks == nil {
		return nil, fmt.Errorf("task list: %w", errdefs.ErrNotImplemented)
	}
	tasks := m.cfg.Tasks.List(ctx)
	out := &conmonapi.ListResponse{Tasks: make([]*conmonapi.Task, 0, len(tasks))}
	for _, t := range tasks {
		out.Tasks = append(out.Tasks, &conmonapi.Task{
			Id:         t.ID,
			Namespace:  t.Namespace,
			Bundle:     t.Bundle,
			Pid:        uint32(t.Pid),
			Status:     t.Status,
			ExitStatus: uint32(t.ExitStatus),
			CreatedAt:  unixNano(t.CreatedAt),
			StartedAt:  unixNano(t.StartedAt),
			ExitedAt:   unixNano(t.ExitedAt),
			Execs:      uint32(len(t.ExecIDs)),
		})
	}
	return out, nil
}

// LogStats returns the totals of task req.Id's logging pipeline, with
// each driver's failures (a task without a pipeline answers pipeline
// false; an unknown one NotFound).
func (m *Monitor) LogStats(ctx context.Context, req *conmonapi.LogStatsRequest) (*conmonapi.LogStatsResponse, error) {
	if m.cfg.Logs == nil {
		return nil, fmt.Errorf("log stats: %w", errdefs.ErrNotImplemented)
	}
	if req.GetId() == "" {
		return nil, fmt.Errorf("log stats: a task id is required: %w", errdefs.ErrInvalidArgument)
	}
	st, err := m.cfg.Logs.LogStats(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	p := st.Stats
	out := &conmonapi.LogStatsResponse{
		Id:          req.GetId(),
		Pipeline:    st.Pipeline,
		Read:        counter(p.Read),
		Written:     counter(p.Written),
		Filtered:    counter(p.Filtered),
		Redacted:    p.Redacted,
		RateLimited: counter(p.RateLimited),
		BufferFull:  counter(p.BufferFull),
		WriteError:  counter(p.WriteError),
		ReadErrors:  p.ReadErrors,
	}
	for _, d := range st.Drivers {
		out.Drivers = append(out.Drivers, &conmonapi.LogDriverStats{
			Name:        d.Name,
			Written:     counter(d.Written),
			Errors:      counter(d.Errors),
			Lost:        counter(d.Lost),
			LastError:   d.LastError,
			LastErrorAt: unixNano(d.LastErrorAt),
			Failing:     d.Failing,
			Failures:    d.Failures,
		})
	}
	return out, nil
}

func counter(c logging.Counter) *conmonapi.LogCounter {
	return &conmonapi.LogCounter{Lines: c.Lines, Bytes: c.Bytes}
}

// Upgrade checks the requested binary (ResolveBinary) and hands it to the
// daemon's upgrade hook. The answer means the upgrade is under way: the
// daemon then finishes the requests in flight and executes the binary in
// place; the client's connection stays open and its next requests are
// answered by the new binary.
func (m *Monitor) Upgrade(ctx context.Context, req *conmonapi.UpgradeRequest) (*conmonapi.UpgradeResponse, error) {
	if m.cfg.Upgrade == nil {
		return nil, fmt.Errorf("upgrade: live upgrade not available in this mode: %w", errdefs.ErrNotImplemented)
	}
	binary, err := ResolveBinary(req.GetBinary())
	if err != nil {
		return nil, err
	}
	if err := m.cfg.Upgrade(ctx, binary); err != nil {
		return nil, fmt.Errorf("upgrade to %s: %w", binary, err)
	}
	return &conmonapi.UpgradeResponse{Binary: binary, Pid: uint32(m.cfg.Pid)}, nil
}

// ResolveBinary returns the binary a live upgrade may execute: binary, or,
// when it is empty, the running executable's path (read again from disk:
// a package upgrade replaces the file, and /proc/self/exe then names the
// deleted one), with symbolic links resolved so that what is checked is
// what runs. It must be an absolute path to a regular file that the
// daemon may execute, owned by root or by the daemon's effective uid, and
// writable by neither group nor others: whoever could write it would run
// code as the daemon. And it must be a build of the running program
// (sameProgram); a build of the shim's launcher stands for the daemon
// file beside it. The error names the binary and the failed rule (errdefs
// classes: InvalidArgument, NotFound, PermissionDenied).
func ResolveBinary(binary string) (string, error) {
	if binary == "" {
		self, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("upgrade binary: the running binary's path: %v: %w", err, errdefs.ErrNotFound)
		}
		binary = self
	}
	if !filepath.IsAbs(binary) {
		return "", fmt.Errorf("upgrade binary %q: not an absolute path: %w", binary, errdefs.ErrInvalidArgument)
	}
	real, err := filepath.EvalSymlinks(binary)
	if err != nil {
		if os.IsNotExist(err) {
			return "", fmt.Errorf("upgrade binary %q: no such file: %w", binary, errdefs.ErrNotFound)
		}
		return "", fmt.Errorf("upgrade binary %q: %v: %w", binary, err, errdefs.ErrInvalidArgument)
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return "", fmt.Errorf("upgrade binary %q: %v: %w", real, err, errdefs.ErrInvalidArgument)
	}
	mode := st.Mode
	switch {
	case mode&unix.S_IFMT != unix.S_IFREG:
		return "", fmt.Errorf("upgrade binary %q: not a regular file: %w", real, errdefs.ErrInvalidArgument)
	case mode&0o111 == 0:
		return "", fmt.Errorf("upgrade binary %q: not executable (mode %04o): %w", real, mode&0o7777, errdefs.ErrInvalidArgument)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		return "", fmt.Errorf("upgrade binary %q: owned by uid %d, neither root nor the shim's uid %d: %w", real, st.Uid, os.Geteuid(), errdefs.ErrPermissionDenied)
	case mode&0o022 != 0:
		return "", fmt.Errorf("upgrade binary %q: writable by group or others (mode %04o): %w", real, mode&0o7777, errdefs.ErrPermissionDenied)
	}
	if err := unix.Access(real, unix.X_OK); err != nil {
		return "", fmt.Errorf("upgrade binary %q: the shim may not execute it: %v: %w", real, err, errdefs.ErrPermissionDenied)
	}
	bi, biErr := buildinfo.ReadFile(real)
	if biErr == nil && bi.Path == launch.LauncherPath {
		// A build of the shim's launcher (conmonctl shims upgrade
		// --binary .../containerd-shim-conmon-v2): what runs is the daemon
		// file beside it, checked as well.
		return ResolveBinary(filepath.Join(filepath.Dir(real), launch.DaemonBinary))
	}
	if err := sameProgram(real, bi, biErr); err != nil {
		return "", err
	}
	return real, nil
}

// sameProgram checks that binary, whose Go build information is bi (or
// could not be read: readErr), is a build of the running program (the
// main package path), without running it. An upgrade execs in place:
// another program (say /bin/true) would take over the shim's pid and
// exit, leaving its containers without a monitor.
func sameProgram(binary string, bi *debug.BuildInfo, readErr error) error {
	own, ok := debug.ReadBuildInfo()
	if !ok || own.Path == "" {
		return nil // built without module information: nothing to compare
	}
	if readErr != nil {
		return fmt.Errorf("upgrade binary %q: not a build of %s: %v: %w", binary, own.Path, readErr, errdefs.ErrInvalidArgument)
	}
	if bi.Path != own.Path {
		return fmt.Errorf("upgrade binary %q: a build of %s, not of %s: %w", binary, bi.Path, own.Path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Subscribe streams events whose topic starts with one of req.Topics (all
// without topics) until the client goes away or the exchange closes.
func (m *Monitor) Subscribe(ctx context.Context, req *conmonapi.SubscribeRequest, ss conmonapi.Monitor_SubscribeServer) error {
	if m.cfg.Events == nil {
		return fmt.Errorf("event subscription: %w", errdefs.ErrNotImplemented)
	}
	for _, t := range req.GetTopics() {
		if !strings.HasPrefix(t, "/") {
			return fmt.Errorf("topic filter %q must start with /: %w", t, errdefs.ErrInvalidArgument)
		}
	}
	evc, cancel := m.cfg.Events.Subscribe(ctx)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case env, ok := <-evc:
			if !ok {
				return nil
			}
			if env.GetTopic() == events.TopicOverflow {
				return fmt.Errorf("event subscription: the client fell %d events behind and was cut off; subscribe again and List to resync: %w",
					events.MaxSubscriptionQueue, errdefs.ErrResourceExhausted)
			}
			if !match(req.GetTopics(), env.GetTopic()) {
				continue
			}
			out := &conmonapi.Envelope{
				Namespace: env.GetNamespace(),
				Topic:     env.GetTopic(),
				TypeUrl:   env.GetEvent().GetTypeUrl(),
				Value:     env.GetEvent().GetValue(),
			}
			if ts := env.GetTimestamp(); ts != nil {
				out.Timestamp = ts.AsTime().UnixNano()
			}
			if err := ss.Send(out); err != nil {
				return err
			}
		}
	}
}

func match(topics []string, topic string) bool {
	if len(topics) == 0 {
		return true
	}
	for _, t := range topics {
		if strings.HasPrefix(topic, t) {
			return true
		}
	}
	return false
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// memory reads the RSS and PSS of pid in KiB from smaps_rollup (kernel
// 4.14+), falling back to status for the RSS. Unreadable values are 0.
func memory(proc string, pid int) (rss, pss uint64) {
	base := proc + "/" + strconv.Itoa(pid)
	if data, err := os.ReadFile(base + "/smaps_rollup"); err == nil {
		rss = field(data, "Rss:")
		pss = field(data, "Pss:")
		if rss > 0 {
			return rss, pss
		}
	}
	if data, err := os.ReadFile(base + "/status"); err == nil {
		rss = field(data, "VmRSS:")
	}
	return rss, pss
}

// field returns the kB value of the first line starting with key.
func field(data []byte, key string) uint64 {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, key) {
			continue
		}
		f := strings.Fields(line[len(key):])
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseUint(f[0], 10, 64)
		return n
	}
	return 0
}

// openFDs counts the entries of <proc>/<pid>/fd (0 when unreadable).
func openFDs(proc string, pid int) uint32 {
	ents, err := os.ReadDir(proc + "/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0
	}
	return uint32(len(ents))
}
