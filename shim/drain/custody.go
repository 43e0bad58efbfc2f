package drain

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Custody keeps a duplicate of each connection's socket outside the
// process (the shim's keeper, docs/resilience.md §4), so that a crash of
// the process does not close it: the keeper hands it to the next daemon,
// which serves it on. Its methods must not block for long.
type Custody interface {
	// HoldConn takes ownership of fd, a duplicate of the socket of the
	// connection key (the socket's inode number: the same in the next
	// process, so a connection held again replaces its old duplicate).
	HoldConn(key uint64, fd int)
	// DropConn: the connection key is closed.
	DropConn(key uint64)
}

// SetCustody gives every connection, open and to come, into c's custody
// before anything is read from it, and tells c when one closes. From then
// on connections read their socket one whole frame at a time (see
// readWholeFrame), so that a crash of this process leaves each socket at a
// frame boundary for the next daemon: a request this process had read and
// not answered is lost (its caller times out), but the connection goes on.
// They also write whole frames only, each batch with one write, so that a
// crash does not leave a response cut (up to the socket's send buffer: a
// larger write may still be cut). Call it before serving.
func (l *Listener) SetCustody(c Custody) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.custody = c
	for _, cn := range l.conns {
		cn.hold()
	}
	for _, cn := range l.handed {
		if !contains(l.conns, cn) {
			cn.hold()
		}
	}
}

func contains(cs []*conn, c *conn) bool {
	for _, o := range cs {
		if o == c {
			return true
		}
	}
	return false
}

// hold gives the connection into custody. Called with l.mu held.
func (c *conn) hold() {
	cu := c.l.custody
	if cu == nil || c.held {
		return
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	fd := -1
	var st unix.Stat_t
	_ = rc.Control(func(u uintptr) {
		if unix.Fstat(int(u), &st) != nil {
			return
		}
		fd, _ = unix.FcntlInt(u, unix.F_DUPFD_CLOEXEC, 3)
	})
	if fd < 0 {
		return
	}
	c.key, c.held = st.Ino, true
	c.wholeWrites = true // before the server's first Write (see SetCustody)
	cu.HoldConn(c.key, fd)
}

// completeFrames returns the length of the complete ttrpc frames at the
// start of b.
func completeFrames(b []byte) int {
	off := 0
	for len(b)-off >= headerLen {
		size := headerLen + int(binary.BigEndian.Uint32(b[off:off+4]))
		if len(b)-off < size {
			break
		}
		off += size
	}
	return off
}

// release tells custody the connection is closed. Called with l.mu held.
func (c *conn) release() {
	if c.held && c.l.custody != nil {
		c.held = false
		c.l.custody.DropConn(c.key)
	}
}

// maxWholeFrame bounds the frames read whole: a larger one (ttrpc allows
// 4 MiB) may never be in the socket at once, and is read as it comes, so
// a crash while reading it leaves that connection cut inside a frame.
const maxWholeFrame = 64 << 10

// readWholeFrame consumes exactly one frame from nc's socket: it peeks at
// the header (MSG_PEEK), waits until the whole frame is in the socket,
// and reads it with one recv. The frame goes to buf if it fits, else to
// a new slice (big). A frame larger than maxWholeFrame is read as it
// comes (into buf). A connection without a descriptor is read as usual.
func readWholeFrame(nc net.Conn, buf []byte) (n int, big []byte, err error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		n, err = nc.Read(buf)
		return n, nil, err
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		n, err = nc.Read(buf)
		return n, nil, err
	}
	var (
		hdr  [headerLen]byte
		rerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		m, perr := recvRetry(int(fd), hdr[:], unix.MSG_PEEK)
		switch {
		case perr == unix.EAGAIN:
			return false
		case perr != nil:
			rerr = perr
			return true
		case m == 0:
			rerr = io.EOF
			return true
		case m < headerLen:
			return false // the rest of the header is on its way
		}
		size := headerLen + int(binary.BigEndian.Uint32(hdr[:4]))
		dst := buf
		if size > maxWholeFrame {
			// Read as it comes, at most the frame.
			n, rerr = recvRetry(int(fd), buf[:min(len(buf), size)], 0)
			if rerr == unix.EAGAIN {
				n, rerr = 0, nil
				return false
			}
			return true
		}
		if size > len(buf) {
			if len(big) < size {
				big = make([]byte, size)
			}
			dst = big
		}
		m, perr = recvRetry(int(fd), dst[:size], unix.MSG_PEEK)
		if perr == unix.EAGAIN || (perr == nil && m > 0 && m < size) {
			if !peerHungUp(int(fd)) {
				return false // wait for the rest of the frame
			}
			// The peer closed inside a frame: nothing more will come.
			n, rerr = recvRetry(int(fd), buf[:min(len(buf), m)], 0)
			return true
		}
		if perr != nil || m == 0 {
			rerr = perr
			if m == 0 && perr == nil {
				rerr = io.ErrUnexpectedEOF // the peer closed inside a frame
			}
			return true
		}
		n, rerr = recvRetry(int(fd), dst[:size], 0)
		if size > len(buf) {
			big = big[:n]
		} else {
			big = nil
		}
		return true
	})
	if err != nil {
		return 0, nil, err // closed, or a deadline (Freeze)
	}
	if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
		rerr = &net.OpError{Op: "read", Net: "unix", Err: os.NewSyscallError("recvfrom", rerr)}
	}
	if big != nil {
		return 0, big, rerr
	}
	if n > 0 && errors.Is(rerr, io.EOF) {
		rerr = nil
	}
	return n, nil, rerr
}

// recvRetry is recvfrom, retried on EINTR.
func recvRetry(fd int, p []byte, flags int) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, p, flags)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// peerHungUp reports whether the peer of the socket fd has shut down its
// writing side (no more bytes will come).
func peerHungUp(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
}
