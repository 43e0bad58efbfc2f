package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/internal/pipesize"
)

// DefaultReadSize is the size of one read from a container's pipe, as in
// conmon: a record is never longer than this. A busy stream is read in
// larger reads (BusyReadSize) that are cut at this size, giving the same
// records.
const DefaultReadSize = 8192

// CloseGrace is how long CloseContext still waits, once its context is
// done, for the streams to end and the buffered records to be written.
const CloseGrace = time.Second

// DefaultMaxBufferSize is the bound of the non-blocking mode's buffer, as in
// Docker's mode=non-blocking.
const DefaultMaxBufferSize = 1 << 20

// Mode says what a Pipeline does when a driver is slower than the container.
type Mode uint8

const (
	// Blocking writes each record to every driver from the reader goroutine:
	// a stuck driver stops the reading, the pipe fills and the container
	// blocks in write(2). Nothing is lost. This is conmon's behaviour and the
	// default.
	Blocking Mode = iota
	// NonBlocking puts records in a buffer bounded by MaxBufferSize that one
	// goroutine drains into the drivers. When the buffer is full the oldest
	// records are dropped and counted (Stats.BufferFull): the container never
	// waits for a driver.
	NonBlocking
)

// String returns "blocking" or "non-blocking", the words of the configuration.
func (m Mode) String() string {
	if m == NonBlocking {
		return "non-blocking"
	}
	return "blocking"
}

// RateLimit bounds what one container may log. A zero rate is unlimited.
// Records over the limit are dropped and counted (Stats.RateLimited); when
// records pass again (or at Close), one marker record says how many were
// dropped (see MarkerPrefix).
type RateLimit struct {
	BytesPerSec float64
	LinesPerSec float64
	// Burst is how much of each rate can be spent at once: the token buckets
	// hold Burst worth of their rate. Zero means one second.
	Burst time.Duration
}

// Redaction replaces every match of Pattern in a record with Replacement
// (which may use $1-style references, as regexp.Expand does).
type Redaction struct {
	Pattern     *regexp.Regexp
	Replacement []byte
}

// MarkerPrefix starts the text of the records a Pipeline writes itself (the
// rate limit marker), so that readers can tell them from container output.
const MarkerPrefix = "conmon-v2: "

// PipelineOptions configures a Pipeline. The zero value is conmon's
// behaviour: blocking, 8192-byte reads, no filters, no limits.
type PipelineOptions struct {
	Mode          Mode
	MaxBufferSize int // bytes buffered in NonBlocking mode; default DefaultMaxBufferSize
	ReadSize      int // bytes per read, and per record at most; default DefaultReadSize
	RateLimit     RateLimit
	// Drop lists patterns: a record whose line matches any is not logged
	// (Stats.Filtered). Patterns see one record at a time: a line longer
	// than ReadSize, or split across reads, is matched piece by piece.
	Drop []*regexp.Regexp
	// Redact is applied in order to every record that is not dropped.
	Redact []Redaction
	// Tap, if set, is called in the reader goroutine with each chunk read,
	// before filters and limits (the attach sockets of a monitor get the
	// output even when the logs drop it), once per read(2): a busy
	// stream's read (BusyReadSize) is not cut for it. It must not keep
	// chunk, and should not block: the reader waits for it, in either
	// mode.
	Tap func(s Stream, chunk []byte)
	// Now returns the time stamped on records; default time.Now.
	Now func() time.Time
}

// Counter counts records (a partial piece counts as one line) and bytes
// (without the newline).
type Counter struct {
	Lines uint64
	Bytes uint64
}

// Stats are a Pipeline's running totals.
type Stats struct {
	Read        Counter // cut from the container's output
	Written     Counter // handed to the drivers (after filters and drops)
	Filtered    Counter // dropped by a Drop pattern
	Redacted    uint64  // records changed by a Redaction
	RateLimited Counter // dropped by the rate limit
	BufferFull  Counter // dropped, oldest first, by the non-blocking buffer
	// WriteError counts, summed over drivers, the records a driver did
	// not write: those whose Write failed (DriverStats.Errors) and those
	// it gave up later (DriverStats.Lost). Each record is counted once
	// per driver: one a driver held after a failed write (ErrHeld) is
	// either written or lost, never both failed and lost.
	WriteError Counter
	Markers    uint64 // marker records the pipeline wrote
	ReadErrors uint64 // reads that failed with an error other than EOF
	Drivers    []DriverStats
}

// DriverStats are one driver's totals. Errors and Lost never count the same
// record; Lost is part of Written.
type DriverStats struct {
	Name string
	// Written counts the records the driver accepted: Write returned nil,
	// or an ErrHeld error (it kept the record for a retry).
	Written Counter
	// Errors counts the records whose Write failed and that the driver
	// did not keep.
	Errors Counter
	// Lost counts what the driver reported (Loser) giving up after
	// accepting it: a file driver's retry buffer shed on a full disk, or
	// what came past its global size cap.
	Lost Counter
	// Failures counts the calls to the driver that failed (Write, Flush,
	// Reopen, Sync, Close), those that held their records included: a
	// driver is failing while it grows, whatever happens to the records.
	Failures  uint64
	LastError string // the last Write, Flush, Reopen or Sync error, if any
}

type counter struct{ lines, bytes atomic.Uint64 }

func (c *counter) add(n int) {
	c.lines.Add(1)
	c.bytes.Add(uint64(n))
}

func (c *counter) get() Counter { return Counter{Lines: c.lines.Load(), Bytes: c.bytes.Load()} }

type driverState struct {
	d        Driver
	name     string
	flusher  Flusher
	rw       ReadWriter // nil unless the driver takes whole reads
	errors   counter
	failures atomic.Uint64
	lastErr  atomic.Pointer[string]
}

// write calls the driver's Write; a panic in the driver is turned into an
// error, so that one broken driver cannot take the monitor, and the other
// drivers, down with it.
func (ds *driverState) write(rec *Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("log driver %s: panic: %v", ds.name, v)
		}
	}()
	return ds.d.Write(rec)
}

// writeRead is write for a ReadWriter: all records of one read at once.
func (ds *driverState) writeRead(t time.Time, s Stream, meta *Metadata, chunk []byte) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("log driver %s: panic: %v", ds.name, v)
		}
	}()
	return ds.rw.WriteRead(t, s, meta, chunk)
}

// call runs one of the driver's other methods with the same protection.
func (ds *driverState) call(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("log driver %s: panic: %v", ds.name, v)
		}
	}()
	return f()
}

func (ds *driverState) fail(err error) {
	s := err.Error()
	ds.lastErr.Store(&s)
	ds.failures.Add(1)
}

// failed records a failed Write of the records c: they count as failed
// unless the driver kept them (ErrHeld), and then counts them itself.
func (ds *driverState) failed(err error, c Counter) {
	if !errors.Is(err, ErrHeld) {
		ds.errors.addN(c)
	}
	ds.fail(err)
}

// Pipeline reads a container's output streams, cuts them into Records and
// fans each record out to every driver. One failing driver never silences
// the others: its errors are counted and the other drivers still get the
// record.
//
// Lines are cut on '\n' as conmon does: what one read returns is emitted at
// once, a segment ending in '\n' as a full record and the tail after the
// last newline as a Partial record; the reader never holds bytes back
// waiting for a newline (interactive prompts show at once, and the k8s-file
// output is byte-compatible with conmon's). All records of one read share
// one timestamp.
//
// The Pipeline owns its reader goroutines (ReadFrom) and, in NonBlocking
// mode, one writer goroutine; Close stops them all.
type Pipeline struct {
	meta    Metadata
	drivers []*driverState
	opts    PipelineOptions
	now     func() time.Time
	limit   *limiter
	queue   *queue // NonBlocking only
	// direct: no filter, redaction, rate limit or queue stands between a
	// read and the drivers, so ReadWriter drivers get whole reads.
	direct bool

	readers   sync.WaitGroup
	srcMu     sync.Mutex
	sources   map[io.Reader]struct{} // readers not at EOF yet, for CloseContext
	writerWG  sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool

	lateMu      sync.Mutex
	lateTimer   *time.Timer // the delayed flush of flushLater; guarded by lateMu
	lateArmed   bool        // lateTimer will fire; guarded by lateMu
	lateStopped bool        // Close is flushing and closing the drivers; guarded by lateMu

	bufPool   sync.Pool // *[]byte of opts.ReadSize
	bigPool   sync.Pool // *[]byte of bigSize: the reads of a busy stream
	bigSize   int
	statePool sync.Pool // *readState for WriteChunk

	read, written, filtered, limited, full counter
	fanned                                 counter // records handed to the drivers
	redacted, markers, readErrors          atomic.Uint64
}

// NewPipeline returns a Pipeline writing to drivers. The Pipeline owns the
// drivers from now on: Close closes them. opts is validated by the caller
// (Config.Validate); out-of-range sizes fall back to their defaults.
func NewPipeline(meta Metadata, drivers []Driver, opts PipelineOptions) *Pipeline {
	if opts.ReadSize <= 0 {
		opts.ReadSize = DefaultReadSize
	}
	if opts.MaxBufferSize <= 0 {
		opts.MaxBufferSize = DefaultMaxBufferSize
	}
	if opts.MaxBufferSize < opts.ReadSize {
		opts.MaxBufferSize = opts.ReadSize
	}
	p := &Pipeline{meta: meta, opts: opts, now: opts.Now}
	if p.now == nil {
		p.now = time.Now
	}
	for _, d := range drivers {
		ds := &driverState{d: d, name: DriverName(d)}
		ds.flusher, _ = Unwrap(d).(Flusher)
		ds.rw, _ = Unwrap(d).(ReadWriter)
		p.drivers = append(p.drivers, ds)
	}
	if opts.RateLimit.BytesPerSec > 0 || opts.RateLimit.LinesPerSec > 0 {
		p.limit = newLimiter(opts.RateLimit)
	}
	p.direct = opts.Mode == Blocking && len(opts.Drop) == 0 && len(opts.Redact) == 0 && p.limit == nil
	size := opts.ReadSize
	p.bufPool.New = func() any { b := make([]byte, size); return &b }
	// A whole number of records' worth, so that cutting a big read gives
	// the pieces a run of small reads would have given.
	p.bigSize = max(size, BusyReadSize/size*size)
	big := p.bigSize
	p.bigPool.New = func() any { b := make([]byte, big); return &b }
	p.statePool.New = func() any { return &readState{} }
	if opts.Mode == NonBlocking {
		p.queue = newQueue(opts.MaxBufferSize)
		p.writerWG.Add(1)
		go func() {
			defer p.writerWG.Done()
			p.drain()
		}()
	}
	return p
}

// Mode returns the pipeline's mode: in NonBlocking mode WriteChunk and
// WriteChunks return before the drivers have the records.
func (p *Pipeline) Mode() Mode { return p.opts.Mode }

// Metadata returns the container metadata stamped on every record.
func (p *Pipeline) Metadata() *Metadata { return &p.meta }

// Source returns the log of the first driver that ReadLogs can read back.
func (p *Pipeline) Source() (Source, bool) {
	for _, ds := range p.drivers {
		if r, ok := Unwrap(ds.d).(Readable); ok {
			return r.LogSource(), true
		}
	}
	return Source{}, false
}

// ReadFrom starts a goroutine, owned by p, that reads r until EOF (or any
// other error) and logs what it reads as stream s. The caller closes r's
// write side (the container's end of the pipe) when the container is gone,
// so that Close can return. ReadFrom must not be called after Close.
func (p *Pipeline) ReadFrom(s Stream, r io.Reader) {
	p.srcMu.Lock()
	if p.closed.Load() {
		// Too late: nothing reads r. The caller must not do this.
		p.srcMu.Unlock()
		return
	}
	p.readers.Add(1)
	if p.sources == nil {
		p.sources = map[io.Reader]struct{}{}
	}
	p.sources[r] = struct{}{}
	p.srcMu.Unlock()
	go func() {
		defer p.readers.Done()
		defer func() {
			p.srcMu.Lock()
			delete(p.sources, r)
			p.srcMu.Unlock()
		}()
		p.readLoop(s, r)
	}()
}

// readState is one reader's reusable record, so that passing it to drivers
// allocates nothing per line.
type readState struct {
	rec   Record
	stage stage // NonBlocking
}

// BusyReadSize is the size of one read(2) from a stream that keeps its
// pipe full: a read of ReadSize that came back full switches the reader to
// buffers of this size, cut in user space into records of at most
// ReadSize (the same records as reads of ReadSize from the same pipe
// would give), and the first read that would have fit in ReadSize switches
// it back. A busy stream thus costs one read, one wake-up and one batch
// per BusyReadSize instead of per ReadSize, while a quiet one holds only
// its ReadSize buffer. A read that comes back full grows the pipe to 1
// MiB, until the stream goes quiet, where the project's policy allows it
// (internal/pipesize), so that a read of BusyReadSize can come back full.
const BusyReadSize = 128 << 10

func (p *Pipeline) readLoop(s Stream, r io.Reader) {
	small := p.bufPool.Get().(*[]byte)
	defer p.bufPool.Put(small)
	var big *[]byte // while the stream is busy
	defer func() {
		if big != nil {
			p.bigPool.Put(big)
		}
	}()
	st := &readState{}
	grow := pipesize.ForReader(r) // a busy stream's pipe: the project's one policy
	for {
		buf := *small
		if big != nil {
			buf = *big
		}
		n, err := r.Read(buf)
		grow.Observe(n, len(buf))
		if n > 0 {
			// A read that filled the buffer is most likely followed by
			// more: its records ride with the next read's batch instead of
			// costing a write of their own (at most FlushDelay later).
			p.writeRead(s, buf[:n], st, n < len(buf))
		}
		switch {
		case big == nil && n == len(buf) && p.bigSize > len(buf):
			big = p.bigPool.Get().(*[]byte)
		case big != nil && n < len(*small):
			p.bigPool.Put(big)
			big = nil
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !isClosedPTY(err) && !errors.Is(err, os.ErrDeadlineExceeded) {
				p.readErrors.Add(1)
			}
			return
		}
	}
}

// isClosedPTY reports the EIO a terminal master returns once the slave side
// is closed: the end of a tty container's output, not an error.
func isClosedPTY(err error) bool { return errors.Is(err, syscall.EIO) }

// WriteChunk logs chunk as one read of stream s: it is cut into records
// stamped with one time and written as ReadFrom would. It is for front ends
// that read a stream themselves. It may be called concurrently with itself
// and with the readers, but not after Close. p does not keep chunk.
func (p *Pipeline) WriteChunk(s Stream, chunk []byte) {
	if p.opts.Tap != nil {
		p.opts.Tap(s, chunk)
	}
	st := p.statePool.Get().(*readState)
	p.writeChunk(s, chunk, st, endFlush)
	st.rec = Record{}
	p.statePool.Put(st)
}

// WriteChunks logs b as consecutive reads of stream s of at most ReadSize
// bytes each (so records are cut exactly as ReadFrom would cut them) and
// flushes the drivers once, after the last piece: for front ends that read
// more than ReadSize at a time. The same rules as WriteChunk apply.
func (p *Pipeline) WriteChunks(s Stream, b []byte) {
	if len(b) == 0 {
		return
	}
	st := p.statePool.Get().(*readState)
	p.writeRead(s, b, st, true)
	st.rec = Record{}
	p.statePool.Put(st)
}

// batchEnd says what ends the batch of one piece of a read.
type batchEnd uint8

const (
	endNone  batchEnd = iota // more pieces of the same read follow
	endFlush                 // flush the drivers now
	endLater                 // flush within FlushDelay (the read filled its buffer)
)

// writeRead logs one read of b bytes as consecutive reads of at most
// ReadSize, and flushes after the last piece (within FlushDelay unless
// flush).
func (p *Pipeline) writeRead(s Stream, b []byte, st *readState, flush bool) {
	if p.opts.Tap != nil {
		p.opts.Tap(s, b)
	}
	for len(b) > p.opts.ReadSize {
		p.writeChunk(s, b[:p.opts.ReadSize], st, endNone)
		b = b[p.opts.ReadSize:]
	}
	end := endLater
	if flush {
		end = endFlush
	}
	p.writeChunk(s, b, st, end)
}

// writeChunk logs one piece of at most ReadSize; the caller has tapped it.
func (p *Pipeline) writeChunk(s Stream, chunk []byte, st *readState, end batchEnd) {
	now := p.now()
	if p.direct {
		if len(chunk) > 0 {
			p.writeDirect(now, s, chunk, &st.rec)
		}
		p.endBatch(end)
		return
	}
	rec := &st.rec
	t := tally{stage: &st.stage}
	for len(chunk) > 0 {
		var line []byte
		partial := false
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			line, chunk = chunk[:i], chunk[i+1:]
		} else {
			line, chunk, partial = chunk, nil, true
		}
		*rec = Record{Time: now, Stream: s, Line: line, Partial: partial, Meta: &p.meta}
		t.read.Lines++
		t.read.Bytes += uint64(len(line))
		p.handle(rec, &t)
	}
	p.read.addN(t.read)
	p.written.addN(t.out)
	if p.queue == nil {
		p.fanned.addN(t.out)
	} else {
		p.push(t.stage)
	}
	p.endBatch(end)
}

func (p *Pipeline) endBatch(end batchEnd) {
	switch end {
	case endFlush:
		p.flush()
	case endLater:
		p.flushLater()
	}
}

// writeDirect hands one read to the drivers when nothing stands between
// them and the container (p.direct): a ReadWriter takes it whole, any
// other driver gets its records one by one, cut as writeChunk cuts them.
func (p *Pipeline) writeDirect(now time.Time, s Stream, chunk []byte, rec *Record) {
	nl := bytes.Count(chunk, []byte{'\n'})
	c := Counter{Lines: uint64(nl), Bytes: uint64(len(chunk) - nl)}
	if chunk[len(chunk)-1] != '\n' {
		c.Lines++
	}
	for _, ds := range p.drivers {
		if ds.rw != nil {
			if err := ds.writeRead(now, s, &p.meta, chunk); err != nil {
				ds.failed(err, c)
			}
			continue
		}
		for rest := chunk; len(rest) > 0; {
			var line []byte
			partial := false
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				line, rest = rest[:i], rest[i+1:]
			} else {
				line, rest, partial = rest, nil, true
			}
			*rec = Record{Time: now, Stream: s, Line: line, Partial: partial, Meta: &p.meta}
			if err := ds.write(rec); err != nil {
				ds.failed(err, Counter{Lines: 1, Bytes: uint64(len(line))})
			}
		}
	}
	p.read.addN(c)
	p.written.addN(c)
	p.fanned.addN(c)
}

// FlushDelay bounds how long records of a read that filled the read buffer
// may wait in a driver's batch for the next read's before they are flushed.
const FlushDelay = 50 * time.Millisecond

// flushLater arms the delayed flush, unless it is armed already.
func (p *Pipeline) flushLater() {
	if p.queue != nil {
		return // the writer goroutine flushes when it runs dry
	}
	p.lateMu.Lock()
	defer p.lateMu.Unlock()
	if p.lateArmed || p.lateStopped {
		return
	}
	p.lateArmed = true
	if p.lateTimer == nil {
		p.lateTimer = time.AfterFunc(FlushDelay, p.lateFlush)
	} else {
		p.lateTimer.Reset(FlushDelay)
	}
}

// lateFlush is the delayed flush; it runs on the timer's goroutine (drivers'
// Flush may run concurrently with Write). Close stops the timer.
func (p *Pipeline) lateFlush() {
	p.lateMu.Lock()
	defer p.lateMu.Unlock()
	p.lateArmed = false
	if p.lateStopped {
		return
	}
	_ = p.flushDrivers() // a failure is counted per driver, and retried
}

// tally counts one read's records, so that the shared counters are updated
// once per read rather than once per line.
type tally struct {
	read, out Counter
	stage     *stage // NonBlocking: the read's records, queued together
}

func (c *counter) addN(n Counter) {
	if n.Lines > 0 {
		c.lines.Add(n.Lines)
		c.bytes.Add(n.Bytes)
	}
}

// handle applies filters and the rate limit, then delivers rec.
func (p *Pipeline) handle(rec *Record, t *tally) {
	for _, re := range p.opts.Drop {
		if re.Match(rec.Line) {
			p.filtered.add(len(rec.Line))
			return
		}
	}
	if len(p.opts.Redact) > 0 {
		changed := false
		line := rec.Line
		for _, rd := range p.opts.Redact {
			if rd.Pattern.Match(line) {
				line = rd.Pattern.ReplaceAll(line, rd.Replacement)
				changed = true
			}
		}
		if changed {
			rec.Line = line
			p.redacted.Add(1)
		}
	}
	if p.limit != nil {
		ok, ml, mb := p.limit.allow(rec.Time, rec.Stream, len(rec.Line))
		if !ok {
			p.limited.add(len(rec.Line))
			return
		}
		if ml > 0 {
			p.marker(rec.Time, rec.Stream, ml, mb, t)
		}
	}
	p.deliver(rec, t)
}

// marker delivers the record that tells the log how much the rate limit
// dropped.
func (p *Pipeline) marker(tm time.Time, s Stream, lines, nbytes uint64, t *tally) {
	var b []byte
	b = append(b, MarkerPrefix...)
	b = append(b, "rate limit: dropped "...)
	b = strconv.AppendUint(b, lines, 10)
	b = append(b, " lines ("...)
	b = strconv.AppendUint(b, nbytes, 10)
	b = append(b, " bytes)"...)
	m := Record{Time: tm, Stream: s, Line: b, Meta: &p.meta}
	p.markers.Add(1)
	p.deliver(&m, t)
}

// deliver queues rec or writes it to the drivers, and counts it in t.
func (p *Pipeline) deliver(rec *Record, t *tally) {
	t.out.Lines++
	t.out.Bytes += uint64(len(rec.Line))
	if p.queue != nil {
		p.queue.add(t.stage, rec)
		return
	}
	p.fanout(rec)
}

func (p *Pipeline) fanout(rec *Record) {
	for _, ds := range p.drivers {
		if err := ds.write(rec); err != nil {
			ds.failed(err, Counter{Lines: 1, Bytes: uint64(len(rec.Line))})
		}
	}
}

// flush ends one read's batch: in blocking mode the drivers flush now; in
// non-blocking mode the writer goroutine flushes when it runs dry.
func (p *Pipeline) flush() {
	if p.queue != nil {
		return
	}
	p.flushDrivers()
}

func (p *Pipeline) flushDrivers() error {
	var errs []error
	for _, ds := range p.drivers {
		if ds.flusher == nil {
			continue
		}
		if err := ds.call(ds.flusher.Flush); err != nil {
			ds.fail(err)
			errs = append(errs, fmt.Errorf("log driver %s: flush: %w", ds.name, err))
		}
	}
	return errors.Join(errs...)
}

// Reopen asks every driver to reopen its destination (kubelet's
// ReopenContainerLog, conmon's ctl message 2). Errors are joined; a driver
// that fails keeps working with what it has.
func (p *Pipeline) Reopen() error {
	var errs []error
	for _, ds := range p.drivers {
		if err := ds.call(ds.d.Reopen); err != nil {
			ds.fail(err)
			errs = append(errs, fmt.Errorf("log driver %s: reopen: %w", ds.name, err))
		}
	}
	return errors.Join(errs...)
}

// Close waits until every reader started by ReadFrom has reached EOF, writes
// what is buffered and the last rate-limit marker, then flushes, syncs
// (Syncer) and closes every driver. Errors are joined. Close is idempotent;
// later calls return the first result.
func (p *Pipeline) Close() error { return p.CloseContext(context.Background()) }

// CloseContext is Close with a bound on the wait: a process that outlives
// the container (a daemon it started) may hold the pipe's write end open,
// and a driver may block. When ctx is done, readers that support read
// deadlines (pipes from os.Pipe, fifos opened non-blocking) are stopped
// after the data already in the pipe has been read, as conmon drains its
// pipes at exit. If the streams, or in NonBlocking mode the writer, still
// have not finished CloseGrace later, CloseContext gives up: it returns an
// ErrUnavailable error and leaves the drivers open (a Write may still be
// running in one), so that the monitor can report the exit and leave.
func (p *Pipeline) CloseContext(ctx context.Context) error {
	p.closeOnce.Do(func() {
		p.srcMu.Lock()
		p.closed.Store(true) // under srcMu: no ReadFrom adds a reader past this
		p.srcMu.Unlock()
		done := make(chan struct{})
		go func() {
			p.readers.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			p.srcMu.Lock()
			for r := range p.sources {
				if d, ok := r.(interface{ SetReadDeadline(time.Time) error }); ok {
					// A deadline in the near past would cut a read that
					// still has data; reads return at once with what the
					// pipe holds, then hit the deadline.
					d.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				}
			}
			p.srcMu.Unlock()
			select {
			case <-done:
			case <-time.After(CloseGrace):
				// A reader is stuck in a blocking driver (or a reader
				// without deadlines never ends): give up on the logs
				// rather than on the exit.
				p.closeErr = fmt.Errorf("log pipeline: a stream did not end within %v after the close deadline (a driver blocks, or the pipe is held open); drivers left open: %w",
					CloseGrace, errdefs.ErrUnavailable)
				return
			}
		}
		if p.limit != nil {
			if s, lines, nbytes := p.limit.pending(); lines > 0 {
				t := tally{stage: &stage{}}
				p.marker(p.now(), s, lines, nbytes, &t)
				p.written.addN(t.out)
				if p.queue == nil {
					p.fanned.addN(t.out)
				} else {
					p.push(t.stage)
				}
			}
		}
		if p.queue != nil {
			p.queue.close()
			wdone := make(chan struct{})
			go func() {
				p.writerWG.Wait()
				close(wdone)
			}()
			select {
			case <-wdone:
			case <-ctx.Done():
				select {
				case <-wdone:
				case <-time.After(CloseGrace):
					p.closeErr = fmt.Errorf("log pipeline: the drivers did not take the buffered records within %v after the close deadline; drivers left open: %w",
						CloseGrace, errdefs.ErrUnavailable)
					return
				}
			}
		}
		// No delayed flush may run from here on: the drivers are flushed,
		// synced and closed below (a running one is waited for).
		p.lateMu.Lock()
		p.lateStopped = true
		if p.lateTimer != nil {
			p.lateTimer.Stop()
		}
		p.lateMu.Unlock()
		var errs []error
		if err := p.flushDrivers(); err != nil {
			errs = append(errs, err)
		}
		for _, ds := range p.drivers {
			if s, ok := Unwrap(ds.d).(Syncer); ok {
				if err := ds.call(s.Sync); err != nil {
					ds.fail(err)
					errs = append(errs, fmt.Errorf("log driver %s: sync: %w", ds.name, err))
				}
			}
		}
		for _, ds := range p.drivers {
			if err := ds.call(ds.d.Close); err != nil {
				ds.fail(err)
				errs = append(errs, fmt.Errorf("log driver %s: close: %w", ds.name, err))
			}
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

// Stats returns the running totals. It may be called at any time, also
// after Close.
func (p *Pipeline) Stats() Stats {
	st := Stats{
		Read:        p.read.get(),
		Written:     p.written.get(),
		Filtered:    p.filtered.get(),
		Redacted:    p.redacted.Load(),
		RateLimited: p.limited.get(),
		BufferFull:  p.full.get(),
		Markers:     p.markers.Load(),
		ReadErrors:  p.readErrors.Load(),
	}
	fanned := p.fanned.get()
	for _, ds := range p.drivers {
		d := DriverStats{Name: ds.name, Errors: ds.errors.get(), Failures: ds.failures.Load()}
		d.Written.Lines = fanned.Lines - d.Errors.Lines
		d.Written.Bytes = fanned.Bytes - d.Errors.Bytes
		if l, ok := Unwrap(ds.d).(Loser); ok {
			d.Lost.Lines, d.Lost.Bytes = l.Lost()
		}
		if s := ds.lastErr.Load(); s != nil {
			d.LastError = *s
		}
		st.WriteError.Lines += d.Errors.Lines + d.Lost.Lines
		st.WriteError.Bytes += d.Errors.Bytes + d.Lost.Bytes
		st.Drivers = append(st.Drivers, d)
	}
	return st
}

// limiter is two token buckets (bytes and lines) shared by a container's
// streams. It also counts what it dropped since the last marker.
type limiter struct {
	mu                   sync.Mutex
	bRate, lRate         float64
	bCap, lCap           float64
	bTok, lTok           float64
	last                 time.Time
	dropLines, dropBytes uint64
	dropStream           Stream
}

func newLimiter(rl RateLimit) *limiter {
	burst := rl.Burst
	if burst <= 0 {
		burst = time.Second
	}
	l := &limiter{bRate: rl.BytesPerSec, lRate: rl.LinesPerSec}
	l.bCap = l.bRate * burst.Seconds()
	l.lCap = l.lRate * burst.Seconds()
	if l.lRate > 0 && l.lCap < 1 {
		l.lCap = 1
	}
	l.bTok, l.lTok = l.bCap, l.lCap
	return l
}

// allow takes n bytes and one line from the buckets at time now. It reports
// whether the record may pass and, if it may and records were dropped
// before it, how many (for the marker).
func (l *limiter) allow(now time.Time, s Stream, n int) (bool, uint64, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() {
		if dt := now.Sub(l.last).Seconds(); dt > 0 {
			l.bTok = min(l.bCap, l.bTok+dt*l.bRate)
			l.lTok = min(l.lCap, l.lTok+dt*l.lRate)
		}
	}
	if l.last.IsZero() || now.After(l.last) {
		l.last = now
	}
	// A record larger than the whole bucket passes when the bucket is full
	// and leaves it in debt, so that a small rate never blocks a line forever.
	okB := l.bRate == 0 || l.bTok >= min(float64(n), l.bCap)
	okL := l.lRate == 0 || l.lTok >= 1
	if !okB || !okL {
		l.dropLines++
		l.dropBytes += uint64(n)
		l.dropStream = s
		return false, 0, 0
	}
	if l.bRate > 0 {
		l.bTok -= float64(n)
	}
	if l.lRate > 0 {
		l.lTok--
	}
	ml, mb := l.dropLines, l.dropBytes
	l.dropLines, l.dropBytes = 0, 0
	return true, ml, mb
}

// pending returns and clears what was dropped since the last marker.
func (l *limiter) pending() (Stream, uint64, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ml, mb := l.dropLines, l.dropBytes
	l.dropLines, l.dropBytes = 0, 0
	s := l.dropStream
	if s == 0 {
		s = Stderr
	}
	return s, ml, mb
}
