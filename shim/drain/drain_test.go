package drain

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The test service: Echo(d) answers {Seconds: d.Seconds, Nanos: server id};
// Block(d) reports d.Seconds on gate.started, waits for gate.release, and
// answers like Echo.
const testService = "drain.test.v1.Test"

type gate struct {
	started chan int64
	release chan struct{}
}

func newGate() *gate {
	return &gate{started: make(chan int64, 16), release: make(chan struct{})}
}

type testServer struct {
	srv *ttrpc.Server
	l   *Listener
}

// serve runs a ttrpc server with id on l until the test ends.
func serve(t *testing.T, id int32, l *Listener, g *gate) *testServer {
	t.Helper()
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(Handshaker(ttrpc.UnixSocketRequireSameUser())))
	if err != nil {
		t.Fatal(err)
	}
	answer := func(unmarshal func(any) error) (*durationpb.Duration, error) {
		var d durationpb.Duration
		if err := unmarshal(&d); err != nil {
			return nil, err
		}
		return &durationpb.Duration{Seconds: d.Seconds, Nanos: id}, nil
	}
	srv.RegisterService(testService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Echo": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			return answer(unmarshal)
		},
		"Block": func(ctx context.Context, unmarshal func(any) error) (any, error) {
			resp, err := answer(unmarshal)
			if err != nil {
				return nil, err
			}
			g.started <- resp.Seconds
			select {
			case <-g.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return resp, nil
		},
	}, Streams: map[string]ttrpc.Stream{
		// Watch streams {Seconds: n, Nanos: id} and, after the gate,
		// {Seconds: n+1}, then ends.
		"Watch": {StreamingServer: true, Handler: func(ctx context.Context, ss ttrpc.StreamServer) (any, error) {
			var d durationpb.Duration
			if err := ss.RecvMsg(&d); err != nil {
				return nil, err
			}
			if err := ss.SendMsg(&durationpb.Duration{Seconds: d.Seconds, Nanos: id}); err != nil {
				return nil, err
			}
			g.started <- d.Seconds
			select {
			case <-g.release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			return nil, ss.SendMsg(&durationpb.Duration{Seconds: d.Seconds + 1, Nanos: id})
		}},
		// Sum adds the seconds the client streams, and answers once it
		// closes its side.
		"Sum": {StreamingClient: true, Handler: func(ctx context.Context, ss ttrpc.StreamServer) (any, error) {
			var sum int64
			for {
				var d durationpb.Duration
				if err := ss.RecvMsg(&d); errors.Is(err, io.EOF) {
					return &durationpb.Duration{Seconds: sum, Nanos: id}, nil
				} else if err != nil {
					return nil, err
				}
				sum += d.Seconds
				if sum == 1 {
					g.started <- sum
				}
			}
		}},
	}})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil && !errors.Is(err, ttrpc.ErrServerClosed) {
			t.Errorf("server %d: %v", id, err)
		}
	})
	return &testServer{srv: srv, l: l}
}

func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return ln, sock
}

func dial(t *testing.T, sock string) *ttrpc.Client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cl := ttrpc.NewClient(c)
	t.Cleanup(func() { cl.Close() })
	return cl
}

type result struct {
	seconds int64
	server  int32
	err     error
}

func call(ctx context.Context, cl *ttrpc.Client, method string, n int64) result {
	var resp durationpb.Duration
	err := cl.Call(ctx, testService, method, &durationpb.Duration{Seconds: n}, &resp)
	return result{seconds: resp.Seconds, server: resp.Nanos, err: err}
}

func goCall(ctx context.Context, cl *ttrpc.Client, method string, n int64) <-chan result {
	ch := make(chan result, 1)
	go func() { ch <- call(ctx, cl, method, n) }()
	return ch
}

// want checks that a call returned n, answered by server.
func want(t *testing.T, what string, r result, n int64, server int32) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: %v", what, r.err)
	}
	if r.seconds != n || r.server != server {
		t.Fatalf("%s: got %d from server %d, want %d from server %d", what, r.seconds, r.server, n, server)
	}
}

// waitFor polls cond (under l.mu) until it holds.
func waitFor(t *testing.T, l *Listener, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		ok := cond()
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type freezeResult struct {
	conns []Conn
	err   error
}

func goFreeze(ctx context.Context, l *Listener) <-chan freezeResult {
	ch := make(chan freezeResult, 1)
	go func() {
		conns, err := l.Freeze(ctx)
		ch <- freezeResult{conns, err}
	}()
	return ch
}

// handover builds a second server from a frozen first one's connections
// and a duplicate of its listening socket.
func handover(t *testing.T, old *Listener, conns []Conn, g *gate) *testServer {
	t.Helper()
	lf, err := old.ListenerFile()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Rebuild the conns from descriptor numbers, as the new binary would
	// (a dup stands for the inherited descriptor: two os.Files must not
	// own one number).
	handed := make([]Conn, len(conns))
	for i, c := range conns {
		fd, err := unix.Dup(int(c.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		c.File.Close()
		handed[i] = ConnFromFD(fd, c.Pending)
	}
	return serve(t, 2, NewListener(ln, handed), g)
}

func TestFreezeHandover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	s1 := serve(t, 1, NewListener(ln, nil), g)
	cl := dial(t, sock)

	want(t, "echo before", call(ctx, cl, "Echo", 1), 1, 1)
	blocked := goCall(ctx, cl, "Block", 2)
	<-g.started

	frozen := goFreeze(ctx, s1.l)
	waitFor(t, s1.l, "frozen", func() bool { return s1.l.frozen })
	// Sent while frozen with a request in flight: read into the buffer
	// (the reader still reads, for the data of streams in flight) and
	// handed over as pending bytes.
	pending := goCall(ctx, cl, "Echo", 3)
	waitFor(t, s1.l, "the request read", func() bool { return s1.l.conns[0].w > s1.l.conns[0].r })
	select {
	case r := <-frozen:
		t.Fatalf("Freeze returned with a request in flight: %v", r.err)
	default:
	}
	// A connection made while frozen waits in the backlog.
	late := dial(t, sock)
	lateCall := goCall(ctx, late, "Echo", 4)

	close(g.release)
	want(t, "request in flight at Freeze", <-blocked, 2, 1)
	fr := <-frozen
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	if len(fr.conns) != 1 || len(fr.conns[0].Pending) == 0 {
		t.Fatalf("Freeze: want 1 connection with pending bytes, got %d: %+v", len(fr.conns), fr.conns)
	}
	// Sent after Freeze: stays in the socket.
	afterFreeze := goCall(ctx, cl, "Echo", 5)

	handover(t, s1.l, fr.conns, g)
	want(t, "pending request", <-pending, 3, 2)
	want(t, "request after Freeze", <-afterFreeze, 5, 2)
	want(t, "connection made while frozen", <-lateCall, 4, 2)
	want(t, "same connection, new request", call(ctx, cl, "Echo", 6), 6, 2)
	want(t, "new connection", call(ctx, dial(t, sock), "Echo", 7), 7, 2)
}

// TestFreezeWaitsForStreams: a server stream is in flight until the frame
// that closes it; a client stream gets its data while frozen, so that it
// can finish.
func TestFreezeWaitsForStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	s1 := serve(t, 1, NewListener(ln, nil), g)
	cl := dial(t, sock)

	watch, err := cl.NewStream(ctx, &ttrpc.StreamDesc{StreamingServer: true}, testService, "Watch", &durationpb.Duration{Seconds: 10})
	if err != nil {
		t.Fatal(err)
	}
	var d durationpb.Duration
	if err := watch.RecvMsg(&d); err != nil || d.Seconds != 10 {
		t.Fatalf("first message of the server stream: %v %v", &d, err)
	}
	<-g.started
	sum, err := cl.NewStream(ctx, &ttrpc.StreamDesc{StreamingClient: true}, testService, "Sum", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := sum.SendMsg(&durationpb.Duration{Seconds: 1}); err != nil {
		t.Fatal(err)
	}
	<-g.started

	frozen := goFreeze(ctx, s1.l)
	waitFor(t, s1.l, "frozen", func() bool { return s1.l.frozen })
	// The client stream's data while frozen is delivered.
	for _, n := range []int64{2, 3} {
		if err := sum.SendMsg(&durationpb.Duration{Seconds: n}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sum.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := sum.RecvMsg(&d); err != nil || d.Seconds != 6 || d.Nanos != 1 {
		t.Fatalf("client stream finished while frozen: %v %v, want 6 from server 1", &d, err)
	}
	select {
	case r := <-frozen:
		t.Fatalf("Freeze returned with a server stream open: %v", r.err)
	default:
	}
	close(g.release)
	if err := watch.RecvMsg(&d); err != nil || d.Seconds != 11 {
		t.Fatalf("last message of the server stream: %v %v", &d, err)
	}
	if err := watch.RecvMsg(&d); !errors.Is(err, io.EOF) {
		t.Fatalf("end of the server stream: %v, want EOF", err)
	}
	fr := <-frozen
	if fr.err != nil || len(fr.conns) != 1 {
		t.Fatalf("Freeze: %d conns, %v", len(fr.conns), fr.err)
	}
	handover(t, s1.l, fr.conns, g)
	want(t, "after the streams", call(ctx, cl, "Echo", 20), 20, 2)
}

// frame builds a ttrpc request frame for testService.
func frame(t *testing.T, stream uint32, method string, n int64) []byte {
	t.Helper()
	payload, err := proto.Marshal(&durationpb.Duration{Seconds: n})
	if err != nil {
		t.Fatal(err)
	}
	req, err := proto.Marshal(&ttrpc.Request{Service: testService, Method: method, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, headerLen, headerLen+len(req))
	binary.BigEndian.PutUint32(b[0:4], uint32(len(req)))
	binary.BigEndian.PutUint32(b[4:8], stream)
	b[8] = typeRequest
	return append(b, req...)
}

// readResponse reads one response frame from a raw connection.
func readResponse(t *testing.T, c net.Conn) (uint32, result) {
	t.Helper()
	stream, r, err := readAnswer(c)
	if err != nil {
		t.Fatal(err)
	}
	return stream, r
}

// readAnswer reads one response frame and decodes its payload.
func readAnswer(c net.Conn) (uint32, result, error) {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var hb [headerLen]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		return 0, result{}, err
	}
	h := parseHeader(hb[:])
	body := make([]byte, h.length)
	if _, err := io.ReadFull(c, body); err != nil {
		return 0, result{}, err
	}
	if h.typ != typeResponse {
		return 0, result{}, fmt.Errorf("stream %d: frame type %d, want a response", h.stream, h.typ)
	}
	var resp ttrpc.Response
	if err := proto.Unmarshal(body, &resp); err != nil {
		return 0, result{}, err
	}
	if resp.Status != nil && resp.Status.Code != 0 {
		return 0, result{}, fmt.Errorf("stream %d: status %v", h.stream, resp.Status)
	}
	var d durationpb.Duration
	if err := proto.Unmarshal(resp.Payload, &d); err != nil {
		return 0, result{}, err
	}
	return h.stream, result{seconds: d.Seconds, server: d.Nanos}, nil
}

// TestPipelinedSplit writes requests back to back, one of them split in
// the middle of its header, so that the handover cuts the byte stream
// between and inside frames: each request is answered once.
func TestPipelinedSplit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	s1 := serve(t, 1, NewListener(ln, nil), g)
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	if _, err := raw.Write(frame(t, 1, "Block", 10)); err != nil {
		t.Fatal(err)
	}
	<-g.started
	frozen := goFreeze(ctx, s1.l)
	waitFor(t, s1.l, "frozen", func() bool { return s1.l.frozen })

	f3, f5, f7 := frame(t, 3, "Echo", 30), frame(t, 5, "Echo", 50), frame(t, 7, "Echo", 70)
	first := append(append([]byte(nil), f3...), f5[:4]...) // f5 cut inside its header
	if _, err := raw.Write(first); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s1.l, "the pipelined bytes read", func() bool {
		c := s1.l.conns[0]
		return c.w-c.r == len(first)
	})
	close(g.release)
	fr := <-frozen
	if fr.err != nil {
		t.Fatal(fr.err)
	}
	if len(fr.conns) != 1 || !bytes.Equal(fr.conns[0].Pending, first) {
		t.Fatalf("Freeze: want 1 connection with %d pending bytes, got %+v", len(first), fr.conns)
	}
	if _, err := raw.Write(append(append([]byte(nil), f5[4:]...), f7...)); err != nil {
		t.Fatal(err)
	}
	handover(t, s1.l, fr.conns, g)

	got := map[uint32]result{}
	for range 4 {
		stream, r := readResponse(t, raw)
		if _, dup := got[stream]; dup {
			t.Fatalf("stream %d answered twice", stream)
		}
		got[stream] = r
	}
	for stream, w := range map[uint32]result{1: {10, 1, nil}, 3: {30, 2, nil}, 5: {50, 2, nil}, 7: {70, 2, nil}} {
		if got[stream] != w {
			t.Errorf("stream %d: got %+v, want %+v", stream, got[stream], w)
		}
	}
	// Nothing more is in flight anywhere: a new request is the next frame.
	if _, err := raw.Write(frame(t, 9, "Echo", 90)); err != nil {
		t.Fatal(err)
	}
	if stream, r := readResponse(t, raw); stream != 9 || r != (result{90, 2, nil}) {
		t.Fatalf("after the handover: stream %d %+v, want stream 9 answered by server 2", stream, r)
	}
}

func TestFreezeTimeoutThaws(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	s1 := serve(t, 1, NewListener(ln, nil), g)
	cl := dial(t, sock)
	blocked := goCall(ctx, cl, "Block", 1)
	<-g.started

	fctx, fcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer fcancel()
	frozen := goFreeze(fctx, s1.l)
	waitFor(t, s1.l, "frozen", func() bool { return s1.l.frozen })
	during := goCall(ctx, cl, "Echo", 2)
	fr := <-frozen
	if !errors.Is(fr.err, context.DeadlineExceeded) || fr.conns != nil {
		t.Fatalf("Freeze with a request that does not end: got %v, %d conns; want the deadline's error", fr.err, len(fr.conns))
	}
	t.Log(fr.err)
	want(t, "request sent during the failed freeze", <-during, 2, 1)
	want(t, "new connection after thaw", call(ctx, dial(t, sock), "Echo", 3), 3, 1)
	close(g.release)
	want(t, "request in flight", <-blocked, 1, 1)

	// A second Freeze works once nothing is in flight.
	conns, err := s1.l.Freeze(ctx)
	if err != nil || len(conns) != 2 {
		t.Fatalf("second freeze: %d conns, %v; want 2", len(conns), err)
	}
	for _, c := range conns {
		c.File.Close()
	}
	s1.l.Thaw()
	want(t, "after thaw", call(ctx, cl, "Echo", 4), 4, 1)
}

func TestFreezeDropsClosedPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	s1 := serve(t, 1, NewListener(ln, nil), g)
	keep, gone := dial(t, sock), dial(t, sock)
	want(t, "kept", call(ctx, keep, "Echo", 1), 1, 1)
	want(t, "closed", call(ctx, gone, "Echo", 2), 2, 1)
	gone.Close()
	conns, err := s1.l.Freeze(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 {
		t.Fatalf("got %d connections, want 1 (the closed one dropped)", len(conns))
	}
	handover(t, s1.l, conns, g)
	want(t, "kept connection", call(ctx, keep, "Echo", 3), 3, 2)
}

// TestFrameWriterSplits feeds frames cut at every pair of places.
func TestFrameWriterSplits(t *testing.T) {
	var all []byte
	frames := []header{{3, 1, typeResponse, 0}, {0, 3, typeData, flagRemoteClosed}, {5, 5, typeData, 0}, {2, 7, typeResponse, 0}}
	for _, h := range frames {
		b := make([]byte, headerLen+h.length)
		binary.BigEndian.PutUint32(b[0:4], h.length)
		binary.BigEndian.PutUint32(b[4:8], h.stream)
		b[8], b[9] = h.typ, h.flags
		all = append(all, b...)
	}
	for cut1 := 0; cut1 <= len(all); cut1++ {
		for cut2 := cut1; cut2 <= len(all); cut2++ {
			var w frameWriter
			var got []header
			done := func(h header) { got = append(got, h) }
			w.feed(all[:cut1], done)
			w.feed(all[cut1:cut2], done)
			w.feed(all[cut2:], done)
			if len(got) != len(frames) {
				t.Fatalf("cuts %d,%d: %d frames, want %d", cut1, cut2, len(got), len(frames))
			}
			for i := range got {
				if got[i] != frames[i] {
					t.Fatalf("cuts %d,%d: frame %d = %+v, want %+v", cut1, cut2, i, got[i], frames[i])
				}
			}
		}
	}
	closing := 0
	for _, h := range frames {
		if h.closesStream() {
			closing++
		}
	}
	if closing != 3 {
		t.Fatalf("closing frames: %d, want 3", closing)
	}
}

// BenchmarkEcho measures a unary round trip through a plain listener and
// through a Listener (the frame parsing on both sides).
func BenchmarkEcho(b *testing.B) {
	for _, wrap := range []bool{false, true} {
		name := "plain"
		if wrap {
			name = "drain"
		}
		b.Run(name, func(b *testing.B) {
			sock := filepath.Join(b.TempDir(), "s")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			var l net.Listener = ln
			if wrap {
				l = NewListener(ln, nil)
			}
			srv, err := ttrpc.NewServer()
			if err != nil {
				b.Fatal(err)
			}
			srv.RegisterService(testService, &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
				"Echo": func(ctx context.Context, unmarshal func(any) error) (any, error) {
					var d durationpb.Duration
					err := unmarshal(&d)
					return &d, err
				},
			}})
			go srv.Serve(context.Background(), l)
			defer srv.Close()
			c, err := net.Dial("unix", sock)
			if err != nil {
				b.Fatal(err)
			}
			cl := ttrpc.NewClient(c)
			defer cl.Close()
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var resp durationpb.Duration
				if err := cl.Call(ctx, testService, "Echo", &durationpb.Duration{Seconds: int64(i)}, &resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestHandoverChain sends pipelined requests in random pieces while the
// connection is handed over from server to server several times: every
// request is answered exactly once.
func TestHandoverChain(t *testing.T) {
	const requests, handovers = 300, 6
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g := newGate()
	ln, sock := listen(t)
	cur := serve(t, 1, NewListener(ln, nil), g)
	raw, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()

	var stream []byte
	for i := range requests {
		stream = append(stream, frame(t, uint32(2*i+1), "Echo", int64(i))...)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	sent := make(chan error, 1)
	go func() {
		for b := stream; len(b) > 0; {
			n := min(len(b), 1+rng.IntN(60))
			if _, err := raw.Write(b[:n]); err != nil {
				sent <- err
				return
			}
			b = b[n:]
			time.Sleep(time.Duration(rng.IntN(200)) * time.Microsecond)
		}
		sent <- nil
	}()
	type answer struct {
		stream uint32
		r      result
		err    error
	}
	answers := make(chan answer, requests)
	go func() {
		for range requests {
			s, r, err := readAnswer(raw)
			answers <- answer{s, r, err}
			if err != nil {
				return
			}
		}
	}()

	for k := range handovers {
		time.Sleep(2 * time.Millisecond)
		conns, err := cur.l.Freeze(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(conns) != 1 {
			t.Fatalf("handover %d: %d conns", k, len(conns))
		}
		lf, err := cur.l.ListenerFile()
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(lf)
		lf.Close()
		if err != nil {
			t.Fatal(err)
		}
		cur = serve(t, int32(k+2), NewListener(ln, conns), g)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	got := map[uint32]bool{}
	servers := map[int32]int{}
	for range requests {
		select {
		case a := <-answers:
			if a.err != nil {
				t.Fatal(a.err)
			}
			if got[a.stream] {
				t.Fatalf("stream %d answered twice", a.stream)
			}
			got[a.stream] = true
			if int64(a.stream) != 2*a.r.seconds+1 {
				t.Fatalf("stream %d answered with %d", a.stream, a.r.seconds)
			}
			servers[a.r.server]++
		case <-ctx.Done():
			t.Fatalf("%d of %d answered", len(got), requests)
		}
	}
	t.Logf("answers per server: %v", servers)
}
