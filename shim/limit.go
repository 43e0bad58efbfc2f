package shim

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/containers/conmon-v2/shim/launch"
)

// priorityReserve is how far Kill, Delete, Shutdown and Join may pass a
// connection's bound (launch.Limits).
const priorityReserve = 32

// lane is the class of a request.
type lane int

const (
	laneGeneral  lane = iota
	lanePriority      // Kill, Delete, Shutdown, Join
	laneWait          // Wait
)

// laneOf classifies a request by its service and method.
func laneOf(service, method string) lane {
	switch service {
	case TaskServiceV2, TaskServiceV3:
		switch method {
		case "Kill", "Delete", "Shutdown":
			return lanePriority
		case "Wait":
			return laneWait
		}
	case launch.GroupService:
		if method == "Join" {
			return lanePriority
		}
	}
	return laneGeneral
}

// limiter enforces launch.Limits for one ttrpc server: interceptor holds the
// daemon-wide lanes, handshaker wraps each connection in its bound.
type limiter struct {
	lim     launch.Limits
	general chan struct{} // a token per running general request
	waits   chan struct{} // a token per running Wait
	queued  chan struct{} // a token per general request waiting for a slot
}

// newLimiter returns a limiter for l; the zero launch.Limits means launch.DefaultLimits.
// l must be valid.
func newLimiter(l launch.Limits) *limiter {
	if l == (launch.Limits{}) {
		l = launch.DefaultLimits()
	}
	return &limiter{
		lim:     l,
		general: make(chan struct{}, l.Requests),
		waits:   make(chan struct{}, l.Waits),
		queued:  make(chan struct{}, l.Queue),
	}
}

// interceptor wraps next so that the method next finally calls runs only
// with a slot of its lane. Inside next, a refusal is an errdefs error that
// the ErrorInterceptor converts like any handler's.
func (l *limiter) interceptor(next ttrpc.UnaryServerInterceptor) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		return next(ctx, unmarshal, info, func(ctx context.Context, unmarshal func(any) error) (any, error) {
			release, err := l.acquire(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			defer release()
			return m(ctx, unmarshal)
		})
	}
}

// acquire takes a slot of fullMethod's lane, or says why there is none.
func (l *limiter) acquire(ctx context.Context, fullMethod string) (release func(), err error) {
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	switch laneOf(service, method) {
	case lanePriority:
		return func() {}, nil
	case laneWait:
		select {
		case l.waits <- struct{}{}:
			return func() { <-l.waits }, nil
		default:
			return nil, fmt.Errorf("%s: %d Wait requests are being served, the limit ([limits] waits): %w", fullMethod, l.lim.Waits, errdefs.ErrResourceExhausted)
		}
	}
	release = func() { <-l.general }
	select {
	case l.general <- struct{}{}:
		return release, nil
	default:
	}
	select {
	case l.queued <- struct{}{}:
		defer func() { <-l.queued }()
	default:
		return nil, fmt.Errorf("%s: %d requests are running ([limits] requests) and %d more are waiting ([limits] queue): %w", fullMethod, l.lim.Requests, l.lim.Queue, errdefs.ErrResourceExhausted)
	}
	timer := time.NewTimer(l.lim.QueueTimeout)
	defer timer.Stop()
	select {
	case l.general <- struct{}{}:
		return release, nil
	case <-timer.C:
		return nil, fmt.Errorf("%s: no free slot among %d running requests ([limits] requests) within %s ([limits] queue_timeout): %w", fullMethod, l.lim.Requests, l.lim.QueueTimeout, errdefs.ErrResourceExhausted)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: no free slot among %d running requests ([limits] requests) before the request's deadline: %v: %w", fullMethod, l.lim.Requests, ctx.Err(), errdefs.ErrResourceExhausted)
	}
}

// handshaker runs inner on the raw connection (it needs the *net.UnixConn
// for SO_PEERCRED) and wraps the approved connection in its bound.
func (l *limiter) handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return handshakerFunc(func(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
		if inner != nil {
			c, info, err := inner.Handshake(ctx, conn)
			if err != nil {
				return c, info, err
			}
			return newLimitConn(c, l.lim.RequestsPerConnection), info, nil
		}
		return newLimitConn(conn, l.lim.RequestsPerConnection), nil, nil
	})
}

type handshakerFunc func(ctx context.Context, conn net.Conn) (net.Conn, any, error)

func (f handshakerFunc) Handshake(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
	return f(ctx, conn)
}

// ttrpc framing (ttrpc's PROTOCOL.md): a 10-byte header (length, stream
// id, type, flags) and at most 4 MiB of payload.
const (
	frameHeaderLen    = 10
	frameMax          = 4 << 20
	frameRequest      = 1
	frameResponse     = 2
	frameData         = 3
	frameRemoteClosed = 0x1
)

// limitConn is a server connection that counts the requests it has read
// and not yet answered, and stops reading at the bound.
//
// The reading side looks at each frame before ttrpc does. A request is
// read whole (ttrpc reads it whole too) to learn its method, and passes
// once the connection has a free slot; Kill, Delete, Shutdown and Join may
// use a reserve above the bound. Data frames from the client are dropped:
// this daemon serves no method that streams from the client, and ttrpc
// v1.2 dereferences a nil stream handler on a data frame sent for a unary
// call. The writing side watches the frames ttrpc writes: a response, or
// the last data frame of a stream, answers its request.
//
// The stream-id rules mirror ttrpc's server, so that the answers ttrpc
// gives to refused frames (a reused or even id, an oversized message) do
// not free another request's slot: such a frame is not counted and its
// answer is expected in extra.
type limitConn struct {
	net.Conn
	bound int

	// Reading side: only ttrpc's receive goroutine calls Read.
	hdr     [frameHeaderLen]byte
	pending []byte // bytes of the current frame not yet handed to ttrpc
	pass    int    // bytes of the current frame to pass straight through
	lastID  uint32

	// Writing side: only ttrpc's connection loop calls Write.
	whdr  [frameHeaderLen]byte
	whdrN int
	wskip int

	mu     sync.Mutex
	cond   *sync.Cond
	open   map[uint32]struct{} // requests read and not yet answered
	extra  map[uint32]int      // answers expected for frames not counted
	closed bool
}

func newLimitConn(c net.Conn, bound int) *limitConn {
	lc := &limitConn{Conn: c, bound: bound, open: map[uint32]struct{}{}, extra: map[uint32]int{}}
	lc.cond = sync.NewCond(&lc.mu)
	return lc
}

func (c *limitConn) Read(p []byte) (int, error) {
	for {
		if len(c.pending) > 0 {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
		if c.pass > 0 {
			n, err := c.Conn.Read(p[:min(len(p), c.pass)])
			c.pass -= n
			return n, err
		}
		if _, err := io.ReadFull(c.Conn, c.hdr[:]); err != nil {
			return 0, err
		}
		length := int(binary.BigEndian.Uint32(c.hdr[0:4]))
		id := binary.BigEndian.Uint32(c.hdr[4:8])
		switch c.hdr[8] {
		case frameData:
			if _, err := io.CopyN(io.Discard, c.Conn, int64(length)); err != nil {
				return 0, err
			}
			continue
		case frameRequest:
			if length > frameMax {
				// ttrpc discards it and answers ResourceExhausted.
				c.expect(id)
				c.pending, c.pass = c.hdr[:], length
				continue
			}
			frame := make([]byte, frameHeaderLen+length)
			copy(frame, c.hdr[:])
			if _, err := io.ReadFull(c.Conn, frame[frameHeaderLen:]); err != nil {
				return 0, err
			}
			if err := c.admit(id, requestLane(frame[frameHeaderLen:])); err != nil {
				return 0, err
			}
			c.pending = frame
		default: // ttrpc ignores frame types it does not know
			c.pending, c.pass = c.hdr[:], length
		}
	}
}

// admit counts request id, waiting while the connection is at its bound.
func (c *limitConn) admit(id uint32, l lane) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id%2 != 1 || id <= c.lastID {
		c.extra[id]++ // ttrpc refuses it at once
		return nil
	}
	c.lastID = id
	bound := c.bound
	if l == lanePriority {
		bound += priorityReserve
	}
	for len(c.open) >= bound && !c.closed {
		c.cond.Wait()
	}
	if c.closed {
		return net.ErrClosed
	}
	c.open[id] = struct{}{}
	return nil
}

func (c *limitConn) expect(id uint32) {
	c.mu.Lock()
	c.extra[id]++
	c.mu.Unlock()
}

// answered records that ttrpc wrote the answer to id.
func (c *limitConn) answered(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.extra[id]; n > 0 {
		if n == 1 {
			delete(c.extra, id)
		} else {
			c.extra[id] = n - 1
		}
		return
	}
	if _, ok := c.open[id]; ok {
		delete(c.open, id)
		c.cond.Signal()
	}
}

func (c *limitConn) Write(p []byte) (int, error) {
	for q := p; len(q) > 0; {
		if c.wskip > 0 {
			n := min(c.wskip, len(q))
			c.wskip -= n
			q = q[n:]
			continue
		}
		n := copy(c.whdr[c.whdrN:], q)
		c.whdrN += n
		q = q[n:]
		if c.whdrN < frameHeaderLen {
			break
		}
		c.whdrN = 0
		c.wskip = int(binary.BigEndian.Uint32(c.whdr[0:4]))
		id := binary.BigEndian.Uint32(c.whdr[4:8])
		if t := c.whdr[8]; t == frameResponse || (t == frameData && c.whdr[9]&frameRemoteClosed != 0) {
			c.answered(id)
		}
	}
	return c.Conn.Write(p)
}

func (c *limitConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}

// inflight is the number of requests read and not answered (for tests).
func (c *limitConn) inflight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.open)
}

// requestLane reads the service and method of a ttrpc Request message
// (fields 1 and 2). A message it cannot read is general: ttrpc refuses it.
func requestLane(b []byte) lane {
	var service, method string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return laneGeneral
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == 1 || num == 2) {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return laneGeneral
			}
			if num == 1 {
				service = string(v)
			} else {
				method = string(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return laneGeneral
		}
		b = b[m:]
	}
	return laneOf(service, method)
}
