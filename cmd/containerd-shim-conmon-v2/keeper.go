package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/reaper"
	"github.com/containers/conmon-v2/service"
	"github.com/containers/conmon-v2/shim"
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
func runKeeper(f shim.Flags, cfg shim.Config, ready *os.File) error {
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

	spawn := func(ready *os.File) (int, error) {
		cmd := exec.Command(self, os.Args[1:]...)
		cmd.Dir = "/"
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, os.Stderr
		env := []string{keeperChildEnv + "=1"}
		if ready != nil {
			env = append(env, shim.ReadyFDEnv+"=4")
		}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, shim.ReadyFDEnv+"=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
		cmd.ExtraFiles = []*os.File{listener} // fd 3
		if ready != nil {
			cmd.ExtraFiles = append(cmd.ExtraFiles, ready) // fd 4, as start passed it
		}
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		pid := cmd.Process.Pid
		_ = cmd.Process.Release() // reaped by the loop below
		return pid, nil
	}
	daemon, err := spawn(ready)
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
		log.Warn("daemon died: restarting it", "pid", daemon, "status", exitCode(ws))
		time.Sleep(time.Duration(len(crashes)-1) * 200 * time.Millisecond)
		if daemon, err = spawn(nil); err != nil {
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
