package drain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
)

// readSize is the size of one read of the socket at a frame boundary (the
// size of ttrpc's own bufio.Reader). The rest of a frame is read straight
// into ttrpc's buffer.
const readSize = 4096

// States of a connection's reader.
const (
	readIdle     = iota // not in a read of the socket
	readBoundary        // reading the socket at a frame boundary (for a header)
	readFrame           // reading the rest of a frame already delivered in part
)

// conn is a connection accepted by a Listener. Read hands ttrpc whole
// frames only, one at a time, and counts the requests among them; Write
// counts the frames that close a stream. The fields after l are guarded by
// l.mu, except rbuf's bytes past w, which only the reader (under rmu)
// fills, outside l.mu.
type conn struct {
	net.Conn
	l *Listener

	rmu sync.Mutex // serialises Read
	wmu sync.Mutex // serialises Write; guards wf
	wf  frameWriter

	rbuf        []byte // bytes read from the socket: rbuf[r:w] not delivered
	r, w        int
	remaining   int            // bytes of the current frame (header included) not yet delivered
	inflight    map[uint32]int // stream id -> requests delivered, not yet answered
	inflightN   int
	reading     int
	deadlineSet bool  // Freeze set a read deadline to interrupt a read
	rerr        error // the socket's read error (not our interruption)
	werr        error
	closed      bool
	held        bool   // in custody (custody.go)
	key         uint64 // its key there

	// wholeWrites (set once, before the first Write: custody) makes
	// Write send whole frames only, each batch in one write (wbuf holds a
	// frame ttrpc has not finished writing), so that a crash does not
	// leave a response cut in the client's socket. Guarded by wmu.
	wholeWrites bool
	wbuf        []byte
}

// newConn registers a connection; pending are bytes to deliver before the
// socket's. Called with l.mu held, or before l is shared.
func (l *Listener) newConn(nc net.Conn, pending []byte) *conn {
	c := &conn{Conn: nc, l: l, inflight: map[uint32]int{}}
	if len(pending) > 0 {
		c.rbuf = make([]byte, len(pending), len(pending)+readSize)
		copy(c.rbuf, pending)
		c.w = len(pending)
	}
	l.conns = append(l.conns, c)
	return c
}

// dead reports whether the connection is closed or failed: not waited
// for, not handed over.
func (c *conn) dead() bool {
	return c.closed || c.rerr != nil || c.werr != nil
}

// admits reports whether the frame with header h may be delivered now.
func (c *conn) admits(h header) bool {
	if !c.l.frozen {
		return true
	}
	// Frozen: only the data of a stream still in flight (a client stream
	// must be able to finish).
	return h.typ == typeData && c.inflight[h.stream] > 0
}

// interrupt ends a read of the socket at a frame boundary once the
// listener is frozen and the connection has nothing in flight: its bytes
// are no longer to be delivered here, and Freeze must know them.
// A read for the rest of a frame is left alone. Called with l.mu held.
func (c *conn) interrupt() {
	if c.l.frozen && c.reading == readBoundary && c.inflightN == 0 && !c.deadlineSet {
		if c.Conn.SetReadDeadline(time.Unix(1, 0)) == nil {
			c.deadlineSet = true
		}
	}
}

// afterRead clears the deadline interrupt set and reports whether it did.
// Called with l.mu held, by the reader, after every read of the socket.
func (c *conn) afterRead() bool {
	c.reading = readIdle
	if !c.deadlineSet {
		return false
	}
	c.deadlineSet = false
	c.Conn.SetReadDeadline(time.Time{})
	return true
}

// Read hands ttrpc the bytes of one frame at most: those buffered, or, for
// the rest of a frame, those it reads from the socket. At a frame boundary
// it decides whether the next frame may be delivered (not while frozen,
// unless it is data of a stream in flight) and blocks while not.
func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		if c.closed {
			return 0, net.ErrClosed
		}
		if c.remaining > 0 {
			if c.r < c.w {
				n := copy(p, c.rbuf[c.r:min(c.w, c.r+c.remaining)])
				c.r += n
				c.remaining -= n
				if c.r == c.w {
					c.r, c.w = 0, 0
				}
				if c.remaining == 0 {
					l.cond.Broadcast()
				}
				return n, nil
			}
			if c.rerr != nil {
				return 0, c.rerr
			}
			c.reading = readFrame
			l.mu.Unlock()
			n, err := c.Conn.Read(p[:min(len(p), c.remaining)])
			l.mu.Lock()
			interrupted := c.afterRead()
			c.remaining -= n
			if err != nil && !(interrupted && errors.Is(err, os.ErrDeadlineExceeded)) {
				c.rerr = err
			}
			l.cond.Broadcast()
			if n > 0 {
				return n, nil
			}
			continue
		}
		// At a frame boundary.
		if c.w-c.r >= headerLen {
			h := parseHeader(c.rbuf[c.r:])
			if c.admits(h) {
				if h.typ == typeRequest {
					c.inflight[h.stream]++
					c.inflightN++
				}
				c.remaining = headerLen + int(h.length)
				continue
			}
			if c.rerr != nil {
				return 0, c.rerr // frozen and the peer is gone: let ttrpc close
			}
			l.cond.Wait()
			continue
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if l.frozen && c.inflightN == 0 {
			// Nothing may be delivered: do not even read, so that the
			// bytes stay in the socket for the next server.
			l.cond.Wait()
			continue
		}
		if len(c.rbuf)-c.w < readSize {
			if c.r > 0 {
				c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
				c.r = 0
			}
			if len(c.rbuf)-c.w < readSize {
				nb := make([]byte, c.w+readSize)
				copy(nb, c.rbuf[:c.w])
				c.rbuf = nb
			}
		}
		c.reading = readBoundary
		buf := c.rbuf[c.w:]
		whole := l.custody != nil
		l.mu.Unlock()
		var (
			n   int
			big []byte
			err error
		)
		if whole {
			// Under custody: one whole frame, so that a crash leaves the
			// socket at a frame boundary (custody.go).
			n, big, err = readWholeFrame(c.Conn, buf)
		} else {
			n, err = c.Conn.Read(buf)
		}
		l.mu.Lock()
		interrupted := c.afterRead()
		if big != nil {
			if c.r > 0 {
				c.w = copy(c.rbuf, c.rbuf[c.r:c.w])
				c.r = 0
			}
			nb := make([]byte, c.w+len(big), c.w+len(big)+readSize)
			copy(nb, c.rbuf[:c.w])
			copy(nb[c.w:], big)
			c.rbuf = nb
			n = len(big)
		}
		c.w += n
		if err != nil && !(interrupted && errors.Is(err, os.ErrDeadlineExceeded)) {
			c.rerr = err
		}
		l.cond.Broadcast()
	}
}

// Write writes p and follows the frames in it: a frame that closes a
// stream ends the stream's request in flight.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	out := p
	if c.wholeWrites {
		// ttrpc writes a message in pieces (a 4 KiB bufio.Writer) and
		// flushes at its end: send complete frames only.
		c.wbuf = append(c.wbuf, p...)
		k := completeFrames(c.wbuf)
		if k == 0 {
			return len(p), nil
		}
		out = c.wbuf[:k]
	}
	n, err := c.Conn.Write(out)
	if c.wholeWrites {
		defer func() {
			c.wbuf = c.wbuf[:copy(c.wbuf, c.wbuf[n:])]
			if cap(c.wbuf) > 64<<10 && len(c.wbuf) == 0 {
				c.wbuf = nil // a large response: do not keep its buffer
			}
		}()
	}
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	c.wf.feed(out[:n], func(h header) {
		if !h.closesStream() || c.inflight[h.stream] == 0 {
			return
		}
		c.inflightN--
		if c.inflight[h.stream]--; c.inflight[h.stream] == 0 {
			delete(c.inflight, h.stream)
		}
	})
	if err != nil {
		c.werr = err
	}
	c.interrupt()
	l.cond.Broadcast()
	if c.wholeWrites {
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return n, err
}

// Close closes the connection and forgets it.
func (c *conn) Close() error {
	l := c.l
	l.mu.Lock()
	if !c.closed {
		c.closed = true
		c.release()
		l.removeLocked(c)
		l.cond.Broadcast()
	}
	l.mu.Unlock()
	return c.Conn.Close()
}

// dup returns a duplicate of the socket's descriptor.
func (c *conn) dup() (*os.File, error) {
	f, ok := c.Conn.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("connection %T has no descriptor to hand over", c.Conn)
	}
	return f.File()
}

// Unwrap returns the underlying connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }

// Handshaker adapts a ttrpc handshaker to the connections of a Listener:
// h sees the underlying connection (ttrpc.UnixSocketRequireSameUser needs
// a *net.UnixConn to read the peer's credentials), the server gets the
// wrapper. Connections of other listeners go to h unchanged.
func Handshaker(h ttrpc.Handshaker) ttrpc.Handshaker {
	return handshaker{h}
}

type handshaker struct{ h ttrpc.Handshaker }

func (hs handshaker) Handshake(ctx context.Context, nc net.Conn) (net.Conn, any, error) {
	c, ok := nc.(*conn)
	if !ok {
		return hs.h.Handshake(ctx, nc)
	}
	_, info, err := hs.h.Handshake(ctx, c.Conn)
	if err != nil {
		return nil, nil, err
	}
	return c, info, nil
}
