package launch

import (
	"fmt"
	"time"

	"github.com/containerd/errdefs"
)

// Limits bound the requests a shim daemon serves at once, so that a client
// sending requests faster than they finish (a flood of Exec, State, Wait or
// attach calls) cannot exhaust the daemon, which holds every container of
// its group, and cannot starve the requests that end containers.
//
// ttrpc runs every request it reads in a goroutine of its own, before any
// interceptor sees it. So the bound that keeps goroutines and memory
// finite is on the connection: once RequestsPerConnection requests of a
// connection are unanswered, the daemon stops reading that connection
// until one is answered (the client's further requests wait in its socket,
// or time out in the client). Above that, the daemon-wide lanes:
//
//   - Kill, Delete, Shutdown (task API) and the group's Join are never
//     held by the other lanes, and may pass a full connection by a small
//     reserve, so a flood of other requests on any connection, the same
//     one included, does not keep a container from being stopped and
//     removed.
//   - Wait answers when a process exits, so it may stay for the whole
//     life of a container: at most Waits run at once; one more is refused
//     at once with ResourceExhausted (waiting for a Wait to end would wait
//     for a container to exit).
//   - Every other request (Create, Start, Exec, State, Pids, Stats, the
//     Monitor API's unary calls, ...) takes one of Requests slots; over
//     the bound it waits for a slot until its deadline, at most
//     QueueTimeout, and at most Queue requests wait. A request that gets
//     no slot is refused with ResourceExhausted naming the limit.
type Limits struct {
	// Requests is how many requests of the general lane run at once,
	// over all connections.
	Requests int `toml:"requests"`
	// Queue is how many general requests may wait for a slot; one more is
	// refused at once.
	Queue int `toml:"queue"`
	// QueueTimeout is the longest a general request waits for a slot (its
	// own deadline, when sooner, ends the wait earlier). 0: no waiting.
	QueueTimeout time.Duration `toml:"queue_timeout"`
	// Waits is how many Wait requests are served at once, over all
	// connections.
	Waits int `toml:"waits"`
	// RequestsPerConnection is how many requests of any kind one
	// connection may have unanswered before the daemon stops reading it.
	// It is above service.Config.MaxExecs+1, so a task's Wait calls for
	// its init and every exec fit on one connection.
	RequestsPerConnection int `toml:"requests_per_connection"`
}

// Default limits. A general request mostly runs the OCI runtime or reads
// the cgroup; more than 128 at once gains nothing on a node. The Wait lane
// has room for a dense daemon's thousands of tasks and their execs.
const (
	DefaultMaxRequests           = 128
	DefaultRequestQueue          = 4096
	DefaultRequestQueueTimeout   = 30 * time.Second
	DefaultMaxWaits              = 16384
	DefaultRequestsPerConnection = 2048
	// maxLimit caps every count, so that a typo cannot turn a bound off.
	maxLimit = 1 << 20
)

// DefaultLimits returns the limits used when the configuration has none.
func DefaultLimits() Limits {
	return Limits{
		Requests:              DefaultMaxRequests,
		Queue:                 DefaultRequestQueue,
		QueueTimeout:          DefaultRequestQueueTimeout,
		Waits:                 DefaultMaxWaits,
		RequestsPerConnection: DefaultRequestsPerConnection,
	}
}

// Validate checks every bound; the errors name the [limits] key.
func (l Limits) Validate() error {
	for _, k := range []struct {
		key      string
		val, min int
	}{
		{"requests", l.Requests, 1},
		{"queue", l.Queue, 0},
		{"waits", l.Waits, 1},
		{"requests_per_connection", l.RequestsPerConnection, 1},
	} {
		if k.val < k.min || k.val > maxLimit {
			return fmt.Errorf("[limits] %s = %d: want %d to %d: %w", k.key, k.val, k.min, maxLimit, errdefs.ErrInvalidArgument)
		}
	}
	if l.QueueTimeout < 0 {
		return fmt.Errorf("[limits] queue_timeout = %q: must not be negative: %w", l.QueueTimeout, errdefs.ErrInvalidArgument)
	}
	return nil
}
