package logging_test

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
)

// memDriver records what it is given.
type memDriver struct {
	mu      sync.Mutex
	recs    []logging.Record
	fail    error
	block   chan struct{}
	closed  bool
	flushes int
}

func (m *memDriver) Write(r *logging.Record) error {
	if m.block != nil {
		<-m.block
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	c := *r
	c.Line = append([]byte(nil), r.Line...)
	m.recs = append(m.recs, c)
	return nil
}
func (m *memDriver) Reopen() error { return nil }
func (m *memDriver) Close() error  { m.mu.Lock(); m.closed = true; m.mu.Unlock(); return nil }
func (m *memDriver) Flush() error  { m.mu.Lock(); m.flushes++; m.mu.Unlock(); return nil }

func (m *memDriver) lines() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		s := string(r.Line)
		if r.Partial {
			s += "<P>"
		}
		out = append(out, s)
	}
	return out
}

// chunkReader returns its chunks one per Read.
type chunkReader struct{ chunks []string }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks[0] = c.chunks[0][n:]
	if c.chunks[0] == "" {
		c.chunks = c.chunks[1:]
	}
	return n, nil
}

func TestPipelineCutting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		chunks []string
		want   []string
	}{
		{"full lines", []string{"a\nb\n"}, []string{"a", "b"}},
		{"tail is partial", []string{"a\nb"}, []string{"a", "b<P>"}},
		{"straddling read", []string{"ab", "c\n"}, []string{"ab<P>", "c"}},
		{"empty line", []string{"\n\n"}, []string{"", ""}},
		{"cr kept", []string{"\r\n"}, []string{"\r"}},
		{"long line split at 8192", []string{strings.Repeat("x", 20000) + "\n"},
			[]string{strings.Repeat("x", 8192) + "<P>", strings.Repeat("x", 8192) + "<P>", strings.Repeat("x", 3616)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &memDriver{}
			p := logging.NewPipeline(logging.Metadata{ID: "c1"}, []logging.Driver{m}, logging.PipelineOptions{})
			p.ReadFrom(logging.Stdout, &chunkReader{chunks: append([]string(nil), tc.chunks...)})
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			if got := m.lines(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %q\nwant %q", got, tc.want)
			}
			if !m.closed {
				t.Fatal("driver not closed")
			}
		})
	}
}

func TestPipelineFanoutFailure(t *testing.T) {
	good, bad := &memDriver{}, &memDriver{fail: errors.New("boom")}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{bad, good}, logging.PipelineOptions{})
	p.WriteChunk(logging.Stdout, []byte("one\ntwo\n"))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := good.lines(); len(got) != 2 {
		t.Fatalf("good driver got %q", got)
	}
	st := p.Stats()
	if st.WriteError.Lines != 2 || st.Drivers[0].Errors.Lines != 2 || st.Drivers[0].LastError != "boom" {
		t.Fatalf("stats %+v", st)
	}
	if st.Written.Lines != 2 || st.Read.Lines != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPipelineFilters(t *testing.T) {
	m := &memDriver{}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{m}, logging.PipelineOptions{
		Drop:   []*regexp.Regexp{regexp.MustCompile(`^DEBUG`)},
		Redact: []logging.Redaction{{Pattern: regexp.MustCompile(`token=\w+`), Replacement: []byte("token=[REDACTED]")}},
	})
	p.WriteChunk(logging.Stderr, []byte("DEBUG x\nlogin token=abc123 ok\nplain\n"))
	p.Close()
	want := []string{"login token=[REDACTED] ok", "plain"}
	if got := m.lines(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q want %q", got, want)
	}
	st := p.Stats()
	if st.Filtered.Lines != 1 || st.Redacted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPipelineRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	m := &memDriver{}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{m}, logging.PipelineOptions{
		RateLimit: logging.RateLimit{LinesPerSec: 2},
		Now:       func() time.Time { return now },
	})
	for i := range 5 {
		p.WriteChunk(logging.Stdout, fmt.Appendf(nil, "l%d\n", i))
	}
	now = now.Add(time.Second)
	p.WriteChunk(logging.Stdout, []byte("after\n"))
	p.WriteChunk(logging.Stdout, []byte("x1\n"))
	p.WriteChunk(logging.Stdout, []byte("x2\n")) // dropped: marked at Close
	p.Close()
	want := []string{"l0", "l1", "conmon-v2: rate limit: dropped 3 lines (6 bytes)", "after", "x1",
		"conmon-v2: rate limit: dropped 1 lines (2 bytes)"}
	if got := m.lines(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	st := p.Stats()
	if st.RateLimited.Lines != 4 || st.RateLimited.Bytes != 8 || st.Markers != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPipelineNonBlockingDropsOldest(t *testing.T) {
	m := &memDriver{block: make(chan struct{})}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{m}, logging.PipelineOptions{
		Mode: logging.NonBlocking, MaxBufferSize: 8192,
	})
	line := strings.Repeat("a", 1023) // 1 KiB with the newline
	// The writer takes the first record and blocks in the driver; the rest
	// queue up to 8 KiB and then push out the oldest.
	p.WriteChunk(logging.Stdout, []byte("first\n"))
	time.Sleep(10 * time.Millisecond)
	for i := range 20 {
		p.WriteChunk(logging.Stdout, fmt.Appendf(nil, "%02d%s\n", i, line[2:]))
	}
	close(m.block)
	p.Close()
	st := p.Stats()
	got := m.lines()
	if st.BufferFull.Lines == 0 || uint64(len(got))+st.BufferFull.Lines != 21 {
		t.Fatalf("got %d lines, stats %+v", len(got), st)
	}
	if last := got[len(got)-1]; !strings.HasPrefix(last, "19") {
		t.Fatalf("newest line lost: last is %.10q", last)
	}
	if st.Written.Lines != uint64(len(got)) {
		t.Fatalf("written %d, driver got %d", st.Written.Lines, len(got))
	}
}

type panicDriver struct{}

func (panicDriver) Write(*logging.Record) error { panic("driver bug") }
func (panicDriver) Reopen() error               { panic("reopen bug") }
func (panicDriver) Close() error                { return nil }

func TestPipelineSurvivesPanickingDriver(t *testing.T) {
	good := &memDriver{}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{panicDriver{}, good}, logging.PipelineOptions{})
	p.WriteChunk(logging.Stdout, []byte("a\nb\n"))
	if err := p.Reopen(); err == nil || !strings.Contains(err.Error(), "reopen bug") {
		t.Fatalf("reopen: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if len(good.lines()) != 2 {
		t.Fatalf("good driver got %q", good.lines())
	}
	if st := p.Stats(); st.Drivers[0].Errors.Lines != 2 || !strings.Contains(st.Drivers[0].LastError, "panic") {
		t.Fatalf("stats %+v", st)
	}
}
