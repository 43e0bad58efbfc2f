package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/version"
	"github.com/containers/conmon-v2/reaper"
	"github.com/containers/conmon-v2/service"
	"github.com/containers/conmon-v2/shim"
	"github.com/containers/conmon-v2/shim/launch"
)

// keeperChildEnv marks the daemon a keeper started.
const keeperChildEnv = "CONMON_V2_KEEPER_CHILD"

// keeper restarts limits: more than keeperMaxRestarts crashes within
// keeperWindow and the keeper gives up.
const (
	keeperMaxRestarts = 5
	keeperWindow      = time.Minute
)

// runKeeper is the keeper of a group (shim config keeper = true; see
// docs/resilience.md): the parent of the group's daemon and a subreaper,
// so that when the daemon dies its containers become the keeper's
// children. It
//   - holds the group's listening socket (fd 3), so clients queue on it
//     instead of being refused while the daemon restarts;
//   - restarts the daemon at once when it crashes (killed by a signal, or
//     a Go panic's exit status 2), and the new daemon re-adopts the tasks
//     from their records;
//   - reaps every other child (a container of the dead daemon) and writes
//     its exit status where the adopting daemon reads it
//     (service.KeeperExitDir), so no exit status is lost.
//
// It returns when the daemon exits normally (its group is empty), or
// after too many crashes (then it closes the socket: the next start brings
// up a new keeper).
func runKeeper(f launch.Flags, cfg launch.Config, ready *os.File) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("runtime", shim.RuntimeName, "namespace", f.Namespace, "pid", os.Getpid(), "role", "keeper")
	if err := reaper.SetSubreaper(); err != nil {
		return fmt.Errorf("keeper: subreaper: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	listener := os.NewFile(3, "listener")
	unix.CloseOnExec(3)
	exitDir := service.KeeperExitDir(filepath.Join(cfg.StateDir, f.Namespace))
	if err := os.MkdirAll(exitDir, 0o700); err != nil {
		return fmt.Errorf("keeper: %w", err)
	}

	devnull, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	defer unix.Close(devnull)
	var sockPath string
	if sa, err := unix.Getsockname(3); err == nil {
		if ua, ok := sa.(*unix.SockaddrUnix); ok {
			sockPath = ua.Name
		}
	}
	// Descriptor custody (custody.go): what the daemon hands us.
	held := newCustodySet(log)
	// spawn starts the daemon: fds 0-2 /dev/null, /dev/null, our stderr;
	// 3 the listener; then the ready pipe (first start only), the
	// daemon's end of a new custody socket and, after a crash, the
	// handover description (a memfd) and the descriptors it names.
	// Raw fork and exec: os/exec would make the handed descriptors
	// blocking (os.File.Fd), which they must not be in the daemon.
	spawn := func(ready *os.File, diedAt time.Time) (int, <-chan struct{}, error) {
		kfd, dfd, err := custodyPair()
		if err != nil {
			return 0, nil, err
		}
		defer unix.Close(dfd)
		files := []uintptr{uintptr(devnull), uintptr(devnull), 2, 3}
		env := []string{keeperChildEnv + "=1"}
		if ready != nil {
			env = append(env, launch.ReadyFDEnv+"="+strconv.Itoa(len(files)))
			files = append(files, ready.Fd())
		}
		env = append(env, custodyEnv+"="+strconv.Itoa(len(files)))
		files = append(files, uintptr(dfd))
		var mf *os.File
		if !diedAt.IsZero() {
			base := len(files) + 1 // after the memfd
			tasks, conns, fds := held.handover(base)
			h := &handover{
				Version:    handoverVersion,
				FrozenAt:   diedAt,
				From:       version.Version + " (keeper, after a crash)",
				Config:     string(cfg.Encode()),
				Group:      os.Getenv(launch.GroupEnv),
				Listener:   3,
				SocketPath: sockPath,
				Conns:      conns,
				Tasks:      tasks,
			}
			if mf, err = writeHandover(h); err != nil {
				unix.Close(kfd)
				return 0, nil, err
			}
			defer mf.Close()
			env = append(env, handoverEnv+"="+strconv.Itoa(len(files)))
			files = append(files, uintptr(fdOf(mf)))
			for _, fd := range fds {
				files = append(files, uintptr(fd))
			}
			log.Info("handing the held descriptors to the new daemon", "tasks", len(tasks), "connections", len(conns), "descriptors", len(fds))
		}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, launch.ReadyFDEnv+"=") && !strings.HasPrefix(kv, custodyEnv+"=") && !strings.HasPrefix(kv, handoverEnv+"=") {
				env = append(env, kv)
			}
		}
		pid, err := syscall.ForkExec(self, os.Args, &syscall.ProcAttr{Dir: "/", Env: env, Files: files})
		if err != nil {
			unix.Close(kfd)
			return 0, nil, err
		}
		// reaped by the loop below
		served := make(chan struct{})
		go func() { // owned by the keeper: ends when this daemon's end closes
			defer close(served)
			held.serve(kfd)
		}()
		return pid, served, nil
	}
	daemon, served, err := spawn(ready, time.Time{})
	if ready != nil {
		ready.Close() // start sees EOF if the daemon dies before it is ready
	}
	if err != nil {
		return fmt.Errorf("keeper: start the daemon: %w", err)
	}
	var crashes []time.Time
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("keeper: wait: %w", err) // ECHILD: nothing left
		}
		if pid != daemon {
			status := exitCode(ws)
			if err := service.WriteKeeperExit(exitDir, pid, status); err != nil {
				log.Error("recording an exit", "pid", pid, "status", status, "error", err)
			}
			continue
		}
		crashed := ws.Signaled() || (ws.Exited() && ws.ExitStatus() == 2)
		if !crashed {
			log.Info("daemon exited", "status", exitCode(ws))
			return nil
		}
		now := time.Now()
		crashes = append(crashes, now)
		for len(crashes) > 0 && now.Sub(crashes[0]) > keeperWindow {
			crashes = crashes[1:]
		}
		if len(crashes) > keeperMaxRestarts {
			log.Error("daemon keeps crashing: giving up", "crashes", len(crashes), "window", keeperWindow)
			listener.Close()
			return fmt.Errorf("keeper: the daemon crashed %d times within %s", len(crashes), keeperWindow)
		}
		diedAt := time.Now()
		// Every message the dead daemon sent is applied once its end of
		// the custody socket is closed (a child that inherited it by
		// mistake would hold it: then we go on with what we have).
		if !waitServed(served, 2*time.Second) {
			log.Error("custody socket still open after the daemon died; handing over what is held")
		}
		log.Warn("daemon died: restarting it", "pid", daemon, "status", exitCode(ws), "held_descriptors", held.count())
		time.Sleep(time.Duration(len(crashes)-1) * 200 * time.Millisecond)
		if daemon, served, err = spawn(nil, diedAt); err != nil {
			listener.Close()
			return fmt.Errorf("keeper: restart the daemon: %w", err)
		}
	}
}

// exitCode is a wait status as a shell reports it.
func exitCode(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
