package service

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

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
func reportLogErrors(f LogTapFunc, log *slog.Logger) LogTapFunc {
	if f == nil || log == nil {
		return f
	}
	return func(ctx context.Context, id, namespace string, spec *specs.Spec) (process.Tap, error) {
		tap, err := f(ctx, id, namespace, spec)
		pt, ok := tap.(*pipelineTap)
		if err != nil || !ok {
			return tap, err
		}
		return &reportingTap{pipelineTap: pt, r: &logReport{log: log.With("container", id), p: pt.p}}, nil
	}
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

// logReport remembers, per driver, what was seen at the last check.
type logReport struct {
	log  *slog.Logger
	p    *logging.Pipeline
	next atomic.Int64 // unix nanoseconds of the next check

	mu      sync.Mutex
	drivers map[string]driverReport
}

type driverReport struct {
	errors, written uint64 // lines, at the last check
	failing         bool
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
// errors make it failing, lines written without a new error make it
// writing again. final reports the totals of a driver that had errors.
// (A file driver on a full disk keeps what it could not write, up to a
// bound, and writes it once there is room: its "failed" lines are the
// writes that returned an error, its "lost" lines those it gave up.)
func (r *logReport) check(final bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.drivers == nil {
		r.drivers = map[string]driverReport{}
	}
	for _, d := range r.p.Stats().Drivers {
		prev := r.drivers[d.Name]
		cur := driverReport{errors: d.Errors.Lines, written: d.Written.Lines, failing: prev.failing}
		switch {
		case final:
			if cur.errors > 0 || d.Lost.Lines > 0 {
				r.log.Warn("container log closed after write errors", "driver", d.Name,
					"failed_lines", cur.errors, "lost_lines", d.Lost.Lines, "lost_bytes", d.Lost.Bytes, "last_error", d.LastError)
			}
		case cur.errors > prev.errors:
			if !prev.failing {
				r.log.Warn("container log: driver failing", "driver", d.Name, "error", d.LastError,
					"failed_lines", cur.errors, "lost_lines", d.Lost.Lines)
			}
			cur.failing = true
		case prev.failing && cur.written > prev.written:
			r.log.Info("container log: driver writing again", "driver", d.Name,
				"failed_lines", cur.errors, "lost_lines", d.Lost.Lines)
			cur.failing = false
		}
		r.drivers[d.Name] = cur
	}
}
