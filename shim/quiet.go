package shim

import (
	"context"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
)

// DefaultQuietDelay is how long the daemon waits after its last request
// before it calls Daemon.OnQuiet.
const DefaultQuietDelay = time.Second

// quietTimer calls f once no request has started or ended for delay. A
// burst of requests (100 containers created one after another) costs one
// call at its end, not one per request.
type quietTimer struct {
	delay time.Duration
	f     func()

	mu      sync.Mutex
	t       *time.Timer // nil until the first kick; guarded by mu
	stopped bool        // guarded by mu
	running sync.Mutex  // serialises calls of f
}

func newQuietTimer(delay time.Duration, f func()) *quietTimer {
	q := &quietTimer{delay: delay}
	q.f = func() {
		q.running.Lock()
		defer q.running.Unlock()
		f()
	}
	return q
}

// kick restarts the wait.
func (q *quietTimer) kick() {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.stopped:
	case q.t == nil:
		q.t = time.AfterFunc(q.delay, q.f)
	default:
		q.t.Reset(q.delay)
	}
}

// stop cancels a pending call and waits for a running one to return.
func (q *quietTimer) stop() {
	q.mu.Lock()
	q.stopped = true
	if q.t != nil {
		q.t.Stop()
	}
	q.mu.Unlock()
	q.running.Lock()
	q.running.Unlock() //nolint:staticcheck // only waits for a running f
}

// interceptor kicks q when a request starts and when it ends (Wait ends
// when a container exits, which is followed by a burst of its own).
func (q *quietTimer) interceptor(next ttrpc.UnaryServerInterceptor) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		q.kick()
		defer q.kick()
		return next(ctx, unmarshal, info, m)
	}
}
