package conmon

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// oomWatcher detects the kernel's OOM kills in the container's memory
// cgroup: on cgroup v1 through memory.oom_control and an eventfd
// registered in cgroup.event_control, on v2 by comparing the oom_kill
// counter of memory.events. It reads the files itself (x/sys) to keep the
// monitor small.
type oomWatcher struct {
	dir      string // memory cgroup directory
	v2       bool
	efd      *os.File // v1 eventfd
	oomCtl   *os.File // v1 memory.oom_control, kept open for the registration
	baseKill uint64   // oom_kill count not the container's (see watchOOMDir)
	wg       sync.WaitGroup
	mu       sync.Mutex
	fired    bool // guarded by mu
	onOOM    func()
}

// memoryCgroupDir returns the memory cgroup directory of pid.
func memoryCgroupDir(pid int) (dir string, v2 bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		v2 = true
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if v2 && parts[0] == "0" && parts[1] == "" {
			return filepath.Join("/sys/fs/cgroup", parts[2]), true, nil
		}
		if !v2 {
			for _, c := range strings.Split(parts[1], ",") {
				if c == "memory" {
					return filepath.Join("/sys/fs/cgroup/memory", parts[2]), false, nil
				}
			}
		}
	}
	return "", v2, fmt.Errorf("no memory cgroup for pid %d", pid)
}

// watchOOM starts watching the memory cgroup of pid, a container's init
// just created by the runtime; onOOM runs (once) when an OOM kill is seen.
// A container without a memory cgroup is not watched.
func watchOOM(pid int, onOOM func(), diag *Diag) *oomWatcher {
	dir, v2, err := memoryCgroupDir(pid)
	if err != nil {
		diag.Infof("Not watching for OOM: %v", err)
		return nil
	}
	return watchOOMDir(dir, v2, onOOM, diag)
}

// watchOOMDir watches the memory cgroup directory dir of a container just
// created. The cgroup is the container's own (the runtime made it for
// this container), so every kill its oom_kill counter holds is the
// container's: one that happened between the runtime's create and now
// (runc init killed while it waited for start) is reported too, at Final
// at the latest, where a baseline taken now would hide it. The one
// exception is a container left in the hierarchy's root cgroup, whose
// counter is the whole machine's: there only kills from now on count.
func watchOOMDir(dir string, v2 bool, onOOM func(), diag *Diag) *oomWatcher {
	w := &oomWatcher{dir: dir, v2: v2, onOOM: onOOM}
	if isCgroupRoot(dir) {
		w.baseKill, _ = w.killCount()
	}
	if v2 {
		// Checked when the container exits (memory.events is final then).
		return w
	}
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		diag.Warnf("Failed to open memory.oom_control: %v", err)
		return w
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		ctl.Close()
		return w
	}
	reg := fmt.Sprintf("%d %d", efd, ctl.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		// Advisory, as in conmon 2.1.7 and later (PREEMPT_RT kernels).
		diag.Warnf("Failed to register for OOM events: %v", err)
		unix.Close(efd)
		ctl.Close()
		return w
	}
	w.oomCtl = ctl
	w.efd = os.NewFile(uintptr(efd), "oom-eventfd")
	w.wg.Add(1)
	go w.readEvents()
	return w
}

// isCgroupRoot reports whether dir is the root of a cgroup hierarchy as
// memoryCgroupDir names it (/sys/fs/cgroup on v2, /sys/fs/cgroup/memory
// on v1).
func isCgroupRoot(dir string) bool {
	dir = filepath.Clean(dir)
	return dir == "/sys/fs/cgroup" || dir == "/sys/fs/cgroup/memory"
}

func (w *oomWatcher) readEvents() {
	defer w.wg.Done()
	var b [8]byte
	for {
		n, err := w.efd.Read(b[:])
		if err != nil {
			return
		}
		if n != 8 {
			continue
		}
		count := binary.NativeEndian.Uint64(b[:])
		// One event together with a vanished event_control is the cgroup
		// being removed, not an OOM.
		if count == 1 {
			if _, err := os.Stat(filepath.Join(w.dir, "cgroup.event_control")); err != nil {
				return
			}
		}
		w.fire()
	}
}

func (w *oomWatcher) fire() {
	w.mu.Lock()
	first := !w.fired
	w.fired = true
	w.mu.Unlock()
	if first {
		w.onOOM()
	}
}

// killCount reads the oom_kill counter (memory.events on v2,
// memory.oom_control on v1 kernels that report it).
func (w *oomWatcher) killCount() (uint64, error) {
	name := "memory.oom_control"
	if w.v2 {
		name = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(w.dir, name))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == "oom_kill" {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no oom_kill in %s", name)
}

// Final is called once the container exited: a last look at the counter
// catches kills whose event was not delivered yet. It stops the watch.
func (w *oomWatcher) Final() {
	if w == nil {
		return
	}
	if n, err := w.killCount(); err == nil && n > w.baseKill {
		w.fire()
	}
	if w.efd != nil {
		// A pending event is read without waiting.
		var b [8]byte
		if n, err := unix.Read(int(w.efdRaw()), b[:]); err == nil && n == 8 {
			if _, err := os.Stat(filepath.Join(w.dir, "cgroup.event_control")); err == nil {
				w.fire()
			}
		}
		w.efd.Close()
		w.wg.Wait()
		w.oomCtl.Close()
	}
}

func (w *oomWatcher) efdRaw() uintptr {
	var fd uintptr
	if rc, err := w.efd.SyscallConn(); err == nil {
		_ = rc.Control(func(f uintptr) { fd = f })
	}
	return fd
}
