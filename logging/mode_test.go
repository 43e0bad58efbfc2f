package logging_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
)

// TestModeStuckDriver shows the two modes with a driver that does not
// return: blocking stops reading (the container would block in write(2));
// non-blocking keeps reading, drops the oldest and counts.
func TestModeStuckDriver(t *testing.T) {
	chunk := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"), 64) // 4 KiB
	t.Run("blocking blocks", func(t *testing.T) {
		stuck := &memDriver{block: make(chan struct{})}
		p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{stuck}, logging.PipelineOptions{})
		pr, pw := io.Pipe() // unbuffered: a write returns once the reader took it
		p.ReadFrom(logging.Stdout, pr)
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			pw.Write(chunk) // taken by the reader, which then blocks in the driver
			pw.Write(chunk) // cannot be taken
		}()
		select {
		case <-wrote:
			t.Fatal("the writer was not blocked by a stuck driver in blocking mode")
		case <-time.After(200 * time.Millisecond):
		}
		close(stuck.block)
		<-wrote
		pw.Close()
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if n := len(stuck.lines()); n != 128 {
			t.Fatalf("driver got %d lines, want 128", n)
		}
	})
	t.Run("non-blocking never blocks", func(t *testing.T) {
		stuck := &memDriver{block: make(chan struct{})}
		p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{stuck}, logging.PipelineOptions{
			Mode: logging.NonBlocking, MaxBufferSize: 64 << 10,
		})
		pr, pw := io.Pipe()
		p.ReadFrom(logging.Stdout, pr)
		for range 1000 { // 4 MiB into a 64 KiB buffer, the driver stuck all along
			pw.Write(chunk)
		}
		pw.Close()
		close(stuck.block)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		st := p.Stats()
		got := uint64(len(stuck.lines()))
		if st.BufferFull.Lines == 0 || got+st.BufferFull.Lines != 64000 || st.Written.Lines != got {
			t.Fatalf("driver got %d, stats %+v", got, st)
		}
		if st.BufferFull.Bytes != st.BufferFull.Lines*63 {
			t.Fatalf("dropped bytes %d for %d lines", st.BufferFull.Bytes, st.BufferFull.Lines)
		}
	})
}

// TestConcurrentStreamsAndReopen runs two streams, WriteChunk callers and
// Reopen at once (run with -race).
func TestConcurrentStreamsAndReopen(t *testing.T) {
	for _, mode := range []logging.Mode{logging.Blocking, logging.NonBlocking} {
		t.Run(mode.String(), func(t *testing.T) {
			m := &memDriver{}
			p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{m}, logging.PipelineOptions{Mode: mode, MaxBufferSize: 64 << 20})
			var wg sync.WaitGroup
			for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
				pr, pw := io.Pipe()
				p.ReadFrom(s, pr)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 500 {
						pw.Write([]byte("line\n"))
					}
					pw.Close()
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 100 {
					p.Reopen()
					p.WriteChunk(logging.Stderr, []byte("direct\n"))
					_ = p.Stats()
				}
			}()
			wg.Wait()
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if n := len(m.lines()); n != 1100 {
				t.Fatalf("got %d lines, want 1100", n)
			}
		})
	}
}

// TestCloseContextWithPipeHeldOpen: a daemon left behind by the container
// keeps the pipe's write end open; CloseContext still returns once its
// context is done, with what was in the pipe logged.
func TestCloseContextWithPipeHeldOpen(t *testing.T) {
	m := &memDriver{}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{m}, logging.PipelineOptions{})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p.ReadFrom(logging.Stdout, r)
	w.Write([]byte("last words\n"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.CloseContext(ctx); err != nil {
		t.Fatal(err)
	}
	if got := m.lines(); len(got) != 1 || got[0] != "last words" {
		t.Fatalf("got %q", got)
	}
	if st := p.Stats(); st.ReadErrors != 0 {
		t.Fatalf("a deadline counted as a read error: %+v", st)
	}
}

// TestCloseContextGivesUpOnAStuckDriver: a driver that never returns must
// not keep the monitor from reporting the exit, in either mode.
func TestCloseContextGivesUpOnAStuckDriver(t *testing.T) {
	for _, mode := range []logging.Mode{logging.Blocking, logging.NonBlocking} {
		t.Run(mode.String(), func(t *testing.T) {
			stuck := &memDriver{block: make(chan struct{})}
			defer close(stuck.block) // let the abandoned goroutine go at the end
			p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{stuck}, logging.PipelineOptions{Mode: mode})
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			p.ReadFrom(logging.Stdout, r)
			w.Write([]byte("stuck\n"))
			w.Close()
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			err = p.CloseContext(ctx)
			if !errdefs.IsUnavailable(err) {
				t.Fatalf("CloseContext = %v, want Unavailable", err)
			}
		})
	}
}
