package shim

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/containers/conmon-v2/shim/launch"
)

func TestRequestLane(t *testing.T) {
	for _, tc := range []struct {
		service, method string
		want            lane
	}{
		{TaskServiceV2, "Kill", lanePriority},
		{TaskServiceV3, "Delete", lanePriority},
		{TaskServiceV2, "Shutdown", lanePriority},
		{launch.GroupService, "Join", lanePriority},
		{TaskServiceV3, "Wait", laneWait},
		{TaskServiceV2, "Exec", laneGeneral},
		{TaskServiceV2, "State", laneGeneral},
		{"conmon.v1.Monitor", "Kill", laneGeneral},
		{"", "", laneGeneral},
	} {
		b, err := proto.Marshal(&ttrpc.Request{Service: tc.service, Method: tc.method, Payload: []byte("x"), TimeoutNano: 5})
		if err != nil {
			t.Fatal(err)
		}
		if got := requestLane(b); got != tc.want {
			t.Errorf("%s/%s: lane %d, want %d", tc.service, tc.method, got, tc.want)
		}
	}
	if got := requestLane([]byte{0xff, 0xff}); got != laneGeneral {
		t.Errorf("garbage: lane %d", got)
	}
}

// limitServer is a ttrpc server on a unix socket with the limiter in
// front of a fake task service: Exec and State block until released (or
// the request ends), Wait blocks likewise, Kill and Delete answer at once.
type limitServer struct {
	path    string
	srv     *ttrpc.Server
	release chan struct{}
	running atomic.Int32 // general handlers running now
	peak    atomic.Int32
	kills   chan struct{}
	lim     *limiter
	mu      sync.Mutex
	conns   []*limitConn
}

func newLimitServer(t *testing.T, lim launch.Limits) *limitServer {
	t.Helper()
	s := &limitServer{path: filepath.Join(t.TempDir(), "s"), release: make(chan struct{}), kills: make(chan struct{}, 100)}
	l := newLimiter(lim)
	s.lim = l
	hs := l.handshaker(handshakerFunc(func(_ context.Context, c net.Conn) (net.Conn, any, error) { return c, nil, nil }))
	record := handshakerFunc(func(ctx context.Context, c net.Conn) (net.Conn, any, error) {
		c2, info, err := hs.Handshake(ctx, c)
		if lc, ok := c2.(*limitConn); ok {
			s.mu.Lock()
			s.conns = append(s.conns, lc)
			s.mu.Unlock()
		}
		return c2, info, err
	})
	srv, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(record), ttrpc.WithUnaryServerInterceptor(l.interceptor(ErrorInterceptor(nil))))
	if err != nil {
		t.Fatal(err)
	}
	block := func(ctx context.Context, unmarshal func(any) error) (any, error) {
		n := s.running.Add(1)
		defer s.running.Add(-1)
		for {
			p := s.peak.Load()
			if n <= p || s.peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-s.release:
		case <-ctx.Done():
		}
		return &emptypb.Empty{}, nil
	}
	wait := func(ctx context.Context, unmarshal func(any) error) (any, error) {
		select {
		case <-s.release:
		case <-ctx.Done():
		}
		return &emptypb.Empty{}, nil
	}
	quick := func(ctx context.Context, unmarshal func(any) error) (any, error) {
		s.kills <- struct{}{}
		return &emptypb.Empty{}, nil
	}
	srv.RegisterService(TaskServiceV2, &ttrpc.ServiceDesc{
		Methods: map[string]ttrpc.Method{
			"Exec": block, "State": block, "Wait": wait, "Kill": quick, "Delete": quick,
		},
		Streams: map[string]ttrpc.Stream{"Subscribe": {StreamingServer: true, Handler: func(ctx context.Context, ss ttrpc.StreamServer) (any, error) {
			if err := ss.RecvMsg(&emptypb.Empty{}); err != nil {
				return nil, err
			}
			for range 3 {
				if err := ss.SendMsg(&emptypb.Empty{}); err != nil {
					return nil, err
				}
			}
			return nil, nil
		}}},
	})
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = srv
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *limitServer) client(t *testing.T) *ttrpc.Client {
	t.Helper()
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	cl := ttrpc.NewClient(c)
	t.Cleanup(func() { cl.Close() })
	return cl
}

func (s *limitServer) call(ctx context.Context, cl *ttrpc.Client, method string) error {
	return errgrpc.ToNative(cl.Call(ctx, TaskServiceV2, method, &emptypb.Empty{}, &emptypb.Empty{}))
}

// rawFrame is a ttrpc request frame, as a client that never reads its
// answers would send it.
func rawFrame(t *testing.T, id uint32, method string) []byte {
	t.Helper()
	b, err := proto.Marshal(&ttrpc.Request{Service: TaskServiceV2, Method: method})
	if err != nil {
		t.Fatal(err)
	}
	f := make([]byte, frameHeaderLen+len(b))
	binary.BigEndian.PutUint32(f[0:4], uint32(len(b)))
	binary.BigEndian.PutUint32(f[4:8], id)
	f[8] = frameRequest
	copy(f[frameHeaderLen:], b)
	return f
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRequestFloodIsBounded floods two connections with blocking Exec
// requests far beyond the bounds, from clients that never read an answer:
// the daemon runs at most `requests` of them, reads at most
// `requests_per_connection` of each connection, and its goroutines stay
// bounded; Kill still gets through on a fresh connection and, by the
// reserve, on a flooded one; closing the server is not held up.
func TestRequestFloodIsBounded(t *testing.T) {
	const perConn, flood = 16, 2000
	lim := launch.Limits{Requests: 4, Queue: 1000, QueueTimeout: time.Minute, Waits: 8, RequestsPerConnection: perConn}
	s := newLimitServer(t, lim)
	base := runtime.NumGoroutine()

	var floods []net.Conn
	for range 2 {
		c, err := net.Dial("unix", s.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		floods = append(floods, c)
	}
	// The first connection: a full bound of Execs, then a Kill (which
	// passes by the reserve), then the rest of the flood.
	var buf []byte
	id := uint32(1)
	for range perConn {
		buf = append(buf, rawFrame(t, id, "Exec")...)
		id += 2
	}
	buf = append(buf, rawFrame(t, id, "Kill")...)
	id += 2
	for range flood {
		buf = append(buf, rawFrame(t, id, "Exec")...)
		id += 2
	}
	go floods[0].Write(buf) // blocks once the daemon stops reading
	select {
	case <-s.kills:
	case <-time.After(10 * time.Second):
		t.Fatal("Kill behind a full connection's bound never ran")
	}
	buf = nil
	for i := uint32(0); i < flood; i++ {
		buf = append(buf, rawFrame(t, 2*i+1, "State")...)
	}
	go floods[1].Write(buf)

	eventually(t, "both connections at their bound", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		n := 0
		for _, c := range s.conns {
			if c.inflight() == perConn {
				n++
			}
		}
		return n == 2
	})
	time.Sleep(200 * time.Millisecond) // let any excess show
	if p := s.peak.Load(); p > int32(lim.Requests) {
		t.Errorf("%d general requests ran at once, the limit is %d", p, lim.Requests)
	}
	if r := s.running.Load(); r != int32(lim.Requests) {
		t.Errorf("%d general requests running, want the limit %d", r, lim.Requests)
	}
	// Each connection: its unanswered requests' goroutines, and ttrpc's
	// two of the connection; plus the two writers above.
	if g, max := runtime.NumGoroutine(), base+2*(perConn+3)+2; g > max {
		t.Errorf("%d goroutines with %d requests sent, want at most %d (baseline %d)", g, 2*flood, max, base)
	}

	// A fresh connection: Kill and Delete are not held by the general lane.
	cl := s.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, m := range []string{"Kill", "Delete"} {
		if err := s.call(ctx, cl, m); err != nil {
			t.Fatalf("%s during the flood: %v", m, err)
		}
	}
	// A general request on it waits for a slot until its deadline.
	sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	if err := s.call(sctx, cl, "State"); err == nil {
		t.Fatal("State got a slot during the flood")
	}

	done := make(chan struct{})
	go func() { s.srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server Close held up by the flood")
	}
	close(s.release)
	for _, c := range floods {
		c.Close()
	}
	eventually(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= base+2 })
}

// TestRequestLimitRefusals checks each refusal's class and message.
func TestRequestLimitRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Queue of one, waits of one, no timeout in the way.
	s := newLimitServer(t, launch.Limits{Requests: 1, Queue: 1, QueueTimeout: time.Minute, Waits: 1, RequestsPerConnection: 64})
	defer close(s.release)
	cl := s.client(t)
	go s.call(ctx, cl, "Wait")
	go s.call(ctx, cl, "Exec")
	eventually(t, "Exec running", func() bool { return s.running.Load() == 1 })
	eventually(t, "Wait running", func() bool { return len(s.lim.waits) == 1 })
	waitErr := s.call(ctx, cl, "Wait")
	go s.call(ctx, cl, "Exec") // waits in the queue
	eventually(t, "Exec queued", func() bool { return len(s.lim.queued) == 1 })
	fullErr := s.call(ctx, cl, "State")
	// Kill is in no lane that is full.
	if err := s.call(ctx, cl, "Kill"); err != nil {
		t.Fatalf("Kill: %v", err)
	}

	// A short queue timeout.
	s2 := newLimitServer(t, launch.Limits{Requests: 1, Queue: 1, QueueTimeout: 50 * time.Millisecond, Waits: 1, RequestsPerConnection: 64})
	defer close(s2.release)
	cl2 := s2.client(t)
	go s2.call(ctx, cl2, "Exec")
	eventually(t, "Exec running", func() bool { return s2.running.Load() == 1 })
	timeoutErr := s2.call(ctx, cl2, "State")

	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"Wait over its lane", waitErr, "1 Wait requests are being served, the limit ([limits] waits)"},
		{"queue full", fullErr, "1 requests are running ([limits] requests) and 1 more are waiting ([limits] queue)"},
		{"queue timeout", timeoutErr, "within 50ms ([limits] queue_timeout)"},
	} {
		if !errdefs.IsResourceExhausted(tc.err) || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v, want ResourceExhausted with %q", tc.name, tc.err, tc.want)
		}
	}
}

// TestLimitConnStreamIDs: frames ttrpc refuses (an even or reused stream
// id) are answered without freeing the slot of a request still running.
func TestLimitConnStreamIDs(t *testing.T) {
	s := newLimitServer(t, launch.Limits{Requests: 8, Queue: 8, QueueTimeout: time.Minute, Waits: 8, RequestsPerConnection: 2})
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf []byte
	buf = append(buf, rawFrame(t, 1, "Exec")...)
	buf = append(buf, rawFrame(t, 1, "Exec")...) // reused: refused by ttrpc
	buf = append(buf, rawFrame(t, 4, "Exec")...) // even: refused by ttrpc
	buf = append(buf, rawFrame(t, 3, "Exec")...)
	buf = append(buf, rawFrame(t, 5, "Exec")...) // over the bound of 2
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	eventually(t, "two running", func() bool { return s.running.Load() == 2 })
	time.Sleep(200 * time.Millisecond)
	if r := s.running.Load(); r != 2 {
		t.Fatalf("%d running on a connection bounded to 2", r)
	}
	s.mu.Lock()
	lc := s.conns[0]
	s.mu.Unlock()
	if n := lc.inflight(); n != 2 {
		t.Fatalf("inflight %d, want 2", n)
	}
	close(s.release)
}

// TestLimitConnStreamsAndDataFrames: a server stream (the Monitor API's
// Subscribe) works through the bound and frees its slot at its end; a data
// frame sent for a unary call, which makes ttrpc v1.2's receive loop
// dereference a nil stream handler and kill the daemon, is dropped.
func TestLimitConnStreamsAndDataFrames(t *testing.T) {
	s := newLimitServer(t, launch.Limits{Requests: 8, Queue: 8, QueueTimeout: time.Minute, Waits: 8, RequestsPerConnection: 1})
	cl := s.client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 3 { // one at a time: each stream must free the only slot
		st, err := cl.NewStream(ctx, &ttrpc.StreamDesc{StreamingServer: true}, TaskServiceV2, "Subscribe", &emptypb.Empty{})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			if err := st.RecvMsg(&emptypb.Empty{}); err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("stream: %v", err)
				}
				break
			}
			n++
		}
		if n != 3 {
			t.Fatalf("%d messages, want 3", n)
		}
	}

	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, frameHeaderLen+1)
	binary.BigEndian.PutUint32(data[0:4], 1)
	binary.BigEndian.PutUint32(data[4:8], 1)
	data[8] = frameData
	if _, err := c.Write(append(rawFrame(t, 1, "Exec"), data...)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Exec running", func() bool { return s.running.Load() == 1 })
	close(s.release)
	// Still serving (a panic in ttrpc's receive loop would have ended the
	// test binary).
	if err := s.call(ctx, cl, "State"); err != nil {
		t.Fatalf("State after the data frame: %v", err)
	}
}
