package conmon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/reaper"
)

// LogPipeline is what the monitor needs of the logging subsystem
// (logging.Pipeline implements it).
type LogPipeline interface {
	// ReadFrom reads r until EOF in a goroutine the pipeline owns.
	ReadFrom(s logging.Stream, r io.Reader)
	Reopen() error
	// Close waits for the readers, then flushes, syncs and closes the drivers.
	Close() error
}

// LogOpener builds the pipeline for cfg. tap receives every chunk read,
// before the drivers, and feeds the attach clients.
type LogOpener func(ctx context.Context, cfg *Config, tap func(logging.Stream, []byte)) (LogPipeline, error)

// Monitor supervises one container or exec session, conmon style.
type Monitor struct {
	cfg     *Config
	boot    *Bootstrap
	reaper  *reaper.Reaper
	diag    *Diag
	openLog LogOpener

	logs     LogPipeline
	attach   *attachServer
	ctl      *ctlFifos
	stdin    stdinWriter
	pipes    []*drainReader // stdout, stderr pipes (none with passthrough)
	termOut  *drainReader   // terminal master; guarded by consMu
	ctrPid   atomic.Int64
	oom      *oomWatcher
	oomOnce  sync.Once
	consMu   sync.Mutex
	cons     console.Console // guarded by consMu
	pending  *console.WinSize
	consRead chan struct{} // closed once the terminal master is being read
	keeper   *keeperLink   // the exit keeper that started the monitor; nil: none
	early    []reaper.Exit // exits reaped while `runtime exec` ran, in order
	// exitsAfterRun is set when the process exits as soon as Run returns
	// (the drop-in's run). Run then leaves its signal handlers registered:
	// unregistering goes through the Go runtime's signal-mask thread, a
	// round trip of thread wake-ups on the exit path of every exec
	// (docs/conmon.md, "Exec latency").
	exitsAfterRun bool
}

// NewMonitor returns a monitor for cfg. r must be running (Run) and be
// go-runc's Monitor; openLog builds the log pipeline.
func NewMonitor(cfg *Config, boot *Bootstrap, r *reaper.Reaper, diag *Diag, openLog LogOpener) *Monitor {
	return &Monitor{cfg: cfg, boot: boot, reaper: r, diag: diag, openLog: openLog}
}

// tap is the pipeline's tap: every chunk read goes to the attach clients.
func (m *Monitor) tap(s logging.Stream, chunk []byte) {
	if m.attach == nil {
		return
	}
	id := byte(attachStdout)
	if s == logging.Stderr {
		id = attachStderr
	}
	m.attach.Broadcast(id, chunk)
}

// Resize implements ctlHandler.
func (m *Monitor) Resize(h, w uint16) {
	ws := console.WinSize{Height: h, Width: w}
	m.consMu.Lock()
	defer m.consMu.Unlock()
	if m.cons == nil {
		m.pending = &ws
		return
	}
	if err := m.cons.Resize(ws); err != nil {
		m.diag.Warnf("Failed to set process pty terminal size: %v", err)
	}
}

// ReopenLogs implements ctlHandler.
func (m *Monitor) ReopenLogs() {
	if m.logs == nil {
		return
	}
	if err := m.logs.Reopen(); err != nil {
		m.diag.Errorf("Failed to reopen log file: %v", err)
	}
}

func (m *Monitor) sendSync(n int, msg string) {
	if m.boot.SyncFD < 0 {
		return
	}
	err := writeAll(m.boot.SyncFD, SyncMessage(SyncKey(m.cfg.Options), n, msg))
	if err != nil && !errors.Is(err, unix.EPIPE) {
		m.diag.Warnf("Unable to send message to parent: %v", err)
	}
}

// Run supervises the container until it exited and everything is
// reported, and returns conmon's exit code (the container's status for
// --sync callers, 1 on failure).
func (m *Monitor) Run(ctx context.Context) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := m.cfg
	sub := m.reaper.Subscribe()
	defer sub.Close()

	sigc := make(chan os.Signal, 4)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT, unix.SIGQUIT)
	if !m.exitsAfterRun {
		defer signal.Stop(sigc)
	}
	go m.forwardSignals(ctx, sigc)

	if cfg.SdNotifySocket != "" && cfg.Bundle != "" {
		if p, err := newNotifyProxy(cfg.Bundle, cfg.SdNotifySocket, m.diag); err != nil {
			m.diag.Warnf("sd-notify proxy: %v", err)
		} else {
			defer p.Close()
		}
	}

	rio, err := m.setupStdio()
	if err != nil {
		m.diag.Errorf("%v", err)
		return m.fail(-1, err.Error())
	}
	var sock *runc.Socket
	if cfg.Terminal {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("conmon-term.%d.%d", os.Getpid(), time.Now().UnixNano()%1e6))
		sock, err = runc.NewConsoleSocket(path)
		if err != nil {
			m.diag.Errorf("Failed to create console socket: %v", err)
			return m.fail(-1, "")
		}
		_ = os.Chmod(path, 0o700)
		m.consRead = make(chan struct{})
		go m.receiveConsole(sock, path)
	}

	if !cfg.Passthru && cfg.Bundle != "" {
		closeIn := cfg.Stdin && !cfg.LeaveStdinOpen
		m.attach, err = newAttachServer(cfg.Bundle, cfg.SocketDirPath, cfg.CUUID, cfg.FullAttach, &m.stdin, closeIn, m.diag)
		if err != nil {
			m.diag.Errorf("Failed to create attach socket: %v", err)
			return m.fail(-1, "")
		}
		if m.ctl, err = newCtlFifos(cfg.Bundle, m, m.diag); err != nil {
			m.diag.Errorf("Failed to create ctl fifos: %v", err)
			return m.fail(-1, "")
		}
	}
	if cfg.ExecAttach {
		if m.boot.AttachFD < 0 {
			m.diag.Errorf("--attach specified but _OCI_ATTACHPIPE was not")
			return m.fail(-1, "")
		}
		_ = writeAll(m.boot.AttachFD, SyncMessage("data", 0, ""))
		// conmon's runtime child waits for this second start byte before
		// exec'ing the runtime: the caller has connected to the socket.
		if err := WaitStart(m.boot.StartFD); err != nil {
			m.diag.Errorf("%v", err)
		}
		if m.attach != nil {
			// The exec's output may come before acceptLoop runs.
			m.attach.AcceptPending()
		}
	}
	if m.boot.StartFD >= 0 {
		unix.Close(m.boot.StartFD)
		m.boot.StartFD = -1
	}

	status, rerr := m.startRuntime(ctx, sub, rio, sock)
	rio.Close()
	if cfg.Passthru {
		// The container has the caller's stdio now; the monitor lets go
		// of it so the caller sees EOF when the container is done.
		_ = StdioToDevNull()
	}
	if rerr != nil {
		msg := m.runtimeStderr()
		m.diag.Errorf("Failed to create container: exit status %d", status)
		n := -1
		if cfg.Exec && status > 0 && m.cfg.APIVersion > 0 {
			n = -status
		}
		return m.fail(n, msg)
	}

	if m.consRead != nil {
		// The runtime sent the terminal before it exited; make sure it is
		// being read before the caller learns the pid and starts the
		// container.
		select {
		case <-m.consRead:
		case <-time.After(5 * time.Second):
			m.diag.Warnf("Terminal not received from the runtime")
		}
	}
	pid, err := readPidfile(cfg.ContainerPidfile)
	if err != nil {
		m.diag.Errorf("Failed to read pidfile: %v", err)
		return m.fail(-1, "")
	}
	m.ctrPid.Store(int64(pid))
	m.keeper.Container(pid)
	if cfg.APIVersion > 0 || !cfg.Exec {
		m.sendSync(pid, "")
	}
	if !cfg.Exec {
		m.oom = watchOOM(pid, m.writeOOM, m.diag)
	}
	for i, r := range m.pipes {
		s := logging.Stdout
		if i == 1 {
			s = logging.Stderr
		}
		m.logs.ReadFrom(s, r)
	}

	// No forced GC here: a collection touches the GC's own metadata and
	// code, which costs more than the garbage of start-up (measured).
	// An exec session is mostly short (CRI-O's ExecSync, health checks):
	// it trims at the idle timer only (3 s), so that a short one pays
	// neither for the trim (reading /proc/self/maps, madvise) nor for
	// faulting the code of its exit path back in (about 60 page faults of
	// 450 per `true`, measured).
	trim := func() { TrimMemory(false) }
	if !cfg.Exec {
		trim = TrimMemory(false)
	}
	var timeout <-chan time.Time
	if cfg.Timeout > 0 {
		t := time.NewTimer(time.Duration(cfg.Timeout) * time.Second)
		defer t.Stop()
		timeout = t.C
	}
	exit, timedOut := m.waitContainer(ctx, sub, pid, timeout, trim)
	m.keeper.Exited(exit)
	return m.finish(exit, timedOut)
}

// setupStdio creates the container's stdio: pipes (stdin only with -i and
// no terminal), nothing with passthrough (the runtime inherits the
// caller's), and the log pipeline that reads them.
func (m *Monitor) setupStdio() (*runtimeIO, error) {
	cfg := m.cfg
	rio := &runtimeIO{}
	var err error
	m.logs, err = m.openLog(context.Background(), cfg, m.tap)
	if err != nil {
		return rio, fmt.Errorf("Failed to open log: %v", err)
	}
	if cfg.Passthru {
		rio.stdin, rio.stdout, rio.stderr = os.Stdin, os.Stdout, os.Stderr
		return rio, nil
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return rio, err
	}
	rio.stdin = devnull
	if cfg.Stdin && !cfg.Terminal {
		r, w, err := os.Pipe()
		if err != nil {
			return rio, err
		}
		devnull.Close()
		rio.stdin = r
		m.stdin.set(w)
		m.stdin.closer = true
	}
	for i := 0; i < 2; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			return rio, err
		}
		if i == 0 {
			rio.stdout = w
		} else {
			rio.stderr = w
		}
		m.pipes = append(m.pipes, newDrainReader(r))
	}
	return rio, nil
}

// receiveConsole waits for the runtime to send the terminal master, sets
// ONLCR, applies a resize that arrived early and starts reading it as the
// container's stdout.
func (m *Monitor) receiveConsole(sock *runc.Socket, path string) {
	defer close(m.consRead)
	defer sock.Close()
	defer os.Remove(path)
	c, err := sock.ReceiveMaster()
	if err != nil {
		m.diag.Warnf("Failed to receive console: %v", err)
		return
	}
	fd := int(c.Fd())
	if t, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		t.Oflag |= unix.OPOST | unix.ONLCR
		_ = unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	// The I/O goes through a non-blocking duplicate so the drain at exit
	// never waits on a terminal some other process still holds.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		m.diag.Warnf("Failed to dup console: %v", err)
		return
	}
	_ = unix.SetNonblock(dup, true)
	f := os.NewFile(uintptr(dup), "console")
	r := newDrainReader(f)
	m.consMu.Lock()
	m.cons = c
	if m.pending != nil {
		_ = c.Resize(*m.pending)
		m.pending = nil
	}
	m.termOut = r
	m.consMu.Unlock()
	m.stdin.set(f)
	m.logs.ReadFrom(logging.Stdout, r)
}

// runc returns the go-runc client for `runtime create|restore`. When
// socket activation's LISTEN_PID must name the runtime's pid, the runtime
// is started through the monitor's own binary (see trampoline).
func (m *Monitor) runc(ctx context.Context) (context.Context, *runc.Runc) {
	r := &runc.Runc{
		Command:       m.cfg.Runtime,
		PdeathSignal:  unix.SIGKILL,
		ExtraArgs:     m.cfg.RuntimeArgs,
		SystemdCgroup: m.cfg.SystemdCgroup,
	}
	if self := m.trampoline(); self != "" {
		r.Command = self
		ctx = runc.WithExtraEnv(ctx, EnvTrampoline+"="+m.cfg.Runtime)
	}
	return ctx, r
}

// trampoline returns the monitor's own executable when socket
// activation's LISTEN_PID must name the runtime's pid (--replace-listen-pid,
// or LISTEN_PID naming the monitor): that binary, started with
// EnvTrampoline, sets LISTEN_PID to its pid and execs the runtime
// (Trampoline), as Go cannot run code between fork and exec. "" otherwise.
func (m *Monitor) trampoline() string {
	lp, ok := os.LookupEnv("LISTEN_PID")
	if !ok || !(m.cfg.ReplaceListenPid || lp == strconv.Itoa(os.Getpid())) {
		return ""
	}
	self, err := os.Executable()
	if err != nil {
		return ""
	}
	return self
}

// startRuntime runs `runtime create|restore|exec` and waits for it. The
// runtime starts with the caller's oom_score_adj, not the monitor's -1000.
func (m *Monitor) startRuntime(ctx context.Context, sub *reaper.Subscription, rio *runtimeIO, sock *runc.Socket) (int, error) {
	cfg := m.cfg
	m.setOOMScore(m.boot.OOMScoreAdj)
	defer m.setOOMScore("-1000")
	var cs runc.ConsoleSocket
	if sock != nil {
		cs = sock
	}
	var err error
	switch {
	case cfg.Exec:
		return m.execRuntime(ctx, sub, rio, sock)
	case cfg.Restore != "":
		extra := append([]string{}, cfg.RuntimeOpts...)
		if cfg.NoNewKeyring {
			extra = append([]string{"--no-new-keyring"}, extra...)
		}
		rctx, r := m.runc(ctx)
		_, err = r.Restore(rctx, cfg.CID, cfg.Bundle, &runc.RestoreOpts{
			CheckpointOpts: runc.CheckpointOpts{ImagePath: cfg.Restore, WorkDir: cfg.Bundle},
			IO:             rio, Detach: true, PidFile: cfg.ContainerPidfile, NoPivot: cfg.NoPivot,
			ConsoleSocket: cs, ExtraArgs: extra,
		})
	default:
		rctx, r := m.runc(ctx)
		err = r.Create(rctx, cfg.CID, cfg.Bundle, &runc.CreateOpts{
			IO: rio, PidFile: cfg.ContainerPidfile, ConsoleSocket: cs,
			NoPivot: cfg.NoPivot, NoNewKeyring: cfg.NoNewKeyring, ExtraArgs: cfg.RuntimeOpts,
		})
	}
	if err != nil {
		var ee *runc.ExitError
		if errors.As(err, &ee) {
			return ee.Status, err
		}
		m.diag.Errorf("Failed to start runtime: %v", err)
		return -1, err
	}
	return 0, nil
}

// execRuntime runs `runtime exec --detach` as conmon does and returns
// its exit status. The caller's process spec file goes to the runtime as
// it is (--process PATH): nothing is decoded and written again to a
// temporary file; the runtime checks the spec and reports a bad one on
// its stderr, which the caller gets in the sync message.
//
// The runtime is forked directly (syscall.ForkExec), not through os/exec:
// an exec session's latency is mostly process start-up, and os/exec's
// first start in a process probes pidfd support by forking a throwaway
// child. Its exit comes from sub, the monitor's queue of reaped exits
// (the reaper stays the one wait loop); exits queued before it, such as
// a short command's own, are kept in m.early for waitContainer.
//
// Its parent-death signal is SIGKILL. The kernel sends it when the
// forking thread ends; Go ends a thread only when a goroutine locked to
// it returns, which no goroutine of the monitor does.
func (m *Monitor) execRuntime(ctx context.Context, sub *reaper.Subscription, rio *runtimeIO, sock *runc.Socket) (int, error) {
	cfg := m.cfg
	command, env := cfg.Runtime, runtimeEnv()
	if self := m.trampoline(); self != "" {
		command = self
		env = append(env, EnvTrampoline+"="+cfg.Runtime)
	}
	path := command
	if !strings.Contains(path, "/") {
		var err error
		if path, err = exec.LookPath(command); err != nil {
			return -1, err
		}
	}
	argv := append([]string{command}, cfg.RuntimeArgs...)
	argv = append(argv, "exec", "--process", cfg.ExecProcessSpec)
	if sock != nil {
		argv = append(argv, "--console-socket", sock.Path())
	}
	argv = append(argv, "--detach")
	if cfg.ContainerPidfile != "" {
		pidFile, err := filepath.Abs(cfg.ContainerPidfile)
		if err != nil {
			return -1, err
		}
		argv = append(argv, "--pid-file", pidFile)
	}
	argv = append(argv, cfg.RuntimeOpts...)
	argv = append(argv, cfg.CID)
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{rio.stdin.Fd(), rio.stdout.Fd(), rio.stderr.Fd()},
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		m.diag.Errorf("Failed to start runtime: %v", err)
		return -1, fmt.Errorf("fork/exec %s: %w", path, err)
	}
	for {
		e, err := sub.Recv(ctx)
		if err != nil {
			return -1, err
		}
		if e.Pid != pid {
			m.early = append(m.early, e)
			continue
		}
		if e.Status != 0 {
			return e.Status, fmt.Errorf("%s did not terminate successfully: %w", command, &runc.ExitError{Status: e.Status})
		}
		return 0, nil
	}
}

// runtimeEnv is the environment go-runc gives the runtime: the monitor's
// without NOTIFY_SOCKET.
func runtimeEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NOTIFY_SOCKET=") {
			env = append(env, e)
		}
	}
	return env
}

// runtimeStderr returns what the runtime wrote to its stderr (the
// container's stderr pipe), at most 8191 bytes, without waiting.
func (m *Monitor) runtimeStderr() string {
	if len(m.pipes) < 2 {
		return ""
	}
	r := m.pipes[1]
	r.Drain()
	buf := make([]byte, 8191)
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil || k == 0 {
			break
		}
	}
	return string(buf[:n])
}

func (m *Monitor) setOOMScore(v string) {
	if v == "" {
		return
	}
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte(v), 0)
}

// waitContainer waits for the exit of pid (already queued or to come),
// for the timeout, or for ctx. An exec session without a terminal also
// waits for its output pipes to reach EOF, as conmon does.
func (m *Monitor) waitContainer(ctx context.Context, sub *reaper.Subscription, pid int, timeout <-chan time.Time, trim func()) (int, bool) {
	for _, e := range m.early {
		if e.Pid == pid {
			return e.Status, false
		}
	}
	m.early = nil
	exits := make(chan reaper.Exit, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			e, err := sub.Recv(wctx)
			if err != nil {
				return
			}
			if e.Pid == pid {
				exits <- e
				return
			}
		}
	}()
	// Once the container runs, the monitor is idle until it exits: give
	// back start-up memory a second time when the caller is done with us.
	idle := time.NewTimer(3 * time.Second)
	defer idle.Stop()
	for {
		select {
		case <-idle.C:
			trim()
		case e := <-exits:
			return e.Status, false
		case <-timeout:
			m.diag.Warnf("Timed out, killing main loop")
			killGroup(pid)
			return -1, true
		case <-ctx.Done():
			return -1, false
		}
	}
}

func killGroup(pid int) {
	pgid, err := unix.Getpgid(pid)
	if err == nil && pgid > 1 {
		_ = unix.Kill(-pgid, unix.SIGKILL)
		return
	}
	_ = unix.Kill(pid, unix.SIGKILL)
}

func (m *Monitor) forwardSignals(ctx context.Context, sigc chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-sigc:
			sig := s.(unix.Signal)
			// Before the container's pid is known the signal is dropped
			// (conmon forwards it to the runtime, failing the create).
			if pid := m.ctrPid.Load(); pid > 0 {
				_ = unix.Kill(int(pid), sig)
			}
		}
	}
}

// writeOOM creates the oom marker in the bundle (where Podman and CRI-O
// look) and in the persist dir.
func (m *Monitor) writeOOM() {
	m.oomOnce.Do(func() {
		for _, dir := range []string{m.cfg.Bundle, m.cfg.PersistDir} {
			if dir == "" {
				continue
			}
			f, err := os.OpenFile(filepath.Join(dir, "oom"), os.O_CREATE|os.O_WRONLY|unix.O_CLOEXEC, 0o666)
			if err != nil {
				m.diag.Warnf("Failed to write oom file: %v", err)
				continue
			}
			f.Close()
		}
	})
}

// finish is conmon's exit sequence: OOM check, drain and sync the logs,
// close the caller's fds, close attach clients, write the exit files, send
// an exec's exit code, remove the socket, run the exit command.
func (m *Monitor) finish(status int, timedOut bool) int {
	cfg := m.cfg
	m.oom.Final()
	if !(cfg.Exec && !cfg.Terminal) || timedOut {
		// A container's descendants may keep its pipes open: read what is
		// there, do not wait for EOF.
		m.drain()
	} else {
		// An exec session ends when its output does; bounded, though.
		m.waitEOF(5 * time.Second)
		m.drain()
	}
	if m.logs != nil {
		if err := m.logs.Close(); err != nil {
			m.diag.Warnf("Closing logs: %v", err)
		}
	}
	for _, r := range m.readers() {
		r.Close()
	}
	m.closeInherited()
	if m.attach != nil {
		m.attach.Close(2 * time.Second)
	}
	if m.ctl != nil {
		m.ctl.Close()
	}
	data := []byte(strconv.Itoa(status))
	if cfg.PersistDir != "" {
		if err := WriteFileAtomic(filepath.Join(cfg.PersistDir, "exit"), data, 0o666); err != nil {
			m.diag.Errorf("Failed to write exit file: %v", err)
		}
	}
	if cfg.ExitDir != "" {
		if err := WriteFileAtomic(filepath.Join(cfg.ExitDir, cfg.CID), data, 0o666); err != nil {
			m.diag.Errorf("Failed to write exit file: %v", err)
		}
	}
	m.keeper.Done()
	if cfg.Exec {
		msg := ""
		if timedOut {
			msg = "command timed out"
		}
		m.sendSync(status, msg)
	}
	if m.attach != nil {
		m.attach.Unlink()
	}
	m.runExitCommand()
	return status & 0xff
}

// readers returns every output reader: the pipes and the terminal.
func (m *Monitor) readers() []*drainReader {
	m.consMu.Lock()
	defer m.consMu.Unlock()
	rs := append([]*drainReader{}, m.pipes...)
	if m.termOut != nil {
		rs = append(rs, m.termOut)
	}
	return rs
}

func (m *Monitor) drain() {
	for _, r := range m.readers() {
		r.Drain()
	}
}

func (m *Monitor) waitEOF(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, r := range m.readers() {
		select {
		case <-r.done:
		case <-t.C:
			return
		}
	}
}

// closeInherited closes the fds the caller passed besides the pipes
// (reserved ports, preserved fds) so that they are free before the exit
// is announced; the sync pipe stays open for the exec exit code.
func (m *Monitor) closeInherited() {
	for _, fd := range m.boot.Inherited {
		unix.Close(fd)
	}
	m.boot.Inherited = nil
	if m.boot.AttachFD >= 0 {
		unix.Close(m.boot.AttachFD)
		m.boot.AttachFD = -1
	}
}

// fail reports a failure before the container ran: the sync message (if
// there is something to say), then the exit command, and exit code 1.
func (m *Monitor) fail(n int, msg string) int {
	if msg != "" {
		m.sendSync(n, msg)
	}
	if m.logs != nil {
		m.drain()
		_ = m.logs.Close()
	}
	m.closeInherited()
	if m.attach != nil {
		m.attach.Close(time.Second)
		m.attach.Unlink()
	}
	if m.ctl != nil {
		m.ctl.Close()
	}
	m.runExitCommand()
	return 1
}

// runExitCommand runs --exit-command with its args after --exit-delay,
// with the monitor's environment (Podman's cleanup needs its
// CONTAINERS_CONF and friends), stdio on /dev/null, no longer as
// subreaper, and waits for it.
func (m *Monitor) runExitCommand() {
	cfg := m.cfg
	if cfg.ExitCommand == "" {
		return
	}
	_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	if cfg.ExitDelay > 0 {
		time.Sleep(time.Duration(cfg.ExitDelay) * time.Second)
	}
	m.setOOMScore(m.boot.OOMScoreAdj)
	cmd := exec.Command(cfg.ExitCommand, cfg.ExitCommandArgs...)
	cmd.Env = os.Environ()
	ec, err := m.reaper.Start(cmd)
	if err != nil {
		m.diag.Errorf("Failed to run exit command: %v", err)
		return
	}
	_, _ = m.reaper.Wait(cmd, ec)
}
