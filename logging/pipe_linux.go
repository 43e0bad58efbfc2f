package logging

import (
	"io"
	"syscall"

	"golang.org/x/sys/unix"
)

// growPipe asks for a pipe of BusyPipeSize behind r, once r's stream
// proved busy (a read filled ReadSize): the writer then blocks, and the
// reader wakes, once per BusyReadSize instead of per 64 KiB. Only readers
// that expose their descriptor (syscall.Conn: *os.File) can be grown; a
// refusal (fs.pipe-max-size, the user's pipe pages, not a pipe) changes
// nothing.
func growPipe(r io.Reader) {
	c, ok := r.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if sz, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err == nil && sz < BusyPipeSize {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, BusyPipeSize)
		}
	})
}
