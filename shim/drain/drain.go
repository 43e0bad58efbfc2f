// Package drain lets a ttrpc server stop between two requests and hand its
// connections to another server (a new binary after a live upgrade's
// execve, or a second server in the same process) without closing them
// and without losing or repeating a request.
//
// ttrpc has no API for that, but it serves any net.Listener. Listener wraps
// the daemon's listener; each connection it accepts is wrapped too, and the
// wrapper reads ttrpc frames (a 10-byte header: uint32 big-endian payload
// length, uint32 big-endian stream id, uint8 type, uint8 flags; then the
// payload) so that it only ever hands ttrpc whole frames. That gives it a
// place to stop, a frame boundary, and a count: the requests it delivered
// on each stream, and the frames that closed those streams on the way back.
//
// Freeze stops accepting, stops delivering requests, waits until every
// delivered request has been answered, and returns each open connection as
// a Conn: a duplicate of its descriptor and the bytes read from the socket
// but not yet delivered. The receiving side rebuilds a Listener from them
// (NewListener) whose Accept yields them first, each replaying its pending
// bytes before reading the socket again. A client sees nothing but a
// slower answer.
//
// Lifecycle of a handover (the daemon's upgrade path):
//
//	conns, err := l.Freeze(ctx) // ctx bounds the wait; on error l is thawed
//	lf, err := l.ListenerFile() // a duplicate of the listening socket
//	// clear FD_CLOEXEC on lf and each conns[i].Fd(), describe them, execve.
//	// If the execve fails: close lf and the conns' Files, then l.Thaw().
//
// and in the new process:
//
//	ln, _ := net.FileListener(os.NewFile(lfd, "listener"))
//	l := drain.NewListener(ln, []drain.Conn{drain.ConnFromFD(fd, pending), ...})
//	srv.Serve(ctx, l)
//
// The server's handshaker must be wrapped with Handshaker, since the
// connections Accept returns are not *net.UnixConn.
package drain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Conn is a connection taken out of a frozen Listener, or to be given to a
// new one: a descriptor of the connected socket and the bytes read from
// it that the server has not seen yet (to be read first).
//
// For a handover across execve, pass Fd() (after clearing FD_CLOEXEC) and
// Pending, and rebuild with ConnFromFD on the other side. Keep File
// reachable until the execve (runtime.KeepAlive): an os.File closes its
// descriptor when it is garbage collected.
type Conn struct {
	File    *os.File
	Pending []byte
}

// Fd returns the descriptor number of c.File, without the side effect of
// os.File.Fd (which puts the descriptor, and so the socket it shares with
// the live connection, in blocking mode). It returns ^uintptr(0) when
// c.File is nil or closed.
func (c Conn) Fd() uintptr {
	fd := ^uintptr(0)
	if c.File == nil {
		return fd
	}
	rc, err := c.File.SyscallConn()
	if err != nil {
		return fd
	}
	rc.Control(func(f uintptr) { fd = f })
	return fd
}

// ConnFromFD is the receiving side of a handover: it wraps an inherited
// descriptor of a connected socket and its pending bytes.
func ConnFromFD(fd int, pending []byte) Conn {
	return Conn{File: os.NewFile(uintptr(fd), "drain-conn-"+strconv.Itoa(fd)), Pending: pending}
}

// Listener is a net.Listener for a ttrpc server that can be frozen and
// handed over. It is safe for concurrent use.
type Listener struct {
	l net.Listener

	mu             sync.Mutex
	cond           *sync.Cond
	frozen         bool
	closed         bool
	accepting      bool // a goroutine is inside l.Accept
	acceptDeadline bool // Freeze set a deadline on l to interrupt it
	handed         []*conn
	handedErr      []error
	conns          []*conn // every open connection, in accept order
	custody        Custody // nil: none (custody.go)
}

// NewListener wraps l. Accept yields the handed connections first, in
// order (each reads its Pending bytes before its socket), then accepts
// from l. NewListener takes ownership of the handed Files (each is closed
// once rebuilt as a net.Conn); a descriptor that is not a socket is
// reported by Accept as a temporary error (ttrpc logs it and goes on).
//
// l must have SetDeadline (net.UnixListener and net.TCPListener do), so
// that Freeze can interrupt a pending Accept, and File, for ListenerFile.
func NewListener(l net.Listener, handed []Conn) *Listener {
	dl := &Listener{l: l}
	dl.cond = sync.NewCond(&dl.mu)
	for _, h := range handed {
		if h.File == nil {
			dl.handedErr = append(dl.handedErr, errors.New("handed connection without a descriptor"))
			continue
		}
		nc, err := net.FileConn(h.File)
		name := h.File.Name()
		h.File.Close()
		if err != nil {
			dl.handedErr = append(dl.handedErr, fmt.Errorf("handed connection %s: %w", name, err))
			continue
		}
		c := dl.newConn(nc, h.Pending)
		dl.handed = append(dl.handed, c)
	}
	return dl
}

// acceptError is a failure to rebuild a handed connection: temporary, so
// that ttrpc goes on serving.
type acceptError struct{ error }

func (acceptError) Temporary() bool { return true }
func (acceptError) Timeout() bool   { return false }

// Accept returns the next connection: a handed one, else one from the
// underlying listener. While frozen it blocks.
func (l *Listener) Accept() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if l.closed {
			return nil, net.ErrClosed
		}
		if len(l.handedErr) > 0 {
			err := l.handedErr[0]
			l.handedErr = l.handedErr[1:]
			return nil, acceptError{err}
		}
		if l.frozen {
			l.cond.Wait()
			continue
		}
		if len(l.handed) > 0 {
			c := l.handed[0]
			l.handed = l.handed[1:]
			return c, nil
		}
		l.accepting = true
		l.mu.Unlock()
		nc, err := l.l.Accept()
		l.mu.Lock()
		l.accepting = false
		interrupted := l.acceptDeadline
		if interrupted {
			l.acceptDeadline = false
			if d, ok := l.l.(interface{ SetDeadline(time.Time) error }); ok {
				d.SetDeadline(time.Time{})
			}
		}
		l.cond.Broadcast()
		if err != nil {
			if interrupted && errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return nil, err
		}
		// Registered under the lock: a connection accepted while Freeze
		// began is frozen from the start and part of the handover.
		c := l.newConn(nc, nil)
		c.hold() // before anything is read (custody.go)
		return c, nil
	}
}

// Close closes the underlying listener (not the accepted connections: the
// ttrpc server owns them) and ends pending Accepts.
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.l.Close()
}

// Addr is the underlying listener's address.
func (l *Listener) Addr() net.Addr { return l.l.Addr() }

// ListenerFile returns a duplicate of the underlying listener's descriptor
// (with FD_CLOEXEC set, as every descriptor Go opens). The listener itself
// stays open: closing one does not affect the other.
func (l *Listener) ListenerFile() (*os.File, error) {
	f, ok := l.l.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("drain: listener %T has no descriptor to hand over", l.l)
	}
	return f.File()
}

// InFlight returns the number of requests delivered and not yet answered,
// over all connections.
func (l *Listener) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.conns {
		n += c.inflightN
	}
	return n
}

// Freeze stops the server between requests and returns its connections
// for a handover. In order, it:
//
//   - stops accepting (a pending Accept is interrupted and blocks; the
//     listening socket stays open, see ListenerFile; connects wait in its
//     backlog);
//   - stops delivering request frames on every connection: ttrpc's read
//     blocks at the next frame boundary (data frames of a stream still in
//     flight go on, so that a client stream can finish);
//   - waits until every delivered request has been answered: a unary call
//     until its response frame is written, a stream until the frame that
//     closes it (a response, or a data frame flagged remote-closed).
//
// Then it returns, for each connection still open, a Conn with a duplicate
// of its descriptor and the bytes read but not delivered. A connection
// whose peer has closed (or that failed) is dropped. The connections stay
// frozen, owned by the old server, which delivers nothing more on them:
// the returned descriptors are the handover's.
//
// Freeze waits for long-lived streams too, such as conmon.v1.Monitor's
// Subscribe: the caller ends them before (the service closes its
// subscriptions), or Freeze waits until ctx ends. If ctx ends first, Freeze
// thaws the listener (service continues) and returns an error that names
// the number of requests still in flight.
//
// After a successful Freeze, Thaw resumes service on the same connections
// (the handover failed): close the returned Files first.
func (l *Listener) Freeze(ctx context.Context) ([]Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, fmt.Errorf("drain: freeze: %w", net.ErrClosed)
	}
	if l.frozen {
		return nil, errors.New("drain: freeze: already frozen")
	}
	l.frozen = true
	if l.accepting && !l.acceptDeadline {
		if d, ok := l.l.(interface{ SetDeadline(time.Time) error }); ok {
			if d.SetDeadline(time.Unix(1, 0)) == nil {
				l.acceptDeadline = true
			}
		}
	}
	for _, c := range l.conns {
		c.interrupt()
	}
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	for !l.drainedLocked() {
		if ctx.Err() != nil {
			n := 0
			for _, c := range l.conns {
				n += c.inflightN
			}
			l.thawLocked()
			return nil, fmt.Errorf("drain: freeze: %d requests still in flight, thawed: %w", n, context.Cause(ctx))
		}
		l.cond.Wait()
	}
	var out []Conn
	for _, c := range l.conns {
		if c.dead() {
			continue
		}
		f, err := c.dup()
		if err != nil {
			for _, o := range out {
				o.File.Close()
			}
			l.thawLocked()
			return nil, fmt.Errorf("drain: freeze: thawed: %w", err)
		}
		if peerClosed(f) {
			f.Close()
			continue
		}
		out = append(out, Conn{File: f, Pending: append([]byte(nil), c.rbuf[c.r:c.w]...)})
	}
	return out, nil
}

// Thaw resumes accepting and delivering requests after Freeze.
func (l *Listener) Thaw() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.thawLocked()
}

func (l *Listener) thawLocked() {
	l.frozen = false
	l.cond.Broadcast()
}

// drainedLocked reports whether nothing is in flight: no Accept running, and
// on every live connection no request unanswered, no frame half delivered
// and no read of the socket under way (whose bytes would miss the
// snapshot).
func (l *Listener) drainedLocked() bool {
	if l.accepting {
		return false
	}
	for _, c := range l.conns {
		if c.dead() {
			continue
		}
		if c.inflightN > 0 || c.remaining > 0 || c.reading != readIdle {
			return false
		}
	}
	return true
}

func (l *Listener) removeLocked(c *conn) {
	for i, o := range l.conns {
		if o == c {
			l.conns = append(l.conns[:i], l.conns[i+1:]...)
			return
		}
	}
}

// peerClosed reports whether the socket of f reads end-of-file (or an
// error) without blocking. Pending data means the peer is alive.
func peerClosed(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	rc.Control(func(fd uintptr) {
		var b [1]byte
		for {
			// recvfrom without an address: x/sys's Recvfrom would parse the
			// peer's (unbound) address.
			n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
				unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
			if errno == unix.EINTR {
				continue
			}
			closed = (errno == 0 && n == 0) || (errno != 0 && errno != unix.EAGAIN)
			return
		}
	})
	return closed
}
