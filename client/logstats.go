package client

import (
	"context"
	"time"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
)

// Topics of the events a task's log drivers cause. Their Event.Decode
// gives a *conmonapi.LogDriverEvent (container id, driver, error, and the
// driver's failed and lost totals at the transition). One event is sent
// per transition: when a driver starts failing, and when it writes again.
const (
	TopicLogFailing   = "/conmon-v2/log/failing"
	TopicLogRecovered = "/conmon-v2/log/recovered"
)

// LogCounter counts log records (a partial line counts as one) and their
// bytes.
type LogCounter struct {
	Lines uint64
	Bytes uint64
}

// LogStats are a task's logging pipeline totals since the pipeline was
// opened (at create, or again after a live upgrade of its shim).
type LogStats struct {
	ID string
	// Pipeline is false when the task has no logging pipeline (no log
	// driver: its output goes only to its FIFOs); every counter is then 0.
	Pipeline bool
	// Read was cut from the output; Written handed to the drivers.
	Read, Written LogCounter
	// Dropped before the drivers: by a drop pattern, by the rate limit,
	// by the non-blocking mode's full buffer. Redacted records were
	// changed by a redaction.
	Filtered, RateLimited, BufferFull LogCounter
	Redacted                          uint64
	// WriteError sums, over the drivers, the records they failed to write
	// and those they reported lost (a record a file driver failed to
	// write, held, and later gave up counts twice).
	WriteError LogCounter
	ReadErrors uint64
	Drivers    []LogDriverStats
}

// LogDriverStats are one log driver's totals.
type LogDriverStats struct {
	Name string
	// Written were accepted, Errors failed to be written, Lost were given
	// up after being accepted or failing. A file driver holds what it
	// failed to write (up to 1 MiB) and writes it once it can: only its
	// Lost records are gone. A driver that holds nothing (journald,
	// syslog) loses its failed records, and its Lost stays 0.
	Written, Errors, Lost LogCounter
	// LastError is the driver's latest error, noticed at LastErrorAt ("",
	// zero: none).
	LastError   string
	LastErrorAt time.Time
	// Failing is true from a write error until the driver writes again.
	Failing bool
	// Failures counts the driver's failed calls (write, flush, reopen,
	// sync, close), those whose records it held for a retry included.
	Failures uint64
}

// Dropped returns what the pipeline dropped before any driver saw it:
// records over the rate limit and those a full non-blocking buffer
// dropped (filtered records are not counted: they were dropped on
// purpose). What a driver failed to write or lost is in Drivers.
func (l LogStats) Dropped() LogCounter {
	return LogCounter{
		Lines: l.RateLimited.Lines + l.BufferFull.Lines,
		Bytes: l.RateLimited.Bytes + l.BufferFull.Bytes,
	}
}

// LogStats returns the totals of task id's logging pipeline, with each
// driver's failures.
func (s *Shim) LogStats(ctx context.Context, id string) (LogStats, error) {
	r, err := s.monitor.LogStats(ctx, &conmonapi.LogStatsRequest{Id: id})
	if err != nil {
		return LogStats{}, native("log stats", s.address, err)
	}
	out := LogStats{
		ID: r.GetId(), Pipeline: r.GetPipeline(),
		Read: logCounter(r.GetRead()), Written: logCounter(r.GetWritten()),
		Filtered: logCounter(r.GetFiltered()), RateLimited: logCounter(r.GetRateLimited()),
		BufferFull: logCounter(r.GetBufferFull()), Redacted: r.GetRedacted(),
		WriteError: logCounter(r.GetWriteError()), ReadErrors: r.GetReadErrors(),
	}
	for _, d := range r.GetDrivers() {
		out.Drivers = append(out.Drivers, LogDriverStats{
			Name: d.GetName(), Written: logCounter(d.GetWritten()), Errors: logCounter(d.GetErrors()),
			Lost: logCounter(d.GetLost()), LastError: d.GetLastError(), LastErrorAt: unixNano(d.GetLastErrorAt()),
			Failing: d.GetFailing(), Failures: d.GetFailures(),
		})
	}
	return out, nil
}

func logCounter(c *conmonapi.LogCounter) LogCounter {
	return LogCounter{Lines: c.GetLines(), Bytes: c.GetBytes()}
}
