package process

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
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

// memoryDirV1 returns the cgroup v1 memory directory of pid.
func memoryDirV1(pid int) (string, error) {
	rel, err := cgroup1.PidPath(pid)(cgroup1.Memory)
	if err != nil {
		return "", err
	}
	subs, err := cgroup1.Default()
	if err != nil {
		return "", err
	}
	for _, s := range subs {
		if p, ok := s.(interface{ Path(string) string }); ok && s.Name() == cgroup1.Memory {
			return p.Path(rel), nil
		}
	}
	return "", fmt.Errorf("no memory cgroup controller: %w", errdefs.ErrNotFound)
}

func watchOOMv1(pid int, onOOM func()) (*OOMWatch, error) {
	cg, err := cgroup1.Load(cgroup1.PidPath(pid), cgroup1.WithHiearchy(cgroup1.SingleSubsystem(cgroup1.Default, cgroup1.Memory)))
	if err != nil {
		return nil, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	dir, err := memoryDirV1(pid)
	if err != nil {
		return nil, fmt.Errorf("memory cgroup of pid %d: %w", pid, err)
	}
	fd, err := cg.OOMEventFD()
	if err != nil {
		return nil, fmt.Errorf("oom eventfd for pid %d: %w", pid, err)
	}
	// Non-blocking, so the runtime poller owns it and Stop's Close ends a
	// pending Read.
	if err := unix.SetNonblock(int(fd), true); err != nil {
		_ = unix.Close(int(fd))
		return nil, err
	}
	control := filepath.Join(dir, "memory.oom_control")
	w := &OOMWatch{f: os.NewFile(fd, "oom-eventfd"), onOOM: onOOM, count: func() (uint64, error) {
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
