package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
)

// Stats returns the cgroup metrics of the cgroup pid lives in, as
// io.containerd.cgroups.v1.Metrics (v1 and hybrid hosts) or
// io.containerd.cgroups.v2.Metrics (unified hosts). NotFound when the
// process or its cgroup is gone.
func Stats(pid int) (*anypb.Any, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("no running process to read cgroup stats of: %w", errdefs.ErrNotFound)
	}
	var metrics any
	if cgroups.Mode() == cgroups.Unified {
		group, err := cgroup2.PidGroupPath(pid)
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
		}
		m, err := cgroup2.Load(group)
		if err != nil {
			return nil, fmt.Errorf("loading cgroup %s: %v: %w", group, err, errdefs.ErrNotFound)
		}
		st, err := m.Stat()
		if err != nil {
			return nil, fmt.Errorf("cgroup %s stats: %w", group, err)
		}
		metrics = st
	} else {
		cg, err := cgroup1.Load(cgroup1.PidPath(pid))
		if err != nil {
			return nil, fmt.Errorf("cgroup of pid %d: %v: %w", pid, err, errdefs.ErrNotFound)
		}
		st, err := cg.Stat(cgroup1.IgnoreNotExist)
		if err != nil {
			return nil, fmt.Errorf("cgroup stats of pid %d: %w", pid, err)
		}
		metrics = st
	}
	a, err := typeurl.MarshalAnyToProto(metrics)
	if err != nil {
		return nil, fmt.Errorf("marshalling cgroup stats: %w", err)
	}
	return a, nil
}

// OOMWatch reports OOM kills in a container's memory cgroup until Stop.
//
// It counts the cgroup's oom_kill counter, so every kill is reported
// exactly once, either by its own goroutine (woken by the kernel) or by a
// synchronous Poll: the task service polls before it reports init's exit,
// so that /tasks/oom precedes /tasks/exit (CRI reads the reason from it).
type OOMWatch struct {
	f     *os.File
	wg    sync.WaitGroup
	once  sync.Once
	onOOM func()

	mu    sync.Mutex
	count func() (uint64, error) // the cgroup's oom_kill counter
	seen  uint64
}

// WatchOOM watches the memory cgroup of pid and calls onOOM once per OOM
// kill: on cgroup v1 woken by an eventfd registered in
// cgroup.event_control for memory.oom_control, on v2 by inotify on
// memory.events. onOOM must not block on locks held around Poll. The watch
// ends by itself when the cgroup disappears; Stop ends it earlier.
func WatchOOM(pid int, onOOM func()) (*OOMWatch, error) {
	if cgroups.Mode() == cgroups.Unified {
		return watchOOMv2(pid, onOOM)
	}
	return watchOOMv1(pid, onOOM)
}

// Poll reports the OOM kills not reported yet, calling onOOM for each.
// Safe on nil.
func (w *OOMWatch) Poll() {
	if w == nil {
		return
	}
	w.poll(false)
}

// poll reads the counter; woken says the kernel signalled an event, which
// counts as one kill when the counter cannot be read (kernels before 4.13
// have no oom_kill in memory.oom_control). It returns false once the
// cgroup is gone.
func (w *OOMWatch) poll(woken bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.count()
	if err != nil {
		if os.IsNotExist(err) {
			return false
		}
		if woken {
			w.onOOM()
		}
		return true
	}
	for ; w.seen < n; w.seen++ {
		w.onOOM()
	}
	return true
}

func (w *OOMWatch) run() {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		// An eventfd read takes 8 bytes, an inotify event on a watched
		// file (no name) 16: a small buffer, as every container has one.
		buf := make([]byte, 256)
		for {
			if _, err := w.f.Read(buf); err != nil {
				return
			}
			if !w.poll(true) {
				return
			}
		}
	}()
}

// memoryDirV1 returns the cgroup v1 memory directory of pid: the memory
// hierarchy's mount point (from /proc/self/mountinfo) joined with pid's
// memory cgroup (from /proc/PID/cgroup). Two small reads: cgroup1.Load
// and cgroup1.Default parse mountinfo once per controller, about 2 ms on
// every Create.
func memoryDirV1(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", err
	}
	rel, ok := "", false
	for _, line := range strings.Split(string(data), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			rel, ok = parts[2], true
			break
		}
	}
	if !ok {
		return "", fmt.Errorf("no memory cgroup for pid %d: %w", pid, errdefs.ErrNotFound)
	}
	mount, err := memoryMountV1()
	if err != nil {
		return "", err
	}
	return filepath.Join(mount, rel), nil
}

// memoryMountV1 returns the mount point of the cgroup v1 memory hierarchy.
func memoryMountV1() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		// id parent dev root mountpoint opts [optional...] - fstype source super
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || tail[0] != "cgroup" {
			continue
		}
		if slices.Contains(strings.Split(tail[2], ","), "memory") {
			return fields[4], nil
		}
	}
	return "", fmt.Errorf("no memory cgroup controller: %w", errdefs.ErrNotFound)
}

func watchOOMv1(pid int, onOOM func()) (*OOMWatch, error) {
	dir, err := memoryDirV1(pid)
	if err != nil {
		return nil, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	control := filepath.Join(dir, "memory.oom_control")
	// Non-blocking, so the runtime poller owns it and Stop's Close ends a
	// pending Read.
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("oom eventfd for pid %d: %w", pid, err)
	}
	// Registration: "<eventfd> <fd of memory.oom_control>" written to the
	// cgroup's cgroup.event_control; the kernel keeps its own reference.
	cf, err := os.Open(control)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(fmt.Sprintf("%d %d", fd, cf.Fd())), 0o600)
		cf.Close()
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("oom eventfd for pid %d: %w", pid, err)
	}
	w := &OOMWatch{f: os.NewFile(uintptr(fd), "oom-eventfd"), onOOM: onOOM, count: func() (uint64, error) {
		return counter(control, "oom_kill")
	}}
	w.seen, _ = w.count()
	w.run()
	return w, nil
}

func watchOOMv2(pid int, onOOM func()) (*OOMWatch, error) {
	group, err := cgroup2.PidGroupPath(pid)
	if err != nil {
		return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	events := filepath.Join("/sys/fs/cgroup", group, "memory.events")
	seen, err := counter(events, "oom_kill")
	if err != nil {
		return nil, err
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", events, err)
	}
	w := &OOMWatch{f: os.NewFile(uintptr(fd), "inotify"), onOOM: onOOM, seen: seen, count: func() (uint64, error) {
		return counter(events, "oom_kill")
	}}
	w.run()
	return w, nil
}

// counter reads a "key value" line of a cgroup file such as
// memory.events or memory.oom_control.
func counter(path, key string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte{' '})
		if ok && string(k) == key {
			return strconv.ParseUint(string(v), 10, 64)
		}
	}
	return 0, errors.New("no " + key + " in " + path)
}

// Stop ends the watch and waits for its goroutine. Safe on nil.
func (w *OOMWatch) Stop() {
	if w == nil {
		return
	}
	w.once.Do(func() {
		if err := w.f.Close(); err != nil {
			slog.Debug("closing oom watch", "error", err)
		}
		w.wg.Wait()
	})
}
