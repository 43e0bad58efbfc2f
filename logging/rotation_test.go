package logging_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
)

// seqChecker checks that "seq N" lines arrive once each, in order.
type seqChecker struct {
	next    int
	pending []byte
}

func (c *seqChecker) add(r *logging.Record) error {
	c.pending = append(c.pending, r.Line...)
	if r.Partial {
		return nil
	}
	line := c.pending
	c.pending = c.pending[:0]
	f := bytes.Fields(line)
	if len(f) < 2 || string(f[0]) != "seq" {
		return fmt.Errorf("unexpected line %q", line)
	}
	n, _ := strconv.Atoi(string(f[1]))
	if n != c.next {
		return fmt.Errorf("got seq %d, want %d (lost or duplicated)", n, c.next)
	}
	c.next++
	return nil
}

func TestRotationUnderLoadNoLossNoDuplicate(t *testing.T) {
	const total = 20000
	for _, tc := range []struct {
		name   string
		format string
		open   func(path string) (logging.Driver, error)
	}{
		{"k8s-file", logging.FormatK8sFile, func(p string) (logging.Driver, error) {
			return k8sfile.New(k8sfile.Options{Path: p, MaxSize: 32 << 10, MaxFiles: 10000})
		}},
		{"json-file", logging.FormatJSONFile, func(p string) (logging.Driver, error) {
			return jsonfile.New(jsonfile.Options{Path: p, MaxSize: 32 << 10, MaxFiles: 10000})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ctr.log")
			d, err := tc.open(path)
			if err != nil {
				t.Fatal(err)
			}
			p := logging.NewPipeline(logging.Metadata{ID: "x"}, []logging.Driver{d}, logging.PipelineOptions{})
			pr, pw := io.Pipe()
			p.ReadFrom(logging.Stdout, pr)

			// A follower reads while the log rotates under it.
			exited := make(chan struct{})
			followed := make(chan error, 1)
			var fc seqChecker
			go func() {
				followed <- logging.ReadLogs(context.Background(), logging.ReadOptions{
					Source: logging.Source{Path: path, Format: tc.format},
					Tail:   logging.TailAll, Follow: true, Done: exited, Poll: 5 * time.Millisecond,
				}, fc.add)
			}()

			// Writes of odd sizes, so lines straddle reads.
			var buf []byte
			for i := range total {
				buf = fmt.Appendf(buf, "seq %d %s\n", i, bytes.Repeat([]byte{'z'}, i%97))
				if len(buf) > 3000 {
					pw.Write(buf[:1777])
					buf = append(buf[:0], buf[1777:]...)
				}
			}
			pw.Write(buf)
			pw.Close()
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			close(exited)
			if err := <-followed; err != nil {
				t.Fatal(err)
			}
			if fc.next != total {
				t.Fatalf("follower saw %d lines, want %d", fc.next, total)
			}
			var rc seqChecker
			if err := logging.ReadLogs(context.Background(), logging.ReadOptions{
				Source: logging.Source{Path: path, Format: tc.format}, Tail: logging.TailAll,
			}, rc.add); err != nil {
				t.Fatal(err)
			}
			if rc.next != total {
				t.Fatalf("reader saw %d lines, want %d", rc.next, total)
			}
			st := p.Stats()
			if st.WriteError.Lines != 0 {
				t.Fatalf("write errors: %+v", st)
			}
		})
	}
}

func TestReadLogsTailAndSince(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctr.log")
	d, err := k8sfile.New(k8sfile.Options{Path: path, MaxSize: 200, MaxFiles: 100})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 50 {
		r := logging.Record{Time: base.Add(time.Duration(i) * time.Second), Stream: logging.Stdout, Line: fmt.Appendf(nil, "seq %d", i)}
		if i%10 == 3 {
			// one line in pieces
			r.Partial = true
			d.Write(&r)
			r.Partial = false
			r.Line = []byte(" end")
		}
		d.Write(&r)
	}
	d.Close()
	read := func(o logging.ReadOptions) []string {
		o.Source = d.LogSource()
		var out []string
		var cur string
		if err := logging.ReadLogs(context.Background(), o, func(r *logging.Record) error {
			cur += string(r.Line)
			if !r.Partial {
				out = append(out, cur)
				cur = ""
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		opts logging.ReadOptions
		want string
	}{
		{"tail 3", logging.ReadOptions{Tail: 3}, "[seq 47 seq 48 seq 49]"},
		{"tail 0", logging.ReadOptions{Tail: 0}, "[]"},
		{"tail keeps partial pieces", logging.ReadOptions{Tail: 7}, "[seq 43 end seq 44 seq 45 seq 46 seq 47 seq 48 seq 49]"},
		{"since", logging.ReadOptions{Tail: logging.TailAll, Since: base.Add(47 * time.Second)}, "[seq 47 seq 48 seq 49]"},
		{"since and until", logging.ReadOptions{Tail: logging.TailAll, Since: base.Add(10 * time.Second), Until: base.Add(12 * time.Second)}, "[seq 10 seq 11]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fmt.Sprint(read(tc.opts)); got != tc.want {
				t.Fatalf("got %s want %s", got, tc.want)
			}
		})
	}
	if got := len(read(logging.ReadOptions{Tail: logging.TailAll})); got != 50 {
		t.Fatalf("all: %d lines", got)
	}
}

// TestTailFromTheEnd: the backward seek of Tail gives what reading
// everything and keeping the last lines gives, across rotated files, plain
// and gzipped, with partial records.
func TestTailFromTheEnd(t *testing.T) {
	for _, compress := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "ctr.log")
		d, err := k8sfile.New(k8sfile.Options{Path: path, MaxSize: 300, MaxFiles: 1000, Compress: compress})
		if err != nil {
			t.Fatal(err)
		}
		var all []string
		for i := range 80 {
			r := logging.Record{Time: time.Now(), Stream: logging.Stream(1 + i%2), Line: fmt.Appendf(nil, "seq %d", i), Partial: i%7 == 3}
			d.Write(&r)
			all = append(all, fmt.Sprintf("%s %v", r.Line, r.Partial))
		}
		d.Close()
		read := func(tail int) []string {
			var out []string
			logging.ReadLogs(context.Background(), logging.ReadOptions{Source: d.LogSource(), Tail: tail}, func(r *logging.Record) error {
				out = append(out, fmt.Sprintf("%s %v", r.Line, r.Partial))
				return nil
			})
			return out
		}
		if got := read(logging.TailAll); fmt.Sprint(got) != fmt.Sprint(all) {
			t.Fatalf("all: got %d records", len(got))
		}
		for n := 0; n <= 80; n++ {
			// The expected tail: the last n full records with their pieces.
			start, fulls := len(all), 0
			for i := len(all) - 1; i >= 0; i-- {
				if strings.HasSuffix(all[i], "false") {
					if fulls == n {
						break
					}
					fulls++
				}
				start = i
			}
			if got := read(n); fmt.Sprint(got) != fmt.Sprint(all[start:]) {
				t.Fatalf("compress=%v tail %d: got %q want %q", compress, n, got, all[start:])
			}
		}
	}
}

// TestKubeletStyleReopenUnderLoad renames the log and calls Reopen while
// the container writes, as the kubelet's ReopenContainerLog does: every
// line ends up in exactly one of the files, whole.
func TestKubeletStyleReopenUnderLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctr.log")
	d, err := k8sfile.New(k8sfile.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	p := logging.NewPipeline(logging.Metadata{}, []logging.Driver{d}, logging.PipelineOptions{})
	pr, pw := io.Pipe()
	p.ReadFrom(logging.Stdout, pr)
	const total = 30000
	done := make(chan struct{})
	var rotated []string
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			time.Sleep(2 * time.Millisecond)
			name := fmt.Sprintf("%s.%04d", path, i)
			if err := os.Rename(path, name); err != nil {
				continue
			}
			rotated = append(rotated, name)
			if err := p.Reopen(); err != nil {
				t.Error(err)
			}
		}
	}()
	for i := range total {
		fmt.Fprintf(pw, "seq %d\n", i)
	}
	<-done
	pw.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	var c seqChecker
	for _, f := range append(rotated, path) {
		if err := logging.ReadLogs(context.Background(), logging.ReadOptions{
			Source: logging.Source{Path: f, Format: logging.FormatK8sFile}, Tail: logging.TailAll,
		}, c.add); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if c.next != total {
		t.Fatalf("saw %d lines, want %d", c.next, total)
	}
	t.Logf("%d reopens", len(rotated))
}

// TestFollowWakesOnWrite: with polling all but off, a follower still sees
// a new line (inotify wakes it).
func TestFollowWakesOnWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctr.log")
	d, err := k8sfile.New(k8sfile.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go logging.ReadLogs(ctx, logging.ReadOptions{Source: d.LogSource(), Tail: logging.TailAll, Follow: true, Poll: time.Hour},
		func(r *logging.Record) error { got <- string(r.Line); return nil })
	time.Sleep(50 * time.Millisecond) // let the follower start; not needed for correctness
	r := logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte("wake up")}
	d.Write(&r)
	d.Flush()
	select {
	case s := <-got:
		if s != "wake up" {
			t.Fatalf("got %q", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("follower not woken by the write")
	}
}

// TestFollowFromReady: a follower with Tail 0 skips what the log held and
// reads what is written once Ready was called, even with polling all but
// off. (conmonctl attach forwards the container's input from Ready.)
func TestFollowFromReady(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctr.log")
	d, err := k8sfile.New(k8sfile.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	write := func(line string) {
		r := logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte(line)}
		d.Write(&r)
		d.Flush()
	}
	write("before")
	got := make(chan string, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go logging.ReadLogs(ctx, logging.ReadOptions{Source: d.LogSource(), Tail: 0, Follow: true, Poll: time.Hour,
		Ready: func() { write("after ready") }},
		func(r *logging.Record) error { got <- string(r.Line); return nil })
	select {
	case s := <-got:
		if s != "after ready" {
			t.Fatalf("got %q, want the line written at Ready", s)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the line written at Ready was not read")
	}
}
