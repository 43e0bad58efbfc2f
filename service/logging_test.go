package service

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/containers/conmon-v2/logging"
)

// recordDriver keeps what the pipeline delivers.
type recordDriver struct {
	mu   sync.Mutex
	recs []string // "stream:partial:line"
}

func (d *recordDriver) Write(r *logging.Record) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.recs = append(d.recs, fmt.Sprintf("%d:%v:%d", r.Stream, r.Partial, len(r.Line)))
	return nil
}
func (d *recordDriver) Reopen() error { return nil }
func (d *recordDriver) Close() error  { return nil }

// The tap cuts what the copiers write as the pipeline cuts its own reads:
// no record is longer than logging.DefaultReadSize.
func TestPipelineTapRecords(t *testing.T) {
	long := strings.Repeat("x", 2*logging.DefaultReadSize+100)
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{"lines", []string{"a\nbb\n"}, []string{"1:false:1", "1:false:2"}},
		{"partial then end", []string{"ab", "c\n"}, []string{"1:true:2", "1:false:1"}},
		{"long line in one write", []string{long + "\n"}, []string{
			fmt.Sprintf("1:true:%d", logging.DefaultReadSize),
			fmt.Sprintf("1:true:%d", logging.DefaultReadSize),
			"1:false:100",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &recordDriver{}
			tap := &pipelineTap{p: logging.NewPipeline(logging.Metadata{ID: "c"}, []logging.Driver{d}, logging.PipelineOptions{})}
			w := tap.Writer(logging.Stdout)
			for _, s := range tc.writes {
				if n, err := w.Write([]byte(s)); err != nil || n != len(s) {
					t.Fatalf("Write: %d, %v", n, err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := tap.Close(); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(d.recs, " "); got != strings.Join(tc.want, " ") {
				t.Fatalf("records %q, want %q", got, strings.Join(tc.want, " "))
			}
			if _, err := w.Write([]byte("late\n")); err == nil {
				t.Fatal("a write after Close succeeded")
			}
		})
	}
}
