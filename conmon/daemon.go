package conmon

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// EnvMonitor marks the re-executed monitor process. Go cannot fork without
// exec, so conmon's "fork, parent writes the pid file and exits" becomes
// "start /proc/self/exe with this variable, write its pid, exit".
const EnvMonitor = "_CONMON_V2_MONITOR"

// envGOMAXPROCS carries the caller's GOMAXPROCS (if any) to the monitor,
// which runs with GOMAXPROCS=1.
const envGOMAXPROCS = "_CONMON_V2_GOMAXPROCS"

// envOOMScore carries the caller's oom_score_adj to the monitor, which
// restores it for the processes it starts (runtime, exit command).
const envOOMScore = "_CONMON_V2_OOM_SCORE_ADJ"

// Bootstrap is the state the first process hands to the monitor.
type Bootstrap struct {
	SyncFD, StartFD, AttachFD int
	// Inherited lists the other fds the caller passed (preserved fds,
	// reserved ports); they stay open, at the same numbers, until the
	// container exited, then they are closed before the exit is announced.
	Inherited []int
	// OOMScoreAdj is the caller's oom_score_adj ("" if unknown).
	OOMScoreAdj string
}

// ReadBootstrap reads the pipe fds from the environment and marks them
// close-on-exec, as conmon does.
func ReadBootstrap() (*Bootstrap, error) {
	b := &Bootstrap{}
	var err error
	if b.SyncFD, err = PipeFD(EnvSyncPipe); err != nil {
		return nil, err
	}
	if b.StartFD, err = PipeFD(EnvStartPipe); err != nil {
		return nil, err
	}
	if b.AttachFD, err = PipeFD(EnvAttachPipe); err != nil {
		return nil, err
	}
	for _, fd := range []int{b.SyncFD, b.StartFD, b.AttachFD} {
		if fd >= 0 {
			unix.CloseOnExec(fd)
		}
	}
	b.OOMScoreAdj = os.Getenv(envOOMScore)
	b.Inherited = inheritedFDs(b)
	return b, nil
}

// inheritedFDs lists the fds >= 3 that are open without close-on-exec and
// are not one of the pipes: what the caller meant the container (or the
// monitor's lifetime) to hold.
func inheritedFDs(b *Bootstrap) []int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 || fd == b.SyncFD || fd == b.StartFD || fd == b.AttachFD {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue
		}
		out = append(out, fd)
	}
	sort.Ints(out)
	return out
}

// PrepareProcess does what conmon does before it waits for the start pipe:
// umask 0022 and oom_score_adj -1000 (failures ignored: unprivileged or
// without CAP_SYS_RESOURCE it is refused). It returns the previous score.
func PrepareProcess() string {
	unix.Umask(0o022)
	old, _ := os.ReadFile("/proc/self/oom_score_adj")
	_ = os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0)
	return strings.TrimSpace(string(old))
}

// WaitStart blocks until the caller writes to (or closes) the start pipe:
// the caller uses this window to move the process into a cgroup.
func WaitStart(fd int) error {
	if fd < 0 {
		return nil
	}
	buf := make([]byte, 8192)
	for {
		_, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("start pipe: %w", err)
		}
		return nil
	}
}

// Daemonize starts the monitor as a new session leader with the same
// arguments, the caller's fds at the same numbers and stdio on /dev/null
// (the caller's stdio with passthrough), the container's log annotations
// in its environment (logs, may be nil), writes its pid to the conmon pid
// file atomically and returns. The caller then exits 0.
func Daemonize(cfg *Config, logs *LogSettings, b *Bootstrap, oldScore string) error {
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = monitorEnv(logs, oldScore)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cfg.Passthru {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	}
	keep := monitorFDs(b)
	maxfd := 2
	for _, fd := range keep {
		if fd > maxfd {
			maxfd = fd
		}
	}
	if maxfd > 2 {
		cmd.ExtraFiles = make([]*os.File, maxfd-2)
		for _, fd := range keep {
			// os.NewFile without keeping the *File: the process exits
			// right after Start, before any finalizer could run.
			cmd.ExtraFiles[fd-3] = os.NewFile(uintptr(fd), "fd"+strconv.Itoa(fd))
		}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start monitor: %w", err)
	}
	if cfg.ConmonPidfile != "" {
		if err := WriteFileAtomic(cfg.ConmonPidfile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o666); err != nil {
			return err
		}
	}
	return nil
}

// monitorEnv is the monitor's environment: the caller's, with GOMAXPROCS=1
// (the caller's value kept aside), the markers and the log annotations.
func monitorEnv(logs *LogSettings, oldScore string) []string {
	// One P from the monitor's first instruction: a single mcache, one GC
	// worker, fewer spare threads (measured: about 220 kB less anonymous
	// memory per monitor). The caller's value is restored for the
	// runtime and the exit command (MonitorEnvCleanup).
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GOMAXPROCS=") {
			env = append(env, e)
		}
	}
	orig, had := os.LookupEnv("GOMAXPROCS")
	if had {
		env = append(env, envGOMAXPROCS+"=set:"+orig)
	}
	env = append(env, EnvMonitor+"=1", envOOMScore+"="+oldScore, "GOMAXPROCS=1")
	if e := logs.env(); e != "" {
		env = append(env, e)
	}
	return env
}

// monitorFDs lists the fds above 2 the monitor inherits at the same
// numbers: the caller's other fds and the pipes.
func monitorFDs(b *Bootstrap) []int {
	keep := append([]int{}, b.Inherited...)
	for _, fd := range []int{b.SyncFD, b.StartFD, b.AttachFD} {
		if fd >= 3 {
			keep = append(keep, fd)
		}
	}
	return keep
}

// MonitorEnvCleanup removes the variables the first process set for the
// monitor, so the runtime and the exit command see the caller's
// environment only.
func MonitorEnvCleanup() {
	os.Unsetenv(EnvMonitor)
	os.Unsetenv(EnvKeeper)
	os.Unsetenv(envOOMScore)
	os.Unsetenv(envLogAnnotations)
	if v, ok := os.LookupEnv(envGOMAXPROCS); ok {
		os.Setenv("GOMAXPROCS", strings.TrimPrefix(v, "set:"))
		os.Unsetenv(envGOMAXPROCS)
	} else {
		os.Unsetenv("GOMAXPROCS")
	}
}

// StdioToDevNull points fds 0-2 at /dev/null (what --sync does instead of
// daemonizing) and makes the process a session leader when it can.
func StdioToDevNull() error {
	fd, err := unix.Open(os.DevNull, unix.O_RDWR, 0)
	if err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		if err := unix.Dup2(fd, i); err != nil {
			return err
		}
	}
	if fd > 2 {
		unix.Close(fd)
	}
	_, _ = unix.Setsid()
	return nil
}

// CloseFD closes a raw fd.
func CloseFD(fd int) { _ = unix.Close(fd) }

// EnvTrampoline names the runtime a monitor started through its own
// binary; see Trampoline.
const EnvTrampoline = "_CONMON_V2_RUNTIME"

// Trampoline is the first thing main runs. In a process started with
// EnvTrampoline it sets LISTEN_PID to its own pid (socket activation:
// the runtime only passes LISTEN_FDS on when LISTEN_PID names it) and
// replaces itself with the runtime, keeping pid, fds, Pdeathsig and the
// remaining environment. It returns only when EnvTrampoline is unset; an
// exec failure exits 127, as conmon's runtime child does.
func Trampoline() {
	rt := os.Getenv(EnvTrampoline)
	if rt == "" {
		return
	}
	os.Unsetenv(EnvTrampoline)
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	argv := append([]string{rt}, os.Args[1:]...)
	err := syscall.Exec(rt, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", rt, err)
	os.Exit(127)
}
