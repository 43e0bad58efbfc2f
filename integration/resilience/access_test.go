package resilience

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
)

// TestShimSocketAccess: the shim's socket is reachable by its owner only,
// at three layers, each checked by a client running as uid 65534:
//  1. the socket's directory is 0700 (the probe cannot reach the path);
//  2. the socket is 0600 (through an O_PATH descriptor the probe can
//     name the socket, and connect is refused);
//  3. with the socket opened up to 0666, the connection is made and the
//     ttrpc server drops it: the peer's SO_PEERCRED uid is not the shim's.
//
// The owner's own call is answered all along.
func TestShimSocketAccess(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tk := e.start(ctx, "access", []string{"sleep", "1000"}, false, nil)
	defer tk.remove(t)
	path := socketPath(tk.addr)

	dir, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if m := dir.Mode(); m.Perm() != 0o700 || !m.IsDir() {
		t.Errorf("socket directory %s: mode %v, want drwx------", filepath.Dir(path), m)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode(); m&fs.ModeSocket == 0 || m.Perm() != 0o600 {
		t.Errorf("socket %s: mode %v, want srw-------", path, m)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 {
		t.Errorf("socket owned by uid %d, want 0", sys.Uid)
	}

	// 1. Through the path.
	if code, out := runProbe(t, path, nil); code != 2 || !strings.Contains(out, "permission denied") {
		t.Errorf("uid 65534 through the path: exit %d, %q; want a refused connect", code, out)
	}

	// 2. Through an O_PATH descriptor: the directory no longer stops it.
	fd, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	opath := os.NewFile(uintptr(fd), path)
	defer opath.Close()
	if code, out := runProbe(t, "/proc/self/fd/3", opath); code != 2 || !strings.Contains(out, "permission denied") {
		t.Errorf("uid 65534 through an O_PATH fd: exit %d, %q; want a refused connect", code, out)
	}

	// 3. Socket opened up: the peer credentials check refuses.
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	code, out := runProbe(t, "/proc/self/fd/3", opath)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if code != 3 {
		t.Errorf("uid 65534 on a 0666 socket: exit %d, %q; want connected and refused by the server", code, out)
	}
	t.Logf("uid 65534 on a 0666 socket: %s", strings.TrimSpace(out))

	// The owner is served.
	if _, err := tk.shim.Info(ctx); err != nil {
		t.Errorf("owner's Info: %v", err)
	}
}

// TestLogFileModes: the log files the shim writes for a container (the
// k8s-file driver, from the container's annotations) are 0640, owned by
// the shim's user and group (root:root), in a directory other users
// cannot list.
func TestLogFileModes(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logDir := e.logDir()
	logPath := filepath.Join(logDir, "ctr.log")
	tk := e.start(ctx, "logmodes", []string{"sh", "-c", "echo secret-line; sleep 1000"}, true, map[string]string{
		client.LogAnnotationPrefix + "driver": "k8s-file",
		client.LogAnnotationPrefix + "path":   logPath,
	})
	defer tk.remove(t)
	eventually(t, 20*time.Second, func() error {
		data, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(data), "secret-line") {
			return os.ErrNotExist
		}
		return nil
	})
	st, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if p := st.Mode().Perm(); p&0o027 != 0 {
		t.Errorf("log file %s: mode %v, want at most 0640", logPath, st.Mode())
	}
	t.Logf("log file mode %v", st.Mode())
}
