package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/containers/conmon-v2/events"
	"github.com/containers/conmon-v2/reaper"
	"github.com/containers/conmon-v2/service"
	"github.com/containers/conmon-v2/service/monitor"
	"github.com/containers/conmon-v2/shim/drain"
)

// Live upgrade (docs/resilience.md §5): on SIGHUP or the Monitor API's
// Upgrade, the daemon re-executes itself in place, running a new binary
// in the same process. The pid does not change, so the containers and
// their exec processes stay its children (the one wait loop keeps them),
// and the descriptors it hands over (listening socket, accepted ttrpc
// connections with the bytes read but not served, each process's pipes,
// terminal and FIFOs) stay open throughout: no client reconnects, no
// container notices, no output is lost.

// handoverEnv names the descriptor (a memfd) that holds the handover
// description in the new binary's environment.
const handoverEnv = "CONMON_V2_SHIM_HANDOVER_FD"

// handoverVersion is the description's format; a binary refuses another.
const handoverVersion = 1

// handover is what one binary tells the next, as JSON in a memfd.
type handover struct {
	Version int `json:"version"`
	// FrozenAt is when the old binary stopped serving (the gap is
	// measured from here to serving again).
	FrozenAt time.Time `json:"frozen_at"`
	// From is the version of the binary that handed over.
	From string `json:"from"`
	// StartedAt is when the daemon started (before its first upgrade).
	StartedAt time.Time `json:"started_at"`
	// Config is the daemon's configuration (TOML), as start resolved it;
	// Group the group key it serves.
	Config string `json:"config"`
	Group  string `json:"group"`
	// Listener is the listening socket; SocketPath its path.
	Listener   int    `json:"listener"`
	SocketPath string `json:"socket_path"`
	// Conns are the accepted ttrpc connections, with the bytes read from
	// each and not served yet.
	Conns []handedConn `json:"conns,omitempty"`
	// Tasks are the descriptors of each task's stdio; the rest of a task
	// is in its record on disk.
	Tasks []service.TaskFDs `json:"tasks,omitempty"`
	// Joins are the group's members announced by start whose Create has
	// not come yet, with their expiry: the new binary waits for them too.
	Joins map[string]time.Time `json:"joins,omitempty"`
}

type handedConn struct {
	FD      int    `json:"fd"`
	Pending []byte `json:"pending,omitempty"`
}

// fds lists every descriptor h hands over.
func (h *handover) fds() []int {
	out := []int{h.Listener}
	for _, c := range h.Conns {
		out = append(out, c.FD)
	}
	for _, t := range h.Tasks {
		out = append(out, t.List()...)
	}
	return out
}

// readHandover returns the description a previous binary of this process
// left, or nil when this process was not started by a live upgrade. It
// unsets the variable, so that no child inherits it.
func readHandover() (*handover, error) {
	s := os.Getenv(handoverEnv)
	if s == "" {
		return nil, nil
	}
	os.Unsetenv(handoverEnv)
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor: %w", handoverEnv, s, errdefs.ErrInvalidArgument)
	}
	return decodeHandover(os.NewFile(uintptr(fd), "handover"))
}

// decodeHandover reads and closes f, and validates what it holds.
func decodeHandover(f *os.File) (*handover, error) {
	defer f.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("handover description: %w", err)
	}
	var h handover
	dec := json.NewDecoder(io.LimitReader(f, 64<<20))
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("handover description: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if h.Version != handoverVersion {
		return nil, fmt.Errorf("handover description version %d, this binary reads %d: %w", h.Version, handoverVersion, errdefs.ErrInvalidArgument)
	}
	if h.Listener < 3 {
		return nil, fmt.Errorf("handover description: listener descriptor %d: %w", h.Listener, errdefs.ErrInvalidArgument)
	}
	for _, fd := range h.fds() {
		if fd < 3 {
			return nil, fmt.Errorf("handover description: descriptor %d: %w", fd, errdefs.ErrInvalidArgument)
		}
		// Each must be open here; a missing one means the description
		// is not this process's.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil, fmt.Errorf("handover description: descriptor %d: %v: %w", fd, err, errdefs.ErrInvalidArgument)
		}
		unix.CloseOnExec(fd) // ours alone: no runc or logger may inherit it
	}
	return &h, nil
}

// writeHandover writes h into a new memfd (close-on-exec until exec).
func writeHandover(h *handover) (*os.File, error) {
	data, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("conmon-v2-handover", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "handover")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: %w", err)
	}
	return f, nil
}

// reaperLoop runs the reaper's wait loop; a live upgrade stops it just
// before the exec (exits then wait as zombies for the new binary's loop).
type reaperLoop struct {
	r      *reaper.Reaper
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

func (l *reaperLoop) start() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	l.cancel, l.done = cancel, done
	go func() {
		defer close(done)
		l.r.Run(ctx)
	}()
}

func (l *reaperLoop) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel == nil {
		return
	}
	l.cancel()
	<-l.done
	l.cancel, l.done = nil, nil
}

// eventHub is the daemon's event exchange behind a lock, so that a live
// upgrade can end the Monitor API's subscriptions (streams the drain
// would otherwise wait for; clients subscribe again) and flush the
// events queued for containerd before the exec.
type eventHub struct {
	namespace, address string
	log                *slog.Logger

	mu      sync.Mutex
	ex      *events.Exchange
	subs    map[*int]func()
	closing bool // an upgrade ended the subscriptions: new ones end at once
}

func newEventHub(namespace, address string, log *slog.Logger) *eventHub {
	return &eventHub{namespace: namespace, address: address, log: log,
		ex: events.New(namespace, address, log), subs: make(map[*int]func())}
}

func (h *eventHub) exchange() *events.Exchange {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ex
}

// Publish is service.Publisher.
func (h *eventHub) Publish(ctx context.Context, topic string, event proto.Message) error {
	return h.exchange().Publish(ctx, topic, event)
}

// Subscribe is monitor.Events; endSubscriptions ends the stream.
func (h *eventHub) Subscribe(ctx context.Context) (<-chan *apitypes.Envelope, func()) {
	h.mu.Lock()
	closing := h.closing
	h.mu.Unlock()
	if closing {
		// A client that subscribes again at once must not hold the drain:
		// its stream ends, and its next try waits for the new binary.
		ch := make(chan *apitypes.Envelope)
		close(ch)
		return ch, func() {}
	}
	sctx, cancel := context.WithCancel(ctx)
	ch, stop := h.exchange().Subscribe(sctx)
	key := new(int)
	h.mu.Lock()
	h.subs[key] = cancel
	h.mu.Unlock()
	return ch, func() {
		stop()
		cancel()
		h.mu.Lock()
		delete(h.subs, key)
		h.mu.Unlock()
	}
}

// endSubscriptions ends every subscription, and those made until
// allowSubscriptions.
func (h *eventHub) endSubscriptions() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closing = true
	for _, cancel := range h.subs {
		cancel()
	}
}

func (h *eventHub) allowSubscriptions() {
	h.mu.Lock()
	h.closing = false
	h.mu.Unlock()
}

// flush forwards what is queued to containerd (at most until ctx ends)
// and closes the exchange; reopen gives a new one if the exec fails.
func (h *eventHub) flush(ctx context.Context) error {
	return h.exchange().Close(ctx)
}

func (h *eventHub) reopen() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ex = events.New(h.namespace, h.address, h.log)
}

// Close closes the current exchange.
func (h *eventHub) Close(ctx context.Context) error { return h.flush(ctx) }

// upgrader performs a live upgrade of the daemon.
type upgrader struct {
	log       *slog.Logger
	startedAt time.Time // the daemon's start, handed on
	version   string
	config    []byte
	group     string
	sockPath  string
	hub       *eventHub
	reaper    *reaperLoop
	// freezeTimeout bounds the wait for requests in flight and copiers.
	freezeTimeout time.Duration
	// extraFDs are passed on to the new binary besides the handover's
	// (the keeper's custody socket).
	extraFDs []int

	mu       sync.Mutex
	listener *drain.Listener  // set once the server serves
	svc      *service.Service // set once built
	joins    func() map[string]time.Time
	busy     bool
	failedAt time.Time // the latest handover that failed (and thawed)
	failure  error
}

// Failure is monitor.Config.UpgradeFailure: the latest handover that
// failed after Upgrade answered, reported by Info.
func (u *upgrader) Failure() (time.Time, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.failedAt, u.failure
}

func (u *upgrader) setListener(l *drain.Listener) {
	u.mu.Lock()
	u.listener = l
	u.mu.Unlock()
}

func (u *upgrader) setJoins(f func() map[string]time.Time) {
	u.mu.Lock()
	u.joins = f
	u.mu.Unlock()
}

func (u *upgrader) setService(s *service.Service) {
	u.mu.Lock()
	u.svc = s
	u.mu.Unlock()
}

// Upgrade is the monitor.UpgradeFunc of the Monitor API's Upgrade and of
// SIGHUP: it starts the handover to binary (resolved and checked by
// monitor.ResolveBinary) and returns. The answer must be sent before the
// handover: the drain waits for every request in flight, this one
// included. A failure after this point is logged and the daemon keeps
// serving; a client sees the upgrade done when Info reports a new exec_at
// (client.Shim.WaitUpgraded).
func (u *upgrader) Upgrade(ctx context.Context, binary string) error {
	binary, err := monitor.ResolveBinary(binary)
	if err != nil {
		return err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.busy {
		return fmt.Errorf("upgrade: one is under way already: %w", errdefs.ErrFailedPrecondition)
	}
	if u.listener == nil || u.svc == nil {
		return fmt.Errorf("upgrade: the daemon is not serving yet: %w", errdefs.ErrUnavailable)
	}
	u.busy = true
	go func() {
		// Owned by the upgrade: it ends in the exec, or returns here.
		err := u.run(binary)
		if err != nil {
			u.log.Error("upgrade failed, serving on", "binary", binary, "error", err)
		}
		u.mu.Lock()
		u.busy = false
		if err != nil {
			u.failedAt, u.failure = time.Now(), fmt.Errorf("upgrade to %s: %w", binary, err)
		}
		u.mu.Unlock()
	}()
	return nil
}

// run is the handover. Up to the commit every step can be undone: it
// thaws and returns the error. After the commit it does not return: it
// execs binary, or, if that fails, this very binary again with the same
// handover (which restores the daemon as it was).
func (u *upgrader) run(binary string) (retErr error) {
	u.mu.Lock()
	l, svc, joins := u.listener, u.svc, u.joins
	u.mu.Unlock()
	timeout := u.freezeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()

	// 1. Monitor API subscriptions end (clients subscribe again), then
	//    the server stops between requests and waits for those in flight.
	var undo []func()
	defer func() {
		if retErr != nil {
			for k := len(undo) - 1; k >= 0; k-- {
				undo[k]()
			}
		}
	}()
	u.hub.endSubscriptions()
	undo = append(undo, u.hub.allowSubscriptions)
	conns, err := l.Freeze(ctx)
	if err != nil {
		return fmt.Errorf("freezing the server: %w", err)
	}
	undo = append(undo, l.Thaw, func() {
		for _, c := range conns {
			c.File.Close()
		}
	})
	lf, err := l.ListenerFile()
	if err != nil {
		return err
	}
	undo = append(undo, func() { lf.Close() })

	// 2. Every copier stops at a clean point.
	frozen, err := svc.Freeze(ctx)
	if err != nil {
		return err
	}
	undo = append(undo, frozen.Thaw)
	tasks, err := frozen.FDs()
	if err != nil {
		return err
	}
	undo = append(undo, func() {
		for _, t := range tasks {
			t.Close()
		}
	})

	// 3. The description.
	h := &handover{
		Version:    handoverVersion,
		FrozenAt:   start,
		From:       u.version,
		StartedAt:  u.startedAt,
		Config:     string(u.config),
		Group:      u.group,
		Listener:   fdOf(lf),
		SocketPath: u.sockPath,
		Tasks:      tasks,
	}
	if joins != nil {
		h.Joins = joins() // the server is frozen: no Join comes meanwhile
	}
	for _, c := range conns {
		h.Conns = append(h.Conns, handedConn{FD: int(c.Fd()), Pending: c.Pending})
	}
	mf, err := writeHandover(h)
	if err != nil {
		return err
	}
	undo = append(undo, func() { mf.Close() })
	froze := time.Since(start)

	// 4. The point of no return: pipelines flushed, wait loop stopped,
	//    records written, events forwarded.
	frozen.Commit(2*time.Second, u.reaper.stop)
	fctx, fcancel := context.WithTimeout(context.Background(), 3*time.Second)
	if err := u.hub.flush(fctx); err != nil {
		u.log.Error("upgrade: events not forwarded before the exec", "error", err)
	}
	fcancel()
	u.log.Info("upgrade: exec", "binary", binary, "tasks", len(tasks), "connections", len(conns),
		"freeze", froze.String(), "before_exec", time.Since(start).String())

	inherit := append(h.fds(), fdOf(mf))
	inherit = append(inherit, u.extraFDs...)
	ignoreSIGHUPAcrossExec()
	err = execSelf(binary, fdOf(mf), inherit)
	u.log.Error("upgrade: exec of the new binary failed; restarting this one", "binary", binary, "error", err)
	err = execSelf("/proc/self/exe", fdOf(mf), inherit)
	// Nothing is left to serve the tasks with in this process: exit and
	// let the next start (or the keeper) adopt them.
	u.log.Error("upgrade: exec of this binary failed too; exiting (the tasks are adopted by the next daemon of the group)", "error", err)
	runtime.KeepAlive(conns) // their Files must not be finalized (closed) before the exec
	runtime.KeepAlive(lf)
	runtime.KeepAlive(mf)
	os.Exit(1)
	return nil
}

// fdOf is f's descriptor, without making it blocking (os.File.Fd would).
func fdOf(f *os.File) int {
	fd := -1
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(u uintptr) { fd = int(u) })
	}
	return fd
}

// execSelf execs binary with this process's argv and environment plus the
// handover variable, letting the descriptors in inherit through.
func execSelf(binary string, memfd int, inherit []int) error {
	for _, fd := range inherit {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("descriptor %d: %w", fd, err)
		}
	}
	env := append(os.Environ(), handoverEnv+"="+strconv.Itoa(memfd))
	err := syscall.Exec(binary, os.Args, env)
	return errors.Join(fmt.Errorf("exec %s", binary), err)
}

// A SIGHUP that arrives while the new binary starts (a second upgrade
// asked for right after the first) must not kill the daemon: execve
// resets a handled signal to its default action, which for SIGHUP is to
// terminate, until the new binary registers for it again. An ignored
// signal stays ignored across execve, and Go's runtime leaves an
// inherited SIG_IGN of SIGHUP alone until signal.Notify asks for it
// (os/signal: "If the program was started with SIGHUP or SIGINT ignored,
// and Notify is called for either signal, a signal handler will be
// installed"). So the old binary ignores SIGHUP just before the exec,
// and the new one registers for it before anything else: a SIGHUP in
// between is dropped, not queued (send it again once Info reports the
// new exec_at). Blocking it instead would queue it, but a blocked mask
// is inherited by every thread of the new binary and by the processes it
// starts (runc, and through it the containers), which would then never
// see a SIGHUP.

// ignoreSIGHUPAcrossExec sets SIGHUP to SIG_IGN, for the exec.
func ignoreSIGHUPAcrossExec() { signal.Ignore(unix.SIGHUP) }

// notifySIGHUP registers for SIGHUP (undoing an inherited SIG_IGN) and
// returns the channel that receives it. Called synchronously early in
// main, before the daemon starts any process: a child started while
// SIGHUP is still ignored would inherit that.
func notifySIGHUP() chan os.Signal {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, unix.SIGHUP)
	return hup
}
