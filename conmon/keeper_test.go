package conmon

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func TestParseKeeperSocket(t *testing.T) {
	for _, tc := range []struct {
		name, data, want, err string
	}{
		{"none", "", "", ""},
		{"logging only", "[logging]\ndriver = \"k8s-file\"\n", "", ""},
		{"set", "[conmon]\nexit-keeper = \"/run/conmon-v2/exit-keeper.sock\"\n", "/run/conmon-v2/exit-keeper.sock", ""},
		{"relative", "[conmon]\nexit-keeper = \"keeper.sock\"\n", "", "must be an absolute path"},
		{"bad toml", "[conmon\n", "", "cfg.toml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseKeeperSocket("cfg.toml", []byte(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestWriteExitFiles(t *testing.T) {
	for _, tc := range []struct {
		name             string
		exitDir, persist bool
		status           int
		want             string
	}{
		{"both", true, true, 7, "7"},
		{"exit dir only", true, false, 137, "137"},
		{"persist only", false, true, 0, "0"},
		{"none", false, false, 1, ""},
		{"negative", true, true, -1, "-1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			exitDir, persist := "", ""
			if tc.exitDir {
				exitDir = filepath.Join(dir, "exits")
				os.Mkdir(exitDir, 0o755)
			}
			if tc.persist {
				persist = filepath.Join(dir, "persist")
				os.Mkdir(persist, 0o755)
			}
			if errs := writeExitFiles(exitDir, persist, "ctr1", tc.status); len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, p := range []string{filepath.Join(exitDir, "ctr1"), filepath.Join(persist, "exit")} {
				if !strings.HasPrefix(p, dir) {
					continue
				}
				got, err := os.ReadFile(p)
				if err != nil || string(got) != tc.want {
					t.Errorf("%s = %q, %v; want %q", p, got, err, tc.want)
				}
			}
			// Nothing else: no temporary file left behind.
			var names []string
			filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() {
					names = append(names, filepath.Base(p))
				}
				return nil
			})
			for _, n := range names {
				if n != "ctr1" && n != "exit" {
					t.Errorf("unexpected file %s", n)
				}
			}
		})
	}
	if errs := writeExitFiles(filepath.Join(t.TempDir(), "missing"), "", "c", 1); len(errs) != 1 {
		t.Errorf("missing exit dir: errors %v, want one", errs)
	}
}

func TestExitCommandEnv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out []string
	}{
		{"plain", []string{"A=1", EnvMonitor + "=1", envOOMScore + "=0", "GOMAXPROCS=1"}, []string{"A=1"}},
		{"caller gomaxprocs", []string{"A=1", envGOMAXPROCS + "=set:4", "GOMAXPROCS=1", envLogAnnotations + "={}"}, []string{"A=1", "GOMAXPROCS=4"}},
		{"keeper var", []string{EnvKeeper + "=/x", "B=2"}, []string{"B=2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := exitCommandEnv(tc.in); !slices.Equal(got, tc.out) {
				t.Fatalf("got %q, want %q", got, tc.out)
			}
		})
	}
}

// deadPid is a container pid the fake keeper reports as gone.
const deadPid = 40099

// fakeKeeper is a keeper whose "monitors" are not started: start hands out
// pids from next.
type fakeKeeper struct {
	*Keeper
	mu    sync.Mutex
	next  int
	cmds  []*exec.Cmd
	exits []string // cids whose exit command ran
}

func newFakeKeeper(t *testing.T, pid int) *fakeKeeper {
	f := &fakeKeeper{Keeper: NewKeeper("/keeper.sock", nil, io.Discard), next: pid}
	f.exe = func(peer int) string { return "/peer-exe" }
	f.start = func(cmd *exec.Cmd) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		p, err := os.FindProcess(f.next)
		if err != nil {
			return err
		}
		cmd.Process = p
		f.next++
		f.cmds = append(f.cmds, cmd)
		return nil
	}
	f.alive = func(pid int) bool { return pid != deadPid }
	f.runExit = func(e *keeperEntry) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.exits = append(f.exits, e.cid)
	}
	return f
}

func TestKeeperLifecycle(t *testing.T) {
	type step struct {
		op     string // spawn, container, exited, done, exit
		pid    int    // container: its pid; exit: the reaped pid (0: the monitor)
		status int
	}
	const mon, ctr = 40000, 40001
	dead := deadPid
	for _, tc := range []struct {
		name  string
		steps []step
		want  string // exit file content; "" = no file
	}{
		{"normal end", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exited", 0, 3}, {"done", 0, 0}, {"exit", 0, 3}}, ""},
		{"monitor killed, container exits later", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exit", 0, 137}, {"exit", ctr, 7}}, "7"},
		{"container reaped before the dead monitor", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exit", ctr, 9}, {"exit", 0, 137}}, "9"},
		{"monitor killed after the container exited", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exited", 0, 42}, {"exit", 0, 137}}, "42"},
		{"monitor killed while writing, container already reported", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exited", 0, 0}, {"exit", 0, 137}, {"exit", ctr, 5}}, "0"},
		{"monitor reaped the container, then was killed", []step{{"spawn", 0, 0}, {"container", dead, 0}, {"exit", 0, 137}, {"exit", dead, 1}}, ""},
		{"monitor fails before a container", []step{{"spawn", 0, 0}, {"exit", 0, 1}}, ""},
		{"unknown orphan", []step{{"spawn", 0, 0}, {"container", ctr, 0}, {"exit", 12345, 1}, {"done", 0, 0}, {"exit", 0, 0}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			f := newFakeKeeper(t, mon)
			args := []string{"conmon", "-c", "ctr1", "-u", "u", "-r", "/bin/true", "--exit-dir", dir, "--exit-command", "/bin/true"}
			for _, s := range tc.steps {
				var err error
				switch s.op {
				case "spawn":
					files := stdioFiles(t)
					var pid int
					pid, err = f.handle(1, &keeperRequest{Op: keeperOpSpawn, Args: args, FDs: []int{0, 1, 2}}, files)
					if err == nil && pid != mon {
						t.Fatalf("spawn pid %d, want %d", pid, mon)
					}
				case "container", "exited", "done":
					_, err = f.handle(mon, &keeperRequest{Op: s.op, Pid: s.pid, Status: s.status}, nil)
				case "exit":
					pid := s.pid
					if pid == 0 {
						pid = mon
					}
					f.handleExit(pid, s.status)
				}
				if err != nil {
					t.Fatalf("%s: %v", s.op, err)
				}
			}
			got, err := os.ReadFile(filepath.Join(dir, "ctr1"))
			if tc.want == "" {
				if err == nil {
					t.Fatalf("exit file %q written, want none", got)
				}
			} else if err != nil || string(got) != tc.want {
				t.Fatalf("exit file %q, %v; want %q", got, err, tc.want)
			}
			// The exit command runs (in a goroutine) exactly when the
			// keeper wrote the file.
			deadline := time.Now().Add(5 * time.Second)
			for {
				f.mu.Lock()
				n := len(f.exits)
				f.mu.Unlock()
				if (tc.want == "") == (n == 0) && n <= 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("exit command ran %d times", n)
				}
				time.Sleep(10 * time.Millisecond)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.byMon) != 0 || len(f.byCtr) != 0 {
				t.Errorf("state left: %d monitors, %d containers", len(f.byMon), len(f.byCtr))
			}
		})
	}
}

func TestKeeperRejects(t *testing.T) {
	f := newFakeKeeper(t, 41000)
	good := []string{"conmon", "-c", "c", "-u", "u", "-r", "/bin/true"}
	for _, tc := range []struct {
		name string
		peer int
		req  keeperRequest
		nfds int
		err  error
	}{
		{"unknown op", 1, keeperRequest{Op: "bogus"}, 0, errdefs.ErrInvalidArgument},
		{"report from a stranger", 1, keeperRequest{Op: keeperOpContainer, Pid: 5}, 0, errdefs.ErrPermissionDenied},
		{"no args", 1, keeperRequest{Op: keeperOpSpawn, FDs: []int{0, 1, 2}}, 3, errdefs.ErrInvalidArgument},
		{"bad command line", 1, keeperRequest{Op: keeperOpSpawn, Args: []string{"conmon", "--bogus"}, FDs: []int{0, 1, 2}}, 3, errdefs.ErrInvalidArgument},
		{"fd count mismatch", 1, keeperRequest{Op: keeperOpSpawn, Args: good, FDs: []int{0, 1}}, 3, errdefs.ErrInvalidArgument},
		{"stdio missing", 1, keeperRequest{Op: keeperOpSpawn, Args: good, FDs: []int{0, 1, 5}}, 3, errdefs.ErrInvalidArgument},
		{"repeated fd", 1, keeperRequest{Op: keeperOpSpawn, Args: good, FDs: []int{0, 1, 1}}, 3, errdefs.ErrInvalidArgument},
		{"fds with a report", 1, keeperRequest{Op: keeperOpDone}, 1, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := stdioFiles(t)[:tc.nfds]
			if _, err := f.handle(tc.peer, &tc.req, files); !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
		})
	}
	if len(f.cmds) != 0 {
		t.Fatalf("%d monitors started", len(f.cmds))
	}
}

func stdioFiles(t *testing.T) []*os.File {
	t.Helper()
	var files []*os.File
	for i := 0; i < 3; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		files = append(files, f)
	}
	return files
}

// TestKeeperSocket drives the keeper over its socket: a spawn request with
// fds (the fake start sees them at the numbers asked for), then the
// monitor's reports, which the keeper accepts from the pid it started
// (here: this test process) only.
func TestKeeperSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "k.sock")
	ln, err := listenKeeper(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenKeeper(sock); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second keeper: %v, want already exists", err)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", st.Mode(), err)
	}
	f := newFakeKeeper(t, os.Getpid())
	f.socket = sock
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	// Not a monitor yet: refused.
	if _, err := keeperCall(sock, &keeperRequest{Op: keeperOpContainer, Pid: 99}, nil, 5*time.Second); !errors.Is(err, errKeeperRefused) {
		t.Fatalf("report before spawn: %v, want refused", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	dn, _ := os.Open(os.DevNull)
	defer dn.Close()
	args := []string{"conmon", "-c", "ctr1", "-u", "u", "-r", "/bin/true", "--exit-dir", t.TempDir()}
	req := &keeperRequest{Op: keeperOpSpawn, Args: args, Env: []string{"A=1"}, Dir: "/", FDs: []int{0, 1, 2, 7}}
	rep, err := keeperCall(sock, req, []int{int(dn.Fd()), int(dn.Fd()), int(dn.Fd()), int(w.Fd())}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Pid != os.Getpid() {
		t.Fatalf("pid %d, want %d", rep.Pid, os.Getpid())
	}
	f.mu.Lock()
	cmd := f.cmds[0]
	f.mu.Unlock()
	if cmd.Path != "/peer-exe" || !slices.Equal(cmd.Args, args) || cmd.Dir != "/" ||
		!slices.Equal(cmd.Env, []string{"A=1", EnvKeeper + "=" + sock}) || !cmd.SysProcAttr.Setsid {
		t.Fatalf("monitor command %+v", cmd)
	}
	if len(cmd.ExtraFiles) != 5 || cmd.ExtraFiles[4] == nil || cmd.ExtraFiles[0] != nil {
		t.Fatalf("extra files %v, want fd 7 only", cmd.ExtraFiles)
	}
	for _, op := range []string{keeperOpContainer, keeperOpExited, keeperOpDone} {
		if _, err := keeperCall(sock, &keeperRequest{Op: op, Pid: 99, Status: 3}, nil, 5*time.Second); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	f.mu.Lock()
	e := f.byMon[os.Getpid()]
	f.mu.Unlock()
	if e == nil || e.ctr != 99 || !e.exited || e.status != 3 || !e.done {
		t.Fatalf("entry %+v", e)
	}
	// Stop: the socket stops answering.
	cancel()
	<-done
	if _, err := keeperCall(sock, &keeperRequest{Op: keeperOpDone}, nil, time.Second); !errors.Is(err, errKeeperUnreachable) {
		var ne net.Error
		if !errors.As(err, &ne) {
			t.Fatalf("after stop: %v, want unreachable", err)
		}
	}
}
