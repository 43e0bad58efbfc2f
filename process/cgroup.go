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
type OOMWatch struct {
	f    *os.File
	wg   sync.WaitGroup
	once sync.Once
}

// WatchOOM watches the memory cgroup of pid and calls onOOM for each OOM
// event: on cgroup v1 through an eventfd registered in
// cgroup.event_control for memory.oom_control, on v2 through inotify on
// memory.events (counting oom_kill). The watch ends by itself when the
// cgroup disappears; Stop ends it earlier and waits for its goroutine.
func WatchOOM(pid int, onOOM func()) (*OOMWatch, error) {
	if cgroups.Mode() == cgroups.Unified {
		return watchOOMv2(pid, onOOM)
	}
	return watchOOMv1(pid, onOOM)
}

func watchOOMv1(pid int, onOOM func()) (*OOMWatch, error) {
	cg, err := cgroup1.Load(cgroup1.PidPath(pid), cgroup1.WithHiearchy(cgroup1.SingleSubsystem(cgroup1.Default, cgroup1.Memory)))
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
	w := &OOMWatch{f: os.NewFile(fd, "oom-eventfd")}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 8)
		for {
			if _, err := w.f.Read(buf); err != nil {
				return
			}
			// The eventfd also fires when the cgroup is removed.
			if cg.State() == cgroup1.Deleted {
				return
			}
			onOOM()
		}
	}()
	return w, nil
}

func watchOOMv2(pid int, onOOM func()) (*OOMWatch, error) {
	group, err := cgroup2.PidGroupPath(pid)
	if err != nil {
		return nil, fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	events := filepath.Join("/sys/fs/cgroup", group, "memory.events")
	last, err := oomKills(events)
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
	w := &OOMWatch{f: os.NewFile(uintptr(fd), "inotify")}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 4096)
		for {
			if _, err := w.f.Read(buf); err != nil {
				return
			}
			n, err := oomKills(events)
			if err != nil {
				return // cgroup gone
			}
			for ; last < n; last++ {
				onOOM()
			}
		}
	}()
	return w, nil
}

// oomKills reads the oom_kill counter of a cgroup v2 memory.events file.
func oomKills(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := bytes.Cut(sc.Bytes(), []byte{' '})
		if ok && string(k) == "oom_kill" {
			return strconv.ParseUint(string(v), 10, 64)
		}
	}
	return 0, errors.New("no oom_kill in " + path)
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
