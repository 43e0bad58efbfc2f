package resilience

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// recordWatch notes which process opens what in a namespace's state
// directory (fanotify FAN_OPEN, as root): the directory itself (a daemon
// that lists the task records opens it) and what is directly in the
// directories of the tasks named (state.json, and a record's temporary
// file as it is written). A restarted per-container daemon must open
// its own task's record and nothing of another task's.
type recordWatch struct {
	t     *testing.T
	fd    int
	dir   string
	opens []recordOpen
}

// recordOpen is one open: the opener's pid (its thread group) and the
// path opened.
type recordOpen struct {
	pid  int
	path string
}

// watchRecords starts watching nsDir and the record directories of ids
// in it. The watch ends with the test.
func watchRecords(t *testing.T, nsDir string, ids ...string) *recordWatch {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_LARGEFILE)
	if err != nil {
		t.Fatalf("fanotify_init: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	w := &recordWatch{t: t, fd: fd, dir: nsDir}
	for _, d := range append([]string{nsDir}, recordDirs(nsDir, ids)...) {
		// FAN_ONDIR: opening the directory itself (and, on nsDir, a
		// task's directory) counts too.
		if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_OPEN|unix.FAN_ONDIR|unix.FAN_EVENT_ON_CHILD, unix.AT_FDCWD, d); err != nil {
			t.Fatalf("fanotify_mark %s: %v", d, err)
		}
	}
	return w
}

func recordDirs(nsDir string, ids []string) []string {
	var dirs []string
	for _, id := range ids {
		dirs = append(dirs, filepath.Join(nsDir, id))
	}
	return dirs
}

// read takes in the events queued so far (it does not wait).
func (w *recordWatch) read() {
	t := w.t
	t.Helper()
	buf := make([]byte, 64<<10)
	const metaLen = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))
	for {
		n, err := unix.Read(w.fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			t.Fatalf("fanotify read: %v", err)
		}
		for off := 0; off+metaLen <= n; {
			m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			if m.Vers != unix.FANOTIFY_METADATA_VERSION || int(m.Event_len) < metaLen {
				t.Fatalf("fanotify: event of version %d, length %d", m.Vers, m.Event_len)
			}
			if m.Mask&unix.FAN_Q_OVERFLOW != 0 {
				t.Fatal("fanotify: the event queue overflowed; opens were missed")
			}
			if m.Fd >= 0 {
				p, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(m.Fd)))
				unix.Close(int(m.Fd))
				w.opens = append(w.opens, recordOpen{pid: int(m.Pid), path: strings.TrimSuffix(p, " (deleted)")})
			}
			off += int(m.Event_len)
		}
	}
}

// checkOwnOnly reads the events and checks that pid, the daemon of task
// id alone, opened id's record and nothing else the watch sees: neither
// the namespace's directory (a listing of every record) nor another
// task's record.
func (w *recordWatch) checkOwnOnly(pid int, id string) {
	t := w.t
	t.Helper()
	w.read()
	own := filepath.Join(w.dir, id)
	record := false
	var foreign []string
	for _, o := range w.opens {
		if o.pid != pid {
			continue
		}
		switch {
		case o.path == filepath.Join(own, "state.json"):
			record = true
		case strings.HasPrefix(o.path, own+"/") || o.path == own:
		default:
			foreign = append(foreign, o.path)
		}
	}
	if len(foreign) > 0 {
		t.Errorf("daemon %d of %s opened what is not its task's: %q", pid, id, foreign)
	}
	if !record {
		t.Errorf("daemon %d of %s never opened its task record (the watch saw %d opens in all): it did not adopt from it, or the watch sees nothing", pid, id, len(w.opens))
	}
}
