package resilience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// TestKeeperCustody: under a keeper (keeper = true), the daemon gives the
// keeper a duplicate of every pipe it reads (descriptor custody). Two
// containers print numbered lines without pause, one into a k8s-file log,
// the other into the client's FIFOs and a k8s-file log, an exec of the
// second into FIFOs, and a terminal exec (cat) of the first reads stdin
// from the client's FIFO; the second's client reads its stdout FIFO
// slowly, so that its copier is mostly in the middle of a batch; the
// daemon is killed with SIGKILL custodyKills times (with a live upgrade
// between the first two kills); the keeper restarts it each time with the
// held descriptors and a handover description, and the new daemon
// restores the tasks (service.Restore). Afterwards every number is in
// each log and FIFO, once and in order (the output written while no
// daemon ran waited in the pipes; the batch a kill cut was in the
// stream's journal, written out by the next daemon), the connections opened before the
// crashes still answer (the keeper held them too), the exit codes are
// right, and once the containers are deleted the keeper holds no more
// descriptors than before they were created.
func TestKeeperCustody(t *testing.T) {
	e := newEnv(t)
	// The logs are named by annotations of a spec with a Kubernetes
	// annotation (the group key): allowed explicitly.
	e.configure("custody", "keeper = true\n[logging]\nannotation-allow = [\"path\"]\n")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logDir := e.logDir()
	// The daemons' own log (the keeper's stderr, which each daemon it
	// starts inherits): the bundle's log FIFO of the first container.
	daemonLog, lf := readDaemonLog(t, filepath.Join(e.dir, "anchor-"+e.suffix))
	defer lf.Close()
	// An idle container without stdio keeps the group (daemon and
	// keeper) alive; the keeper's descriptors are counted with it alone.
	anchor := e.start(ctx, "anchor", []string{"sleep", "1000"}, false, nil)
	info, err := anchor.shim.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keeper := ppid(t, int(info.Pid))
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", keeper)); !strings.HasPrefix(string(comm), "containerd-shim") {
		t.Fatalf("daemon %d's parent %d is %q, not a keeper", info.Pid, keeper, comm)
	}
	baseline := fdCount(t, keeper)

	kfile := func(i int) map[string]string { return k8sFile(filepath.Join(logDir, fmt.Sprintf("kc%d.log", i))) }
	// kc1's client reads its stdout FIFO slowly until the kills are
	// done: the FIFO stays full, so the copier spends its time writing
	// into it, and each kill most likely cuts a batch that the FIFO has
	// in part and the k8s-file log (written after it) not at all.
	slow := &slowWriter{}
	slow.on.Store(true)
	e.slowOut = func(w io.Writer) io.Writer { slow.w = w; return slow }
	tasks := []*task{
		e.start(ctx, "kc0", []string{"sh", "-c", counterScript}, false, kfile(0)),
		e.start(ctx, "kc1", []string{"sh", "-c", counterScript}, true, kfile(1)),
	}
	// An exec printing numbers into the client's FIFOs: after a crash it
	// is the keeper's child, watched by the new daemon through a pidfd.
	execOut, execIO := e.startCounterExec(ctx, tasks[1].shim, tasks[1].id)
	defer execIO.Close()
	// A terminal exec (cat) with stdin from the client's FIFO: the keeper
	// holds the terminal's master and the FIFO, so a line written while
	// no daemon runs waits in the FIFO and comes back after.
	tty := e.startTTYExec(ctx, tasks[0].shim, tasks[0].id)
	defer tty.close()
	tty.say("before-crash")
	tty.echoed("before-crash")
	held := fdCount(t, keeper)
	t.Logf("keeper %d: %d descriptors with the anchor alone, %d with the two counters", keeper, baseline, held)
	if held <= baseline {
		t.Errorf("the keeper holds no descriptor of the counters (%d, baseline %d)", held, baseline)
	}

	// A probe calls Info on a connection opened before the crashes, in a
	// loop, each call bounded: a call the dead daemon had read is never
	// answered (it times out); the others are, by whichever daemon runs.
	s := anchor.shim // the connection that must survive
	var (
		mu                sync.Mutex
		calls, timeouts   int
		otherErrs         []error
		longest           time.Duration
		stopProbe, probed = make(chan struct{}), make(chan struct{})
	)
	go func() {
		defer close(probed)
		for {
			select {
			case <-stopProbe:
				return
			default:
			}
			cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
			t0 := time.Now()
			_, err := s.Info(cctx)
			d := time.Since(t0)
			ccancel()
			mu.Lock()
			calls++
			switch {
			case err == nil:
				longest = max(longest, d)
			case errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "deadline exceeded"):
				timeouts++
			default:
				otherErrs = append(otherErrs, err)
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	daemon := int(info.Pid)
	for round := 1; round <= custodyKills; round++ {
		time.Sleep(time.Second)
		if round == 2 {
			// A live upgrade in between: the daemon keeps its custody
			// socket across the exec and holds everything again. The
			// upgrade's freeze waits for every copier's write in
			// progress (10 s at most); a batch into the slow client's
			// FIFO could take longer, so the client reads at full speed
			// until the upgrade is done.
			slow.on.Store(false)
			info = upgradeOnce(ctx, t, s, info, 1)
			slow.on.Store(true)
			time.Sleep(time.Second)
		}
		killBusy(t, daemon)
		killed := time.Now()
		tty.say(fmt.Sprintf("during-crash-%d", round)) // most likely before the new daemon runs
		info = waitNewDaemon(ctx, t, s, daemon, "the old connection")
		t.Logf("round %d: daemon %d killed; daemon %d (parent %d) answers on the same connection after %v with %d tasks",
			round, daemon, info.Pid, ppid(t, int(info.Pid)), time.Since(killed).Round(time.Millisecond), info.Tasks)
		if ppid(t, int(info.Pid)) != keeper {
			t.Errorf("new daemon's parent is %d, want the keeper %d", ppid(t, int(info.Pid)), keeper)
		}
		daemon = int(info.Pid)
		for _, tk := range append([]*task{anchor}, tasks...) {
			// Each task's own connection survived too.
			st, err := tk.shim.State(ctx, tk.id, "")
			if err != nil || st.Status != client.Running {
				t.Fatalf("round %d: State of %s on its connection: %+v %v", round, tk.id, st, err)
			}
		}
	}
	time.Sleep(time.Second)
	slow.on.Store(false)
	close(stopProbe)
	<-probed
	mu.Lock()
	t.Logf("probe on the old connection: %d Info calls, %d timed out (read by a daemon that was killed), longest answered %v",
		calls, timeouts, longest.Round(time.Millisecond))
	if len(otherErrs) > 0 {
		t.Errorf("probe: %d calls failed otherwise than by a timeout, first: %v", len(otherErrs), otherErrs[0])
	}
	mu.Unlock()
	// The terminal exec: what was written during the crashes and after
	// comes back.
	tty.say("after-crash")
	for _, w := range []string{"during-crash-1", "during-crash-2", "after-crash"} {
		tty.echoed(w)
	}
	tty.stop(ctx, s, tasks[0].id)
	// The exec, still running and watched: its kill's status is reported.
	if st, err := s.State(ctx, tasks[1].id, "counter"); err != nil || st.Status != client.Running {
		t.Errorf("exec after the crashes: %+v %v, want running", st, err)
	}
	if err := s.Kill(ctx, tasks[1].id, "counter", uint32(unix.SIGKILL), false); err != nil {
		t.Fatal(err)
	}
	if w, err := s.Wait(ctx, tasks[1].id, "counter"); err != nil || w.Status != 137 {
		t.Errorf("exec: %+v %v, want 137", w, err)
	}
	if !execIO.Wait(10 * time.Second) {
		t.Errorf("exec: FIFO output did not end")
	}
	if _, err := s.Delete(ctx, tasks[1].id, "counter"); err != nil {
		t.Errorf("delete exec: %v", err)
	}
	killTasks(ctx, t, s, tasks)
	if !tasks[1].io.Wait(10 * time.Second) {
		t.Errorf("%s: FIFO output did not end", tasks[1].id)
	}
	for _, tk := range tasks {
		tk.done = true
		if _, err := s.Delete(ctx, tk.id, ""); err != nil {
			t.Errorf("delete %s: %v", tk.id, err)
		}
		tk.shim.Close()
		if tk.io != nil {
			tk.io.Close()
		}
	}
	// What a killed daemon had read and not yet written to every
	// destination (its in-flight read) is in the stream's journal, which
	// the keeper holds; the next daemon writes it before it reads the
	// pipe again, and truncates what a cut write had put in a log file
	// first. So each log and FIFO holds every number once and in order:
	// no gap, no repeat.
	for i := range tasks {
		path := filepath.Join(logDir, fmt.Sprintf("kc%d.log", i))
		checkCustodySeq(t, fmt.Sprintf("kc%d.log", i), readK8sLines(t, path), 0, 0)
	}
	checkCustodySeq(t, "kc1 FIFO", strings.Split(strings.TrimSuffix(tasks[1].out.String(), "\n"), "\n"), 0, 0)
	checkCustodySeq(t, "exec FIFO", strings.Split(strings.TrimSuffix(execOut.String(), "\n"), "\n"), 0, 0)
	// The kills did cut batches (the slow FIFO's copier is mostly in the
	// middle of one): the next daemons wrote them from the journals.
	replays := 0
	for _, l := range strings.Split(daemonLog.String(), "\n") {
		if strings.Contains(l, "keeper journal: writing what the previous daemon read") {
			replays++
			t.Logf("daemon log: %s", l)
			// Every destination here is a FIFO (kind=pipe) or a
			// k8s-file log (kind=file: a cut write is truncated
			// first); kind=other would repeat a cut write, as when
			// the shim's tap writer hid the log file from the
			// journal.
			if !strings.Contains(l, "kind=pipe") && !strings.Contains(l, "kind=file") {
				t.Errorf("a journal replay to a destination that is neither a pipe nor a rewindable file: %s", l)
			}
		}
	}
	if replays == 0 {
		t.Errorf("no daemon wrote anything from a journal: the kills cut no batch, and the test shows nothing")
	}

	// Connections come and go without leaving a descriptor in the daemon
	// or the keeper.
	daemonFDs := fdCount(t, daemon)
	for k := 0; k < 20; k++ {
		c, err := client.Connect(ctx, anchor.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Info(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	eventually(t, 10*time.Second, func() error {
		if n := fdCount(t, daemon); n > daemonFDs {
			return fmt.Errorf("daemon holds %d descriptors after 20 connections came and went, %d before", n, daemonFDs)
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		if n := fdCount(t, keeper); n != baseline {
			return fmt.Errorf("keeper holds %d descriptors after the counters were deleted, %d before they were created", n, baseline)
		}
		return nil
	})
	anchor.remove(t)
	eventually(t, 30*time.Second, func() error {
		for _, pid := range []int{daemon, keeper} {
			if ps := process.ProcStatus(pid); ps.Exists && !ps.Zombie {
				return fmt.Errorf("pid %d still runs", pid)
			}
		}
		return nil
	})
}

// custodyKills is how many times TestKeeperCustody kills the daemon: the
// keeper's limit (keeperMaxRestarts, 5 within a minute).
const custodyKills = 5

// killBusy kills pid with SIGKILL at a moment when one of its threads is
// on a CPU (state R in /proc/pid/task/*/stat), waiting at most a second
// for one: most likely a copier between its read and its writes, the
// moment a crash can cut. Reading the states takes tens of microseconds,
// so the kill lands in the same busy spell.
func killBusy(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	dir := fmt.Sprintf("/proc/%d/task", pid)
	for time.Now().Before(deadline) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			break
		}
		busy := false
		for _, e := range ents {
			data, err := os.ReadFile(dir + "/" + e.Name() + "/stat")
			if err != nil {
				continue
			}
			// The state follows the command's closing parenthesis.
			if k := bytes.LastIndexByte(data, ')'); k >= 0 && k+2 < len(data) && data[k+2] == 'R' {
				busy = true
				break
			}
		}
		if busy {
			break
		}
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// slowWriter passes writes on to w, at about 2.5 KB/s while on (less
// than a counter prints, so that the FIFO stays full).
type slowWriter struct {
	w  io.Writer
	on atomic.Bool
}

func (s *slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := len(p)
		if s.on.Load() {
			k = min(k, 64)
			time.Sleep(25 * time.Millisecond)
		}
		m, err := s.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// readK8sLines returns the lines of a k8s-file log, partial records joined.
func readK8sLines(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		out     []string
		pending []byte
	)
	for _, l := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var rec logging.Record
		if !logging.ParseK8sLine(l, &rec) {
			t.Fatalf("%s: bad line %q", path, l)
		}
		pending = append(pending, rec.Line...)
		if !rec.Partial {
			out = append(out, string(pending))
			pending = pending[:0]
		}
	}
	return out
}

// checkCustodySeq checks lines that should be "1", "2", ...: in order,
// no repeats, at most maxGaps gaps, each of at most maxGapBytes of output
// (the in-flight read of a killed daemon). It logs what it found.
func checkCustodySeq(t *testing.T, what string, lines []string, maxGaps, maxGapBytes int) {
	t.Helper()
	var gaps []string
	next := 1
	for k, l := range lines {
		n, err := strconv.Atoi(l)
		if err != nil || n < next {
			t.Errorf("%s: line %d is %q after %d: not the next number", what, k+1, l, next-1)
			return
		}
		if n > next {
			size := 0
			for m := next; m < n; m++ {
				size += len(strconv.Itoa(m)) + 1
			}
			gaps = append(gaps, fmt.Sprintf("%d..%d (%d lines, %d bytes)", next, n-1, n-next, size))
			if size > maxGapBytes {
				t.Errorf("%s: %d..%d missing, %d bytes: more than one read (%d)", what, next, n-1, size, maxGapBytes)
			}
		}
		next = n + 1
	}
	t.Logf("%s: %d numbers up to %d, in order, no repeats; gaps: %d %v", what, len(lines), next-1, len(gaps), gaps)
	if len(gaps) > maxGaps {
		t.Errorf("%s: %d gaps, more than the %d kills", what, len(gaps), maxGaps)
	}
	if next-1 < 1000 {
		t.Errorf("%s: only up to %d", what, next-1)
	}
}

// TestKeeperCustodyBinaryLogger: a container whose output goes to a
// binary:// logger (containerd's --log-uri binary://), under a keeper,
// across two kills -9 of the daemon: the logger, the dead daemon's child
// and then the keeper's, keeps its pipes (the keeper holds their write
// ends), the new daemon watches it through a pidfd and goes on writing
// into it; it is started once, gets every number in order (gaps only of
// an in-flight read), and is stopped when the task is deleted.
func TestKeeperCustodyBinaryLogger(t *testing.T) {
	e := newEnv(t)
	l := e.binaryLogger("kbinlog", "keeper = true\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, id := e.startRaw(ctx, "kbin", client.Stdio{Stdout: l.uri, Stderr: l.uri})
	l.waitMore(0, "no output at the logger yet")
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ {
		time.Sleep(500 * time.Millisecond)
		daemon := int(info.Pid)
		if err := unix.Kill(daemon, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		info = waitNewDaemon(ctx, t, s, daemon, "the connection")
		l.waitMore(l.size(), fmt.Sprintf("round %d: the logger gets no output after the kill", round))
	}
	time.Sleep(500 * time.Millisecond)
	killAndDelete(ctx, t, s, id)
	l.checkStartedOnce()
	checkCustodySeq(t, "binary:// logger", strings.Split(strings.TrimSuffix(l.output(), "\n"), "\n"), 0, 0)
}
