package service

import (
	"context"
	"log/slog"
	"sync"
	"time"

	eventsapi "github.com/containerd/containerd/api/events"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/containers/conmon-v2/process"
)

// Topics of the task events.
const (
	topicCreate       = "/tasks/create"
	topicStart        = "/tasks/start"
	topicExit         = "/tasks/exit"
	topicDelete       = "/tasks/delete"
	topicExecAdded    = "/tasks/exec-added"
	topicExecStarted  = "/tasks/exec-started"
	topicOOM          = "/tasks/oom"
	topicPaused       = "/tasks/paused"
	topicResumed      = "/tasks/resumed"
	topicCheckpointed = "/tasks/checkpointed"
)

type event struct {
	topic string
	msg   proto.Message
}

// eventQueue publishes events in the order they were queued, from one
// goroutine, so that a slow publisher never blocks the service's lock and
// the order decided under that lock is the order containerd sees.
type eventQueue struct {
	pub     Publisher
	log     *slog.Logger
	mu      sync.Mutex
	queue   []event
	ready   chan struct{}
	done    chan struct{} // closed when the loop ends
	closing chan struct{}
	once    sync.Once
}

func newEventQueue(pub Publisher, log *slog.Logger) *eventQueue {
	return &eventQueue{pub: pub, log: log, ready: make(chan struct{}, 1), done: make(chan struct{}), closing: make(chan struct{})}
}

func (q *eventQueue) push(topic string, msg proto.Message) {
	q.mu.Lock()
	q.queue = append(q.queue, event{topic, msg})
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *eventQueue) start(ctx context.Context) {
	go func() {
		defer close(q.done)
		for {
			q.mu.Lock()
			var ev *event
			if len(q.queue) > 0 {
				e := q.queue[0]
				q.queue[0] = event{}
				q.queue = q.queue[1:]
				ev = &e
			}
			q.mu.Unlock()
			if ev != nil {
				q.publish(ctx, *ev)
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-q.closing:
				return
			case <-q.ready:
			}
		}
	}()
}

func (q *eventQueue) publish(ctx context.Context, ev event) {
	defer func() {
		if r := recover(); r != nil {
			q.log.Error("panic publishing an event", "topic", ev.topic, "panic", r)
		}
	}()
	if q.pub == nil {
		q.log.Warn("no publisher: dropping event", "topic", ev.topic)
		return
	}
	if err := q.pub.Publish(ctx, ev.topic, ev.msg); err != nil {
		q.log.Error("publishing event", "topic", ev.topic, "error", err)
	}
}

// close lets the loop drain what is queued, waiting at most grace.
func (q *eventQueue) close(grace time.Duration) {
	q.once.Do(func() { close(q.closing) })
	select {
	case <-q.done:
	case <-time.After(grace):
	}
}

func (s *Service) publishLocked(topic string, msg proto.Message) {
	s.events.push(topic, msg)
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func exitEvent(c *process.Container, p *process.Process) *eventsapi.TaskExit {
	return &eventsapi.TaskExit{
		ContainerID: c.ID,
		ID:          p.ID,
		Pid:         uint32(p.Pid),
		ExitStatus:  uint32(p.ExitStatus),
		ExitedAt:    ts(p.ExitedAt),
	}
}
