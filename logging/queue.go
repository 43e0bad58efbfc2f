package logging

import (
	"sync"
	"sync/atomic"
)

// queue is the non-blocking mode's buffer: records copied out of the read
// buffer, bounded in bytes, oldest dropped first. Readers add the records
// of one read at a time (one lock, one wake-up); one writer goroutine
// (Pipeline.drain) empties it.
type queue struct {
	mu     sync.Mutex
	cond   sync.Cond
	items  []qitem // FIFO: items[head:] are queued
	head   int
	spare  []qitem // the writer's previous batch, reused
	bytes  int
	max    int
	closed bool
	chunks sync.Pool // *qchunk
}

// qchunk holds the bytes of the records of one read; it goes back to the
// pool when its last record is written or dropped.
type qchunk struct {
	data []byte
	refs atomic.Int32
}

type qitem struct {
	rec Record
	c   *qchunk
}

// stage collects one read's records before they are queued together.
type stage struct {
	c     *qchunk
	items []qitem
	spans [][2]int // each item's bytes in c.data
}

func newQueue(max int) *queue {
	q := &queue{max: max}
	q.cond.L = &q.mu
	q.chunks.New = func() any { return &qchunk{data: make([]byte, 0, DefaultReadSize)} }
	return q
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Signal()
}

func (q *queue) release(c *qchunk) {
	if c.refs.Add(-1) == 0 {
		c.data = c.data[:0]
		q.chunks.Put(c)
	}
}

// add copies rec into the stage.
func (q *queue) add(st *stage, rec *Record) {
	if st.c == nil {
		st.c = q.chunks.Get().(*qchunk)
	}
	start := len(st.c.data)
	st.c.data = append(st.c.data, rec.Line...)
	st.items = append(st.items, qitem{rec: *rec, c: st.c})
	st.spans = append(st.spans, [2]int{start, len(st.c.data)})
}

// push queues the staged records, dropping the oldest records (counted in
// Stats.BufferFull) until they fit.
func (p *Pipeline) push(st *stage) {
	if len(st.items) == 0 {
		return
	}
	q := p.queue
	n := 0
	// The chunk's bytes are final now: point the records at them.
	for i := range st.items {
		sp := st.spans[i]
		st.items[i].rec.Line = st.c.data[sp[0]:sp[1]:sp[1]]
		n += sp[1] - sp[0]
	}
	st.c.refs.Store(int32(len(st.items)))
	var dropped Counter
	q.mu.Lock()
	for q.head < len(q.items) && q.bytes+n > q.max {
		old := &q.items[q.head]
		q.bytes -= len(old.rec.Line)
		dropped.Lines++
		dropped.Bytes += uint64(len(old.rec.Line))
		q.release(old.c)
		*old = qitem{}
		q.head++
	}
	if q.head > 0 && q.head >= len(q.items)/2 {
		// Compact now and then, not on every drop.
		k := copy(q.items, q.items[q.head:])
		clear(q.items[k:])
		q.items, q.head = q.items[:k], 0
	}
	q.items = append(q.items, st.items...)
	q.bytes += n
	q.mu.Unlock()
	q.cond.Signal()
	if dropped.Lines > 0 {
		p.full.addN(dropped)
		// They were counted written when handed to the queue; they were not.
		p.written.lines.Add(-dropped.Lines)
		p.written.bytes.Add(-dropped.Bytes)
	}
	clear(st.items)
	st.items, st.spans, st.c = st.items[:0], st.spans[:0], nil
}

// drain is the writer goroutine: it takes everything queued, writes it to
// the drivers, flushes them when the queue runs dry, and returns once the
// queue is closed and empty.
func (p *Pipeline) drain() {
	q := p.queue
	for {
		q.mu.Lock()
		for len(q.items) == q.head && !q.closed {
			q.cond.Wait()
		}
		if len(q.items) == q.head && q.closed {
			q.mu.Unlock()
			return
		}
		all := q.items
		batch := all[q.head:]
		q.items, q.head = q.spare[:0], 0
		q.bytes = 0
		q.mu.Unlock()

		var n Counter
		for i := range batch {
			p.fanout(&batch[i].rec)
			n.Lines++
			n.Bytes += uint64(len(batch[i].rec.Line))
			q.release(batch[i].c)
		}
		p.fanned.addN(n)
		q.mu.Lock()
		clear(all) // batch is part of all; what precedes it was cleared when dropped
		q.spare = all[:0]
		empty := len(q.items) == q.head
		q.mu.Unlock()
		if empty {
			p.flushDrivers()
		}
	}
}
