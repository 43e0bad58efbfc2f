package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// stdinDrainBound bounds how long CloseIO waits for stdin already written
// by the client to reach the process.
const stdinDrainBound = 5 * time.Second

// stdinCopier copies the client's stdin FIFO into the process. It exists so
// that CloseIO loses nothing: what the client wrote before CloseIO is still
// delivered, then the process sees EOF. The FIFO is opened (blocking until
// the client opens its end) in the background, then switched to
// non-blocking so the runtime poller owns it and a read can be interrupted.
//
// The FIFO is reached through an O_PATH handle taken up front: clients
// remove their FIFO directory when they are done, and a pending open must
// still be unblockable then.
type stdinCopier struct {
	path   string         // for messages
	handle int            // O_PATH descriptor of the FIFO
	via    string         // /proc/self/fd/<handle>
	dst    io.WriteCloser // the process's stdin (pipe or pty)
	pty    bool           // EOF is ^D, the pty stays open

	mu      sync.Mutex
	f       *os.File // nil until opened
	closing bool     // CloseIO asked: drain, then EOF
	stopped bool     // IO.Close: stop now
	parked  bool     // a handover: stop now, keep the FIFO and the process's stdin open
	ended   bool     // the copier gave the process its EOF (the client closed, or CloseIO)
	opened  chan struct{}
	done    chan struct{}

	// onOpen, if set, gets the FIFO once open (before the first read);
	// onEnd once the copier closed it (not when parked). Descriptor
	// custody (custody.go).
	onOpen func(*os.File)
	onEnd  func()
}

// newStdinCopier returns a copier of the FIFO at path into dst. opened,
// if not nil, is that FIFO already opened for reading (non-blocking), as a
// previous monitor handed it over; the copier then owns it.
func newStdinCopier(path string, dst io.WriteCloser, pty bool, opened *os.File) (*stdinCopier, error) {
	h := -1
	if opened == nil {
		var err error
		if h, err = unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0); err != nil {
			return nil, fmt.Errorf("stdin FIFO %q: %w", path, err)
		}
	}
	return &stdinCopier{
		path: path, handle: h, via: fmt.Sprintf("/proc/self/fd/%d", h),
		dst: dst, pty: pty, f: opened, opened: make(chan struct{}), done: make(chan struct{}),
	}, nil
}

func (c *stdinCopier) start() {
	go c.release()
	go func() {
		defer close(c.done)
		var err error
		c.mu.Lock()
		have := c.f != nil
		c.mu.Unlock()
		if !have {
			var fd int
			fd, err = unix.Open(c.via, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err == nil {
				err = unix.SetNonblock(fd, true)
				if err != nil {
					_ = unix.Close(fd)
				}
			}
			if err == nil {
				c.mu.Lock()
				c.f = os.NewFile(uintptr(fd), c.path)
				c.mu.Unlock()
			}
		}
		c.mu.Lock()
		stopped, closing := c.stopped || c.parked, c.closing
		f := c.f
		close(c.opened)
		c.mu.Unlock()
		if f != nil && c.onOpen != nil {
			c.onOpen(f)
		}
		switch {
		case err != nil || stopped:
		case closing: // CloseIO came first: deliver what is there already
			c.drain(make([]byte, 32<<10))
		default:
			c.copy()
		}
		c.finish()
	}()
}

func (c *stdinCopier) copy() {
	buf := make([]byte, 32<<10)
	for {
		n, err := c.f.Read(buf)
		if n > 0 {
			if _, werr := c.dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == nil {
			continue
		}
		c.mu.Lock()
		closing, stopped := c.closing, c.stopped || c.parked
		c.mu.Unlock()
		if errors.Is(err, os.ErrDeadlineExceeded) && closing && !stopped {
			c.drain(buf)
		}
		return
	}
}

// drain writes what is buffered in the FIFO without waiting for more.
func (c *stdinCopier) drain(buf []byte) {
	_ = c.f.SetReadDeadline(time.Time{})
	rc, err := c.f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), buf)
			if n <= 0 || err != nil {
				return true
			}
			if _, werr := c.dst.Write(buf[:n]); werr != nil {
				return true
			}
		}
	})
}

// finish gives the process its EOF and releases the FIFO.
func (c *stdinCopier) finish() {
	c.mu.Lock()
	stopped, parked := c.stopped, c.parked
	c.mu.Unlock()
	if parked {
		return // the FIFO and the process's stdin go on in a new copier
	}
	if !stopped {
		if c.pty {
			_, _ = c.dst.Write([]byte{4}) // ^D: the line discipline's EOF
		} else {
			_ = c.dst.Close()
		}
	}
	c.mu.Lock()
	c.ended = !stopped
	if c.f != nil {
		_ = c.f.Close()
	}
	c.mu.Unlock()
	if c.onEnd != nil {
		c.onEnd()
	}
}

// release closes the O_PATH handle once the copier is done with it.
func (c *stdinCopier) release() {
	<-c.done
	if c.handle >= 0 {
		_ = unix.Close(c.handle)
	}
}

// park stops the copier for a handover without delivering an EOF: the
// client's FIFO (opened for reading: its writer gets no EPIPE) and the
// process's stdin stay open. It returns the FIFO, which the caller then
// owns (nil when the copier had already ended: the process got its EOF).
// Bytes the client wrote that the copier had not read stay in the FIFO.
// It fails when the copier does not stop before ctx is done (a write into
// a process that does not read its stdin); the copier then parks later.
func (c *stdinCopier) park(ctx context.Context) (*os.File, error) {
	c.mu.Lock()
	c.parked = true
	f := c.f
	c.mu.Unlock()
	c.wake(f)
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("stdin copier of %q busy writing to the process: %w", c.path, ctx.Err())
	}
	return c.parkedFile(), nil
}

// parkedFile is the FIFO of a parked copier that is done, cleared of the
// deadline that stopped it (nil when the copier had ended instead).
func (c *stdinCopier) parkedFile() *os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended || c.f == nil {
		return nil
	}
	_ = c.f.SetReadDeadline(time.Time{})
	return c.f
}

// wake interrupts the copier after a flag was set under mu: f, the
// client's FIFO as the copier held it then, gets a read deadline; with no
// FIFO yet, the copier is in open(2) and unblockOpen releases it.
func (c *stdinCopier) wake(f *os.File) {
	if f != nil {
		_ = f.SetReadDeadline(time.Now())
	} else {
		c.unblockOpen()
	}
}

// unblockOpen lets a pending open of the FIFO return by opening the
// writing end ourselves for a moment. That open only succeeds while our
// reader waits in open(2), so it is retried until the copier saw it (or
// the bound passes: then the copier is left to the client's open).
func (c *stdinCopier) unblockOpen() {
	deadline := time.Now().Add(stdinDrainBound)
	for time.Now().Before(deadline) {
		if fd, err := unix.Open(c.via, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
			_ = unix.Close(fd)
		}
		select {
		case <-c.opened:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// closeStdin is CloseIO: deliver what is buffered, then EOF. It returns
// once the process's stdin is closed (or after stdinDrainBound).
func (c *stdinCopier) closeStdin() error {
	c.mu.Lock()
	if c.closing || c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.closing = true
	f := c.f
	c.mu.Unlock()
	c.wake(f)
	select {
	case <-c.done:
		return nil
	case <-time.After(stdinDrainBound):
		return fmt.Errorf("stdin of the process still busy after %s", stdinDrainBound)
	}
}

// stop ends the copier without delivering more (the IO is closing).
func (c *stdinCopier) stop() {
	c.mu.Lock()
	c.stopped = true
	f := c.f
	c.mu.Unlock()
	c.wake(f)
	select {
	case <-c.done:
	case <-time.After(stdinDrainBound):
	}
}
