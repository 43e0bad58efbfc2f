// Package events carries the task events a shim publishes (TaskCreate,
// TaskExit, ...) to whoever listens: containerd's ttrpc events service, when
// the shim was started by containerd, and local subscribers (conmonctl's own
// API) in every case.
//
// An Exchange is ordered and lossless: Publish never blocks on the network,
// every event is queued, and one goroutine forwards the queue head to
// containerd, retrying and reconnecting until it is accepted. Type URLs are
// the bare full names of the messages ("containerd.events.TaskExit"), which
// is what containerd 1.6's typeurl v1 resolves; the "type.googleapis.com/"
// prefix that anypb.New writes would not decode there.
package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	apitypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// NamespaceKey is the ttrpc metadata key containerd reads the namespace of
// a request from.
const NamespaceKey = "containerd-namespace-ttrpc"

// Envelope is one published event, as containerd's events service receives
// it and as local subscribers get it.
type Envelope = apitypes.Envelope

// Defaults of the forwarder's timing; an Exchange copies them into its own
// fields, which tests shorten.
const (
	defaultCallTimeout = 5 * time.Second
	defaultMaxBackoff  = 2 * time.Second
	// rejectRetries bounds retries of an event containerd answered with an
	// error (as opposed to being unreachable): such an event will not be
	// accepted on a later try, and holding it would block every later event.
	rejectRetries = 5
)

// Exchange publishes events of one namespace. Use New; call Close when done.
type Exchange struct {
	namespace string
	address   string // containerd's ttrpc socket path; "" = no forwarding
	log       *slog.Logger
	dial      func(ctx context.Context, path string) (net.Conn, error)

	callTimeout time.Duration
	maxBackoff  time.Duration

	mu     sync.Mutex
	queue  []*Envelope                // not yet forwarded; guarded by mu
	subs   map[*subscription]struct{} // guarded by mu
	closed bool                       // guarded by mu

	ready  chan struct{}      // 1-buffered: the queue grew or Close was called
	abort  context.Context    // done when Close gives up on the queue
	cancel context.CancelFunc // ends abort
	done   chan struct{}      // closed when the forwarder goroutine returned
}

// LocalTopicPrefix starts the topics of conmon-v2's own events (such as
// /conmon-v2/log/failing): they reach local subscribers (the Monitor API)
// only. containerd does not know their types, and its CRI plugin logs an
// error for every event it cannot decode.
const LocalTopicPrefix = "/conmon-v2/"

// New returns an Exchange for namespace. address is containerd's ttrpc
// socket ($TTRPC_ADDRESS; a "unix://" prefix is accepted); with an empty
// address events only reach local subscribers (CRI-O starts shims without
// a containerd). The forwarder goroutine runs until Close.
func New(namespace, address string, log *slog.Logger) *Exchange {
	e := newExchange(namespace, address, log)
	go e.forward()
	return e
}

// newExchange returns an Exchange whose forwarder is not running yet.
func newExchange(namespace, address string, log *slog.Logger) *Exchange {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abort, cancel := context.WithCancel(context.Background())
	e := &Exchange{
		namespace:   namespace,
		address:     strings.TrimPrefix(address, "unix://"),
		log:         log,
		dial:        dialUnix,
		callTimeout: defaultCallTimeout,
		maxBackoff:  defaultMaxBackoff,
		subs:        make(map[*subscription]struct{}),
		ready:       make(chan struct{}, 1),
		abort:       abort,
		cancel:      cancel,
		done:        make(chan struct{}),
	}
	return e
}

func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

// Publish queues event under topic (for example "/tasks/exit"). It returns
// at once; the event reaches containerd later, in publication order, and
// every local subscriber at once. An error means the event could not be
// encoded or the Exchange is closed.
func (e *Exchange) Publish(ctx context.Context, topic string, event proto.Message) error {
	if !strings.HasPrefix(topic, "/") {
		return fmt.Errorf("event topic %q must start with /: %w", topic, errdefs.ErrInvalidArgument)
	}
	a, err := MarshalAny(event)
	if err != nil {
		return err
	}
	env := &Envelope{
		Timestamp: timestamppb.Now(),
		Namespace: e.namespace,
		Topic:     topic,
		Event:     a,
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return fmt.Errorf("publish %s: event exchange closed: %w", topic, errdefs.ErrUnavailable)
	}
	for s := range e.subs {
		s.push(env)
	}
	if e.address != "" && !strings.HasPrefix(topic, LocalTopicPrefix) {
		e.queue = append(e.queue, env)
	}
	e.mu.Unlock()
	e.wake()
	return nil
}

func (e *Exchange) wake() {
	select {
	case e.ready <- struct{}{}:
	default:
	}
}

// MarshalAny encodes event with its bare full name as type URL.
func MarshalAny(event proto.Message) (*anypb.Any, error) {
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		return nil, fmt.Errorf("encode event %T: %w", event, err)
	}
	return a, nil
}

// Close stops accepting events and ends every subscription. It keeps
// forwarding what is still queued until the queue is empty or ctx is done;
// events still queued then are logged and reported as lost.
func (e *Exchange) Close(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.done
		return nil
	}
	e.closed = true
	subs := e.subs
	e.subs = map[*subscription]struct{}{}
	e.mu.Unlock()
	for s := range subs {
		s.end()
	}
	e.wake()
	var err error
	select {
	case <-e.done:
	case <-ctx.Done():
		e.mu.Lock()
		if n := len(e.queue); n > 0 {
			err = fmt.Errorf("%d events not forwarded to %s before close: %w", n, e.address, ctx.Err())
		}
		e.mu.Unlock()
		e.cancel()
		<-e.done
	}
	e.cancel()
	return err
}

// forward is the one goroutine that talks to containerd. It owns the client.
func (e *Exchange) forward() {
	defer close(e.done)
	var client *ttrpc.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	const minBackoff = 20 * time.Millisecond
	backoff := minBackoff
	rejected := 0 // consecutive rejections of the head event
	for {
		e.mu.Lock()
		var head *Envelope
		if len(e.queue) > 0 {
			head = e.queue[0]
		}
		closed := e.closed
		e.mu.Unlock()
		if head == nil {
			if closed {
				return
			}
			select {
			case <-e.ready:
			case <-e.abort.Done():
				return
			}
			continue
		}
		var err error
		if client == nil {
			var conn net.Conn
			if conn, err = e.dialOnce(); err == nil {
				client = ttrpc.NewClient(conn)
			}
		}
		if client != nil {
			err = e.send(client, head)
			switch {
			case err == nil:
				e.pop()
				backoff, rejected = minBackoff, 0
				continue
			case isTransport(err):
				e.log.Debug("forward event: reconnecting", "topic", head.Topic, "error", err)
				client.Close()
				client = nil
			default:
				rejected++
				if rejected >= rejectRetries {
					e.log.Error("event rejected by containerd, dropped", "topic", head.Topic,
						"type", head.Event.GetTypeUrl(), "error", err)
					e.pop()
					rejected = 0
					continue
				}
			}
		}
		if !e.sleep(&backoff) {
			e.dropAll(err)
			return
		}
	}
}

func (e *Exchange) dialOnce() (net.Conn, error) {
	ctx, cancel := context.WithTimeout(e.abort, e.callTimeout)
	defer cancel()
	return e.dial(ctx, e.address)
}

func (e *Exchange) send(client *ttrpc.Client, env *Envelope) error {
	ctx, cancel := context.WithTimeout(e.abort, e.callTimeout)
	defer cancel()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{NamespaceKey: []string{e.namespace}})
	_, err := eventsapi.NewTTRPCEventsClient(client).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	return err
}

func (e *Exchange) pop() {
	e.mu.Lock()
	e.queue[0] = nil
	e.queue = e.queue[1:]
	e.mu.Unlock()
}

func (e *Exchange) dropAll(cause error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, env := range e.queue {
		e.log.Error("event not forwarded before close", "topic", env.Topic,
			"type", env.Event.GetTypeUrl(), "address", e.address, "error", cause)
	}
	e.queue = nil
}

// sleep waits for the current backoff and doubles it. It returns false when
// Close gave up on the queue.
func (e *Exchange) sleep(backoff *time.Duration) bool {
	t := time.NewTimer(*backoff)
	defer t.Stop()
	*backoff = min(*backoff*2, e.maxBackoff)
	select {
	case <-t.C:
		return true
	case <-e.abort.Done():
		return false
	}
}

// isTransport reports whether err means the connection is unusable (as
// opposed to containerd answering with an error status).
func isTransport(err error) bool {
	if errors.Is(err, ttrpc.ErrClosed) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, context.Canceled) {
		return true
	}
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.Unavailable || s.Code() == codes.DeadlineExceeded || s.Code() == codes.Canceled
	}
	var ne net.Error
	return errors.As(err, &ne)
}
