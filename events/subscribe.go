package events

import (
	"context"
	"sync"
)

// Subscribe returns every event published from now on, in order, on the
// returned channel, and a cancel function that ends the subscription. The
// channel is closed when the subscription ends: by cancel, by ctx, or by
// Close of the Exchange. A slow reader never slows Publish and loses
// nothing: its events wait in the subscription's own queue.
func (e *Exchange) Subscribe(ctx context.Context) (<-chan *Envelope, func()) {
	s := &subscription{
		ready: make(chan struct{}, 1),
		stop:  make(chan struct{}),
		quit:  make(chan struct{}),
		out:   make(chan *Envelope),
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		close(s.out)
		return s.out, func() {}
	}
	e.subs[s] = struct{}{}
	e.mu.Unlock()

	go s.pump(ctx)
	cancel := func() {
		e.mu.Lock()
		delete(e.subs, s)
		e.mu.Unlock()
		s.quitOnce.Do(func() { close(s.quit) })
	}
	return s.out, cancel
}

// MaxSubscriptionQueue bounds the events waiting for one subscriber. A
// subscriber that falls that far behind (one that stopped reading) is cut
// off: its queue is replaced by a single TopicOverflow envelope, after
// which its channel gets nothing more. This bounds the memory a stuck
// Monitor API client can make the monitor hold.
const MaxSubscriptionQueue = 1 << 16

// TopicOverflow is the topic of the last envelope of a subscription that
// was cut off for falling behind (see MaxSubscriptionQueue).
const TopicOverflow = "/conmon-v2/subscription-overflow"

// subscription is a queue, bounded by MaxSubscriptionQueue, drained by its own pump goroutine,
// which stops when end is called or its context is done.
type subscription struct {
	mu       sync.Mutex
	queue    []*Envelope // guarded by mu
	overflow bool        // guarded by mu; cut off: queue holds only the TopicOverflow envelope
	once     sync.Once
	quitOnce sync.Once
	ready    chan struct{} // 1-buffered: the queue grew
	stop     chan struct{} // closed by end: deliver what is queued, then close out
	quit     chan struct{} // closed by the reader's cancel: close out now
	out      chan *Envelope
}

func (s *subscription) push(env *Envelope) {
	s.mu.Lock()
	switch {
	case s.overflow:
	case len(s.queue) >= MaxSubscriptionQueue:
		s.overflow = true
		clear(s.queue)
		s.queue = []*Envelope{{Namespace: env.GetNamespace(), Topic: TopicOverflow, Timestamp: env.GetTimestamp()}}
	default:
		s.queue = append(s.queue, env)
	}
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *subscription) end() {
	s.once.Do(func() { close(s.stop) })
}

// pump hands queued events to the reader. After end (the Exchange closed)
// it still delivers what was queued before; after the reader's cancel or
// the end of ctx it stops at once.
func (s *subscription) pump(ctx context.Context) {
	defer close(s.out)
	for {
		s.mu.Lock()
		var next *Envelope
		if len(s.queue) > 0 {
			next = s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
		}
		s.mu.Unlock()
		if next == nil {
			select {
			case <-s.ready:
				continue
			case <-s.stop:
				return
			case <-s.quit:
				return
			case <-ctx.Done():
				return
			}
		}
		select {
		case s.out <- next:
		case <-s.quit:
			return
		case <-ctx.Done():
			return
		}
	}
}
