// Package k8sfile is the k8s-file log driver: the CRI log format, written
// byte for byte as conmon writes it,
//
//	2026-11-28T12:00:39.739370731+00:00 stdout F a full line
//	2026-11-28T12:00:39.739948723+00:00 stdout P a piece without newline
//
// (local time with a numeric offset, never Z; one timestamp per read; F for
// a segment that ended with a newline, P for the tail of a read, which
// conmon terminates with a newline as well). On top of conmon it rotates
// with kept files, survives a full disk, batches writes and never fsyncs on
// the writer's time unless asked.
//
// Options (Info.Options): the common file options of package logging:
// path (default <Info.Dir>/ctr.log), max-size, max-files, truncate,
// compress, global-size-max, fsync, fsync-interval.
package k8sfile

import (
	"bytes"
	"context"
	"slices"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/internal/logfile"
)

// Name is the driver's registry name.
const Name = "k8s-file"

// Options configure a Driver; see package logfile for each field.
type Options = logfile.Options

// Driver writes the CRI log format. Its methods are safe for concurrent use.
type Driver struct {
	file *logfile.File
	ts   TimeCache // guarded by file's lock (Encode runs under it)
}

var (
	_ logging.Driver   = (*Driver)(nil)
	_ logging.Flusher  = (*Driver)(nil)
	_ logging.Syncer   = (*Driver)(nil)
	_ logging.Loser    = (*Driver)(nil)
	_ logging.Readable = (*Driver)(nil)

	_ logging.ReadWriter  = (*Driver)(nil)
	_ logfile.ReadEncoder = (*Driver)(nil)
)

// Factory is the registry's constructor.
func Factory(_ context.Context, info logging.Info) (logging.Driver, error) {
	o, err := logfile.FromInfo(Name, info, "ctr.log")
	if err != nil {
		return nil, err
	}
	return New(o)
}

// New opens the log file at o.Path for appending.
func New(o Options) (*Driver, error) {
	d := &Driver{ts: TimeCache{Loc: time.Local}}
	f, err := logfile.Open(o, d)
	if err != nil {
		return nil, err
	}
	d.file = f
	return d, nil
}

// Encode appends one CRI log line for r.
func (d *Driver) Encode(dst []byte, r *logging.Record) []byte {
	dst = d.ts.Append(dst, r.Time)
	if r.Stream == logging.Stderr {
		dst = append(dst, " stderr "...)
	} else {
		dst = append(dst, " stdout "...)
	}
	if r.Partial {
		dst = append(dst, "P "...)
	} else {
		dst = append(dst, "F "...)
	}
	dst = append(dst, r.Line...)
	return append(dst, '\n')
}

// EncodeRead appends the lines of every record of one read: what Encode
// appends for each, with the prefix (time, stream) formatted once, and
// one pass over the read (no Record, no append per line).
func (d *Driver) EncodeRead(dst []byte, t time.Time, s logging.Stream, chunk []byte) []byte {
	// The prefix of a full line (time, stream, "F "), in a block copied
	// whole into dst for each line: a fixed-size copy is a few vector
	// moves, where a copy of its 45 bytes would be a call to memmove.
	// The bytes after the prefix are overwritten by the line.
	var hb [prefixBlock]byte
	hdr := d.ts.Append(hb[:0], t)
	if s == logging.Stderr {
		hdr = append(hdr, " stderr F "...)
	} else {
		hdr = append(hdr, " stdout F "...)
	}
	per := len(hdr) + 1 // the prefix and a newline a partial line lacks
	if per > prefixBlock {
		return d.encodeRead(dst, hdr, chunk) // cannot happen with conmon's format
	}
	// Room for a read of lines of 64 bytes or more, and the slack of the
	// last block, is made at once; shorter lines grow dst below.
	n := len(dst)
	dst = slices.Grow(dst, len(chunk)+(len(chunk)/64+1)*per+prefixBlock)
	dst = dst[:cap(dst)]
	for len(chunk) > 0 {
		i := bytes.IndexByte(chunk, '\n')
		seg := i + 1
		if i < 0 {
			seg = len(chunk)
		}
		if len(dst)-n < prefixBlock+seg+1 {
			dst = slices.Grow(dst[:n], len(chunk)+(len(chunk)/16+1)*per+prefixBlock)
			dst = dst[:cap(dst)]
		}
		*(*[prefixBlock]byte)(dst[n:]) = hb
		n += len(hdr)
		n += copy(dst[n:], chunk[:seg])
		if i < 0 {
			dst[n-seg-2] = 'P'
			dst[n] = '\n'
			return dst[:n+1]
		}
		chunk = chunk[seg:]
	}
	return dst[:n]
}

// prefixBlock is the size of the block EncodeRead copies for each line's
// prefix: conmon's is 45 bytes.
const prefixBlock = 64

// encodeRead is EncodeRead for a prefix (hdr, ending in "F ") longer than
// prefixBlock.
func (d *Driver) encodeRead(dst, hdr, chunk []byte) []byte {
	for len(chunk) > 0 {
		dst = append(dst, hdr...)
		i := bytes.IndexByte(chunk, '\n')
		if i < 0 {
			dst[len(dst)-2] = 'P'
			dst = append(dst, chunk...)
			return append(dst, '\n')
		}
		dst = append(dst, chunk[:i+1]...)
		chunk = chunk[i+1:]
	}
	return dst
}

// WriteRead implements logging.ReadWriter.
func (d *Driver) WriteRead(t time.Time, s logging.Stream, meta *logging.Metadata, chunk []byte) error {
	return d.file.AppendRead(d, t, s, meta, chunk)
}

// Write implements logging.Driver.
func (d *Driver) Write(r *logging.Record) error { return d.file.Append(r) }

// Flush implements logging.Flusher.
func (d *Driver) Flush() error { return d.file.Flush() }

// Sync implements logging.Syncer.
func (d *Driver) Sync() error { return d.file.Sync() }

// Reopen implements logging.Driver.
func (d *Driver) Reopen() error { return d.file.Reopen() }

// Close implements logging.Driver.
func (d *Driver) Close() error { return d.file.Close() }

// Lost implements logging.Loser.
func (d *Driver) Lost() (uint64, uint64) { return d.file.Lost() }

// LogSource implements logging.Readable.
func (d *Driver) LogSource() logging.Source {
	return logging.Source{Path: d.file.Path(), Format: logging.FormatK8sFile}
}

// TimeCache formats conmon's timestamps, caching the text of the current
// second: per line only the nine digits of nanoseconds are formatted.
// Not safe for concurrent use.
type TimeCache struct {
	Loc     *time.Location // default time.Local
	sec     int64
	valid   bool
	prefix  []byte // "2006-01-02T15:04:05."
	suffix  []byte // "+07:00"
	full    []byte // the whole text of the last time formatted
	ns      int
	fullSec int64
}

// Append appends t as conmon prints it: local time, nine fraction digits,
// a numeric offset.
func (c *TimeCache) Append(dst []byte, t time.Time) []byte {
	sec := t.Unix()
	if !c.valid || sec != c.sec {
		loc := c.Loc
		if loc == nil {
			loc = time.Local
		}
		lt := t.In(loc)
		c.prefix = lt.AppendFormat(c.prefix[:0], "2006-01-02T15:04:05.")
		c.suffix = lt.AppendFormat(c.suffix[:0], "-07:00")
		c.sec, c.valid = sec, true
	}
	ns := t.Nanosecond()
	if c.full != nil && ns == c.ns && sec == c.fullSec {
		// The records of one read share their time: reuse the whole text.
		return append(dst, c.full...)
	}
	start := len(dst)
	dst = append(dst, c.prefix...)
	var digits [9]byte
	for i, v := 8, ns; i >= 0; i-- {
		digits[i] = byte('0' + v%10)
		v /= 10
	}
	dst = append(dst, digits[:]...)
	dst = append(dst, c.suffix...)
	c.full = append(c.full[:0], dst[start:]...)
	c.ns, c.fullSec = ns, sec
	return dst
}
