package logging

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// dirWatch wakes a follower when the log's directory changes (a write, a
// rotation, a reopen), so that `logs -f` shows output at once instead of at
// the next poll. Polling stays as the fallback: a lost or unavailable
// watch only costs latency.
type dirWatch struct {
	f    *os.File
	wake chan struct{}
	done chan struct{}
}

// watchDir returns nil when inotify is unavailable.
func watchDir(path string) *dirWatch {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil
	}
	mask := uint32(unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE | unix.IN_CLOSE_WRITE)
	if _, err := unix.InotifyAddWatch(fd, filepath.Dir(path), mask); err != nil {
		unix.Close(fd)
		return nil
	}
	w := &dirWatch{f: os.NewFile(uintptr(fd), "inotify"), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *dirWatch) run() {
	defer close(w.done)
	buf := make([]byte, 4096)
	for {
		// Events are not parsed: any change in the directory is a reason
		// to look, and looking is cheap.
		if _, err := w.f.Read(buf); err != nil {
			return
		}
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// C returns the wake-up channel; nil (never ready) for a nil watch.
func (w *dirWatch) C() <-chan struct{} {
	if w == nil {
		return nil
	}
	return w.wake
}

// Close stops the watch and waits for its goroutine.
func (w *dirWatch) Close() {
	if w == nil {
		return
	}
	w.f.Close()
	<-w.done
}
