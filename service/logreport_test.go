package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	taskv2 "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/internal/testutil"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// flakyDriver fails every Write while full is set; with hold, it keeps the
// records it could not write (logging.ErrHeld), as a file driver does.
type flakyDriver struct {
	full atomic.Bool
	hold bool
}

func (d *flakyDriver) Write(*logging.Record) error {
	if d.full.Load() {
		err := errors.New("write k8s.log: no space left on device")
		if d.hold {
			return logging.Held(err)
		}
		return err
	}
	return nil
}
func (d *flakyDriver) Reopen() error { return nil }
func (d *flakyDriver) Close() error  { return nil }

// reportedTap opens, through reportLogErrors, the log tap of container
// c1 whose pipeline writes to d; the report logs to log and publishes to
// reg's publisher (reg may be nil).
func reportedTap(t *testing.T, d logging.Driver, log *slog.Logger, reg *logReports) process.Tap {
	t.Helper()
	f := reportLogErrors(func(context.Context, string, string, *specs.Spec) (process.Tap, error) {
		return &pipelineTap{p: logging.NewPipeline(logging.Metadata{ID: "c1"}, []logging.Driver{d}, logging.PipelineOptions{})}, nil
	}, log, reg)
	tap, err := f(context.Background(), "c1", "ns", nil)
	if err != nil {
		t.Fatal(err)
	}
	return tap
}

// A driver that starts failing is reported once, with its error; once it
// writes again that is reported; the totals come when the log is closed.
func TestReportLogErrors(t *testing.T) {
	d := &flakyDriver{}
	var out testutil.SyncBuffer
	tap := reportedTap(t, d, slog.New(slog.NewTextHandler(&out, nil)), nil)
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

// A driver's transitions are published once each (never per failed
// write), and LogStats reports its counters, failing state and last error.
func TestLogReportEventsAndStats(t *testing.T) {
	type step struct {
		full    bool
		write   string
		events  []string // topics published by this step
		failing bool
	}
	tests := []struct {
		name       string
		hold       bool // the driver keeps what it could not write
		steps      []step
		wantErrors uint64
	}{
		{
			name: "fails once, recovers once",
			steps: []step{
				{write: "ok\n"},
				{full: true, write: "lost 1\n", events: []string{TopicLogFailing}, failing: true},
				{full: true, write: "lost 2\nlost 3\n", failing: true},
				{write: "back\n", events: []string{TopicLogRecovered}},
				{write: "more\n"},
			},
			wantErrors: 3,
		},
		{
			name: "fails twice",
			steps: []step{
				{full: true, write: "a\n", events: []string{TopicLogFailing}, failing: true},
				{write: "b\n", events: []string{TopicLogRecovered}},
				{full: true, write: "c\n", events: []string{TopicLogFailing}, failing: true},
			},
			wantErrors: 2,
		},
		{
			// Held records count as accepted, not failed: the driver
			// stays failing while its writes fail, though its written
			// count grows.
			name: "holds while failing",
			hold: true,
			steps: []step{
				{write: "ok\n"},
				{full: true, write: "held 1\n", events: []string{TopicLogFailing}, failing: true},
				{full: true, write: "held 2\nheld 3\n", failing: true},
				{write: "back\n", events: []string{TopicLogRecovered}},
			},
		},
		{
			name:  "never fails",
			steps: []step{{write: "a\n"}, {write: "b\nc\n"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &flakyDriver{hold: tt.hold}
			var mu sync.Mutex
			var got []*conmonapi.LogDriverEvent
			var topics []string
			reg := &logReports{publish: func(topic string, msg proto.Message) {
				mu.Lock()
				defer mu.Unlock()
				topics = append(topics, topic)
				got = append(got, msg.(*conmonapi.LogDriverEvent))
			}}
			tap := reportedTap(t, d, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
			w := tap.Writer(logging.Stdout)
			r := reg.get("c1")
			if r == nil {
				t.Fatal("no report registered for c1")
			}
			for i, s := range tt.steps {
				d.full.Store(s.full)
				mu.Lock()
				before := len(topics)
				mu.Unlock()
				if _, err := w.Write([]byte(s.write)); err != nil { // may check (the first one does)
					t.Fatal(err)
				}
				st := r.stats() // checks now, as a write a second later would
				mu.Lock()
				step := append([]string(nil), topics[before:]...)
				mu.Unlock()
				if strings.Join(step, ",") != strings.Join(s.events, ",") {
					t.Errorf("step %d: events %q, want %q", i, step, s.events)
				}
				if len(st.Drivers) != 1 || st.Drivers[0].Failing != s.failing {
					t.Fatalf("step %d: drivers %+v, want failing=%v", i, st.Drivers, s.failing)
				}
			}
			st := r.stats()
			ds := st.Drivers[0]
			if !st.Pipeline || st.ID != "c1" || ds.Errors.Lines != tt.wantErrors || st.Stats.WriteError.Lines != tt.wantErrors {
				t.Errorf("stats %+v, want pipeline c1 with %d failed lines", st, tt.wantErrors)
			}
			if failed := tt.wantErrors > 0 || tt.hold; failed {
				if !strings.Contains(ds.LastError, "no space left on device") || ds.LastErrorAt.IsZero() {
					t.Errorf("last error %q at %v", ds.LastError, ds.LastErrorAt)
				}
				mu.Lock()
				ev := got[0]
				mu.Unlock()
				if ev.GetContainerId() != "c1" || ev.GetDriver() != ds.Name || !strings.Contains(ev.GetError(), "no space left") || ev.GetErrors().GetLines() != min(tt.wantErrors, 1) {
					t.Errorf("failing event %v", ev)
				}
			} else if ds.LastError != "" || !ds.LastErrorAt.IsZero() {
				t.Errorf("last error %q at %v, want none", ds.LastError, ds.LastErrorAt)
			}
			if err := tap.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// LogStats answers NotFound for an unknown task, pipeline false for a task
// without one, and forgets a task's report when the task is deleted.
func TestServiceLogStats(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	if _, err := h.s.LogStats(ctx, ""); !errdefs.IsInvalidArgument(err) {
		t.Errorf("empty id: %v, want InvalidArgument", err)
	}
	if _, err := h.s.LogStats(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("unknown task: %v, want NotFound", err)
	}
	h.create(t, "c1")
	st, err := h.s.LogStats(ctx, "c1")
	if err != nil || st.Pipeline || st.ID != "c1" {
		t.Fatalf("task without pipeline: %+v, %v", st, err)
	}
	p := logging.NewPipeline(logging.Metadata{ID: "c1"}, []logging.Driver{&flakyDriver{}}, logging.PipelineOptions{})
	defer p.Close()
	h.s.logs.add("c1", &logReport{log: slog.New(slog.NewTextHandler(io.Discard, nil)), p: p, id: "c1"})
	if st, err = h.s.LogStats(ctx, "c1"); err != nil || !st.Pipeline || len(st.Drivers) != 1 {
		t.Fatalf("task with pipeline: %+v, %v", st, err)
	}
	if _, err := h.s.Delete(ctx, &taskv2.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.s.LogStats(ctx, "c1"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted task: %v, want NotFound", err)
	}
}

// Output that failed within a second before the container's log closed
// (no check in between) is still published, by the close's check, and
// the driver is left failing.
func TestLogReportFailingAtClose(t *testing.T) {
	d := &flakyDriver{}
	var mu sync.Mutex
	var topics []string
	reg := &logReports{publish: func(topic string, _ proto.Message) {
		mu.Lock()
		defer mu.Unlock()
		topics = append(topics, topic)
	}}
	tap := reportedTap(t, d, slog.New(slog.NewTextHandler(io.Discard, nil)), reg)
	w := tap.Writer(logging.Stdout)
	if _, err := w.Write([]byte("ok\n")); err != nil { // checks: the first write does
		t.Fatal(err)
	}
	d.full.Store(true)
	if _, err := w.Write([]byte("lost\n")); err != nil { // no check: within the second
		t.Fatal(err)
	}
	mu.Lock()
	n := len(topics)
	mu.Unlock()
	if n != 0 {
		t.Fatalf("events before close: %q", topics)
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := strings.Join(topics, ",")
	mu.Unlock()
	if got != TopicLogFailing {
		t.Errorf("events after close: %q, want one %s", got, TopicLogFailing)
	}
	st := reg.get("c1").stats()
	if !st.Drivers[0].Failing || st.Drivers[0].Errors.Lines != 1 {
		t.Errorf("after close: %+v", st.Drivers)
	}
}

// fileDriver is a driver that appends to a file of its own (readable, as
// k8s-file and json-file are); it writes nothing here.
type fileDriver struct{ flakyDriver }

func (d *fileDriver) LogSource() logging.Source {
	return logging.Source{Path: "/logs/c1.log", Format: logging.FormatK8sFile}
}

// The writer the copiers get through reportLogErrors still names the
// pipeline's log file (process.LogFiler): the keeper's journal records
// that file's size before each write and truncates a write a crash cut
// short; without it the journal marks the write done only after it
// returned, and a crash in between writes the batch twice.
func TestReportingWriterLogFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    logging.Driver
		want string
	}{
		{"file driver", &fileDriver{}, "/logs/c1.log"},
		{"no file", &flakyDriver{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tap := reportedTap(t, tc.d, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			defer tap.Close()
			w := tap.Writer(logging.Stdout)
			lf, ok := w.(process.LogFiler)
			if !ok {
				t.Fatalf("the tap's writer %T is not a process.LogFiler", w)
			}
			if got := lf.LogFile(); got != tc.want {
				t.Errorf("LogFile() = %q, want %q", got, tc.want)
			}
		})
	}
}
