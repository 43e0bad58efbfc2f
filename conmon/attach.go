package conmon

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Attach stream ids: the first byte of every message sent to a client.
const (
	attachStdin  = 1
	attachStdout = 2
	attachStderr = 3
)

// attachMaxData is the most data bytes a message carries: clients read
// into 8193-byte buffers and SEQPACKET truncates longer messages.
const attachMaxData = 8192

// attachQueueBytes bounds the output queued for one client. The queue only
// holds memory while its client lags.
const attachQueueBytes = 4 << 20

// attachStallGrace is how long the container's output may wait for a
// client whose queue is full and that has taken nothing from it meanwhile.
// A client that keeps reading, however slowly, is never dropped: the
// output waits for it as conmon's does (podman run | slow-reader gets every
// line). A client that reads nothing for this long is disconnected, so a
// stuck or vanished client can never stall the container for longer (its
// bytes are in the logs anyway).
const attachStallGrace = 10 * time.Second

// maxAttachClients bounds the clients attached at once; one more is
// disconnected at once (it reads EOF).
const maxAttachClients = 256

// stdinSink receives what attach clients send.
type stdinSink interface {
	io.Writer
	// CloseStdin closes the container's stdin (a client sent EOF).
	CloseStdin()
}

// attachServer is the SEQPACKET attach socket of one container.
type attachServer struct {
	ln      *os.File        // the listening socket
	rc      syscall.RawConn // ln's fd: every accept is a non-blocking one under mu
	dir     *os.File        // O_PATH handle of the socket's directory
	path    string          // socket path as clients name it
	symlink string          // <socket-dir>/<cuuid>, removed at close; "" with --full-attach
	stdin   stdinSink
	closeIn bool // close stdin when a client sends EOF
	diag    *Diag
	// stallGrace is attachStallGrace; tests shorten it.
	stallGrace time.Duration
	wg         sync.WaitGroup
	mu         sync.Mutex
	clients    map[*attachClient]struct{} // guarded by mu
	shutdown   bool                       // guarded by mu
	// lastOut is when Broadcast last returned; zero before the first
	// output. Guarded by mu.
	lastOut time.Time
}

type attachClient struct {
	conn    *net.UnixConn
	dropped atomic.Bool   // disconnected by the server: its EOF is not the client's
	ready   chan struct{} // signalled when q grows or closes
	taken   chan struct{} // signalled when the writer takes q: progress

	mu     sync.Mutex
	q      [][]byte // messages not yet written; guarded by mu
	queued int      // bytes in q; guarded by mu
	closed bool     // no more messages; guarded by mu
}

// push queues msg. When the queue is full it waits for the client's writer
// to take the queue, as long as the writer keeps making progress at least
// once per grace; it returns false when the client made no progress for a
// whole grace (the caller disconnects it).
func (c *attachClient) push(msg []byte, grace time.Duration) bool {
	var timer *time.Timer
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return true
		}
		if c.queued+len(msg) <= attachQueueBytes {
			c.q = append(c.q, msg)
			c.queued += len(msg)
			c.mu.Unlock()
			c.signal()
			return true
		}
		c.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(grace)
			defer timer.Stop()
		}
		select {
		case <-c.taken:
			timer.Reset(grace)
		case <-timer.C:
			return false
		}
	}
}

func (c *attachClient) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.signal()
}

func (c *attachClient) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// next returns the queued messages, waiting for some; ok is false once the
// queue is closed and empty.
func (c *attachClient) next() (msgs [][]byte, ok bool) {
	for {
		c.mu.Lock()
		if len(c.q) > 0 {
			msgs = c.q
			c.q = nil
			c.queued = 0
			c.mu.Unlock()
			select {
			case c.taken <- struct{}{}:
			default:
			}
			return msgs, true
		}
		closed := c.closed
		c.mu.Unlock()
		if closed {
			return nil, false
		}
		<-c.ready
	}
}

// attachPaths returns the directory that holds the socket and the symlink
// to create (if any), following conmon's rules: --full-attach puts the
// socket in the bundle; otherwise <socket-dir>/<cuuid> is a symlink to the
// bundle (its name cut by one byte if it would be exactly 107 bytes long,
// like conmon) and the socket is named through it.
func attachPaths(bundle, socketDir, cuuid string, full bool) (dir, symlink string) {
	if full {
		return bundle, ""
	}
	link := filepath.Join(socketDir, cuuid)
	if len(link) == 107 {
		link = link[:106]
	}
	return link, link
}

// newAttachServer creates the socket. Binding goes through
// /proc/self/fd/<dirfd>/attach so paths longer than sun_path work.
func newAttachServer(bundle, socketDir, cuuid string, full bool, stdin stdinSink, closeIn bool, diag *Diag) (*attachServer, error) {
	dir, symlink := attachPaths(bundle, socketDir, cuuid, full)
	if symlink != "" {
		if err := os.MkdirAll(socketDir, 0o755); err != nil {
			return nil, fmt.Errorf("attach socket dir %s: %w", socketDir, err)
		}
		_ = os.Remove(symlink)
		if err := os.Symlink(bundle, symlink); err != nil {
			return nil, fmt.Errorf("attach symlink %s: %w", symlink, err)
		}
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("attach socket dir %s: %w", dir, err)
	}
	d := os.NewFile(uintptr(dfd), dir)
	procPath := "/proc/self/fd/" + strconv.Itoa(dfd) + "/attach"
	_ = os.Remove(procPath)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: procPath, Net: "unixpacket"})
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("attach socket %s: %w", filepath.Join(dir, "attach"), err)
	}
	ln.SetUnlinkOnClose(false)
	_ = os.Chmod(procPath, 0o700)
	// The socket is kept as an *os.File: its raw conn can wait for a
	// pending connection in the runtime's poller and then accept it
	// (acceptLoop), which a net listener's raw conn cannot.
	lf, err := listenerFile(ln)
	ln.Close()
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("attach socket: %w", err)
	}
	rc, err := lf.SyscallConn()
	if err != nil {
		lf.Close()
		d.Close()
		return nil, fmt.Errorf("attach socket: %w", err)
	}
	s := &attachServer{
		ln: lf, rc: rc, dir: d, path: filepath.Join(dir, "attach"), symlink: symlink,
		stdin: stdin, closeIn: closeIn, diag: diag, stallGrace: attachStallGrace,
		clients: make(map[*attachClient]struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// listenerFile returns a non-blocking duplicate of ln's socket as an
// *os.File registered with the runtime's poller.
func listenerFile(ln *net.UnixListener) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var derr error
	if err := rc.Control(func(fd uintptr) {
		nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return os.NewFile(uintptr(nfd), "attach"), nil
}

// attachQuiet is the pause in the output after which Broadcast looks for
// pending clients itself before it sends. While output streams (reads
// closer together than this) it leaves them to acceptLoop, so a busy
// stream costs no accept(2) per read.
const attachQuiet = time.Millisecond

// acceptLoop accepts clients as they come, parked in the runtime's poller
// between them. A connection can be pending while this goroutine has not
// run yet (the poller readies it and the output's reader in no particular
// order), so output that follows a connect is not left to it alone:
// AcceptPending, called before the container is started for an exec
// attach, and Broadcast, on the first output after a quiet spell, accept
// what is queued first. A client that connects before the output starts,
// or while it pauses, gets all of it; one that connects into a stream
// that never pauses gets it from the moment it is accepted (when the
// scheduler next polls; sysmon polls at least every 10 ms), as with
// conmon's main loop.
func (s *attachServer) acceptLoop() {
	defer s.wg.Done()
	for {
		// Accepting only under mu, with the client added in the same
		// hold: a connection taken from the socket but not yet added
		// would miss output that AcceptPending or Broadcast, finding
		// nothing queued, let through meanwhile.
		var failed error
		err := s.rc.Read(func(fd uintptr) bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.shutdown {
				return true
			}
			failed = s.acceptPendingLocked(fd)
			return failed != nil
		})
		if err != nil || failed == nil {
			return // the socket is closed
		}
		s.diag.Warnf("Failed to accept client connection on attach socket: %v", failed)
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *attachServer) addClientLocked(conn *net.UnixConn) {
	if len(s.clients) >= maxAttachClients {
		// Each client costs two goroutines and a queue: a flood of
		// connections must not exhaust the monitor.
		s.diag.Warnf("Refusing attach client: %d clients already attached", len(s.clients))
		conn.Close()
		return
	}
	c := &attachClient{conn: conn, ready: make(chan struct{}, 1), taken: make(chan struct{}, 1)}
	s.clients[c] = struct{}{}
	s.wg.Add(2)
	go s.writeLoop(c)
	go s.readLoop(c)
}

// AcceptPending accepts every connection queued on the socket without
// waiting: the caller knows a client has connected (an exec attach's start
// byte) and output may follow at once.
func (s *attachServer) AcceptPending() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shutdown {
		_ = s.rc.Control(func(fd uintptr) { _ = s.acceptPendingLocked(fd) })
	}
}

// acceptPendingLocked accepts every queued connection without waiting. It
// returns nil once none is left, or the error that stopped it.
func (s *attachServer) acceptPendingLocked(lfd uintptr) error {
	for {
		nfd, _, err := unix.Accept4(int(lfd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(nfd), "attach-client")
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			continue
		}
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			conn.Close()
			continue
		}
		s.addClientLocked(uc)
	}
}

// writeLoop sends c's queued messages; it ends when the queue is closed
// (the client was dropped or the server shut down) and then closes c.
func (s *attachServer) writeLoop(c *attachClient) {
	defer s.wg.Done()
	defer c.conn.Close()
	for {
		msgs, ok := c.next()
		if !ok {
			return
		}
		for _, msg := range msgs {
			if _, err := c.conn.Write(msg); err != nil {
				s.diag.Warnf("Failed to write to remote console socket: %v", err)
				_ = c.conn.CloseWrite()
				// Keep emptying the queue until it is closed.
				for {
					if _, ok := c.next(); !ok {
						return
					}
				}
			}
		}
	}
}

// readLoop forwards c's bytes to the container's stdin. On EOF (or a
// hang-up) it shuts down c's read side and closes stdin unless
// --leave-stdin-open was given.
func (s *attachServer) readLoop(c *attachClient) {
	defer s.wg.Done()
	buf := make([]byte, 32768)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 && s.stdin != nil {
			if _, werr := s.stdin.Write(buf[:n]); werr != nil {
				s.diag.Warnf("Failed to write to container stdin: %v", werr)
			}
		}
		if err != nil {
			break
		}
	}
	_ = c.conn.CloseRead()
	if s.closeIn && s.stdin != nil && !c.dropped.Load() {
		s.stdin.CloseStdin()
	}
}

// Broadcast sends data read from the container to every client, in
// messages of at most 8192 data bytes prefixed with the stream id. A client
// whose queue is full makes it wait while that client keeps reading; one
// that reads nothing for attachStallGrace is disconnected. The first output
// after a quiet spell (attachQuiet) accepts pending clients first.
func (s *attachServer) Broadcast(stream byte, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return
	}
	now := time.Now()
	if s.lastOut.IsZero() || now.Sub(s.lastOut) >= attachQuiet {
		_ = s.rc.Control(func(fd uintptr) { _ = s.acceptPendingLocked(fd) })
	}
	if len(s.clients) == 0 {
		s.lastOut = now
		return
	}
	defer func() { s.lastOut = time.Now() }() // pushes may have waited
	for len(data) > 0 {
		n := min(len(data), attachMaxData)
		msg := make([]byte, 1+n)
		msg[0] = stream
		copy(msg[1:], data[:n])
		data = data[n:]
		for c := range s.clients {
			if !c.push(msg, s.stallGrace) {
				s.diag.Warnf("Attach client too slow, disconnecting it")
				c.dropped.Store(true)
				delete(s.clients, c)
				c.close()
				// Closing unblocks a writer stuck in a full socket.
				_ = c.conn.Close()
			}
		}
	}
}

// Close stops accepting, lets every client's writer flush what is queued
// (bounded by timeout), closes the clients and removes the socket and the
// symlink.
func (s *attachServer) Close(timeout time.Duration) {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		return
	}
	s.shutdown = true
	for c := range s.clients {
		c.dropped.Store(true)
		c.close()
		_ = c.conn.CloseRead()
	}
	clients := s.clients
	s.clients = nil
	s.mu.Unlock()
	// Closed outside mu: Close waits for acceptLoop's read of the socket
	// to end, and that read takes mu to accept.
	_ = s.ln.Close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		for c := range clients {
			_ = c.conn.Close()
		}
		<-done
	}
}

// Unlink removes the socket file and the socket-dir symlink.
func (s *attachServer) Unlink() {
	_ = os.Remove("/proc/self/fd/" + strconv.Itoa(int(s.dir.Fd())) + "/attach")
	s.dir.Close()
	if s.symlink != "" {
		_ = os.Remove(s.symlink)
	}
}
