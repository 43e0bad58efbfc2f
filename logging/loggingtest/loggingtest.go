// Package loggingtest is a conformance suite for logging.Driver
// implementations, in the manner of testing/slogtest: every driver's tests
// call Run with a constructor and a way to read back what reached the
// destination, and the suite checks the contract of package logging.
//
//	func TestConformance(t *testing.T) {
//		loggingtest.Run(t, func(t *testing.T) (logging.Driver, func() []logging.Record) {
//			path := filepath.Join(t.TempDir(), "ctr.log")
//			d, err := k8sfile.New(k8sfile.Options{Path: path})
//			if err != nil {
//				t.Fatal(err)
//			}
//			return d, func() []logging.Record { return readBack(t, path) }
//		})
//	}
//
// The result function returns the records the destination holds, oldest
// first, with Stream, Line and Partial set (Time and Meta are optional). It
// is called after Close, and called again (for up to Options.Wait) while
// what it returns is incomplete, so a driver that delivers asynchronously
// (a socket, a plugin) can be tested as it is. A destination that joins
// partial records into lines, or splits lines, passes: the suite compares
// the byte stream of each stream, where a full record stands for its line
// followed by "\n".
package loggingtest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
)

// Options adapt the suite to a destination's limits.
type Options struct {
	// Wait is how long the result function is polled for the full
	// expected output after Close; default 5s.
	Wait time.Duration
	// ASCIIOnly skips the cases with control bytes, invalid UTF-8 and
	// non-ASCII text, for destinations that cannot carry them (syslog
	// over RFC 3164). Use only when the protocol forces it.
	ASCIIOnly bool
	// MaxLine caps the long-line case; default logging.DefaultReadSize.
	MaxLine int
	// Skip names cases to skip, with the reason as the value.
	Skip map[string]string
	// ExactTime says the destination keeps each record as written, with
	// its Time: the records read back must then match the records written
	// one for one, times equal to the microsecond.
	ExactTime bool
}

// NewDriver builds a fresh driver for one case and returns a function that
// reads back what reached its destination.
type NewDriver func(t *testing.T) (logging.Driver, func() []logging.Record)

type testCase struct {
	name  string
	ascii bool // may run when Options.ASCIIOnly
	run   func(t *testing.T, d logging.Driver) []logging.Record
}

var meta = &logging.Metadata{
	ID:     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	Name:   "conformance",
	Tag:    "conformance-tag",
	Labels: map[string]string{"suite": "loggingtest"},
}

func rec(s logging.Stream, line string, partial bool) logging.Record {
	return logging.Record{Time: time.Now(), Stream: s, Line: []byte(line), Partial: partial, Meta: meta}
}

func write(t *testing.T, d logging.Driver, recs ...logging.Record) {
	t.Helper()
	for i := range recs {
		if err := d.Write(&recs[i]); err != nil {
			t.Fatalf("Write(%.40q): %v", recs[i].Line, err)
		}
	}
	if f, ok := logging.Unwrap(d).(logging.Flusher); ok {
		if err := f.Flush(); err != nil {
			t.Fatalf("Flush: %v", err)
		}
	}
}

func cases(o Options) []testCase {
	maxLine := o.MaxLine
	if maxLine <= 0 {
		maxLine = logging.DefaultReadSize
	}
	simple := func(recs ...logging.Record) func(*testing.T, logging.Driver) []logging.Record {
		return func(t *testing.T, d logging.Driver) []logging.Record {
			write(t, d, recs...)
			return recs
		}
	}
	return []testCase{
		{"lines", true, simple(rec(logging.Stdout, "hello", false), rec(logging.Stdout, "world", false))},
		{"both-streams", true, simple(rec(logging.Stdout, "out 1", false), rec(logging.Stderr, "err 1", false),
			rec(logging.Stdout, "out 2", false), rec(logging.Stderr, "err 2", false))},
		{"empty-line", true, simple(rec(logging.Stdout, "before", false), rec(logging.Stdout, "", false), rec(logging.Stdout, "after", false))},
		{"partial-then-full", true, simple(rec(logging.Stdout, "par", true), rec(logging.Stdout, "tial", false), rec(logging.Stdout, "next", false))},
		{"spaces-and-punctuation", true, simple(rec(logging.Stdout, `  {"json": "value", "n": 1} <a href="x">&amp;</a> \ back\slash  `, false))},
		{"long-line", true, simple(rec(logging.Stdout, strings.Repeat("0123456789", maxLine/10), false))},
		{"unicode", false, simple(rec(logging.Stdout, "héllo wörld ✓ 日本語 \u2028", false))},
		{"control-bytes", false, simple(rec(logging.Stdout, "tab\there\rcr \x01\x1b[31mred\x1b[0m", false))},
		{"line-not-kept", true, func(t *testing.T, d logging.Driver) []logging.Record {
			// Write may not keep Line: the pipeline reuses its buffer.
			buf := []byte("original")
			r := logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: buf, Meta: meta}
			if err := d.Write(&r); err != nil {
				t.Fatal(err)
			}
			copy(buf, "CLOBBER!")
			r2 := rec(logging.Stdout, "second", false)
			write(t, d, r2)
			r.Line = []byte("original")
			return []logging.Record{r, r2}
		}},
		{"concurrent", true, func(t *testing.T, d logging.Driver) []logging.Record {
			// Write may be called concurrently; per stream, order holds.
			const n = 200
			var want []logging.Record
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
				var recs []logging.Record
				for i := range n {
					recs = append(recs, rec(s, fmt.Sprintf("%s seq %04d", s, i), false))
				}
				want = append(want, recs...)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range recs {
						if err := d.Write(&recs[i]); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			write(t, d)
			return want
		}},
		{"reopen", true, func(t *testing.T, d logging.Driver) []logging.Record {
			a, b := rec(logging.Stdout, "before reopen", false), rec(logging.Stdout, "after reopen", false)
			write(t, d, a)
			if err := d.Reopen(); err != nil {
				t.Fatalf("Reopen: %v", err)
			}
			write(t, d, b)
			return []logging.Record{a, b}
		}},
		{"sync", true, func(t *testing.T, d logging.Driver) []logging.Record {
			a := rec(logging.Stderr, "synced", false)
			write(t, d, a)
			if s, ok := logging.Unwrap(d).(logging.Syncer); ok {
				if err := s.Sync(); err != nil {
					t.Fatalf("Sync: %v", err)
				}
			}
			return []logging.Record{a}
		}},
		{"nothing", true, func(t *testing.T, d logging.Driver) []logging.Record { return nil }},
	}
}

// Run runs the suite: each case gets a fresh driver from newDriver, writes
// records, closes the driver, and compares what the result function
// returns with what was written.
func Run(t *testing.T, newDriver NewDriver, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Wait <= 0 {
		o.Wait = 5 * time.Second
	}
	for _, tc := range cases(o) {
		t.Run(tc.name, func(t *testing.T) {
			if why, ok := o.Skip[tc.name]; ok {
				t.Skip(why)
			}
			if o.ASCIIOnly && !tc.ascii {
				t.Skip("destination carries ASCII only")
			}
			d, result := newDriver(t)
			want := tc.run(t, d)
			if err := d.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			deadline := time.Now().Add(o.Wait)
			var diff string
			for {
				got := result()
				if diff = compare(want, got); diff == "" && o.ExactTime {
					diff = compareTimes(want, got)
				}
				if diff == "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("destination differs from what was written: %s", diff)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// Stream joins records into the byte stream they stand for: each record's
// line, followed by "\n" unless the record is partial.
func Stream(recs []logging.Record, s logging.Stream) []byte {
	var b bytes.Buffer
	for _, r := range recs {
		if r.Stream != s {
			continue
		}
		b.Write(r.Line)
		if !r.Partial {
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

func compare(want, got []logging.Record) string {
	var errs []error
	for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
		w, g := Stream(want, s), Stream(got, s)
		if !bytes.Equal(w, g) {
			errs = append(errs, fmt.Errorf("%s: got %d bytes %.200q, want %d bytes %.200q", s, len(g), g, len(w), w))
		}
	}
	for _, r := range got {
		if r.Stream != logging.Stdout && r.Stream != logging.Stderr {
			errs = append(errs, fmt.Errorf("record with stream %d", r.Stream))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err.Error()
	}
	return ""
}

// ReadBack reads a k8s-file or json-file log with logging.ReadLogs, for
// result functions of file drivers.
func ReadBack(t testing.TB, src logging.Source) []logging.Record {
	t.Helper()
	var out []logging.Record
	err := logging.ReadLogs(t.Context(), logging.ReadOptions{Source: src, Tail: logging.TailAll}, func(r *logging.Record) error {
		c := *r
		c.Line = append([]byte(nil), r.Line...)
		out = append(out, c)
		return nil
	})
	if err != nil {
		t.Fatalf("ReadLogs %s: %v", src.Path, err)
	}
	return out
}

// SplitStream turns the bytes of one stream back into records: one full
// record per line, and a partial one for a tail without newline. It is for
// destinations that carry raw bytes (passthrough).
func SplitStream(s logging.Stream, data []byte) []logging.Record {
	var out []logging.Record
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			out = append(out, logging.Record{Stream: s, Line: data, Partial: true})
			break
		}
		out = append(out, logging.Record{Stream: s, Line: data[:i]})
		data = data[i+1:]
	}
	return out
}

func compareTimes(want, got []logging.Record) string {
	for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
		var w, g []logging.Record
		for _, r := range want {
			if r.Stream == s {
				w = append(w, r)
			}
		}
		for _, r := range got {
			if r.Stream == s {
				g = append(g, r)
			}
		}
		if len(w) != len(g) {
			return fmt.Sprintf("%s: %d records read back, %d written", s, len(g), len(w))
		}
		for i := range w {
			if d := w[i].Time.Sub(g[i].Time); d > time.Microsecond || d < -time.Microsecond || w[i].Partial != g[i].Partial {
				return fmt.Sprintf("%s record %d: time %s partial %v read back, %s %v written",
					s, i, g[i].Time.Format(time.RFC3339Nano), g[i].Partial, w[i].Time.Format(time.RFC3339Nano), w[i].Partial)
			}
		}
	}
	return ""
}
