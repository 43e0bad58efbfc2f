package resilience

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/shim/launch"
)

// counterScript prints 1, 2, 3, ... one number a line, about 5000 lines a
// second, until it is killed.
const counterScript = `i=0; while :; do i=$((i+1)); echo $i; if [ $((i % 50)) = 0 ]; then usleep 10000; fi; done`

// TestLiveUpgrade: a dense daemon serves two containers that print
// numbered lines without pause (one into a k8s-file log, one into the
// client's FIFOs and a k8s-file log) and an exec that does the same into
// FIFOs. The daemon is upgraded in place twice (SIGHUP). Then:
//   - it has the same pid, and the test's ttrpc connection, opened before,
//     still serves (no reconnect);
//   - every number is in every log and FIFO output once and in order;
//   - the exec started before the upgrades is killed after them and its
//     exit (137) is reported, as are the containers' (137);
//   - the daemon's log says how long each handover kept it from serving.
//
// It runs in the dense mode, and in the dense mode under a keeper (the
// daemon's parent, which the upgrade does not involve).
func TestLiveUpgrade(t *testing.T) {
	for _, mode := range []struct{ name, toml string }{
		// The k8s-file path comes from annotations: allowed here (a
		// Kubernetes container's may not name a host file by default).
		{"dense", "grouping = \"namespace\"\n[logging]\nannotation-allow = [\"path\"]\n"},
		{"keeper", "grouping = \"namespace\"\nkeeper = true\n[logging]\nannotation-allow = [\"path\"]\n"},
	} {
		t.Run(mode.name, func(t *testing.T) { testLiveUpgrade(t, mode.name, mode.toml) })
	}
}

func testLiveUpgrade(t *testing.T, name, toml string) {
	e := newEnv(t)
	e.configure(name, toml)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logDir := e.logDir()
	// The daemon's own log: the bundle's log FIFO of its first container.
	daemonLog, lf := readDaemonLog(t, filepath.Join(e.dir, "up0-"+e.suffix))
	defer lf.Close()

	kfile := func(i int) map[string]string { return k8sFile(filepath.Join(logDir, fmt.Sprintf("up%d.log", i))) }
	tasks := []*task{
		e.start(ctx, "up0", []string{"sh", "-c", counterScript}, false, kfile(0)),
		e.start(ctx, "up1", []string{"sh", "-c", counterScript}, true, kfile(1)),
	}
	// More containers, slower (500 lines a second), to measure the gap
	// against the number of tasks: CONMON_V2_UPGRADE_CONTAINERS=N.
	if v := os.Getenv("CONMON_V2_UPGRADE_CONTAINERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("CONMON_V2_UPGRADE_CONTAINERS=%q", v)
		}
		slow := strings.Replace(counterScript, "usleep 10000", "usleep 100000", 1)
		for i := len(tasks); i < n; i++ {
			tasks = append(tasks, e.start(ctx, fmt.Sprintf("up%d", i), []string{"sh", "-c", slow}, false, kfile(i)))
		}
	}
	s := tasks[0].shim // the connection that must survive
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// An exec printing numbers into FIFOs.
	execOut, execIO := e.startCounterExec(ctx, s, tasks[1].id)
	defer execIO.Close()

	// An exec with a terminal and stdin (cat): lines sent before and
	// after the upgrades come back through the terminal.
	tty := e.startTTYExec(ctx, s, tasks[0].id)
	defer tty.close()
	tty.say("before-upgrade")
	tty.echoed("before-upgrade")

	// A Monitor API subscriber that subscribes again at once whenever its
	// stream ends (as conmonctl events does): it must not hold up the
	// upgrades, and it must see events after them.
	var (
		subMu     sync.Mutex
		subTopics []string
		resubs    int
	)
	subCtx, stopSub := context.WithCancel(ctx)
	subbed := make(chan struct{})
	go func() {
		defer close(subbed)
		for subCtx.Err() == nil {
			evc, errc, err := s.Subscribe(subCtx, "/tasks/exit")
			if err != nil {
				if subCtx.Err() == nil {
					t.Errorf("subscribe: %v", err)
				}
				return
			}
			for ev := range evc {
				subMu.Lock()
				subTopics = append(subTopics, ev.Topic)
				subMu.Unlock()
			}
			<-errc
			subMu.Lock()
			resubs++
			subMu.Unlock()
		}
	}()

	// Probe: Info on the same connection in a loop; the longest call is
	// the gap a client sees.
	var (
		mu      sync.Mutex
		longest time.Duration
		calls   int
	)
	stopProbe := make(chan struct{})
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stopProbe:
				return
			default:
			}
			t0 := time.Now()
			_, err := s.Info(ctx)
			d := time.Since(t0)
			mu.Lock()
			calls++
			if err == nil {
				longest = max(longest, d)
			}
			mu.Unlock()
			if err != nil {
				t.Errorf("Info during the upgrades: %v", err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()

	upgradeTwice(ctx, t, s, before, time.Second)
	time.Sleep(time.Second)
	close(stopProbe)
	<-probed

	// Every task still there, running, on the old connection.
	for _, tk := range tasks {
		st, err := s.State(ctx, tk.id, "")
		if err != nil {
			t.Fatalf("state of %s after the upgrades: %v", tk.id, err)
		}
		if st.Status != client.Running {
			t.Fatalf("%s is %v after the upgrades", tk.id, st.Status)
		}
	}
	// The terminal exec: stdin and output still flow, the pty resizes.
	tty.say("after-upgrade")
	tty.echoed("after-upgrade")
	if err := s.ResizePty(ctx, tasks[0].id, "tty", 100, 40); err != nil {
		t.Errorf("resize after the upgrades: %v", err)
	}
	tty.stop(ctx, s, tasks[0].id)

	// The exec's exit is reported after the upgrades.
	if err := s.Kill(ctx, tasks[1].id, "counter", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	w, err := s.Wait(ctx, tasks[1].id, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if w.Status != 137 {
		t.Errorf("exec exited %d, want 137", w.Status)
	}
	if _, err := s.Delete(ctx, tasks[1].id, "counter"); err != nil {
		t.Errorf("delete exec: %v", err)
	}
	// The resubscribing client saw the two exec exits after the upgrades.
	eventually(t, 10*time.Second, func() error {
		subMu.Lock()
		defer subMu.Unlock()
		if len(subTopics) < 2 {
			return fmt.Errorf("subscriber got %q (%d subscriptions ended)", subTopics, resubs)
		}
		return nil
	})
	stopSub()
	<-subbed
	subMu.Lock()
	t.Logf("subscriber: %d events after the upgrades, its stream ended %d times", len(subTopics), resubs)
	subMu.Unlock()
	killTasks(ctx, t, s, tasks)
	if tasks[1].io != nil && !tasks[1].io.Wait(10*time.Second) {
		t.Errorf("%s: FIFO output did not end", tasks[1].id)
	}
	if !execIO.Wait(10 * time.Second) {
		t.Errorf("exec: FIFO output did not end")
	}
	for _, tk := range tasks {
		tk.remove(t)
	}

	for i := range tasks {
		n, _ := checkSeqLog(t, filepath.Join(logDir, fmt.Sprintf("up%d.log", i)), -1)
		if i < 2 {
			t.Logf("up%d.log: %d numbers in order", i, n)
		}
		if n < 500 {
			t.Errorf("up%d.log: only %d numbers", i, n)
		}
	}
	checkSeqText(t, "up1 FIFO", tasks[1].out.String())
	checkSeqText(t, "exec FIFO", execOut.String())

	mu.Lock()
	t.Logf("longest Info call during the upgrades: %v (%d calls)", longest, calls)
	mu.Unlock()
	for _, line := range strings.Split(daemonLog.String(), "\n") {
		if strings.Contains(line, "upgrade:") {
			t.Log("daemon: " + line)
		}
	}
}

// checkSeqText checks raw output that should hold "1\n2\n...": every
// number once and in order (the last line may be cut by the kill).
func checkSeqText(t *testing.T, what, out string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	if len(lines) > 0 {
		lines = lines[:len(lines)-1] // after the last newline: cut or empty
	}
	for k, l := range lines {
		if l != strconv.Itoa(k+1) {
			t.Errorf("%s: line %d is %q, want %d", what, k+1, l, k+1)
			return
		}
	}
	t.Logf("%s: %d numbers in order", what, len(lines))
	if len(lines) < 1000 {
		t.Errorf("%s: only %d numbers", what, len(lines))
	}
}

// TestLiveUpgradeContainerd: the shim under a private containerd 1.6
// (driven by ctr) is upgraded in place while a container prints numbered
// lines into a file:// log. containerd deletes a task as soon as its
// shim's connection closes, so the task still RUNNING afterwards, an exec
// that works, the kill's exit code and a log with every number prove that
// containerd's connection survived the exec.
func TestLiveUpgradeContainerd(t *testing.T) {
	c := startContainerd(t, "ctrd-up", "")
	outLog := filepath.Join(c.Dir, "up.log")
	addr := c.runCounter("up", outLog)
	s, err := client.Connect(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ {
		time.Sleep(500 * time.Millisecond)
		before = upgradeOnce(ctx, t, s, before, round)
		c.checkServes("up", round, "upgrade", "after-upgrade")
	}
	// containerd logs "shim disconnected" when a shim's connection closes
	// (it does at the end, after the task's removal).
	c.checkConnectionKept()
	c.killAndRemove("up")
	data, err := os.ReadFile(outLog)
	if err != nil {
		t.Fatal(err)
	}
	checkSeqText(t, "file:// log", string(data))
	// The shim's log reaches containerd's: its handover figures.
	for _, line := range strings.Split(c.Log(), "\n") {
		if strings.Contains(line, "upgrade: ") {
			t.Log("shim: " + line)
		}
	}
}

// upgradeTwice upgrades the daemon s talks to in place twice, pause
// apart: by SIGHUP, then by the Monitor API's Upgrade on s.
func upgradeTwice(ctx context.Context, t *testing.T, s *client.Shim, before client.ShimInfo, pause time.Duration) {
	t.Helper()
	for round := 1; round <= 2; round++ {
		time.Sleep(pause) // output flows meanwhile
		before = upgradeOnce(ctx, t, s, before, round)
	}
}

// upgradeOnce upgrades the daemon, by SIGHUP in round 1 and by the
// Monitor API's Upgrade on s after, and waits until the new binary
// answers on s. The pid and StartedAt must not change.
func upgradeOnce(ctx context.Context, t *testing.T, s *client.Shim, before client.ShimInfo, round int) client.ShimInfo {
	t.Helper()
	if round == 1 {
		if err := syscall.Kill(int(before.Pid), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	} else if _, err := s.Upgrade(ctx, ""); err != nil {
		t.Fatalf("round %d: Upgrade: %v", round, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := s.WaitUpgraded(wctx, before)
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	if info.Pid != before.Pid || !info.StartedAt.Equal(before.StartedAt) {
		t.Fatalf("round %d: daemon pid %d started %v, was %d started %v", round, info.Pid, info.StartedAt, before.Pid, before.StartedAt)
	}
	how := "SIGHUP"
	if round > 1 {
		how = "Monitor API Upgrade"
	}
	t.Logf("round %d (%s): upgraded in place, pid %d, binary %s", round, how, info.Pid, info.Binary)
	return info
}

// TestLiveUpgradeBinaryLogger: a container whose output goes to a
// binary:// logger (containerd's --log-uri binary://) is handed over with
// its logger: the same logger process keeps receiving the output through
// the same pipes across the upgrade (every number once, in order), and
// the new binary stops it when the task is deleted.
func TestLiveUpgradeBinaryLogger(t *testing.T) {
	e := newEnv(t)
	l := e.binaryLogger("binlog", "grouping = \"namespace\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, id := e.startRaw(ctx, "bin", client.Stdio{Stdout: l.uri, Stderr: l.uri})
	l.waitMore(0, "no output at the logger yet")
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	upgradeOnce(ctx, t, s, before, 2)
	l.waitMore(l.size(), "the logger gets no output after the upgrade")
	time.Sleep(time.Second)
	killAndDelete(ctx, t, s, id)
	checkSeqText(t, "binary:// logger", l.output())
	l.checkStartedOnce()
}

// TestLiveUpgradeRefused: a handover that cannot be done in time (a
// client that stopped reading its output FIFO, so the copier is stuck on
// it) is called off after Upgrade answered: the daemon thaws and serves on,
// on the same connection, with the same binary; Info reports why; once
// the client reads again it gets every number, once and in order, and the
// exit code is right. It waits out the handover's 10 s bound.
func TestLiveUpgradeRefused(t *testing.T) {
	e := newEnv(t)
	e.configure("refused", "grouping = \"namespace\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(e.dir, "stuck-out")
	if err := unix.Mkfifo(out, 0o600); err != nil {
		t.Fatal(err)
	}
	// Held open for reading (so the shim's open succeeds), not read yet.
	rd, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// seq writes as fast as it can: the FIFO fills, the copier waits on
	// it (and seq on its pipe).
	s, id := e.startRaw(ctx, "stuck", client.Stdio{Stdout: out}, "seq", "1", "1000000000")
	eventually(t, 30*time.Second, func() error {
		// Not rd.Fd(): it would make rd blocking, and its Close could no
		// longer end the reader below.
		var n int
		rc, err := rd.SyscallConn()
		if err == nil {
			cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) }) // FIONREAD
			if err == nil {
				err = cerr
			}
		}
		if err != nil || n < 60000 {
			return fmt.Errorf("FIFO holds %d bytes (%v)", n, err)
		}
		return nil
	})
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upgrade(ctx, ""); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	var info client.ShimInfo
	eventually(t, 30*time.Second, func() error {
		if info, err = s.Info(ctx); err != nil {
			return err
		}
		if info.UpgradeError == "" {
			return fmt.Errorf("no upgrade failure reported yet")
		}
		return nil
	})
	t.Logf("reported: %s", info.UpgradeError)
	if !strings.Contains(info.UpgradeError, "busy") {
		t.Errorf("upgrade error %q does not name the busy copier", info.UpgradeError)
	}
	if info.Pid != before.Pid || !info.ExecAt.Equal(before.ExecAt) {
		t.Errorf("the daemon changed: pid %d exec_at %v, was %d %v", info.Pid, info.ExecAt, before.Pid, before.ExecAt)
	}
	// The client reads again: everything arrives.
	outBuf := &testutil.SyncBuffer{}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		_, _ = io.Copy(outBuf, rd)
	}()
	time.Sleep(time.Second)
	killAndDelete(ctx, t, s, id)
	rd.Close() // we held a writer-less read end: no EOF to wait for
	<-copied
	checkSeqText(t, "FIFO after the failed upgrade", outBuf.String())
}

// startRaw creates and starts a container running args (default: the
// counter) in the env's group with the given stdio, on a connection of
// its own; the container is removed at the end of the test.
func (e *env) startRaw(ctx context.Context, name string, stdio client.Stdio, args ...string) (*client.Shim, string) {
	t := e.t
	t.Helper()
	id := name + "-" + e.suffix
	if len(args) == 0 {
		args = []string{"sh", "-c", counterScript}
	}
	bundle, _, s := e.launch(ctx, id, client.SpecOpts{Args: args, Hostname: id,
		Annotations: map[string]string{client.GroupAnnotation: e.group}})
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.Kill(cctx, id, "", uint32(unix.SIGKILL), true)
		_, _ = s.Wait(cctx, id, "")
		_, _ = s.Delete(cctx, id, "")
		s.Close()
		_, _ = client.DeleteShim(cctx, e.opts, id, bundle)
	})
	if _, err := s.Create(ctx, client.CreateOpts{ID: id, Bundle: bundle, Stdio: stdio}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	return s, id
}

// TestLiveUpgradeExecFails: the new binary cannot be executed once the
// handover is committed (it is open for writing: execve fails with
// ETXTBSY, which no check before can foresee). The daemon then execs its
// own binary again with the same handover: it serves on, on the same
// connection, with the old binary, and no output is lost.
func TestLiveUpgradeExecFails(t *testing.T) {
	e := newEnv(t)
	e.configure("execfail", "grouping = \"namespace\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tk := e.start(ctx, "xf", []string{"sh", "-c", counterScript}, true, nil)
	s := tk.shim
	data, err := os.ReadFile(testutil.Bin(t, launch.DaemonBinary)) // the file that is exec'd
	if err != nil {
		t.Fatal(err)
	}
	busy := filepath.Join(e.dir, "busy-shim")
	if err := os.WriteFile(busy, data, 0o755); err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(busy, os.O_WRONLY, 0) // execve: ETXTBSY
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	time.Sleep(500 * time.Millisecond)
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upgrade(ctx, busy); err != nil {
		t.Fatalf("Upgrade: %v", err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	info, err := s.WaitUpgraded(wctx, before)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	if info.Pid != before.Pid || info.Binary == busy {
		t.Fatalf("after the failed exec: pid %d binary %s, want pid %d and the old binary", info.Pid, info.Binary, before.Pid)
	}
	t.Logf("re-executed %s after the exec of %s failed", info.Binary, busy)
	time.Sleep(500 * time.Millisecond)
	tk.remove(t)
	if !tk.io.Wait(10 * time.Second) {
		t.Fatal("FIFO output did not end")
	}
	checkSeqText(t, "FIFO", tk.out.String())
}

// TestLiveUpgradeGroupJoin: the group's bookkeeping survives an upgrade.
// A daemon whose last container was just deleted (it leaves after a short
// grace unless a new member was announced) gets a new member announced by
// start, then is upgraded: the new binary waits for that member's Create,
// which succeeds seconds later; once that container is deleted too, the
// new binary leaves after the grace.
func TestLiveUpgradeGroupJoin(t *testing.T) {
	e := newEnv(t)
	e.configure("join", "grouping = \"namespace\"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	first := e.start(ctx, "j1", []string{"sleep", "100"}, false, nil)
	info, err := first.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first.remove(t) // the daemon is empty: it leaves after its grace...
	// ... unless start announces a member (Join) first.
	id := "j2-" + e.suffix
	bundle, _, s := e.launch(ctx, id, client.SpecOpts{Args: []string{"sleep", "100"}, Hostname: id,
		Annotations: map[string]string{client.GroupAnnotation: e.group}})
	defer s.Close()
	t.Cleanup(func() {
		_ = s.Kill(context.Background(), id, "", uint32(unix.SIGKILL), true)
		_, _ = client.DeleteShim(context.Background(), e.opts, id, bundle)
	})
	before, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.Pid != info.Pid {
		t.Fatalf("start spawned daemon %d instead of joining %d", before.Pid, info.Pid)
	}
	upgradeOnce(ctx, t, s, before, 2)
	time.Sleep(3 * time.Second) // longer than the grace (2 s)
	if _, err := s.Create(ctx, client.CreateOpts{ID: id, Bundle: bundle}); err != nil {
		t.Fatalf("create of the member announced before the upgrade: %v", err)
	}
	if _, err := s.Start(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	killAndDelete(ctx, t, s, id)
	eventually(t, 15*time.Second, func() error {
		if alive(int(before.Pid)) {
			return fmt.Errorf("daemon %d still runs with no task", before.Pid)
		}
		return nil
	})
}
