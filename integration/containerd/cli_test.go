package containerd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bootstrap "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskv3 "github.com/containerd/containerd/api/runtime/task/v3"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/containers/conmon-v2/internal/testutil"
)

// cliEnv runs the shim binary the way containerd and CRI-O do, without
// either of them.
type cliEnv struct {
	t         *testing.T
	bin       string
	dir       string
	cfg       string
	socketDir string
}

func newCLIEnv(t *testing.T) *cliEnv {
	testutil.RequiresRoot(t)
	dir, err := os.MkdirTemp("", "shimcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c := &cliEnv{t: t, bin: testutil.Bin(t, "containerd-shim-conmon-v2"), dir: dir,
		cfg: filepath.Join(dir, "shim.toml"), socketDir: filepath.Join(dir, "s")}
	writeFile(t, c.cfg, fmt.Sprintf("socket_dir = %q\nruntime_root = %q\nstate_dir = %q\n",
		c.socketDir, filepath.Join(dir, "runc"), filepath.Join(dir, "state")))
	return c
}

// bundle makes a bundle directory with a config.json carrying annotations
// and, if fifo, a log FIFO held open for reading like containerd does.
func (c *cliEnv) bundle(id string, annotations map[string]string, fifo bool) string {
	b := filepath.Join(c.dir, "bundles", id)
	if err := os.MkdirAll(filepath.Join(b, "rootfs"), 0o711); err != nil {
		c.t.Fatal(err)
	}
	var ann []string
	for k, v := range annotations {
		ann = append(ann, fmt.Sprintf("%q: %q", k, v))
	}
	writeFile(c.t, filepath.Join(b, "config.json"), `{"ociVersion": "1.0.2", "annotations": {`+strings.Join(ann, ",")+`}}`)
	if fifo {
		p := filepath.Join(b, "log")
		if err := unix.Mkfifo(p, 0o700); err != nil {
			c.t.Fatal(err)
		}
		f, err := os.OpenFile(p, os.O_RDWR|unix.O_NONBLOCK, 0)
		if err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { f.Close() })
	}
	return b
}

// run runs the shim in dir with stdin, returning stdout and stderr apart.
func (c *cliEnv) run(dir string, stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	// containerd gives the shim a TTRPC_ADDRESS; CRI-O an empty one.
	cmd.Env = append(os.Environ(), "TTRPC_ADDRESS=")
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

func (c *cliEnv) start(bundle, id string, stdin []byte, extra ...string) string {
	c.t.Helper()
	args := append([]string{"-namespace", "cli", "-address", "", "-publish-binary", "/usr/bin/crio", "-id", id, "-config", c.cfg}, extra...)
	out, errOut, err := c.run(bundle, stdin, append(args, "start")...)
	if err != nil || len(errOut) > 0 {
		c.t.Fatalf("start %s: %v\nstdout %q\nstderr %q", id, err, out, errOut)
	}
	return string(out)
}

// withShim dials the shim daemon at sock and calls f with a ttrpc client
// and a 5-second context.
func withShim(t *testing.T, sock string, f func(ctx context.Context, client *ttrpc.Client)) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f(ctx, client)
}

func daemonPid(t *testing.T, sock string) int {
	t.Helper()
	pid := 0
	withShim(t, sock, func(ctx context.Context, client *ttrpc.Client) {
		r, err := taskv2.NewTTRPCTaskClient(client).Connect(ctx, &taskv2.ConnectRequest{ID: "nope"})
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
		pid = int(r.ShimPid)
	})
	return pid
}

func shutdown(t *testing.T, sock string) {
	t.Helper()
	withShim(t, sock, func(ctx context.Context, client *ttrpc.Client) {
		// v3 and v2 are the same service; ask through v3. "now": members
		// announced by start whose Create never came are not waited for.
		taskv3.NewTTRPCTaskClient(client).Shutdown(ctx, &taskv3.ShutdownRequest{ID: "x", Now: true}) // ErrClosed is expected
	})
}

func waitGone(t *testing.T, pid int, sock string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, serr := os.Stat(sock)
		alive := syscall.Kill(pid, 0) == nil && !isZombie(pid)
		if !alive && os.IsNotExist(serr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon %d alive=%v, socket %s: %v", pid, alive, sock, serr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func TestShimCLI(t *testing.T) {
	c := newCLIEnv(t)
	pod := map[string]string{"io.kubernetes.cri.sandbox-id": "pod1"}
	b1 := c.bundle("c1", pod, true)
	b2 := c.bundle("c2", pod, false)

	// start: empty stdin and an empty containerd address (CRI-O).
	addr := c.start(b1, "c1", nil)
	sum := sha256.Sum256([]byte("cli/pod1"))
	sock := filepath.Join(c.socketDir, hex.EncodeToString(sum[:]))
	if addr != "unix://"+sock {
		t.Fatalf("start printed %q, want %q", addr, "unix://"+sock)
	}
	if a, _ := os.ReadFile(filepath.Join(b1, "address")); string(a) != addr {
		t.Fatalf("address file %q", a)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v %v", st.Mode(), err)
	}
	if st, _ := os.Stat(c.socketDir); st.Mode().Perm() != 0o700 {
		t.Fatalf("socket dir mode %v", st.Mode())
	}
	pid := daemonPid(t, sock)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	if pgid, _ := syscall.Getpgid(pid); pgid != pid {
		t.Errorf("daemon pgid %d, want its own group %d", pgid, pid)
	}
	for fd, want := range map[int]string{0: "/dev/null", 1: "/dev/null", 2: filepath.Join(b1, "log")} {
		if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); got != want {
			t.Errorf("daemon fd %d is %q, want %q", fd, got, want)
		}
	}
	if cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); cwd != "/" {
		t.Errorf("daemon cwd %q keeps a bundle busy", cwd)
	}

	// A second member of the group gets the same daemon; the unknown flag
	// a newer containerd might send is ignored.
	// It asks for another runtime root, but the daemon's settings apply,
	// and its bundle records those for a later delete.
	cfg2 := filepath.Join(c.dir, "shim2.toml")
	writeFile(t, cfg2, fmt.Sprintf("socket_dir = %q\nruntime_root = \"/run/elsewhere\"\n", c.socketDir))
	if a2 := c.start(b2, "c2", nil, "-some-new-flag", "x", "-config", cfg2); a2 != addr {
		t.Fatalf("second start printed %q, want %q", a2, addr)
	}
	saved1, _ := os.ReadFile(filepath.Join(b1, "conmon-v2-shim.toml"))
	saved2, _ := os.ReadFile(filepath.Join(b2, "conmon-v2-shim.toml"))
	if len(saved1) == 0 || string(saved1) != string(saved2) || strings.Contains(string(saved2), "elsewhere") {
		t.Fatalf("member's saved config %q, want the daemon's %q", saved2, saved1)
	}
	if daemonPid(t, sock) != pid {
		t.Fatal("second start spawned a new daemon")
	}

	// delete of one member: a DeleteResponse, twice, and the shared daemon
	// keeps serving.
	for range 2 {
		out, _, err := c.run(b2, nil, "-namespace", "cli", "-address", "", "-id", "c2", "-bundle", b2, "delete")
		if err != nil {
			t.Fatalf("delete: %v", err)
		}
		var resp taskv2.DeleteResponse
		if err := proto.Unmarshal(out, &resp); err != nil || resp.ExitStatus != 137 || resp.ExitedAt == nil {
			t.Fatalf("delete printed %x (%v): %v", out, &resp, err)
		}
	}
	if daemonPid(t, sock) != pid {
		t.Fatal("delete stopped the shared daemon")
	}

	// Shutdown with no task stops the daemon and removes its socket.
	shutdown(t, sock)
	waitGone(t, pid, sock)

	// containerd 2.3: BootstrapParams on stdin, with its own socket dir.
	b3 := c.bundle("c3", nil, false)
	otherDir := filepath.Join(c.dir, "s23")
	bp, _ := proto.Marshal(&bootstrap.BootstrapParams{InstanceID: "c3", Namespace: "cli", SocketDir: proto.String(otherDir)})
	var res bootstrap.BootstrapResult
	if err := proto.Unmarshal([]byte(c.start(b3, "c3", bp)), &res); err != nil || res.Version != 3 || res.Protocol != "ttrpc" {
		t.Fatalf("start with BootstrapParams answered %v (%v), want a BootstrapResult for ttrpc version 3", &res, err)
	}
	addr3 := res.Address
	if !strings.HasPrefix(addr3, "unix://"+otherDir+"/conmon-") {
		t.Fatalf("start with BootstrapParams gave address %q, want a socket in %s", addr3, otherDir)
	}
	if a, _ := os.ReadFile(filepath.Join(b3, "address")); string(a) != addr3 {
		t.Fatalf("address file %q, want %q", a, addr3)
	}
	sock3 := strings.TrimPrefix(addr3, "unix://")
	pid3 := daemonPid(t, sock3)
	t.Cleanup(func() { syscall.Kill(pid3, syscall.SIGKILL) })

	// The daemon dies: delete removes its stale socket.
	syscall.Kill(pid3, syscall.SIGKILL)
	for syscall.Kill(pid3, 0) == nil && !isZombie(pid3) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, _, err := c.run(b3, nil, "-namespace", "cli", "-address", "", "-id", "c3", "-bundle", b3, "delete"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock3); !os.IsNotExist(err) {
		t.Fatalf("stale socket left after delete: %v", err)
	}
	// A start then finds nothing stale and spawns a fresh daemon.
	if err := proto.Unmarshal([]byte(c.start(b3, "c3", bp)), &res); err != nil || res.Address != addr3 {
		t.Fatalf("restart answered %v (%v)", &res, err)
	}
	pid4 := daemonPid(t, sock3)
	t.Cleanup(func() { syscall.Kill(pid4, syscall.SIGKILL) })
	shutdown(t, sock3)
	waitGone(t, pid4, sock3)
}

func TestShimCLIErrors(t *testing.T) {
	c := newCLIEnv(t)
	b := c.bundle("e1", nil, false)
	tests := []struct {
		name  string
		stdin []byte
		args  []string
		want  string
	}{
		{"bad id", nil, []string{"-namespace", "cli", "-id", "../x", "start"}, "id"},
		{"bad config", nil, []string{"-namespace", "cli", "-id", "e1", "-config", filepath.Join(c.dir, "missing.toml"), "start"}, "missing.toml"},
		{"garbage stdin", []byte{0xff, 0xff}, []string{"-namespace", "cli", "-id", "e1", "-config", c.cfg, "start"}, "stdin"},
		{"unknown action", nil, []string{"-namespace", "cli", "-id", "e1", "run"}, "action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := c.run(b, tt.stdin, tt.args...)
			if err == nil || !strings.Contains(string(errOut), tt.want) || len(out) > 0 {
				t.Fatalf("err %v stdout %q stderr %q, want a failure naming %q", err, out, errOut, tt.want)
			}
		})
	}
}

func TestShimVersionAndInfo(t *testing.T) {
	c := newCLIEnv(t)
	out, _, err := c.run(c.dir, nil, "-v")
	if err != nil || !strings.Contains(string(out), "Version") {
		t.Fatalf("-v: %v %q", err, out)
	}
	out, errOut, err := c.run(c.dir, nil, "-info", "-config", c.cfg)
	if err != nil {
		t.Fatalf("-info: %v %s", err, errOut)
	}
	var info apitypes.RuntimeInfo
	if err := proto.Unmarshal(out, &info); err != nil || info.Name != "io.containerd.conmon.v2" {
		t.Fatalf("-info printed %q: %v", out, err)
	}
	t.Logf("runtime features: %d bytes", len(info.Features.GetValue()))
}
