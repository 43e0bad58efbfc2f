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
	"time"

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
	onOOM func(seen uint64)
	// settle: a wake-up may come before the kill is counted (cgroup v1);
	// stop is closed by Stop.
	settle bool
	stop   chan struct{}

	mu    sync.Mutex
	count func() (uint64, error) // the cgroup's oom_kill counter
	seen  uint64                 // kills reported
}

// WatchOOM watches the memory cgroup of pid and calls onOOM once per OOM
// kill from now on, with the count of kills reported so far, this one
// included (the cgroup's counter: a monitor keeps it, so that the task's
// next watch counts from it, WatchOOMFrom). On cgroup v1 it is woken by
// an eventfd registered in cgroup.event_control for memory.oom_control,
// on v2 by inotify on memory.events. It is the watch of a task taken over
// without a kept count; a new container's watch is WatchNewOOM. onOOM
// must not block on locks held around Poll. The watch ends by itself when
// the cgroup disappears; Stop ends it earlier.
func WatchOOM(pid int, onOOM func(seen uint64)) (*OOMWatch, error) {
	cg, err := ProcCgroup(pid)
	if err != nil {
		return nil, err
	}
	return watchOOM(cg, nil, onOOM)
}

// WatchOOMFrom is WatchOOM for a task whose earlier watch had reported
// seen kills (the count its onOOM last got): the kills the cgroup counted
// since, while no watch was armed (a live upgrade's gap, a crashed
// monitor's absence), are reported by calls of onOOM before it returns.
func WatchOOMFrom(pid int, seen uint64, onOOM func(seen uint64)) (*OOMWatch, error) {
	cg, err := ProcCgroup(pid)
	if err != nil {
		return nil, err
	}
	return watchOOM(cg, &seen, onOOM)
}

// WatchNewOOM is WatchOOM for the cgroup of a container just created,
// named by procCgroup (ProcCgroup's text, read while its init lived):
// every kill the cgroup counted before the watch was armed (an OOM kill of
// runc init between runc create and now) is reported too, by calls of
// onOOM before WatchNewOOM returns, and the kernel's later wake-up for
// the same kill is not reported again (kills are counted, not events).
// Kernels without the oom_kill counter (cgroup v1 before 4.13) report
// only what happens after the watch is armed. The cgroup is taken to be
// the container's own, made by runc create: a cgroup path that outlived an
// earlier container (or that several share) has its earlier kills
// reported again.
func WatchNewOOM(procCgroup string, onOOM func(seen uint64)) (*OOMWatch, error) {
	var none uint64
	return watchOOM(procCgroup, &none, onOOM)
}

// ProcCgroup returns the text of /proc/PID/cgroup, which names the cgroups
// an OOM watch of pid is armed on. One small read: Create takes it on its
// request path, while the container's init surely exists, and arms the
// watch from it later, which still works once that init was killed and
// reaped.
func ProcCgroup(pid int) (string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return string(data), nil
}

// watchOOM arms a watch on the memory cgroup named by procCgroup; from is
// the count of kills taken as reported (nil: all the counter holds now).
func watchOOM(procCgroup string, from *uint64, onOOM func(seen uint64)) (*OOMWatch, error) {
	if cgroups.Mode() == cgroups.Unified {
		group, err := unifiedPathOf(procCgroup)
		if err != nil {
			return nil, err
		}
		return watchOOMv2(filepath.Join("/sys/fs/cgroup", group, "memory.events"), from, onOOM)
	}
	// Two small reads (/proc/PID/cgroup and mountinfo), not cgroup1.Load
	// and cgroup1.Default, which parse mountinfo once per controller
	// (about 2 ms a watch).
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	dir, err := memoryDirV1Of(procCgroup, string(mi))
	if err != nil {
		return nil, fmt.Errorf("memory cgroup: %w", err)
	}
	return watchOOMv1(dir, from, onOOM)
}

// unifiedPathOf returns the cgroup v2 path ("0::PATH") of the text of
// /proc/PID/cgroup.
func unifiedPathOf(procCgroup string) (string, error) {
	for _, line := range strings.Split(procCgroup, "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return path, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 path in /proc/PID/cgroup: %w", errdefs.ErrNotFound)
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
// have no oom_kill in memory.oom_control). alive is false once the cgroup
// is gone; reported says onOOM was called.
func (w *OOMWatch) poll(woken bool) (alive, reported bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.count()
	if err != nil {
		if os.IsNotExist(err) {
			return false, false
		}
		if woken {
			w.onOOM(w.seen) // no counter (cgroup v1 before 4.13): the count cannot move
		}
		return true, woken
	}
	for w.seen < n {
		w.seen++
		w.onOOM(w.seen)
		reported = true
	}
	return true, reported
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
			alive, reported := w.poll(true)
			// cgroup v1 signals the eventfd when the cgroup goes under
			// OOM, before the OOM killer has chosen and counted its
			// victim (mm/memcontrol-v1.c), and not again for the kill:
			// look again a little later. (v2 writes memory.events for
			// the kill itself, a wake-up of its own.)
			for d := time.Millisecond; w.settle && alive && !reported && d <= time.Second; d *= 10 {
				select {
				case <-w.stop:
					return
				case <-time.After(d):
				}
				alive, reported = w.poll(false)
			}
			if !alive {
				return
			}
		}
	}()
}

// memoryDirV1Of finds, given the text of /proc/PID/cgroup and of
// /proc/self/mountinfo, the directory of PID's cgroup v1 memory cgroup.
// A mount of the memory hierarchy shows the subtree named by its root
// (mountinfo's field 4) at its mount point: "/" on a host, the
// container's own cgroup where a subtree is bind-mounted (a container
// without a cgroup namespace). The directory is the mount point joined
// with PID's path less that root; of several mounts that show the path,
// the one with the longest root is taken. NotFound when PID has no memory
// cgroup or no mount shows it.
func memoryDirV1Of(procCgroup, mountinfo string) (string, error) {
	path, ok := "", false
	for _, line := range strings.Split(procCgroup, "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
			path, ok = parts[2], true
			break
		}
	}
	if !ok {
		return "", fmt.Errorf("no memory cgroup in /proc/PID/cgroup: %w", errdefs.ErrNotFound)
	}
	dir, root, mounts := "", "", 0
	for _, line := range strings.Split(mountinfo, "\n") {
		// id parent dev root mountpoint opts [optional...] - fstype source super
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || tail[0] != "cgroup" ||
			!slices.Contains(strings.Split(tail[2], ","), "memory") {
			continue
		}
		mounts++
		r, mp := unescapeMountinfo(fields[3]), unescapeMountinfo(fields[4])
		rest, under := cutPathPrefix(path, r)
		if under && (dir == "" || len(r) > len(root)) {
			dir, root = filepath.Join(mp, rest), r
		}
	}
	if mounts == 0 {
		return "", fmt.Errorf("no cgroup v1 memory mount in mountinfo: %w", errdefs.ErrNotFound)
	}
	if dir == "" {
		return "", fmt.Errorf("memory cgroup %q is outside every mount of the memory hierarchy: %w", path, errdefs.ErrNotFound)
	}
	return dir, nil
}

// cutPathPrefix returns path relative to root, and whether path is root or
// below it (whole components: /a is not below /ab).
func cutPathPrefix(path, root string) (string, bool) {
	path, root = filepath.Clean(path), filepath.Clean(root)
	if root == "/" {
		return path, true
	}
	if path == root {
		return "/", true
	}
	if rest, ok := strings.CutPrefix(path, root); ok && strings.HasPrefix(rest, "/") {
		return rest, true
	}
	return "", false
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space,
// \011, \012, \134) in a path field.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// watchOOMv1 watches the cgroup v1 memory directory dir, reporting the
// kills counted above from (see start).
func watchOOMv1(dir string, from *uint64, onOOM func(seen uint64)) (*OOMWatch, error) {
	control := filepath.Join(dir, "memory.oom_control")
	// Non-blocking, so the runtime poller owns it and Stop's Close ends a
	// pending Read.
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("oom eventfd for %s: %w", dir, err)
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
		return nil, fmt.Errorf("oom eventfd for %s: %w", dir, err)
	}
	w := &OOMWatch{f: os.NewFile(uintptr(fd), "oom-eventfd"), onOOM: onOOM, settle: true, count: func() (uint64, error) {
		return counter(control, "oom_kill")
	}}
	w.start(from)
	return w, nil
}

// watchOOMv2 watches a cgroup v2 memory.events file, reporting the kills
// counted above from (see start).
func watchOOMv2(events string, from *uint64, onOOM func(seen uint64)) (*OOMWatch, error) {
	if _, err := counter(events, "oom_kill"); err != nil {
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
	w := &OOMWatch{f: os.NewFile(uintptr(fd), "inotify"), onOOM: onOOM, count: func() (uint64, error) {
		return counter(events, "oom_kill")
	}}
	w.start(from)
	return w, nil
}

// start sets the count the watch reports from and runs its goroutine. The
// counter is read after the kernel's notification is registered, so a kill
// is either counted here or wakes the goroutine; either way it is reported
// once, as the goroutine reports the counter's increase, not the wake-up
// (the v1 registration itself wakes it while the cgroup is under OOM).
// from is the count taken as reported: the kills above it are reported
// now (0 for a new container's cgroup, which counted only its own kills;
// the count kept by the task's previous monitor). nil takes everything the
// counter holds now as reported.
func (w *OOMWatch) start(from *uint64) {
	w.stop = make(chan struct{})
	if from != nil {
		w.seen = *from
		w.poll(false)
	} else {
		w.seen, _ = w.count()
	}
	w.run()
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
		close(w.stop)
		if err := w.f.Close(); err != nil {
			slog.Debug("closing oom watch", "error", err)
		}
		w.wg.Wait()
	})
}
