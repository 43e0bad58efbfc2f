package shim

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
	"time"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/shim/launch"
)

// deleteExitStatus is what `delete` reports: the container was (or is now)
// killed with SIGKILL, and its real status died with its daemon.
const deleteExitStatus = 128 + int(unix.SIGKILL)

// DeleteEnv is what the delete action needs from its process.
type DeleteEnv struct {
	Stdout io.Writer
	Stderr io.Writer // warnings; containerd logs them as "cleanup warnings"
}

// Delete runs the delete action, which containerd calls when it has lost
// the daemon of a container (and, in 1.6, after every closed connection).
// It removes what is left of that one container: the runtime's container
// (killed if running), the rootfs mount in the bundle, and the socket of a
// group whose daemon is gone. It never touches a daemon that still
// answers, nor other containers. It is idempotent and prints a
// DeleteResponse.
func Delete(ctx context.Context, f launch.Flags, env DeleteEnv) error {
	if err := f.ValidateIdentity(); err != nil {
		return err
	}
	bundle, err := f.BundleDir()
	if err != nil {
		return err
	}
	cfg, err := deleteConfig(bundle, f.Config)
	if err != nil {
		return err
	}
	warn := func(format string, args ...any) { fmt.Fprintf(env.Stderr, format+"\n", args...) }

	root := filepath.Join(cfg.RuntimeRoot, f.Namespace)
	stateDir := filepath.Join(cfg.StateDir, f.Namespace)
	pid := readPidFile(filepath.Join(bundle, "init.pid"))
	if rec, err := process.ReadRecord(stateDir, f.ID); err == nil && rec.Pid > 0 {
		pid = rec.Pid
	}
	if err := runtimeDelete(ctx, cfg.Runtime, root, f.ID); err != nil {
		warn("%v", err)
	}
	if err := unmountAll(filepath.Join(bundle, "rootfs")); err != nil {
		warn("%v", err)
	}
	if !daemonAlive(bundle) {
		// The task's record would make a later recovery adopt a container
		// that is gone. A live daemon removes it itself on Delete.
		if err := process.RemoveRecord(stateDir, f.ID); err != nil {
			warn("remove task record: %v", err)
		}
		removeStaleSocket(bundle)
	}

	resp := &taskv2.DeleteResponse{
		Pid:        uint32(pid),
		ExitStatus: uint32(deleteExitStatus),
		ExitedAt:   timestamppb.Now(),
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = env.Stdout.Write(b)
	return err
}

// deleteConfig reads the configuration start saved in the bundle, else the
// configuration file.
func deleteConfig(bundle, flagPath string) (launch.Config, error) {
	p := filepath.Join(bundle, launch.ConfigFile)
	data, err := os.ReadFile(p)
	if err == nil {
		return launch.ParseConfig(p, data)
	}
	if !os.IsNotExist(err) {
		return launch.Config{}, fmt.Errorf("delete: %w", err)
	}
	return launch.ResolveConfig(nil, flagPath)
}

func readPidFile(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscanf(strings.TrimSpace(string(data)), "%d", &pid)
	return pid
}

// runtimeDelete runs `<runtime> --root root delete --force id`; a container
// the runtime does not know is not an error.
func runtimeDelete(ctx context.Context, runtime, root, id string) error {
	if _, err := os.Stat(filepath.Join(root, id)); errors.Is(err, os.ErrNotExist) {
		return nil // runc keeps a directory per container; none, nothing to do
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, runtime, "--root", root, "delete", "--force", id).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "does not exist") || strings.Contains(msg, "not exist") {
			return nil
		}
		return fmt.Errorf("%s delete --force %s: %v: %s", runtime, id, err, msg)
	}
	return nil
}

// unmountAll removes every mount stacked on target.
func unmountAll(target string) error {
	for range 64 {
		err := unix.Unmount(target, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not a mount point (any more)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 64 unmounts: %w", target, errdefs.ErrFailedPrecondition)
}

// bundleSocket returns the socket named by the bundle's address file.
func bundleSocket(bundle string) (string, bool) {
	data, err := os.ReadFile(filepath.Join(bundle, launch.AddressFile))
	if err != nil {
		return "", false
	}
	sock, err := launch.SocketFromAddress(strings.TrimSpace(string(data)))
	return sock, err == nil
}

// daemonAlive reports whether the daemon named by the bundle's address
// file answers a request. A bare connect is not enough: while a killed
// daemon's threads are torn down its listener may still accept.
func daemonAlive(bundle string) bool {
	sock, ok := bundleSocket(bundle)
	if !ok {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return false
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	_, err = taskv2.NewTTRPCTaskClient(client).Connect(ctx, &taskv2.ConnectRequest{})
	if err == nil {
		return true
	}
	// A status is the daemon's answer, even if an error; a closed
	// connection or a timeout is not.
	_, answered := status.FromError(err)
	return answered && ctx.Err() == nil
}

// removeStaleSocket removes the socket named by the bundle's address
// file; the caller found that no daemon answers on it.
func removeStaleSocket(bundle string) {
	sock, ok := bundleSocket(bundle)
	if !ok {
		return
	}
	if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		return
	}
	os.Remove(sock)
}
