package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// System is one way of running and monitoring containers: runc alone, a
// conmon-style monitor driven through its command line, or a shim v2
// driven over ttrpc. Every system runs the same bundles.
type System interface {
	// Name is the row label in the report.
	Name() string
	// Launch creates and starts c and returns once its init process runs
	// (c.Pid set). It records the monitor process in c.MonitorPID.
	Launch(ctx context.Context, c *Container) error
	// Wait blocks until the monitor reports c's exit and returns the exit
	// status. If the monitor exits with the container, Wait fills
	// c.Final with the monitor's last CPU figure before it is reaped.
	Wait(ctx context.Context, c *Container) (int, error)
	// Exec runs args in c through the system's exec path and returns the
	// exit status once it is known to the caller.
	Exec(ctx context.Context, c *Container, args []string) (int, error)
	// Delete removes c (killing it if it runs) and, for a monitor that
	// serves only c, stops the monitor.
	Delete(ctx context.Context, c *Container) error
	// Close stops whatever the system still runs (shared monitors).
	Close(ctx context.Context) error
}

// Container is one container of a benchmark run.
type Container struct {
	ID      string
	Bundle  string
	Args    []string
	Group   string // io.kubernetes.cri.sandbox-id, "" for none
	LogPath string // where the monitor writes its log (k8s-file), "" = nowhere
	// LogAnnotations asks conmon-v2's shim, through the spec's
	// io.containers.conmon-v2.log.* annotations, to write LogPath as a
	// k8s-file itself.
	LogAnnotations bool

	Pid        int      // container init, set by Launch
	MonitorPID int      // process that monitors it, 0 for runc alone
	Final      *monStat // set by Wait when the monitor died with the container
	priv       any      // the system's own state
}

// monStat is a monitor's CPU time read just before it was reaped.
type monStat struct {
	CPU     float64
	PeakRSS uint64 // bytes, 0 if unknown
}

// Env is what all systems of one run share.
type Env struct {
	Dir      string // scratch directory of the run, removed at the end
	Rootfs   string // busybox root filesystem shared read-only by all bundles
	Runc     string // runc binary
	RuncRoot string // runc --root for every system
	Cgroup   string // cgroup parent of every container
	BinDir   string // conmon-v2's built binaries
	Logf     func(format string, args ...any)

	mu      sync.Mutex
	seq     int
	started map[int]bool // every monitor pid seen, for the final sweep
}

// ShimRuncRoot is the runtime root given to conmon-v2's shim, which keeps
// a directory per containerd namespace under it.
func (e *Env) ShimRuncRoot() string { return filepath.Join(e.Dir, "runc-shim") }

// GateDir is bind-mounted read-only at /gate in every container: the log
// generator waits there for its start signal.
func (e *Env) GateDir() string { return filepath.Join(e.Dir, "gate") }

// track remembers a monitor process so that the final sweep can kill it
// should a figure fail half-way.
func (e *Env) track(pid int) {
	if pid <= 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started == nil {
		e.started = map[int]bool{}
	}
	e.started[pid] = true
}

// NewContainer allocates an ID and writes a bundle for args. prefix names
// the system (IDs must be unique across the run, since all share runc's root).
func (e *Env) NewContainer(prefix, group string, args []string, logAnnotations bool) (*Container, error) {
	e.mu.Lock()
	e.seq++
	id := fmt.Sprintf("%s-%d", prefix, e.seq)
	e.mu.Unlock()
	c := &Container{
		ID:     id,
		Bundle: filepath.Join(e.Dir, "b", id),
		Args:   args,
		Group:  group,

		LogAnnotations: logAnnotations,
	}
	c.LogPath = filepath.Join(c.Bundle, "ctr.log")
	if err := os.MkdirAll(c.Bundle, 0o711); err != nil {
		return nil, err
	}
	return c, e.writeBundle(c)
}

// writeBundle (re)writes c's config.json from c.Args and c.Group.
func (e *Env) writeBundle(c *Container) error {
	data, err := json.MarshalIndent(e.spec(c), "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.Bundle, "config.json"), data, 0o644)
}

// spec is a small OCI spec in the spirit of `runc spec`: its own pid, ipc,
// uts and mount namespaces, the host network (no network namespace, so
// that a thousand containers do not measure the kernel's netns teardown),
// a read-only shared rootfs and a cgroup under e.Cgroup.
func (e *Env) spec(c *Container) *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: c.Args,
			Env:  []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: e.Rootfs, Readonly: true},
		Hostname: "bench",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "size=1024k"}},
			{Destination: "/gate", Type: "bind", Source: e.GateDir(), Options: []string{"rbind", "ro"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: e.Cgroup + "/" + c.ID,
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	// The bench is a conmon-v2 client: its log annotations may name the
	// log file although the pod mode uses CRI's sandbox annotation
	// (logging.FromKubernetes).
	s.Annotations = map[string]string{"io.container.manager": "conmon-v2"}
	if c.Group != "" {
		s.Annotations["io.kubernetes.cri.sandbox-id"] = c.Group
	}
	if c.LogAnnotations && c.LogPath != "" {
		s.Annotations["io.containers.conmon-v2.log.driver"] = "k8s-file"
		s.Annotations["io.containers.conmon-v2.log.path"] = c.LogPath
	}
	return s
}

// opTimeout bounds every single operation on a system (a launch, an exec,
// a runc or shim command), so that a hung monitor fails its figure instead
// of stopping the run.
const opTimeout = 2 * time.Minute

// processSpec is the JSON of an exec's process, for conmon's
// --exec-process-spec and the shim's Exec.
func processSpec(args []string) ([]byte, error) {
	return json.Marshal(&specs.Process{
		Args: args,
		Env:  []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Cwd:  "/",
	})
}

// run runs a short command (runc, a shim's start) and returns its stdout,
// or an error carrying its stderr.
func run(ctx context.Context, dir string, env []string, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second
	cmd.Dir = dir
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// readPidFile waits (briefly) for a pid file and parses it.
func readPidFile(ctx context.Context, path string) (int, error) {
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 {
				return pid, nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("pid file %s: %w", path, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// reapChild waits for pid, a child of the harness (the harness is a child
// subreaper, so daemonised monitors and runc's containers are re-parented to
// it), calls zombie while the exited process is still readable in /proc,
// then reaps it. A pid that is not (or no longer) our child returns at once.
func reapChild(ctx context.Context, pid int, zombie func()) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, nil
		}
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 50)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return -1, fmt.Errorf("poll pidfd %d: %w", pid, err)
		}
		if n > 0 {
			break
		}
		if ctx.Err() != nil {
			return -1, fmt.Errorf("waiting for pid %d: %w", pid, ctx.Err())
		}
	}
	if zombie != nil {
		zombie()
	}
	var ws unix.WaitStatus
	for {
		_, err = unix.Wait4(pid, &ws, 0, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if errors.Is(err, unix.ECHILD) {
		return -1, nil // not ours: someone else reaps it
	}
	if err != nil {
		return -1, fmt.Errorf("wait4 %d: %w", pid, err)
	}
	return exitStatus(ws), nil
}

// exitStatus maps a wait status to the shell's convention (128+signal).
func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// killAndReap SIGKILLs pid (if it still exists) and reaps it if it is ours.
func killAndReap(pid int) {
	if pid <= 0 {
		return
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = reapChild(ctx, pid, nil)
}
