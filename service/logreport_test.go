package service

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// flakyDriver fails every Write while full is set.
type flakyDriver struct{ full atomic.Bool }

func (d *flakyDriver) Write(*logging.Record) error {
	if d.full.Load() {
		return errors.New("write k8s.log: no space left on device")
	}
	return nil
}
func (d *flakyDriver) Reopen() error { return nil }
func (d *flakyDriver) Close() error  { return nil }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A driver that starts failing is reported once, with its error; once it
// writes again that is reported; the totals come when the log is closed.
func TestReportLogErrors(t *testing.T) {
	d := &flakyDriver{}
	var out lockedBuffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	f := reportLogErrors(func(context.Context, string, string, *specs.Spec) (process.Tap, error) {
		return &pipelineTap{p: logging.NewPipeline(logging.Metadata{ID: "c1"}, []logging.Driver{d}, logging.PipelineOptions{})}, nil
	}, log)
	tap, err := f(context.Background(), "c1", "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	rt := tap.(*reportingTap)
	w := tap.Writer(logging.Stdout)
	write := func(s string) {
		t.Helper()
		if _, err := w.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
		rt.r.check(false) // what the next write after a second does
	}
	write("ok\n")
	d.full.Store(true)
	write("lost 1\n")
	write("lost 2\nlost 3\n")
	d.full.Store(false)
	write("back\n")
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		`level=WARN msg="container log: driver failing" container=c1 driver=`,
		`error="write k8s.log: no space left on device" failed_lines=1`,
		`level=INFO msg="container log: driver writing again" container=c1`,
		`failed_lines=3`,
		`level=WARN msg="container log closed after write errors" container=c1`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q:\n%s", want, got)
		}
	}
	if n := strings.Count(got, "driver failing"); n != 1 {
		t.Errorf("failing reported %d times, want once:\n%s", n, got)
	}
}
