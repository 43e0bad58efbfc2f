// Package logging is conmon-v2's log subsystem: one Driver interface, one
// Registry that maps driver names to constructors, and a Pipeline that reads
// a container's output, cuts it into Records and fans them out to drivers.
//
// Every front end (the containerd shim, the conmon drop-in, conmonctl) builds
// its container's logs through this package; a driver is written once.
package logging

import (
	"context"
	"time"
)

// Stream names the container stream a record was read from.
type Stream uint8

const (
	// Stdout is the container's standard output (and its terminal, if any).
	Stdout Stream = 1
	// Stderr is the container's standard error.
	Stderr Stream = 2
)

// String returns "stdout" or "stderr", the words of the CRI log format.
func (s Stream) String() string {
	switch s {
	case Stdout:
		return "stdout"
	case Stderr:
		return "stderr"
	}
	return "unknown"
}

// Metadata describes the container whose output a driver receives. It is
// fixed for the life of a driver.
type Metadata struct {
	ID        string            // full container ID
	Name      string            // human name (Podman's --name, CRI's container name)
	Namespace string            // containerd namespace, if any
	Tag       string            // expanded tag (conmon's --log-tag, syslog/journald identifier)
	Labels    map[string]string // extra fields (conmon's --log-label, annotations); read-only
}

// Record is one piece of container output: a full line without its
// newline, or, when Partial is set, a piece that the next record continues
// (a line longer than the read buffer, or the tail of a read that ended
// without a newline, as conmon writes it).
//
// Line is only valid during the Write call: a driver that keeps it must copy.
type Record struct {
	Time    time.Time
	Stream  Stream
	Line    []byte
	Partial bool
	Meta    *Metadata // never nil when delivered by a Pipeline
}

// Driver is a log destination.
//
// Write may be called concurrently with itself and with Reopen; a driver
// serialises as it needs. Close is called once, after the last Write.
// A Write error is counted and reported by the pipeline (the record counts
// as failed for that driver), unless it wraps ErrHeld: the driver kept the
// record and accounts for its fate itself (see Held); it never stops the
// container or the other drivers. Write must not keep r or r.Line after it
// returns.
//
// A Pipeline writes all the records of one read with the same Time, in
// order, then calls Flush on drivers that implement Flusher. Optional
// capabilities, discovered by type assertion: Syncer, Flusher, Loser,
// Readable, ReadWriter.
type Driver interface {
	Write(r *Record) error
	// Reopen reopens the driver's destination (a rotated or deleted file,
	// kubelet's ReopenContainerLog, conmon's ctl message 2). Drivers with
	// nothing to reopen return nil.
	Reopen() error
	Close() error
}

// Syncer is implemented by drivers that can force what they wrote to
// stable storage; the pipeline calls Sync before an exit is reported.
type Syncer interface {
	Sync() error
}

// Flusher is implemented by drivers that batch writes in memory. A Pipeline
// calls Flush after it has written every record of a read that emptied the
// pipe, and at most FlushDelay after the records of a read that filled its
// buffer (more is then likely to follow, and batching them saves a write
// each), so that nothing stays in memory while the container is idle. Flush
// may be called concurrently with Write. A Flush error means the data is still held and
// will be retried at the next Write or Flush; data the driver had to give up
// is reported through Loser, not through errors.
type Flusher interface {
	Flush() error
}

// ReadWriter is implemented by drivers that can take every record of one
// read at once, without a Record per line (the file drivers: their cost per
// line is what limits a monitor at short lines). WriteRead must write
// exactly what Write would for the records the pipeline cuts from chunk: a
// Record for each segment ending in '\n' (without it) and a Partial one for
// a tail without newline, all stamped t and s, in order. chunk is never
// empty and never longer than the pipeline's read size; it is only valid
// during the call. A Pipeline uses WriteRead only when no filter, redaction
// or rate limit applies and it is in Blocking mode; an error counts every
// record of chunk as failed for that driver.
type ReadWriter interface {
	WriteRead(t time.Time, s Stream, meta *Metadata, chunk []byte) error
}

// Loser is implemented by drivers that may give up data on their own after
// Write returned nil or an ErrHeld error (a retry buffer that overflowed on
// a full disk, a network driver's bounded queue). Lost returns running
// totals; a Pipeline adds them to its Stats under WriteError. A record is
// counted lost at most once and never also as a failed Write.
type Loser interface {
	Lost() (lines, bytes uint64)
}

// Source names a log that ReadLogs can read back.
type Source struct {
	Path   string // the current file; rotated files are Path.1, Path.2, ... (maybe .gz)
	Format string // FormatK8sFile or FormatJSONFile
}

// Formats understood by ReadLogs.
const (
	FormatK8sFile  = "k8s-file"
	FormatJSONFile = "json-file"
)

// Readable is implemented by drivers whose output ReadLogs can read back
// (k8s-file, json-file). A Pipeline that has none of them gets a local cache
// (see Config.Cache) so that logs stay readable.
type Readable interface {
	LogSource() Source
}

// Info is what a driver constructor gets: the container's metadata and the
// driver's options (already validated keys are the driver's business).
type Info struct {
	Meta    Metadata
	Options map[string]string
	// Dir is a directory the driver may use for its own files when no path
	// option is given (the container's state directory).
	Dir string
}

// Factory builds a driver. It returns an error naming the offending option
// for any bad configuration; errors are classified InvalidArgument by the
// caller.
type Factory func(ctx context.Context, info Info) (Driver, error)
