package drain

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
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

type fakeCustody struct{ held, dropped int }

func (f *fakeCustody) HoldConn(key uint64, fd int) { f.held++; unix.Close(fd) }
func (f *fakeCustody) DropConn(key uint64)         { f.dropped++ }

// TestWholeFrameWrites: under custody a connection sends complete frames
// only, so that a crash never leaves a response cut in the client's
// socket: the pieces of a frame ttrpc writes (its 4 KiB bufio.Writer)
// are held until the frame is complete, then sent in one write.
func TestWholeFrameWrites(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	nc, err := net.FileConn(os.NewFile(uintptr(fds[0]), "ours"))
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[0])
	l := NewListener(nil, nil)
	fc := &fakeCustody{}
	l.custody = fc
	l.mu.Lock()
	c := l.newConn(nc, nil)
	c.hold()
	l.mu.Unlock()
	if fc.held != 1 || !c.wholeWrites {
		t.Fatalf("connection not held (%d) or not in whole-frame mode", fc.held)
	}
	queued := func() int {
		n, err := unix.IoctlGetInt(fds[1], unix.SIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	big := rawFrame(2, 9000, 'r')
	small := rawFrame(4, 20, 's')
	for k, piece := range [][]byte{big[:4], big[4:4096], big[4096:]} {
		if n, err := c.Write(piece); err != nil || n != len(piece) {
			t.Fatalf("write %d: %d %v", k, n, err)
		}
		want := 0
		if k == 2 {
			want = len(big)
		}
		if got := queued(); got != want {
			t.Fatalf("after piece %d: %d bytes in the peer's socket, want %d", k, got, want)
		}
	}
	// Two whole frames and the start of a third: the two are sent.
	buf := append(append(append([]byte{}, small...), small...), small[:5]...)
	if n, err := c.Write(buf); err != nil || n != len(buf) {
		t.Fatalf("write: %d %v", n, err)
	}
	if got := queued(); got != len(big)+2*len(small) {
		t.Fatalf("%d bytes in the peer's socket, want %d", got, len(big)+2*len(small))
	}
	if _, err := c.Write(small[5:]); err != nil {
		t.Fatal(err)
	}
	if got := queued(); got != len(big)+3*len(small) {
		t.Fatalf("%d bytes in the peer's socket, want %d", got, len(big)+3*len(small))
	}
	c.Close()
	if fc.dropped != 1 {
		t.Errorf("closed connection dropped %d times, want 1", fc.dropped)
	}
}

// TestCustodyServes: a real ttrpc server on a Listener under custody
// (whole-frame reads and writes) answers small and large calls, many at
// once, on one connection: requests of 20 KiB (read whole, past the
// read buffer) and 200 KiB (past maxWholeFrame: read as it comes), and
// responses as large (written by ttrpc in pieces, sent whole).
func TestCustodyServes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ln, sock := listen(t)
	l := NewListener(ln, nil)
	fc := &fakeCustody{}
	l.SetCustody(fc)
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(Handshaker(ttrpc.UnixSocketRequireSameUser())))
	if err != nil {
		t.Fatal(err)
	}
	srv.RegisterService(testService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Big": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			var a anypb.Any
			if err := unmarshal(&a); err != nil {
				return nil, err
			}
			return &a, nil
		},
	}})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	defer func() {
		srv.Close()
		<-done
	}()
	cl := dial(t, sock)
	errs := make(chan error, 40)
	for k := 0; k < 40; k++ {
		size := []int{10, 20 << 10, 200 << 10, 3000}[k%4]
		go func() {
			req := &anypb.Any{TypeUrl: fmt.Sprint(k), Value: bytes.Repeat([]byte{byte(k)}, size)}
			var resp anypb.Any
			err := cl.Call(ctx, testService, "Big", req, &resp)
			if err == nil && (resp.TypeUrl != req.TypeUrl || !bytes.Equal(resp.Value, req.Value)) {
				err = fmt.Errorf("call %d: answer of %d bytes for %q, want %d for %q", k, len(resp.Value), resp.TypeUrl, size, req.TypeUrl)
			}
			errs <- err
		}()
	}
	for k := 0; k < 40; k++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if fc.held != 1 {
		t.Errorf("%d connections held, want 1", fc.held)
	}
}
