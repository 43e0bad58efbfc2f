package drain

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawFrame builds a ttrpc frame with a payload of n bytes of b.
func rawFrame(stream uint32, n int, b byte) []byte {
	f := make([]byte, headerLen+n)
	binary.BigEndian.PutUint32(f[0:4], uint32(n))
	binary.BigEndian.PutUint32(f[4:8], stream)
	f[8] = typeRequest
	copy(f[headerLen:], bytes.Repeat([]byte{b}, n))
	return f
}

// TestReadWholeFrame: under custody a connection consumes its socket one
// whole frame at a time: a frame still arriving, even one cut inside its
// header, is left in the socket until it is complete, so that a crash
// leaves the socket at a frame boundary.
func TestReadWholeFrame(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[1]), "peer")
	defer peer.Close()
	nc, err := net.FileConn(os.NewFile(uintptr(fds[0]), "ours"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	unix.Close(fds[0])

	type result struct {
		got []byte
		err error
	}
	read := func(bufSize int) <-chan result {
		ch := make(chan result, 1)
		go func() {
			buf := make([]byte, bufSize)
			n, big, err := readWholeFrame(nc, buf)
			if big != nil {
				ch <- result{big, err}
				return
			}
			ch <- result{buf[:n], err}
		}()
		return ch
	}
	a, b, big := rawFrame(1, 100, 'a'), rawFrame(3, 50, 'b'), rawFrame(5, 20000, 'c')

	tests := []struct {
		name    string
		writes  [][]byte // written with a pause between them
		bufSize int
		want    []byte
	}{
		{"whole", [][]byte{a}, 4096, a},
		{"cut in the header", [][]byte{b[:4], b[4:]}, 4096, b},
		{"cut in the payload", [][]byte{a[:60], a[60:]}, 4096, a},
		{"larger than the buffer", [][]byte{big[:7000], big[7000:]}, 4096, big},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch := read(tc.bufSize)
			for k, w := range tc.writes {
				if _, err := peer.Write(w); err != nil {
					t.Fatal(err)
				}
				if k < len(tc.writes)-1 {
					select {
					case r := <-ch:
						t.Fatalf("returned %d bytes (%v) before the frame was complete", len(r.got), r.err)
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
			r := <-ch
			if r.err != nil || !bytes.Equal(r.got, tc.want) {
				t.Fatalf("got %d bytes (%v), want the frame of %d", len(r.got), r.err, len(tc.want))
			}
		})
	}

	// Two frames and the start of a third at once: each read takes one
	// frame, and the partial third stays in the socket.
	if _, err := peer.Write(append(append(append([]byte{}, a...), b...), a[:30]...)); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][]byte{a, b} {
		r := <-read(4096)
		if r.err != nil || !bytes.Equal(r.got, want) {
			t.Fatalf("got %d bytes (%v), want %d", len(r.got), r.err, len(want))
		}
	}
	var inq int
	for k := 0; k < 50; k++ { // the reader may still be parked: poll
		rc, _ := nc.(*net.UnixConn).SyscallConn()
		_ = rc.Control(func(fd uintptr) { inq, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if err == nil && inq == 30 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if inq != 30 {
		t.Errorf("%d bytes left in the socket, want the 30 of the cut frame", inq)
	}
	// The peer closes inside that frame: the reader ends.
	ch := read(4096)
	peer.Close()
	select {
	case r := <-ch:
		t.Logf("peer closed inside a frame: %d bytes, %v", len(r.got), r.err)
	case <-time.After(5 * time.Second):
		t.Fatal("the reader did not end when the peer closed inside a frame")
	}
}
