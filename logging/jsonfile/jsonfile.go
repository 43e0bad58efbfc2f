// Package jsonfile is the json-file log driver: Docker's line format,
//
//	{"log":"a full line\n","stream":"stdout","time":"2026-11-28T12:00:39.739370731Z"}
//
// one JSON object per record, the time in UTC (RFC 3339 with trailing zeros
// of the fraction removed, as Docker writes it), "\n" ending the log text of
// full lines and absent from partial ones. Strings are escaped as Go's
// encoding/json escapes them (HTML-safe, invalid UTF-8 replaced by U+FFFD),
// as Docker's encoder does.
//
// Options: the common file options of package logging: path (default
// <Info.Dir>/ctr.json.log), max-size, max-files, compress (gzip rotated
// files), truncate, global-size-max, fsync, fsync-interval; and attrs=true,
// which adds the container's labels to every line as Docker's "attrs"
// object (encoded once, at open).
package jsonfile

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/internal/logfile"
)

// Name is the driver's registry name.
const Name = "json-file"

// Options configure a Driver; see package logfile.
type Options = logfile.Options

// Driver writes Docker's json-file format. Its methods are safe for
// concurrent use.
type Driver struct {
	file  *logfile.File
	ts    timeCache // guarded by file's lock
	attrs []byte    // `"attrs":{...},` or nil
}

var (
	_ logging.Driver   = (*Driver)(nil)
	_ logging.Flusher  = (*Driver)(nil)
	_ logging.Syncer   = (*Driver)(nil)
	_ logging.Loser    = (*Driver)(nil)
	_ logging.Readable = (*Driver)(nil)
)

// Factory is the registry's constructor.
func Factory(_ context.Context, info logging.Info) (logging.Driver, error) {
	o, err := logfile.FromInfo(Name, info, "ctr.json.log", "attrs")
	if err != nil {
		return nil, err
	}
	var attrs map[string]string
	if v, ok := info.Options["attrs"]; ok {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("log driver %s: option attrs=%q: want true or false: %w", Name, v, errdefs.ErrInvalidArgument)
		}
		if on {
			attrs = info.Meta.Labels
		}
	}
	return New(o, attrs)
}

// New opens the log file at o.Path for appending. attrs, if not empty, is
// written in every line as Docker's "attrs" object.
func New(o Options, attrs ...map[string]string) (*Driver, error) {
	d := &Driver{}
	if len(attrs) > 0 && len(attrs[0]) > 0 {
		d.attrs = append(d.attrs, `"attrs":{`...)
		for i, k := range slices.Sorted(maps.Keys(attrs[0])) {
			if i > 0 {
				d.attrs = append(d.attrs, ',')
			}
			d.attrs = append(d.attrs, '"')
			d.attrs = AppendEscaped(d.attrs, []byte(k))
			d.attrs = append(d.attrs, `":"`...)
			d.attrs = AppendEscaped(d.attrs, []byte(attrs[0][k]))
			d.attrs = append(d.attrs, '"')
		}
		d.attrs = append(d.attrs, "},"...)
	}
	f, err := logfile.Open(o, d)
	if err != nil {
		return nil, err
	}
	d.file = f
	return d, nil
}

// Encode appends one json-file line for r.
func (d *Driver) Encode(dst []byte, r *logging.Record) []byte {
	dst = append(dst, `{"log":"`...)
	dst = AppendEscaped(dst, r.Line)
	if !r.Partial {
		dst = append(dst, `\n`...)
	}
	if r.Stream == logging.Stderr {
		dst = append(dst, `","stream":"stderr",`...)
	} else {
		dst = append(dst, `","stream":"stdout",`...)
	}
	dst = append(dst, d.attrs...)
	dst = append(dst, `"time":"`...)
	dst = d.ts.append(dst, r.Time)
	return append(dst, "\"}\n"...)
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
	return logging.Source{Path: d.file.Path(), Format: logging.FormatJSONFile}
}

const hex = "0123456789abcdef"

// AppendEscaped appends s as the inside of a JSON string, escaped as
// encoding/json does with HTML escaping on.
func AppendEscaped(dst, s []byte) []byte {
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(dst, s[start:]...)
}

// timeCache formats RFC 3339 UTC times with the fraction's trailing zeros
// removed (time.RFC3339Nano), caching the text of the current second.
type timeCache struct {
	sec    int64
	valid  bool
	prefix []byte // "2006-01-02T15:04:05"
}

func (c *timeCache) append(dst []byte, t time.Time) []byte {
	sec := t.Unix()
	if !c.valid || sec != c.sec {
		c.prefix = t.UTC().AppendFormat(c.prefix[:0], "2006-01-02T15:04:05")
		c.sec, c.valid = sec, true
	}
	dst = append(dst, c.prefix...)
	if ns := t.Nanosecond(); ns != 0 {
		var digits [9]byte
		for i := 8; i >= 0; i-- {
			digits[i] = byte('0' + ns%10)
			ns /= 10
		}
		n := 9
		for n > 0 && digits[n-1] == '0' {
			n--
		}
		dst = append(dst, '.')
		dst = append(dst, digits[:n]...)
	}
	return append(dst, 'Z')
}
