package service

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/process"
)

// logReportInterval is how often, at most, a container's log pipeline is
// looked at for new write errors while its output flows.
const logReportInterval = time.Second

// reportLogErrors makes the logging pipelines that f gives report their
// drivers' failures to log (the daemon's own log, which containerd keeps):
// a warning when a driver starts failing (a full disk, a lost log
// server), with its error and what it has lost so far; a notice when it
// writes again; and the totals when the container's log is closed. A
// driver's write errors otherwise show only in the pipeline's Stats, which
// nobody asks for in the shim. The pipeline is looked at after a write of
// the container's output, at most once a second: an idle container costs
// nothing.
//
// With reg, each report is also kept by container id, for LogStats, and
// publishes the events TopicLogFailing and TopicLogRecovered on the
// same transitions (once each, never per failed write).
func reportLogErrors(f LogTapFunc, log *slog.Logger, reg *logReports) LogTapFunc {
	if f == nil || log == nil {
		return f
	}
	return func(ctx context.Context, id, namespace string, spec *specs.Spec) (process.Tap, error) {
		tap, err := f(ctx, id, namespace, spec)
		pt, ok := tap.(*pipelineTap)
		if err != nil || !ok {
			return tap, err
		}
		r := &logReport{log: log.With("container", id), p: pt.p, id: id}
		if reg != nil {
			r.publish = reg.publish
			reg.add(id, r)
		}
		return &reportingTap{pipelineTap: pt, r: r}, nil
	}
}

// Topics of the events a container's log drivers cause; their payload is
// a *conmonapi.LogDriverEvent.
const (
	TopicLogFailing   = "/conmon-v2/log/failing"
	TopicLogRecovered = "/conmon-v2/log/recovered"
)

// logReports holds the log report of each container that has a logging
// pipeline, from its tap's creation until the task is deleted (the
// counters stay readable after the container exits).
type logReports struct {
	publish func(topic string, msg proto.Message) // may be nil

	mu   sync.Mutex
	byID map[string]*logReport
}

func (l *logReports) add(id string, r *logReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byID == nil {
		l.byID = map[string]*logReport{}
	}
	l.byID[id] = r
}

func (l *logReports) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.byID, id)
}

func (l *logReports) get(id string) *logReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.byID[id]
}

// LogDriverStats are one log driver's totals with what the shim noticed
// of its failures.
type LogDriverStats struct {
	logging.DriverStats
	// Failing is true from a write error until the driver writes again
	// without a new one.
	Failing bool
	// LastErrorAt is when the shim noticed LastError (at most about a
	// second after the write that failed); zero if none.
	LastErrorAt time.Time
}

// LogStats are a container's logging pipeline totals (Pipeline false: it
// has none, and the rest is zero).
type LogStats struct {
	ID       string
	Pipeline bool
	// Stats are the pipeline's counters; Drivers repeats Stats.Drivers,
	// in the same order, with Failing and LastErrorAt.
	Stats   logging.Stats
	Drivers []LogDriverStats
}

// LogStats returns the totals of the logging pipeline of task id, read
// now (a driver's failure or recovery is also reported, to the log and as
// an event, by this call if no write did yet). The error is NotFound when
// the service holds no such task.
func (s *Service) LogStats(ctx context.Context, id string) (LogStats, error) {
	if id == "" {
		return LogStats{}, fmt.Errorf("log stats: a task id is required: %w", errdefs.ErrInvalidArgument)
	}
	if r := s.logs.get(id); r != nil {
		return r.stats(), nil
	}
	if _, _, err := s.lockTask(id, ""); err != nil {
		return LogStats{}, fmt.Errorf("log stats: %w", err)
	}
	s.mu.Unlock()
	return LogStats{ID: id}, nil
}

type reportingTap struct {
	*pipelineTap
	r *logReport
}

func (t *reportingTap) Writer(s logging.Stream) io.WriteCloser {
	return reportingWriter{WriteCloser: t.pipelineTap.Writer(s), r: t.r}
}

func (t *reportingTap) Close() error {
	err := t.pipelineTap.Close()
	t.r.check(true)
	return err
}

type reportingWriter struct {
	io.WriteCloser
	r *logReport
}

func (w reportingWriter) Write(b []byte) (int, error) {
	n, err := w.WriteCloser.Write(b)
	w.r.maybeCheck()
	return n, err
}

// LogFile is process.LogFiler, passed through from the tap's writer
// (tapWriter.LogFile): without it the keeper's journal would not know
// that the pipeline appends to a file, would mark a write done only after
// it returned (and after maybeCheck), and a crash in between would have
// the next daemon write the batch to the file a second time.
func (w reportingWriter) LogFile() string {
	if f, ok := w.WriteCloser.(process.LogFiler); ok {
		return f.LogFile()
	}
	return ""
}

// logReport remembers, per driver, what was seen at the last check.
type logReport struct {
	log     *slog.Logger
	p       *logging.Pipeline
	id      string
	publish func(topic string, msg proto.Message) // may be nil
	next    atomic.Int64                          // unix nanoseconds of the next check

	mu      sync.Mutex
	drivers map[string]driverReport
	last    logging.Stats // at the last check
}

type driverReport struct {
	errors, written, lost uint64 // lines, at the last check
	failures              uint64 // failed calls, at the last check
	failing               bool
	lastError             string
	lastErrorAt           time.Time
}

// stats checks the pipeline now and returns its totals.
func (r *logReport) stats() LogStats {
	r.check(false)
	r.mu.Lock()
	defer r.mu.Unlock()
	out := LogStats{ID: r.id, Pipeline: true, Stats: r.last}
	for _, d := range r.last.Drivers {
		dr := r.drivers[d.Name]
		out.Drivers = append(out.Drivers, LogDriverStats{DriverStats: d, Failing: dr.failing, LastErrorAt: dr.lastErrorAt})
	}
	return out
}

// event publishes a driver's transition, if r has a publisher.
func (r *logReport) event(topic string, d logging.DriverStats) {
	if r.publish == nil {
		return
	}
	r.publish(topic, &conmonapi.LogDriverEvent{
		ContainerId: r.id,
		Driver:      d.Name,
		Error:       d.LastError,
		Errors:      &conmonapi.LogCounter{Lines: d.Errors.Lines, Bytes: d.Errors.Bytes},
		Lost:        &conmonapi.LogCounter{Lines: d.Lost.Lines, Bytes: d.Lost.Bytes},
	})
}

func (r *logReport) maybeCheck() {
	now := time.Now().UnixNano()
	next := r.next.Load()
	if now < next || !r.next.CompareAndSwap(next, now+int64(logReportInterval)) {
		return
	}
	r.check(false)
}

// check compares each driver's counts with the last check: new write
// errors (or lost lines, or a new error text) make it failing, lines
// written without a new error make it writing again; each transition is
// logged and published once. final reports the totals of a driver that had errors.
// (A file driver on a full disk keeps what it could not write, up to a
// bound, and writes it once there is room: its "failed" lines are the
// records it refused, its "lost" lines those it gave up; a record it held
// and then gave up is lost, not failed too. Its failed writes and flushes
// still count as new errors, through DriverStats.Failures, so it is not
// taken for writing again while it only holds lines.)
func (r *logReport) check(final bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.drivers == nil {
		r.drivers = map[string]driverReport{}
	}
	r.last = r.p.Stats()
	now := time.Now()
	for _, d := range r.last.Drivers {
		prev := r.drivers[d.Name]
		cur := driverReport{errors: d.Errors.Lines, written: d.Written.Lines, lost: d.Lost.Lines,
			failures: d.Failures, failing: prev.failing, lastError: prev.lastError, lastErrorAt: prev.lastErrorAt}
		// A new error: a failed call (a write refused or held, a flush
		// whose data is still held), lines given up (a retry buffer that
		// overflowed), or another error text.
		newError := cur.failures > prev.failures || cur.errors > prev.errors || cur.lost > prev.lost ||
			(d.LastError != "" && d.LastError != prev.lastError)
		if newError && d.LastError != "" {
			cur.lastError, cur.lastErrorAt = d.LastError, now
		}
		// The transitions are looked for at the final check too: output
		// that failed within a second before the container exited is
		// reported (and its driver stays failing).
		switch {
		case newError:
			if !prev.failing {
				r.log.Warn("container log: driver failing", "driver", d.Name, "error", d.LastError,
					"failed_lines", cur.errors, "lost_lines", d.Lost.Lines)
				r.event(TopicLogFailing, d)
			}
			cur.failing = true
		case prev.failing && cur.written > prev.written:
			r.log.Info("container log: driver writing again", "driver", d.Name,
				"failed_lines", cur.errors, "lost_lines", d.Lost.Lines)
			r.event(TopicLogRecovered, d)
			cur.failing = false
		}
		if final && (cur.errors > 0 || d.Lost.Lines > 0) {
			r.log.Warn("container log closed after write errors", "driver", d.Name,
				"failed_lines", cur.errors, "lost_lines", d.Lost.Lines, "lost_bytes", d.Lost.Bytes, "last_error", d.LastError)
		}
		r.drivers[d.Name] = cur
	}
}
