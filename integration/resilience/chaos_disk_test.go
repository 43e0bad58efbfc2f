package resilience

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
)

// diskFullScript writes numbered lines (a few thousand a second) until the file
// /stop-<name> appears, then "end <count>", and exits with $CODE.
const diskFullScript = `i=0
while [ ! -e /stop-$NAME ]; do
	i=$((i+1))
	echo "$i ........................................................................"
	usleep 300
done
echo "end $i"
exit $CODE
`

// TestChaosLogDiskFull: the k8s-file logs of two containers of a dense
// daemon are on a tmpfs with 2 MiB free, which fills up. The containers keep running
// and writing (their FIFO copy of the output keeps flowing), the daemon
// keeps answering and reports the failing log in its own log; once space
// is freed the logs resume, each file holds whole lines in order, and the
// lines written after the disk had room again are all there, up to the
// last; exit codes are right.
func TestChaosLogDiskFull(t *testing.T) {
	e := newEnv(t)
	e.dense()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	logDir := e.logDir()
	if err := unix.Mount("tmpfs", logDir, "tmpfs", 0, "size=16m,mode=0700"); err != nil {
		t.Skipf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(logDir, unix.MNT_DETACH) })
	// A filler leaves 2 MiB to the logs, which the containers fill within
	// seconds; removing it frees room for what the drivers held (up to
	// 1 MiB each) and for a minute of output.
	filler := filepath.Join(logDir, "filler")
	if err := os.WriteFile(filler, make([]byte, 14<<20), 0o600); err != nil {
		t.Fatal(err)
	}

	daemonLog := captureDaemonLog(t, filepath.Join(e.dir, "full0-"+e.suffix))

	const n = 2
	tasks := make([]*task, n)
	for i := range tasks {
		name := fmt.Sprintf("full%d", i)
		tasks[i] = e.start(ctx, name, []string{"sh", "-c", "NAME=" + name + " CODE=" + strconv.Itoa(20+i) + "\n" + diskFullScript}, true,
			map[string]string{
				client.LogAnnotationPrefix + "driver": "k8s-file",
				client.LogAnnotationPrefix + "path":   filepath.Join(logDir, name+".log"),
			})
	}
	free := func() uint64 {
		var st unix.Statfs_t
		if err := unix.Statfs(logDir, &st); err != nil {
			t.Fatal(err)
		}
		return st.Bavail * uint64(st.Bsize)
	}
	eventually(t, 60*time.Second, func() error {
		if f := free(); f > 16<<10 {
			return fmt.Errorf("log disk not full: %d bytes free", f)
		}
		return nil
	})
	t.Logf("log disk full")

	// While the disk is full: the containers run and write (their FIFO
	// output goes on), the daemon answers.
	before := make([]int, n)
	for i, tk := range tasks {
		before[i] = lastNumber(tk.out.String())
	}
	// Full long enough for the file drivers to give up part of what they
	// hold for retry (1 MiB each): 12,000 lines are about 1.4 MB of log.
	for i, tk := range tasks {
		eventually(t, 90*time.Second, func() error {
			if now := lastNumber(tk.out.String()); now < before[i]+12000 {
				return fmt.Errorf("%s: output at %d with the log disk full, want %d", tk.id, now, before[i]+12000)
			}
			return nil
		})
	}
	for _, tk := range tasks {
		st, err := tk.shim.State(ctx, tk.id, "")
		if err != nil {
			t.Fatalf("state %s with the log disk full: %v", tk.id, err)
		}
		if st.Status != client.Running {
			t.Errorf("%s is %s with the log disk full", tk.id, st.Status)
		}
	}
	if _, err := tasks[0].shim.Info(ctx); err != nil {
		t.Fatalf("daemon with the log disk full: %v", err)
	}
	eventually(t, 30*time.Second, func() error {
		if !strings.Contains(daemonLog.String(), "no space left on device") {
			return fmt.Errorf("the daemon's log does not report the full disk:\n%s", daemonLog)
		}
		return nil
	})

	// Free the disk: the logs resume.
	resumeFrom := make([]int, n)
	for i, tk := range tasks {
		resumeFrom[i] = lastNumber(tk.out.String())
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	t.Logf("log disk freed: %d bytes", free())
	for i := range tasks {
		path := filepath.Join(logDir, fmt.Sprintf("full%d.log", i))
		eventually(t, 30*time.Second, func() error {
			if got := lastLogNumber(t, path); got <= resumeFrom[i] {
				return fmt.Errorf("%s: last number %d, not past %d written when the disk was freed", path, got, resumeFrom[i])
			}
			return nil
		})
	}
	eventually(t, 30*time.Second, func() error {
		if n := strings.Count(daemonLog.String(), "driver writing again"); n < len(tasks) {
			return fmt.Errorf("the daemon's log reports %d of %d logs writing again", n, len(tasks))
		}
		return nil
	})

	for i, tk := range tasks {
		if err := os.WriteFile(filepath.Join(e.rootfs, "stop-"+fmt.Sprintf("full%d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		w, err := tk.shim.Wait(ctx, tk.id, "")
		if err != nil {
			t.Fatalf("wait %s: %v", tk.id, err)
		}
		if want := uint32(20 + i); w.Status != want {
			t.Errorf("%s exited %d, want %d", tk.id, w.Status, want)
		}
		_ = os.Remove(filepath.Join(e.rootfs, "stop-"+fmt.Sprintf("full%d", i)))
	}
	for i, tk := range tasks {
		tk.remove(t)
		missing := checkResumedLog(t, filepath.Join(logDir, fmt.Sprintf("full%d.log", i)), resumeFrom[i])
		// The daemon accounts for every line the log lacks.
		reported := -1
		for _, line := range strings.Split(daemonLog.String(), "\n") {
			if strings.Contains(line, "container log closed after write errors") && strings.Contains(line, "container="+tk.id+" ") {
				for _, f := range strings.Fields(line) {
					if v, ok := strings.CutPrefix(f, "lost_lines="); ok {
						reported, _ = strconv.Atoi(v)
					}
				}
			}
		}
		// The daemon counts log records; a line that straddles two reads
		// is two records (P, then F), so a dropped stretch may count a
		// record or so per read more than the container's lines (reads
		// carry hundreds of these short lines), never fewer.
		if reported < missing || reported > missing+missing/50+1 {
			t.Errorf("%s: %d lines missing from its log, the daemon reported %d records lost", tk.id, missing, reported)
		}
	}
	for _, line := range strings.Split(daemonLog.String(), "\n") {
		if strings.Contains(line, "log") && (strings.Contains(line, "WARN") || strings.Contains(line, "ERROR") || strings.Contains(line, "INFO")) {
			t.Log("daemon: " + line)
		}
	}
}

// captureDaemonLog makes bundle's log FIFO (the daemon started for the
// bundle's container logs there) and collects what is written to it.
func captureDaemonLog(t *testing.T, bundle string) *testutil.SyncBuffer {
	t.Helper()
	buf, f := readDaemonLog(t, bundle)
	t.Cleanup(func() { f.Close() })
	return buf
}

// readDaemonLog is captureDaemonLog, but returns the FIFO for the caller
// to close.
func readDaemonLog(t *testing.T, bundle string) (*testutil.SyncBuffer, *os.File) {
	t.Helper()
	buf := &testutil.SyncBuffer{}
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(bundle, "log")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fmt.Fprintln(buf, sc.Text())
		}
	}()
	return buf, f
}

// lastNumber is the number of the last whole numbered line of out.
func lastNumber(out string) int {
	lines := strings.Split(out, "\n")
	for i := len(lines) - 2; i >= 0; i-- { // the last element follows the last \n
		if f := strings.Fields(lines[i]); len(f) > 0 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 0
}

// logNumbers reads a k8s-file log of numbered lines: every line must
// parse and be whole, numbers must increase. It returns the numbers and
// the "end" count (-1 without one). A tail without its newline is a line
// being written (the rest of it waits for room on the disk): final says
// there must be none.
func logNumbers(t *testing.T, path string, final bool) ([]int, int) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		if final {
			t.Fatalf("%s: ends in a torn line %q", path, data[i+1:])
		}
		data = data[:i+1]
	}
	var nums []int
	var pending []byte
	end := -1
	for _, line := range bytes.SplitAfter(data, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		var rec logging.Record
		if !logging.ParseK8sLine(bytes.TrimSuffix(line, []byte{'\n'}), &rec) {
			t.Fatalf("%s: bad line %q", path, line)
		}
		// A line cut by a full read comes as partial records and a last
		// one.
		pending = append(pending, rec.Line...)
		if rec.Partial {
			continue
		}
		fields := strings.Fields(string(pending))
		whole := string(pending)
		pending = pending[:0]
		if len(fields) == 2 && fields[0] == "end" {
			end, _ = strconv.Atoi(fields[1])
			continue
		}
		if len(fields) != 2 || len(fields[1]) != 72 {
			t.Fatalf("%s: damaged line %q", path, whole)
		}
		n, err := strconv.Atoi(fields[0])
		if err != nil {
			t.Fatalf("%s: damaged line %q", path, whole)
		}
		if len(nums) > 0 && n <= nums[len(nums)-1] {
			t.Fatalf("%s: %d after %d", path, n, nums[len(nums)-1])
		}
		nums = append(nums, n)
	}
	return nums, end
}

func lastLogNumber(t *testing.T, path string) int {
	nums, _ := logNumbers(t, path, false)
	if len(nums) == 0 {
		return 0
	}
	return nums[len(nums)-1]
}

// checkResumedLog: the log starts at 1, ends with "end N" after line N,
// and holds every number from resumeFrom+1 to N (written once the disk had
// room again). It returns how many numbers are missing.
func checkResumedLog(t *testing.T, path string, resumeFrom int) int {
	t.Helper()
	nums, end := logNumbers(t, path, true)
	if len(nums) == 0 || nums[0] != 1 {
		t.Fatalf("%s: does not start at 1", path)
	}
	if end < 0 || nums[len(nums)-1] != end {
		t.Fatalf("%s: last number %d, end line %d", path, nums[len(nums)-1], end)
	}
	have := make(map[int]bool, len(nums))
	for _, n := range nums {
		have[n] = true
	}
	for n := resumeFrom + 1; n <= end; n++ {
		if !have[n] {
			t.Fatalf("%s: line %d (written after the disk was freed, at %d) is missing", path, n, resumeFrom)
		}
	}
	t.Logf("%s: %d of %d lines kept, all of %d..%d", path, len(nums), end, resumeFrom+1, end)
	return end - len(nums)
}
