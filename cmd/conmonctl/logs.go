package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/logging"
)

// This file reads back the k8s-file and json-file logs the shim writes.
// TODO: switch to logging.ReadLogs once the logging package has it; the
// formats and the rotation scheme (path, path.1, path.2[.gz], ...) here
// follow package logging's drivers.

type logQuery struct {
	since  time.Time
	tail   int // -1: all
	follow bool
}

// logLine is one record of a log file.
type logLine struct {
	t       time.Time
	stream  string
	partial bool
	data    []byte
}

func cmdLogs(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, 1, "container NAME"); err != nil {
		return err
	}
	q := logQuery{tail: a.opts.tail, follow: a.opts.follow}
	if a.opts.since != "" {
		t, err := parseSince(a.opts.since, time.Now())
		if err != nil {
			return usagef("--since %q: %v", a.opts.since, err)
		}
		q.since = t
	}
	if q.tail < -1 {
		return usagef("--tail %d: must be 0 or more", q.tail)
	}
	r, err := a.store().find(args[0])
	if err != nil {
		return err
	}
	if r.LogPath == "" {
		return fmt.Errorf("container %s logs with %s, which conmonctl cannot read back (only k8s-file and json-file): %w",
			r.Name, r.LogDriver, errdefs.ErrNotImplemented)
	}
	var exited chan struct{}
	if q.follow {
		exited = make(chan struct{})
		s, err := a.connect(ctx, r)
		if err != nil {
			close(exited) // no shim: nothing more will be written
		} else {
			defer s.Close()
			go func() {
				defer close(exited)
				_, _ = s.Wait(ctx, r.ID, "")
			}()
		}
	}
	return followLog(ctx, a, r, q, exited)
}

// parseSince accepts an RFC 3339 time, a Unix time in seconds, or a
// duration before now ("10m", "1h30m").
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, errors.New("a duration must not be negative")
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if sec, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.Unix(sec, 0), nil
	}
	return time.Time{}, errors.New("want an RFC 3339 time, Unix seconds or a duration such as 10m")
}

// followLog prints the log of r as q asks. With q.follow it keeps printing
// new records, across rotations, until exited is closed and the file is
// drained (or ctx ends).
func followLog(ctx context.Context, a *app, r *record, q logQuery, exited <-chan struct{}) error {
	format := r.LogDriver
	parse := parseK8sLine
	if format == logging.FormatJSONFile {
		parse = parseJSONLine
	}
	out := &logPrinter{a: a}
	// The whole history first (rotated files oldest first), then the tail.
	var lines []logLine
	add := func(l logLine) {
		if !q.since.IsZero() && l.t.Before(q.since) {
			return
		}
		lines = append(lines, l)
	}
	for _, p := range rotatedFiles(r.LogPath) {
		if err := readLogFile(p, parse, add); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	cur, err := os.Open(r.LogPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var rd *bufio.Reader
	var pending []byte // an unterminated last line, completed by later reads
	if cur != nil {
		defer func() { cur.Close() }()
		rd = bufio.NewReaderSize(cur, 64<<10)
		pending = readLines(rd, pending, parse, add)
	}
	if q.tail >= 0 {
		lines = lastLines(lines, q.tail)
	}
	for _, l := range lines {
		out.print(l)
	}
	if !q.follow {
		return nil
	}
	emit := func(l logLine) {
		if q.since.IsZero() || !l.t.Before(q.since) {
			out.print(l)
		}
	}
	ended := false
	for {
		if cur == nil {
			if f, err := os.Open(r.LogPath); err == nil {
				cur, rd, pending = f, bufio.NewReaderSize(f, 64<<10), nil
			}
		}
		if cur != nil {
			pending = readLines(rd, pending, parse, emit)
			if rotated(cur, r.LogPath) {
				// The shim renamed our file away: finish it, then go on with
				// the new one.
				pending = readLines(rd, pending, parse, emit)
				cur.Close()
				cur, rd, pending = nil, nil, nil
				continue
			}
			if truncated(cur) {
				_, _ = cur.Seek(0, io.SeekStart)
				rd.Reset(cur)
				pending = nil
			}
		}
		if ended {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-exited:
			// The shim syncs the logs before it reports the exit: one more
			// read drains them.
			ended = true
			exited = nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rotatedFiles lists path's rotated files, oldest first.
func rotatedFiles(path string) []string {
	var out []string
	for i := 1; ; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
			continue
		}
		if _, err := os.Stat(p + ".gz"); err == nil {
			out = append(out, p+".gz")
			continue
		}
		break
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

func readLogFile(p string, parse func([]byte) (logLine, bool), add func(logLine)) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(p, ".gz") {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer zr.Close()
		r = zr
	}
	rest := readLines(bufio.NewReaderSize(r, 64<<10), nil, parse, add)
	if len(rest) > 0 {
		if l, ok := parse(rest); ok {
			add(l)
		}
	}
	return nil
}

// readLines reads complete lines from rd (the first continues pending) and
// returns what is left of an unterminated last line.
func readLines(rd *bufio.Reader, pending []byte, parse func([]byte) (logLine, bool), add func(logLine)) []byte {
	for {
		chunk, err := rd.ReadSlice('\n')
		if len(chunk) > 0 {
			pending = append(pending, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			return pending
		}
		if l, ok := parse(bytes.TrimSuffix(pending, []byte("\n"))); ok {
			add(l)
		}
		pending = pending[:0]
	}
}

// rotated reports whether path now names another file than f.
func rotated(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	if err1 != nil {
		return true
	}
	if err2 != nil {
		return errors.Is(err2, os.ErrNotExist)
	}
	sa, ok1 := a.Sys().(*syscall.Stat_t)
	sb, ok2 := b.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && (sa.Ino != sb.Ino || sa.Dev != sb.Dev)
}

// truncated reports whether f shrank below our read offset (the truncate
// mode of k8s-file).
func truncated(f *os.File) bool {
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Size() < off
}

// lastLines keeps the records of the last n lines (a line is a run of
// partial records ended by a full one).
func lastLines(ls []logLine, n int) []logLine {
	if n == 0 {
		return nil
	}
	count := 0
	for i := len(ls) - 1; i >= 0; i-- {
		if !ls[i].partial || i == len(ls)-1 {
			count++
			if count > n {
				return ls[i+1:]
			}
		}
	}
	return ls
}

// parseK8sLine parses "<time> <stream> <P|F> <data>".
func parseK8sLine(b []byte) (logLine, bool) {
	ts, rest, ok := bytes.Cut(b, []byte(" "))
	if !ok {
		return logLine{}, false
	}
	stream, rest, ok := bytes.Cut(rest, []byte(" "))
	if !ok {
		return logLine{}, false
	}
	tag, data, _ := bytes.Cut(rest, []byte(" "))
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return logLine{}, false
	}
	return logLine{t: t, stream: string(stream), partial: bytes.HasPrefix(tag, []byte("P")), data: append([]byte(nil), data...)}, true
}

// parseJSONLine parses Docker's {"log":..., "stream":..., "time":...}.
func parseJSONLine(b []byte) (logLine, bool) {
	var e struct {
		Log    string    `json:"log"`
		Stream string    `json:"stream"`
		Time   time.Time `json:"time"`
	}
	if json.Unmarshal(b, &e) != nil {
		return logLine{}, false
	}
	data, full := strings.CutSuffix(e.Log, "\n")
	return logLine{t: e.Time, stream: e.Stream, partial: !full, data: []byte(data)}, true
}

type logPrinter struct{ a *app }

func (p *logPrinter) print(l logLine) {
	w := p.a.stdout
	if l.stream == "stderr" {
		w = p.a.stderr
	}
	_, _ = w.Write(l.data)
	if !l.partial {
		_, _ = w.Write([]byte("\n"))
	}
}

var _ = client.Stopped
