// Package conmon drives bin/conmon-v2 the way CRI-O does (command line,
// start and sync pipes, attach socket under --socket-dir-path, exit and
// persist files, ExecSync with --sync and -T) and runs every scenario
// against Debian's conmon 2.1.6 as well: both must produce the same sync
// messages, exit files, attach frames and log lines (pids and timestamps
// aside).
package conmon

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/testutil"
)

const debianConmon = "/usr/bin/conmon"

// harness is one monitor binary plus the directories CRI-O would use.
type harness struct {
	t        *testing.T
	bin      string
	dir      string
	rootfs   string
	runc     string
	runcRoot string
	exits    string
	sockets  string
}

func newHarness(t *testing.T, bin, rootfs string) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{
		t: t, bin: bin, dir: dir, rootfs: rootfs,
		runc:     testutil.NeedCommand(t, "runc"),
		runcRoot: filepath.Join(dir, "runc"),
		exits:    filepath.Join(dir, "exits"),
		sockets:  filepath.Join(dir, "attach"),
	}
	for _, d := range []string{h.runcRoot, h.exits, h.sockets} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// monitors returns the binaries to compare: conmon-v2 and, when
// installed, Debian's conmon.
func monitors(t *testing.T) map[string]string {
	m := map[string]string{"conmon-v2": testutil.Bin(t, "conmon-v2")}
	if _, err := os.Stat(debianConmon); err == nil {
		m["conmon"] = debianConmon
	} else {
		t.Logf("%s not installed: no side-by-side comparison", debianConmon)
	}
	return m
}

func sharedRootfs(t *testing.T) string {
	return testutil.BusyboxRootfs(t, filepath.Join(t.TempDir(), "rootfs"))
}

// processSpec is the process of a bundle's config.json.
func (h *harness) processSpec(args []string) map[string]any {
	return map[string]any{
		"terminal": false,
		"user":     map[string]any{"uid": 0, "gid": 0},
		"args":     args,
		"env":      []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
		"cwd":      "/",
		"capabilities": map[string]any{
			"bounding":  []string{"CAP_KILL"},
			"effective": []string{"CAP_KILL"},
			"permitted": []string{"CAP_KILL"},
		},
		"noNewPrivileges": true,
	}
}

// bundle writes an OCI bundle (runc's default spec, the busybox rootfs,
// no terminal) running args.
func (h *harness) bundle(id string, args []string, edit ...func(spec map[string]any)) string {
	h.t.Helper()
	b := filepath.Join(h.dir, "bundles", id)
	if err := os.MkdirAll(b, 0o755); err != nil {
		h.t.Fatal(err)
	}
	if out, err := exec.Command(h.runc, "spec", "--bundle", b).CombinedOutput(); err != nil {
		h.t.Fatalf("runc spec: %v: %s", err, out)
	}
	p := filepath.Join(b, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		h.t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		h.t.Fatal(err)
	}
	spec["process"] = h.processSpec(args)
	spec["root"] = map[string]any{"path": h.rootfs, "readonly": true}
	for _, e := range edit {
		e(spec)
	}
	data, _ = json.Marshal(spec)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		h.t.Fatal(err)
	}
	return b
}

// pipePair returns the caller's and the monitor's ends of a socketpair
// (CRI-O's sync and start pipes for create).
func pipePair(t *testing.T) (parent, child *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	_ = unix.SetNonblock(fds[0], true)
	return os.NewFile(uintptr(fds[0]), "parent"), os.NewFile(uintptr(fds[1]), "child")
}

// readLine reads one newline-terminated message, within 20 s.
func readLine(t *testing.T, f *os.File) string {
	t.Helper()
	_ = f.SetReadDeadline(time.Now().Add(20 * time.Second))
	var b []byte
	one := make([]byte, 1)
	for {
		n, err := f.Read(one)
		if n == 1 {
			b = append(b, one[0])
			if one[0] == '\n' {
				return string(b)
			}
		}
		if err != nil {
			return string(b)
		}
	}
}

// observation is what CRI-O (and a user) can see of one scenario.
type observation struct {
	Sync        []string
	ExitFile    string
	PersistExit string
	Attach      []string
	Log         []string
	RC          int
	OOMFile     bool
}

var (
	pidRE  = regexp.MustCompile(`"(pid|data|exit_code)": [0-9]+`)
	timeRE = regexp.MustCompile(`time=\\"[^"\\]*\\"`)
)

func normalize(msg string) string {
	msg = pidRE.ReplaceAllStringFunc(msg, func(s string) string {
		if strings.HasSuffix(s, " -1") {
			return s
		}
		k, _, _ := strings.Cut(s, ":")
		return k + ": N"
	})
	return timeRE.ReplaceAllString(msg, `time=\"T\"`)
}

// logLines returns a k8s-file's lines without their timestamps, after
// checking each has one.
func logLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if l == "" {
			continue
		}
		ts, rest, ok := strings.Cut(l, " ")
		if !ok {
			t.Fatalf("log line %q has no timestamp", l)
		}
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, rest)
	}
	return out
}

func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dialAttach connects to a SEQPACKET attach socket the way Podman and
// CRI-O do: through an O_PATH handle of its directory, so the path length
// does not matter.
func dialAttach(t *testing.T, path string) int {
	t.Helper()
	dfd, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	addr := &unix.SockaddrUnix{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dfd, filepath.Base(path))}
	if err := unix.Connect(fd, addr); err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	return fd
}

// readFrames reads attach messages until EOF (the monitor closes its
// clients when the container exited).
func readFrames(fd int, out chan<- []string) {
	var frames []string
	buf := make([]byte, 8193)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if n <= 0 || err != nil {
			break
		}
		frames = append(frames, fmt.Sprintf("%d:%s", buf[0], buf[1:n]))
	}
	unix.Close(fd)
	out <- frames
}

// create runs the monitor with CRI-O's CreateContainer arguments and
// returns the first sync message; the container is created, not started.
func (h *harness) create(id, bundle string, extra ...string) (syncMsg string, rc int, syncParent *os.File) {
	h.t.Helper()
	syncParent, syncChild := pipePair(h.t)
	startParent, startChild := pipePair(h.t)
	defer startParent.Close()
	args := []string{
		"-b", bundle, "-c", id, "--exit-dir", h.exits,
		"-l", filepath.Join(h.dir, id+".log"), "--log-level", "debug", "-n", "k8s_" + id,
		"-P", filepath.Join(bundle, "conmon-pidfile"), "-p", filepath.Join(bundle, "pidfile"),
		"--persist-dir", filepath.Join(h.dir, "persist", id), "-r", h.runc,
		"--runtime-arg", "--root=" + h.runcRoot, "--socket-dir-path", h.sockets, "--syslog", "-u", id,
	}
	if err := os.MkdirAll(filepath.Join(h.dir, "persist", id), 0o755); err != nil {
		h.t.Fatal(err)
	}
	cmd := exec.Command(h.bin, append(args, extra...)...)
	cmd.Dir = bundle
	cmd.Env = append(os.Environ(), "_OCI_SYNCPIPE=3", "_OCI_STARTPIPE=4", "EXITCMD_ENV=from-env")
	cmd.ExtraFiles = []*os.File{syncChild, startChild}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	syncChild.Close()
	startChild.Close()
	if _, err := startParent.Write([]byte{0}); err != nil {
		h.t.Fatal(err)
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		rc = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	if rc != 0 {
		h.t.Logf("%s exited %d: %s", h.bin, rc, stderr.String())
	}
	return readLine(h.t, syncParent), rc, syncParent
}

func (h *harness) runcCmd(args ...string) {
	h.t.Helper()
	out, err := exec.Command(h.runc, append([]string{"--root", h.runcRoot}, args...)...).CombinedOutput()
	if err != nil {
		h.t.Fatalf("runc %v: %v: %s", args, err, out)
	}
}

// createOK is create for a scenario that goes on with the container: the
// monitor must exit 0 and report a pid. The sync pipe is closed when the
// test ends.
func (h *harness) createOK(id, bundle string, extra ...string) {
	h.t.Helper()
	msg, rc, syncParent := h.create(id, bundle, extra...)
	h.t.Cleanup(func() { syncParent.Close() })
	if rc != 0 || !strings.HasPrefix(msg, `{"pid": `) {
		h.t.Fatalf("create: exit %d, sync %q", rc, msg)
	}
}

// startRunning starts the created container id; when the test ends it is
// deleted with force and its exit file awaited, so its monitor is gone.
func (h *harness) startRunning(id string) {
	h.t.Helper()
	h.runcCmd("start", id)
	h.t.Cleanup(func() {
		_ = exec.Command(h.runc, "--root", h.runcRoot, "delete", "-f", id).Run()
		waitFile(h.t, filepath.Join(h.exits, id))
	})
}

// waitLog waits up to 10 s for the file at path to contain s.
func waitLog(t *testing.T, path, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, _ := os.ReadFile(path); strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never logged %q", path, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// attachFrames connects to the attach socket at path and reads its frames
// until EOF; the function it returns waits for them, 20 s at most.
func attachFrames(t *testing.T, path string) func() []string {
	t.Helper()
	fd := dialAttach(t, path)
	frames := make(chan []string, 1)
	go readFrames(fd, frames)
	return func() []string {
		t.Helper()
		select {
		case f := <-frames:
			return f
		case <-time.After(20 * time.Second):
			t.Fatal("attach client never saw EOF")
			return nil
		}
	}
}

// compareMonitors runs scenario once per monitor, as a subtest named after
// it with its own harness (on one shared rootfs), and fails t unless both
// monitors observed the same (compare).
func compareMonitors(t *testing.T, scenario func(t *testing.T, h *harness) observation) {
	t.Helper()
	rootfs := sharedRootfs(t)
	got := map[string]observation{}
	for name, bin := range monitors(t) {
		t.Run(name, func(t *testing.T) {
			got[name] = scenario(t, newHarness(t, bin, rootfs))
		})
	}
	compare(t, got)
}

// TestCreateLikeCRIO is CRI-O's CreateContainer, start, attach and exit.
func TestCreateLikeCRIO(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("c0ffee")
		bundle := h.bundle(id, []string{"sh", "-c", "printf 'out\\ntwo\\n'; sleep 0.3; echo err >&2; sleep 0.3; printf partial; exit 3"})
		msg, rc, syncParent := h.create(id, bundle)
		defer syncParent.Close()
		if rc != 0 {
			t.Fatalf("create: exit %d", rc)
		}
		if !regexp.MustCompile(`^\{"pid": [0-9]+\}\n$`).MatchString(msg) {
			t.Fatalf("sync message %q, want {\"pid\": N}", msg)
		}
		// The conmon pid file names a live monitor.
		pidData := waitFile(t, filepath.Join(bundle, "conmon-pidfile"))
		mpid, err := strconv.Atoi(pidData)
		if err != nil || unix.Kill(mpid, 0) != nil {
			t.Fatalf("conmon-pidfile %q: not a live pid", pidData)
		}
		// Attach as CRI-O does, through the socket-dir symlink.
		link := filepath.Join(h.sockets, id)
		if target, err := os.Readlink(link); err != nil || target != bundle {
			t.Fatalf("symlink %s -> %q (%v), want the bundle", link, target, err)
		}
		frames := attachFrames(t, filepath.Join(link, "attach"))
		h.runcCmd("start", id)
		obs := observation{Sync: []string{normalize(msg)}}
		obs.ExitFile = waitFile(t, filepath.Join(h.exits, id))
		obs.PersistExit = waitFile(t, filepath.Join(h.dir, "persist", id, "exit"))
		obs.Attach = frames()
		obs.Log = logLines(t, filepath.Join(h.dir, id+".log"))
		h.runcCmd("delete", "-f", id)
		if obs.ExitFile != "3" || obs.PersistExit != "3" {
			t.Fatalf("exit files %q and %q, want 3", obs.ExitFile, obs.PersistExit)
		}
		want := []string{"stdout F out", "stdout F two", "stderr F err", "stdout P partial"}
		if !reflect.DeepEqual(obs.Log, want) {
			t.Fatalf("log lines %q, want %q", obs.Log, want)
		}
		wantFrames := []string{"2:out\ntwo\n", "3:err\n", "2:partial"}
		if !reflect.DeepEqual(obs.Attach, wantFrames) {
			t.Fatalf("attach frames %q, want %q", obs.Attach, wantFrames)
		}
		return obs
	})
}

// TestCreateFailureLikeCRIO: the runtime's error reaches the sync pipe.
func TestCreateFailureLikeCRIO(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("bad0")
		bundle := h.bundle(id, []string{"/nonexistent"})
		msg, rc, syncParent := h.create(id, bundle)
		syncParent.Close()
		if rc != 0 {
			t.Fatalf("first process exit %d, want 0 (failures go to the sync pipe)", rc)
		}
		if !strings.HasPrefix(msg, `{"pid": -1, "message": "`) || !strings.Contains(msg, `/nonexistent`) {
			t.Fatalf("sync message %q, want pid -1 with runc's error", msg)
		}
		_ = exec.Command(h.runc, "--root", h.runcRoot, "delete", "-f", id).Run()
		return observation{Sync: []string{normalize(msg)}}
	})
}

// TestExecSyncLikeCRIO is CRI-O's ExecSync: legacy exec with --sync, a
// plain pipe, the exit code in the sync message and in conmon's status,
// the output in a k8s-file; then the -T timeout.
func TestExecSyncLikeCRIO(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("e1ec")
		bundle := h.bundle(id, []string{"sleep", "1000"})
		h.createOK(id, bundle)
		h.startRunning(id)
		obs := observation{}
		o1 := h.execSync(id, []string{"sh", "-c", "echo eo; echo ee >&2; exit 4"}, nil)
		if o1.RC != 4 || o1.Sync[0] != "{\"exit_code\": 4}\n" {
			t.Fatalf("exec sync: rc %d, sync %q", o1.RC, o1.Sync)
		}
		if len(o1.Log) != 2 {
			t.Fatalf("exec log %q", o1.Log)
		}
		o2 := h.execSync(id, []string{"sleep", "10"}, []string{"-T", "1"})
		if o2.RC != 255 || o2.Sync[0] != "{\"exit_code\": -1, \"message\": \"command timed out\"}\n" {
			t.Fatalf("exec sync timeout: rc %d, sync %q", o2.RC, o2.Sync)
		}
		obs.Sync = append(o1.Sync, o2.Sync...)
		// stdout and stderr are two pipes: which of "eo" and "ee" is
		// read first is a race in either monitor, so compare them as a
		// set.
		obs.Log = slices.Sorted(slices.Values(o1.Log))
		obs.RC = o1.RC*1000 + o2.RC
		return obs
	})
}

func (h *harness) execSync(id string, args, extra []string) observation {
	h.t.Helper()
	dir := h.t.TempDir()
	spec, _ := json.Marshal(h.processSpec(args))
	specPath := filepath.Join(dir, "exec-process")
	if err := os.WriteFile(specPath, spec, 0o644); err != nil {
		h.t.Fatal(err)
	}
	logPath := filepath.Join(dir, "exec.log")
	syncR, syncW, err := os.Pipe()
	if err != nil {
		h.t.Fatal(err)
	}
	startR, startW, err := os.Pipe()
	if err != nil {
		h.t.Fatal(err)
	}
	a := []string{
		"-c", id, "-n", "k8s_" + id, "-r", h.runc, "-p", filepath.Join(dir, "pidfile"), "-e",
		"-l", logPath, "--socket-dir-path", h.sockets, "--log-level", "debug", "--sync",
		"--log-global-size-max", "16777216",
	}
	a = append(a, extra...)
	a = append(a, "--exec-process-spec", specPath, "--runtime-arg", "--root="+h.runcRoot)
	cmd := exec.Command(h.bin, a...)
	cmd.Env = append(os.Environ(), "_OCI_SYNCPIPE=3", "_OCI_STARTPIPE=4")
	cmd.ExtraFiles = []*os.File{syncW, startR}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	syncW.Close()
	startR.Close()
	startW.Write([]byte{0})
	startW.Close()
	err = cmd.Wait()
	rc := 0
	if ee, ok := err.(*exec.ExitError); ok {
		rc = ee.ExitCode()
	}
	msg := readLine(h.t, syncR)
	syncR.Close()
	return observation{Sync: []string{msg}, RC: rc, Log: logLines(h.t, logPath)}
}

// TestCtlReopenAndResize: several ctl lines in one write are all handled
// (conmon 2.1.6 lost all but the first), and "2 0 0" recreates a renamed
// log file. conmon-v2 only.
func TestCtlReopenAndResize(t *testing.T) {
	testutil.RequiresRoot(t)
	h := newHarness(t, testutil.Bin(t, "conmon-v2"), sharedRootfs(t))
	id := uniqueID("c71c")
	bundle := h.bundle(id, []string{"sh", "-c", "echo before; sleep 1; echo after; sleep 1000"})
	h.createOK(id, bundle)
	h.startRunning(id)
	logPath := filepath.Join(h.dir, id+".log")
	waitLog(t, logPath, "before")
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	ctl, err := os.OpenFile(filepath.Join(bundle, "ctl"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A resize without a terminal is ignored; the reopen must still happen.
	if _, err := ctl.Write([]byte("1 40 100\n2 0 0\n")); err != nil {
		t.Fatal(err)
	}
	ctl.Close()
	got := waitFile(t, logPath)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(got, "after") {
		if time.Now().After(deadline) {
			t.Fatalf("reopened log %q never got the next line", got)
		}
		time.Sleep(50 * time.Millisecond)
		got = waitFile(t, logPath)
	}
	if strings.Contains(got, "before") {
		t.Fatalf("reopened log %q holds the old line", got)
	}
}

// compare fails t unless every monitor observed the same.
func compare(t *testing.T, got map[string]observation) {
	t.Helper()
	ref, ok := got["conmon"]
	if !ok {
		return
	}
	v2, ok := got["conmon-v2"]
	if !ok {
		return
	}
	if !reflect.DeepEqual(ref, v2) {
		t.Fatalf("conmon-v2 differs from conmon 2.1.6:\nconmon:    %+v\nconmon-v2: %+v", ref, v2)
	}
}

// TestTrampolineSetsListenPid: the runtime started through conmon-v2's
// own binary (for --replace-listen-pid) sees LISTEN_PID equal to its pid,
// keeps its arguments and the rest of the environment.
func TestTrampolineSetsListenPid(t *testing.T) {
	bin := testutil.Bin(t, "conmon-v2")
	cmd := exec.Command(bin, "-c", `echo "$LISTEN_PID $$ $KEEP $1"`, "arg0", "arg1")
	cmd.Env = append(os.Environ(), "_CONMON_V2_RUNTIME=/bin/sh", "LISTEN_PID=1", "KEEP=kept")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) != 4 || f[0] != f[1] || f[2] != "kept" || f[3] != "arg1" {
		t.Fatalf("trampoline output %q: want LISTEN_PID = pid, env and args kept", out)
	}
}

// TestSignalAndExitCommand: SIGTERM to the monitor reaches the container;
// the exit command runs after --exit-delay with its arguments and the
// monitor's environment.
func TestSignalAndExitCommand(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("519a")
		bundle := h.bundle(id, []string{"sh", "-c", `trap "echo got-term; exit 9" TERM; echo up; while true; do sleep 0.1; done`})
		marker := filepath.Join(h.dir, "exit-command-ran")
		h.createOK(id, bundle,
			"--exit-command", "/bin/sh", "--exit-command-arg", "-c",
			"--exit-command-arg", `echo "$0 $EXITCMD_ENV [${GOMAXPROCS-unset}]" > `+marker, "--exit-command-arg", "arg0",
			"--exit-delay", "1")
		h.runcCmd("start", id)
		logPath := filepath.Join(h.dir, id+".log")
		waitLog(t, logPath, "up")
		mpid, err := strconv.Atoi(waitFile(t, filepath.Join(bundle, "conmon-pidfile")))
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Kill(mpid, unix.SIGTERM); err != nil {
			t.Fatal(err)
		}
		obs := observation{}
		obs.ExitFile = waitFile(t, filepath.Join(h.exits, id))
		exited := time.Now()
		ran := waitFile(t, marker)
		for deadline := time.Now().Add(10 * time.Second); !strings.HasSuffix(ran, "\n") && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond) // the shell creates the file, then writes
			ran = waitFile(t, marker)
		}
		t.Logf("exit command ran %v after the exit file (--exit-delay 1)", time.Since(exited))
		obs.Sync = []string{ran}
		obs.Log = logLines(t, logPath)
		h.runcCmd("delete", "-f", id)
		// The caller's environment, unchanged (conmon-v2 runs itself
		// with GOMAXPROCS=1 and must not pass that on).
		want := "arg0 from-env [unset]\n"
		if v, ok := os.LookupEnv("GOMAXPROCS"); ok {
			want = "arg0 from-env [" + v + "]\n"
		}
		if obs.ExitFile != "9" || ran != want {
			t.Fatalf("exit file %q (want 9), exit command wrote %q", obs.ExitFile, ran)
		}
		return obs
	})
}

// TestExecAttachLikePodman is Podman's exec: --api-version 1 with
// --exec-attach, the attach pipe message, the second start byte once the
// client is connected, the pid and then the exit code on the sync pipe,
// the exit file in the session's exit dir, and the attach frames.
func TestExecAttachLikePodman(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("e8ec")
		bundle := h.bundle(id, []string{"sleep", "1000"})
		h.createOK(id, bundle)
		h.startRunning(id)

		session := uniqueID("5e55")
		sdir := filepath.Join(bundle, session)
		if err := os.MkdirAll(filepath.Join(sdir, "exit"), 0o755); err != nil {
			t.Fatal(err)
		}
		spec, _ := json.Marshal(h.processSpec([]string{"sh", "-c", "printf 'xo\\n'; sleep 0.2; echo xe >&2; exit 4"}))
		specPath := filepath.Join(sdir, "exec-process")
		if err := os.WriteFile(specPath, spec, 0o644); err != nil {
			t.Fatal(err)
		}
		syncP, syncC := pipePair(t)
		startP, startC := pipePair(t)
		attP, attC := pipePair(t)
		defer syncP.Close()
		defer startP.Close()
		defer attP.Close()
		cmd := exec.Command(h.bin, "--api-version", "1", "-c", id, "-u", session, "-r", h.runc,
			"-b", sdir, "-p", filepath.Join(sdir, "exec_pid"), "-n", "name", "--exit-dir", filepath.Join(sdir, "exit"),
			"--full-attach", "-l", "none", "--log-level", "warning", "--runtime-arg", "--root="+h.runcRoot,
			"-e", "--exec-attach", "--exec-process-spec", specPath)
		cmd.Env = append(os.Environ(), "_OCI_SYNCPIPE=3", "_OCI_STARTPIPE=4", "_OCI_ATTACHPIPE=5")
		cmd.ExtraFiles = []*os.File{syncC, startC, attC}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		syncC.Close()
		startC.Close()
		attC.Close()
		startP.Write([]byte{0})
		if err := cmd.Wait(); err != nil {
			t.Fatalf("first process: %v", err)
		}
		obs := observation{}
		obs.Sync = append(obs.Sync, readLine(t, attP))
		frames := attachFrames(t, filepath.Join(sdir, "attach"))
		startP.Write([]byte{0})
		obs.Sync = append(obs.Sync, normalize(readLine(t, syncP)), readLine(t, syncP))
		obs.Attach = frames()
		obs.ExitFile = waitFile(t, filepath.Join(sdir, "exit", id))
		want := []string{"{\"data\": 0}\n", "{\"data\": N}\n", "{\"data\": 4}\n"}
		if !reflect.DeepEqual(obs.Sync, want) || obs.ExitFile != "4" {
			t.Fatalf("pipes %q, exit file %q; want %q and 4", obs.Sync, obs.ExitFile, want)
		}
		if wantFrames := []string{"2:xo\n", "3:xe\n"}; !reflect.DeepEqual(obs.Attach, wantFrames) {
			t.Fatalf("attach frames %q, want %q", obs.Attach, wantFrames)
		}
		return obs
	})
}

// TestOOMLikeCRIO: a container killed by the memory cgroup's OOM killer
// leaves an "oom" file in the bundle (CRI-O's working directory, where
// conmon 2.1.6 writes it) and in the persist dir, before the exit file.
func TestOOMLikeCRIO(t *testing.T) {
	testutil.RequiresRoot(t)
	t.Cleanup(func() {
		// runc delete removes the containers' cgroups, not their parent.
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/conmon-v2-test")
		more, _ := filepath.Glob("/sys/fs/cgroup/conmon-v2-test")
		for _, d := range append(dirs, more...) {
			_ = os.Remove(d)
		}
	})
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("00a1")
		limit := 16 << 20
		bundle := h.bundle(id, []string{"sh", "-c", "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; while true; do x=$x$x$x; done"},
			func(spec map[string]any) {
				linux := spec["linux"].(map[string]any)
				linux["cgroupsPath"] = "/conmon-v2-test/" + id
				linux["resources"] = map[string]any{"memory": map[string]any{"limit": limit, "swap": limit}}
			})
		h.createOK(id, bundle)
		h.runcCmd("start", id)
		obs := observation{ExitFile: waitFile(t, filepath.Join(h.exits, id))}
		_, err1 := os.Stat(filepath.Join(bundle, "oom"))
		_, err2 := os.Stat(filepath.Join(h.dir, "persist", id, "oom"))
		obs.OOMFile = err1 == nil && err2 == nil
		h.runcCmd("delete", "-f", id)
		if obs.ExitFile != "137" || !obs.OOMFile {
			t.Fatalf("exit file %q (want 137), oom files: bundle %v, persist dir %v", obs.ExitFile, err1, err2)
		}
		return obs
	})
}

// TestLogSizeMaxLikeConmon: --log-size-max truncates the k8s-file as
// conmon does (everything before the cut is gone, the file restarts).
func TestLogSizeMaxLikeConmon(t *testing.T) {
	testutil.RequiresRoot(t)
	compareMonitors(t, func(t *testing.T, h *harness) observation {
		id := uniqueID("512e")
		bundle := h.bundle(id, []string{"sh", "-c",
			"i=10; while [ $i -lt 70 ]; do echo line-$i-xxxxxxxx; i=$((i+1)); sleep 0.01; done"})
		h.createOK(id, bundle, "--log-size-max", "1000")
		h.runcCmd("start", id)
		obs := observation{ExitFile: waitFile(t, filepath.Join(h.exits, id))}
		h.runcCmd("delete", "-f", id)
		path := filepath.Join(h.dir, id+".log")
		fi, err := os.Stat(path)
		if err != nil || fi.Size() > 1000 {
			t.Fatalf("log file: %v, size %d > 1000", err, fi.Size())
		}
		obs.Log = logLines(t, path)
		if len(obs.Log) == 0 || obs.Log[len(obs.Log)-1] != "stdout F line-69-xxxxxxxx" {
			t.Fatalf("log after truncation %q", obs.Log)
		}
		return obs
	})
}

// uniqueID returns a 64-hex-digit container ID starting with prefix and
// unique to this run, so that runs never meet each other's leftovers
// (runc state, cgroups, journal entries).
func uniqueID(prefix string) string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return (prefix + hex.EncodeToString(b))[:64]
}
