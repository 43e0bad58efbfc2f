package logging

import (
	"bytes"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// flushCounter is a driver that batches like the file drivers: records are
// "on disk" only once Flush ran.
type flushCounter struct {
	mu      sync.Mutex
	pending int
	flushed int
	flushes atomic.Int32
}

func (d *flushCounter) Write(r *Record) error {
	d.mu.Lock()
	d.pending += len(r.Line)
	d.mu.Unlock()
	return nil
}
func (d *flushCounter) Flush() error {
	d.flushes.Add(1)
	d.mu.Lock()
	d.flushed += d.pending
	d.pending = 0
	d.mu.Unlock()
	return nil
}
func (d *flushCounter) Reopen() error { return nil }
func (d *flushCounter) Close() error  { return nil }
func (d *flushCounter) onDisk() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flushed
}

// A read that fills the buffer is not flushed at once (more is likely to
// follow), but never waits for more than FlushDelay: the output of a
// container that then goes idle still reaches the disk.
func TestFullReadIsFlushedLater(t *testing.T) {
	d := &flushCounter{}
	p := NewPipeline(Metadata{ID: "c"}, []Driver{d}, PipelineOptions{ReadSize: 64})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p.ReadFrom(Stdout, r)
	line := append(bytes.Repeat([]byte("x"), 63), '\n') // exactly one full read
	if _, err := w.Write(line); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for d.onDisk() != 63 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := d.onDisk(); got != 63 {
		t.Fatalf("%d bytes flushed after an idle pause, want 63", got)
	}
	w.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// WriteChunks cuts a large write as reads of ReadSize would be cut, and
// flushes once, at its end.
func TestWriteChunksFlushesOnce(t *testing.T) {
	d := &flushCounter{}
	p := NewPipeline(Metadata{ID: "c"}, []Driver{d}, PipelineOptions{ReadSize: 8})
	p.WriteChunks(Stdout, []byte("0123456789abcdefXYZ")) // 8 + 8 + 3 bytes
	if n := d.flushes.Load(); n != 1 {
		t.Fatalf("%d flushes, want 1", n)
	}
	if got := d.onDisk(); got != 19 {
		t.Fatalf("%d bytes flushed, want 19", got)
	}
	st := p.Stats()
	if st.Read.Lines != 3 {
		t.Fatalf("%d records, want 3 (one partial record per piece)", st.Read.Lines)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}
