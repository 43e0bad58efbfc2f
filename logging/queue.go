package logging

import "sync"

// queue is the non-blocking mode's buffer: records copied out of the read
// buffer, bounded in bytes, oldest dropped first. One writer goroutine
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
	pool   sync.Pool // *[]byte
}

type qitem struct {
	rec Record
	buf *[]byte
}

func newQueue(max int) *queue {
	q := &queue{max: max}
	q.cond.L = &q.mu
	q.pool.New = func() any { b := make([]byte, 0, 256); return &b }
	return q
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Signal()
}

// enqueue copies rec into the buffer, dropping the oldest records (counted
// in Stats.BufferFull) until it fits.
func (p *Pipeline) enqueue(rec *Record) {
	q := p.queue
	bp := q.pool.Get().(*[]byte)
	*bp = append((*bp)[:0], rec.Line...)
	it := qitem{rec: *rec, buf: bp}
	it.rec.Line = *bp
	n := len(rec.Line)
	q.mu.Lock()
	for q.head < len(q.items) && q.bytes+n > q.max {
		old := &q.items[q.head]
		q.bytes -= len(old.rec.Line)
		p.full.add(len(old.rec.Line))
		// It was counted written when delivered to the queue; it was not.
		p.written.lines.Add(^uint64(0))
		p.written.bytes.Add(^uint64(len(old.rec.Line) - 1))
		q.pool.Put(old.buf)
		*old = qitem{}
		q.head++
	}
	if q.head > 0 && q.head >= len(q.items)/2 {
		// Compact now and then, not on every drop.
		k := copy(q.items, q.items[q.head:])
		clear(q.items[k:])
		q.items, q.head = q.items[:k], 0
	}
	q.items = append(q.items, it)
	q.bytes += n
	q.mu.Unlock()
	q.cond.Signal()
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
		batch := q.items[q.head:]
		q.items, q.head = q.spare[:0], 0
		q.bytes = 0
		q.mu.Unlock()

		var n Counter
		for i := range batch {
			p.fanout(&batch[i].rec)
			n.Lines++
			n.Bytes += uint64(len(batch[i].rec.Line))
			q.pool.Put(batch[i].buf)
			batch[i] = qitem{}
		}
		p.fanned.addN(n)
		q.mu.Lock()
		q.spare = batch[:0:cap(batch)]
		empty := len(q.items) == q.head
		q.mu.Unlock()
		if empty {
			p.flushDrivers()
		}
	}
}
