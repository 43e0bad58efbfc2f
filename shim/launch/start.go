package launch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
)

// ConfigFile is the copy of the resolved configuration that `start` leaves
// in the bundle, so a later `delete` (which gets no runtime options) cleans
// up with the same runtime root.
const ConfigFile = "conmon-v2-shim.toml"

// Environment of the daemon, set by `start`.
const (
	// ReadyFDEnv names the fd on which the daemon reports that it serves
	// ("ok") or why it could not start.
	ReadyFDEnv = "CONMON_V2_SHIM_READY_FD"
	// TTRPCAddressEnv is containerd's ttrpc socket, where events go.
	TTRPCAddressEnv = "TTRPC_ADDRESS"
	// GroupEnv is the group key the daemon serves ("" in namespace mode).
	GroupEnv = "CONMON_V2_SHIM_GROUP"
)

// listenerFD is where the daemon finds its listening socket.
const listenerFD = 3

// daemonReadyTimeout bounds how long start waits for the daemon to serve.
const daemonReadyTimeout = 10 * time.Second

// StartEnv is what the start action needs from its process.
type StartEnv struct {
	Stdin  io.Reader
	Stdout io.Writer
	// Self is the daemon executable: DaemonBinary beside the launcher,
	// or the daemon's own os.Executable() when it runs start itself.
	Self string
	// Name is the daemon's argv[0] ("" = Self). The launcher gives its
	// own, so that ps and the tools that find shims by their command line
	// see containerd-shim-conmon-v2 whichever file runs.
	Name string
}

// DaemonBinary is the file name of the shim daemon, installed beside the
// launcher (containerd-shim-conmon-v2), which runs it for everything but
// start.
const DaemonBinary = "containerd-shim-conmon-v2-daemon"

// LauncherPath is the launcher's main package, as its Go build
// information names it: a live upgrade given the launcher's file upgrades
// to the daemon file beside it.
const LauncherPath = "github.com/containers/conmon-v2/cmd/containerd-shim-conmon-v2"

// Start runs the start action: it finds the daemon that serves the
// container's group or spawns one, writes <bundle>/address and prints the
// address (nothing else) to env.Stdout. containerd reads stdout and stderr
// through the same pipe, so nothing may go to stderr on success.
func Start(ctx context.Context, f Flags, env StartEnv) error {
	if err := f.ValidateIdentity(); err != nil {
		return err
	}
	data, err := io.ReadAll(env.Stdin)
	if err != nil {
		return fmt.Errorf("start: read stdin: %w", err)
	}
	in, err := DecodeStartInput(data, f.ID, f.Namespace)
	if err != nil {
		return err
	}
	cfg, err := ResolveConfig(in.Options, f.Config)
	if err != nil {
		return err
	}
	bundle, err := f.BundleDir()
	if err != nil {
		return err
	}
	var annotations map[string]string
	if cfg.Grouping == GroupPod { // the only mode whose group key reads them
		annotations, err = ReadAnnotations(bundle)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	socketDir, prefix := cfg.SocketDir, ""
	if in.SocketDir != "" {
		socketDir, prefix = in.SocketDir, SharedSocketPrefix
	}
	group := GroupKey(cfg, f.ID, annotations)
	sock, err := SocketPath(socketDir, prefix, f.Address, f.Namespace, group)
	if err != nil {
		return err
	}
	addr := Address(sock)

	l, daemonCfg, err := listenGroup(sock, f.ID)
	switch {
	case errors.Is(err, errdefs.ErrAlreadyExists):
		// A live daemon serves the group: hand out its address. Its
		// settings, not the ones this start resolved, apply to the
		// container; a later delete must use them. (A daemon of an
		// older build sends none: ours then.)
		saved := daemonCfg
		if len(saved) == 0 {
			saved = cfg.Encode()
		}
		if err := WriteFileAtomic(filepath.Join(bundle, ConfigFile), saved, 0o600); err != nil {
			return fmt.Errorf("start: save shim config in bundle: %w", err)
		}
	case err != nil:
		return err
	default:
		encoded := cfg.Encode() // for the bundle and the daemon's environment
		defer l.Close()
		// The bundle's files are written while the new daemon starts up
		// (its exec and initialisation take milliseconds); the daemon
		// reads neither.
		if err := spawnDaemon(ctx, f, encoded, in, group, bundle, l, env, func() error {
			if err := WriteFileAtomic(filepath.Join(bundle, ConfigFile), encoded, 0o600); err != nil {
				return fmt.Errorf("start: save shim config in bundle: %w", err)
			}
			return writeAddress(bundle, addr)
		}); err != nil {
			os.Remove(sock)
			os.Remove(filepath.Join(bundle, AddressFile))
			return err
		}
		return printAnswer(in, addr, env.Stdout)
	}
	if err := writeAddress(bundle, addr); err != nil {
		return err
	}
	return printAnswer(in, addr, env.Stdout)
}

func writeAddress(bundle, addr string) error {
	if err := WriteFileAtomic(filepath.Join(bundle, AddressFile), []byte(addr), 0o600); err != nil {
		return fmt.Errorf("start: write address file: %w", err)
	}
	return nil
}

func printAnswer(in StartInput, addr string, stdout io.Writer) error {
	_, err := stdout.Write(startAnswer(in, addr))
	return err
}

// startAnswer is what start prints. containerd up to 2.2 (and CRI-O) read
// a plain address and then speak containerd.task.v2.Task. containerd 2.3,
// recognised by the BootstrapParams it sent, gets its own answer, a
// BootstrapResult, declaring version 3: it then speaks
// containerd.task.v3.Task, which the daemon serves as well.
func startAnswer(in StartInput, addr string) []byte {
	if !in.Bootstrap {
		return []byte(addr)
	}
	// BootstrapResult: version 1, address 2, protocol 3.
	b := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 3)
	b = protowire.AppendString(protowire.AppendTag(b, 2, protowire.BytesType), addr)
	return protowire.AppendString(protowire.AppendTag(b, 3, protowire.BytesType), "ttrpc")
}

// BundleDir is the bundle: -bundle, else the working directory (where
// containerd runs the shim).
func (f Flags) BundleDir() (string, error) {
	if f.Bundle != "" {
		if !filepath.IsAbs(f.Bundle) {
			return "", fmt.Errorf("bundle %q must be an absolute path: %w", f.Bundle, errdefs.ErrInvalidArgument)
		}
		return f.Bundle, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("bundle: working directory: %w", err)
	}
	return wd, nil
}

// listenGroup binds the group's socket. When a daemon already serves the
// group, it announces id to it (Join) and returns the daemon's
// configuration with an AlreadyExists error. A stale socket file (left by
// a daemon that died) is replaced. All of it happens under the socket
// directory's lock.
//
// A socket file that exists is asked first: in the pod and namespace
// modes a running daemon is the common case, and a bind that fails with
// EADDRINUSE would only cost that start a system call or two.
func listenGroup(path, id string) (_ *net.UnixListener, daemonConfig []byte, _ error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	unlock, err := LockDir(filepath.Dir(path))
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	_, statErr := os.Lstat(path)
	asked := statErr == nil
	if asked {
		if cfg, ok := Join(path, id); ok {
			return nil, cfg, fmt.Errorf("shim socket %s: %w", path, errdefs.ErrAlreadyExists)
		}
	}
	for attempt := 0; ; attempt++ {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			// The daemon, not this process, removes the socket.
			l.SetUnlinkOnClose(false)
			if err := os.Chmod(path, 0o600); err != nil {
				l.Close()
				os.Remove(path)
				return nil, nil, fmt.Errorf("socket %s: %w", path, err)
			}
			return l, nil, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) || attempt > 0 {
			return nil, nil, fmt.Errorf("listen on %s: %w", path, err)
		}
		if !asked {
			if cfg, ok := Join(path, id); ok {
				return nil, cfg, fmt.Errorf("shim socket %s: %w", path, errdefs.ErrAlreadyExists)
			}
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
}

// spawnDaemon runs the daemon binary (env.Self) without an action, in its own process
// group, with the listener as fd 3 and a pipe as fd 4 on which the daemon
// reports readiness. Its stdin and stdout are /dev/null; its stderr is the
// bundle's log FIFO when containerd made one (containerd copies it to its
// own log), else /dev/null. meanwhile runs once the daemon is started,
// before its readiness is awaited; its error is returned if the daemon
// itself reports none (the daemon then serves a group without members and
// leaves on its idle timeout).
func spawnDaemon(ctx context.Context, f Flags, cfg []byte, in StartInput, group, bundle string, l *net.UnixListener, env StartEnv, meanwhile func() error) error {
	lf, err := l.File()
	if err != nil {
		return fmt.Errorf("start: listener fd: %w", err)
	}
	defer lf.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer readyR.Close()
	defer readyW.Close()

	args := []string{"-namespace", f.Namespace, "-id", f.ID, "-address", f.Address}
	if f.PublishBinary != "" {
		args = append(args, "-publish-binary", f.PublishBinary)
	}
	if f.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(env.Self, args...)
	if env.Name != "" {
		cmd.Args[0] = env.Name
	}
	cmd.Dir = "/" // do not keep the bundle busy: it is removed while the daemon may serve others
	cmd.Env = daemonEnv(os.Environ(), cfg, in, group)
	cmd.ExtraFiles = []*os.File{lf, readyW} // fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if logf := OpenLogFifo(filepath.Join(bundle, "log")); logf != nil {
		defer logf.Close()
		cmd.Stderr = logf
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start: spawn daemon: %w", err)
	}
	readyW.Close()
	// The daemon outlives this process; it is reaped by whoever inherits it.
	_ = cmd.Process.Release()
	merr := meanwhile()

	msg := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(readyR, 64<<10))
		msg <- string(b)
	}()
	select {
	case m := <-msg:
		if m != "ok" {
			if m == "" {
				m = "daemon exited before serving"
			}
			return fmt.Errorf("start: shim daemon: %s: %w", strings.TrimSpace(m), errdefs.ErrUnavailable)
		}
		return merr
	case <-time.After(daemonReadyTimeout):
		return fmt.Errorf("start: shim daemon did not report ready within %s: %w", daemonReadyTimeout, errdefs.ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// daemonEnv is the daemon's environment: base without our variables,
// then the resolved configuration (TOML, as encoded by Config.Encode),
// the ready fd, the group and containerd's ttrpc address.
func daemonEnv(base []string, cfg []byte, in StartInput, group string) []string {
	env := make([]string, 0, len(base)+4)
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if k == ConfigEnv || k == ReadyFDEnv || k == GroupEnv || (in.TTRPCAddress != "" && k == TTRPCAddressEnv) {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, ConfigEnv+"="+string(cfg), ReadyFDEnv+"=4", GroupEnv+"="+group)
	if in.TTRPCAddress != "" {
		env = append(env, TTRPCAddressEnv+"="+in.TTRPCAddress)
	}
	return env
}

// OpenLogFifo opens a bundle's log FIFO (path) for writing, or returns nil when
// there is none or nobody reads it (the open would fail with ENXIO).
func OpenLogFifo(path string) *os.File {
	st, err := os.Stat(path)
	if err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return nil
	}
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	// Blocking from here on: the daemon's log lines wait for the reader
	// rather than being dropped.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil
	}
	return os.NewFile(uintptr(fd), path)
}
