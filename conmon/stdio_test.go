package conmon

import (
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/pipesize"
)

// The log pipeline grows a busy stream's pipe only through syscall.Conn
// (internal/pipesize): a drainReader must expose its pipe.
func TestDrainReaderExposesPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	d := newDrainReader(r)
	defer d.Close()
	if !pipesize.Allowed() {
		t.Skip("pipes are not grown here (internal/pipesize)")
	}
	var c any = d
	sc, ok := c.(syscall.Conn)
	if !ok {
		t.Fatal("drainReader does not implement syscall.Conn")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	var serr error
	if err := rc.Control(func(fd uintptr) {
		size, serr = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipesize.Busy)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Skipf("F_SETPIPE_SZ refused here: %v", serr)
	}
	if size < pipesize.Busy {
		t.Fatalf("pipe size after F_SETPIPE_SZ 1 MiB = %d", size)
	}
}
