// Package reaper owns the monitor's children: it is the one wait loop of the
// process. Every exit the kernel reports is reaped here, handed to the
// command that is waiting for it (go-runc's calls) and queued, in the order
// the kernel reported it, to every subscriber. No exit is ever dropped: a
// subscriber's queue grows instead of blocking the loop.
//
// Why one loop: a second wait4(-1) anywhere in the process (exec.Cmd.Wait,
// os.Process.Wait) steals exits and yields "no child processes" errors
// (containerd#223, #246, #4009). So every command the monitor forks is
// started through Reaper.Start and finished with Reaper.Wait.
package reaper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Exit is one reaped process.
type Exit struct {
	Pid       int
	Status    int // exit code, or 128+signal for a process killed by a signal
	Timestamp time.Time
}

// Reaper is the single wait loop. The zero value is not usable: use New.
type Reaper struct {
	mu      sync.Mutex
	waiters map[int]chan runc.Exit     // pid -> waiter of a command started by Start; guarded by mu
	subs    map[*Subscription]struct{} // guarded by mu
}

// New returns a Reaper. The caller makes the process a child subreaper
// (SetSubreaper) and runs Run.
func New() *Reaper {
	return &Reaper{
		waiters: make(map[int]chan runc.Exit),
		subs:    make(map[*Subscription]struct{}),
	}
}

// SetSubreaper makes the calling process the reaper of its orphaned
// descendants (PR_SET_CHILD_SUBREAPER), so container processes whose runc
// parent exits are re-parented to the monitor and their exits reach Run.
func SetSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// Run reaps children until ctx is done. It must run exactly once per
// process. Signals are consumed from SIGCHLD; a pass over wait4 is also made
// at start so exits that happened before Run are not missed.
func (r *Reaper) Run(ctx context.Context) error {
	sig := make(chan os.Signal, 32)
	signal.Notify(sig, unix.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.reapAll()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sig:
		}
	}
}

// reapAll collects every exited child without blocking.
func (r *Reaper) reapAll() {
	for {
		var ws unix.WaitStatus
		var ru unix.Rusage
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, &ru)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.deliver(Exit{Pid: pid, Status: exitStatus(ws), Timestamp: time.Now()})
	}
}

func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

func (r *Reaper) deliver(e Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.waiters[e.Pid]; ok {
		w <- runc.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Timestamp} // buffered, one send per pid
		delete(r.waiters, e.Pid)
	}
	for s := range r.subs {
		s.push(e)
	}
}

// Subscribe returns a queue of every exit reaped from now on. The caller
// must Close it when done.
func (r *Reaper) Subscribe() *Subscription {
	s := &Subscription{r: r, ready: make(chan struct{}, 1)}
	r.mu.Lock()
	r.subs[s] = struct{}{}
	r.mu.Unlock()
	return s
}

// Start starts cmd with its exit routed to the returned channel. The reaper
// lock is held across cmd.Start so the loop cannot reap the child before
// its waiter is registered. It implements go-runc's ProcessMonitor.
func (r *Reaper) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	r.waiters[cmd.Process.Pid] = ec
	return ec, nil
}

// StartLocked is Start with the child started from a goroutine locked to
// its OS thread, for commands that set Pdeathsig (which the kernel ties to
// the thread, Go issue 27505). The thread stays locked until the child is
// reaped.
func (r *Reaper) StartLocked(cmd *exec.Cmd) (chan runc.Exit, error) {
	started := make(chan error, 1)
	out := make(chan runc.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ec, err := r.Start(cmd)
		started <- err
		if err != nil {
			return
		}
		out <- <-ec
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return out, nil
}

// Wait waits for the exit of a command started with Start and releases the
// command's resources (its I/O copying goroutines). The error of cmd.Wait is
// ignored on purpose: the child was already reaped by the loop.
func (r *Reaper) Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	_ = cmd.Wait()
	return e.Status, nil
}

var _ runc.ProcessMonitor = (*Reaper)(nil)

// Subscription is an unbounded, ordered queue of exits. The reap loop never
// blocks on it.
type Subscription struct {
	r     *Reaper
	mu    sync.Mutex
	queue []Exit // guarded by mu
	ready chan struct{}
}

func (s *Subscription) push(e Exit) {
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Recv returns the next exit, in reap order, blocking until one is queued
// or ctx is done.
func (s *Subscription) Recv(ctx context.Context) (Exit, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue[0] = Exit{}
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return e, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return Exit{}, ctx.Err()
		case <-s.ready:
		}
	}
}

// Close stops delivery to s. Exits still queued are discarded.
func (s *Subscription) Close() {
	s.r.mu.Lock()
	delete(s.r.subs, s)
	s.r.mu.Unlock()
}
