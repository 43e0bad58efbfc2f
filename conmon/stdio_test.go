package conmon

import (
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The log pipeline grows a busy stream's pipe only through syscall.Conn
// (logging.BusyPipeSize): a drainReader must expose its pipe.
func TestDrainReaderExposesPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	d := newDrainReader(r)
	defer d.Close()
	if !pipesUnlimited() {
		t.Skip("not privileged in the initial user namespace: pipes are not grown")
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
		size, serr = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20)
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Skipf("F_SETPIPE_SZ refused here: %v", serr)
	}
	if size < 1<<20 {
		t.Fatalf("pipe size after F_SETPIPE_SZ 1 MiB = %d", size)
	}
}

func TestIdentityIDMap(t *testing.T) {
	for _, tc := range []struct {
		m    string
		want bool
	}{
		{"         0          0 4294967295\n", true},
		{"0 0 4294967295", true},
		{"         0       1000          1\n         1     100000      65536\n", false}, // rootless
		{"         0     100000      65536\n", false},
		{"", false},
	} {
		if got := identityIDMap([]byte(tc.m)); got != tc.want {
			t.Errorf("identityIDMap(%q) = %v, want %v", tc.m, got, tc.want)
		}
	}
}
