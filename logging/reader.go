package logging

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
)

// TailAll, as ReadOptions.Tail, reads every line.
const TailAll = -1

// ReadOptions selects what ReadLogs reads.
type ReadOptions struct {
	Source
	// Since and Until, when not zero, keep records with Since <= Time < Until.
	Since, Until time.Time
	// Tail, when >= 0, starts with only the last Tail lines of what exists
	// (a line being a record with the partial records before it); TailAll
	// (any negative value) reads everything.
	Tail int
	// Follow keeps reading what is written after the end, across rotations
	// and reopens, until ctx is done or Done is closed.
	Follow bool
	// Done, with Follow, tells that the container has exited: ReadLogs reads
	// what is left (so the last output is never missed, podman#8733) and
	// returns nil.
	Done <-chan struct{}
	// Poll is how often a follower looks for new data when nothing wakes
	// it (on Linux, inotify on the log's directory wakes it at once);
	// default 100ms.
	Poll time.Duration
	// Ready, if set, is called once what existed was read (or skipped,
	// per Tail and Since): whatever is written from then on is read. An
	// attach starts the container's input there, so that the output to
	// that input cannot come before the reader's position.
	Ready func()
}

// ReadLogs reads back a k8s-file or json-file log, oldest record first,
// rotated files (Path.N ... Path.1, gzipped or not) before the current one,
// and calls fn for each record; fn must not keep the record's Line. It
// returns fn's first error, ctx's error, or nil at the end (without Follow)
// or once Done is closed (with Follow). A line that cannot be parsed is
// skipped. An unknown format fails with ErrInvalidArgument, a missing log
// with ErrNotFound.
func ReadLogs(ctx context.Context, opts ReadOptions, fn func(*Record) error) error {
	var parse func([]byte, *Record) bool
	switch opts.Format {
	case FormatK8sFile:
		parse = ParseK8sLine
	case FormatJSONFile:
		parse = ParseJSONLine
	default:
		return fmt.Errorf("log format %q (want %s or %s): %w", opts.Format, FormatK8sFile, FormatJSONFile, errdefs.ErrInvalidArgument)
	}
	if opts.Poll <= 0 {
		opts.Poll = 100 * time.Millisecond
	}
	r := &logReader{opts: opts, parse: parse, fn: fn}
	if opts.Tail >= 0 {
		r.tail = &tailBuf{max: opts.Tail}
	}
	return r.run(ctx)
}

type logReader struct {
	opts  ReadOptions
	parse func([]byte, *Record) bool
	fn    func(*Record) error
	tail  *tailBuf // until the history is read
	rec   Record
}

// emit filters one parsed record and passes it on, or to the tail buffer.
func (r *logReader) emit(rec *Record) error {
	if !r.opts.Since.IsZero() && rec.Time.Before(r.opts.Since) {
		return nil
	}
	if !r.opts.Until.IsZero() && !rec.Time.Before(r.opts.Until) {
		return nil
	}
	if r.tail != nil {
		r.tail.add(rec)
		return nil
	}
	return r.fn(rec)
}

// history lists the rotated files, oldest first.
func history(path string) []string {
	var files []string
	for i, misses := 1, 0; misses < 2; i++ {
		p := path + "." + strconv.Itoa(i)
		if _, err := os.Stat(p); err == nil {
			files, misses = append(files, p), 0
			continue
		}
		if _, err := os.Stat(p + ".gz"); err == nil {
			files, misses = append(files, p+".gz"), 0
			continue
		}
		misses++
	}
	for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
		files[i], files[j] = files[j], files[i]
	}
	return files
}

func (r *logReader) run(ctx context.Context) error {
	path := r.opts.Path
	cur := &follower{}
	defer cur.close()
	// The history, oldest first: gzipped files are whole and read as such;
	// from the oldest plain file on, the reader walks the chain of files by
	// inode (advance), so that rotations while it reads neither skip nor
	// repeat a file.
	found := false
	if r.tail != nil && r.opts.Since.IsZero() {
		// Tail without Since: find where the last lines start by reading
		// the plain files backwards, instead of reading everything.
		f, ok, err := r.seekTail(path)
		if err != nil {
			return err
		}
		if ok {
			cur.f, found, r.tail = f, true, nil
		}
	}
	for _, h := range history(path) {
		if cur.f != nil {
			break
		}
		if strings.HasSuffix(h, ".gz") {
			found = true
			if err := r.readFile(ctx, h); err != nil {
				return err
			}
			continue
		}
		f, err := openOldest(path)
		if err != nil {
			return err
		}
		cur.f, found = f, f != nil
		break
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if cur.f != nil {
			found = true
			if err := r.drain(cur); err != nil {
				return err
			}
		}
		moved, err := r.advance(cur)
		if err != nil {
			return err
		}
		if !moved {
			break
		}
	}
	if !found && !r.opts.Follow {
		return fmt.Errorf("log %s: %w", path, errdefs.ErrNotFound)
	}
	if r.tail != nil {
		t := r.tail
		r.tail = nil
		if err := t.flush(r.fn); err != nil {
			return err
		}
	}
	if r.opts.Ready != nil {
		r.opts.Ready()
	}
	if !r.opts.Follow {
		return nil
	}
	w := watchDir(r.opts.Path)
	defer w.Close()
	timer := time.NewTicker(r.opts.Poll)
	defer timer.Stop()
	first := true
	for {
		done := false
		if !first {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.opts.Done:
				done = true
			case <-timer.C:
			case <-w.C():
			}
		}
		// The first pass runs at once: what was written before the watch
		// began is not missed until the next poll.
		first = false
		for {
			if cur.f != nil {
				if err := r.drain(cur); err != nil {
					return err
				}
			}
			moved, err := r.advance(cur)
			if err != nil {
				return err
			}
			if !moved {
				break
			}
		}
		if done {
			return nil
		}
	}
}

// seekTail opens the file where the last Tail lines start, positioned at
// the first of them, walking Path, Path.1, ... backwards. It reports false
// (and the caller reads forward with a tail buffer) when the walk reaches a
// gzipped file first.
func (r *logReader) seekTail(path string) (*os.File, bool, error) {
	st := tailScan{want: r.opts.Tail, parse: r.parse}
	for k := 0; ; k++ {
		name := path
		if k > 0 {
			name = path + "." + strconv.Itoa(k)
		}
		f, err := os.Open(name)
		if err != nil {
			if _, gzErr := os.Stat(name + ".gz"); gzErr == nil {
				return nil, false, nil
			}
			if k == 0 {
				return nil, false, nil
			}
			// No older file: the lines start at the top of the oldest.
			f, err := os.Open(path + "." + strconv.Itoa(k-1))
			if k == 1 {
				f, err = os.Open(path)
			}
			if err != nil {
				return nil, false, nil
			}
			return f, true, nil
		}
		off, found, err := st.scan(f)
		if err != nil {
			f.Close()
			return nil, false, err
		}
		if found {
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				f.Close()
				return nil, false, err
			}
			return f, true, nil
		}
		f.Close()
	}
}

// tailScan counts full lines backwards across files.
type tailScan struct {
	want  int
	fulls int
	parse func([]byte, *Record) bool
	rec   Record
}

// scan reads f backwards, entry by entry, and returns the offset just
// after the full record that ends the line before the wanted ones, if f
// holds it.
func (t *tailScan) scan(f *os.File) (int64, bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, false, err
	}
	pos := fi.Size()
	var carry []byte // the start of the region already read, not yet cut
	first := true
	for pos > 0 || len(carry) > 0 {
		n := min(int64(64<<10), pos)
		pos -= n
		data := make([]byte, n, int(n)+len(carry))
		if _, err := f.ReadAt(data, pos); err != nil && err != io.EOF {
			return 0, false, err
		}
		data = append(data, carry...)
		end := len(data)
		if first {
			// An entry still being written (no newline yet) is the
			// forward reader's business.
			first = false
			end = bytes.LastIndexByte(data, '\n') + 1
		}
		for end > 0 {
			i := bytes.LastIndexByte(data[:end-1], '\n')
			if i < 0 && pos > 0 {
				break // the entry starts in an earlier block
			}
			entry := data[i+1 : end-1]
			if t.parse(entry, &t.rec) && !t.rec.Partial {
				if t.fulls == t.want {
					return pos + int64(end), true, nil
				}
				t.fulls++
			}
			end = i + 1
		}
		carry = append([]byte(nil), data[:end]...)
		if pos == 0 {
			break
		}
	}
	return 0, false, nil
}

// openOldest opens the oldest plain rotated file. Rotation renames the
// oldest first, so the file opened as Path.k was the oldest at that moment
// if Path.(k+1) still does not exist after the open.
func openOldest(path string) (*os.File, error) {
	for try := 0; try < 100; try++ {
		k := 0
		for i, misses := 1, 0; misses < 2; i++ {
			// A rotation under way leaves one gap in the numbers.
			if _, err := os.Lstat(path + "." + strconv.Itoa(i)); err != nil {
				misses++
				continue
			}
			k, misses = i, 0
		}
		if k == 0 {
			return nil, nil
		}
		f, err := os.Open(path + "." + strconv.Itoa(k))
		if err != nil {
			continue
		}
		if _, err := os.Lstat(path + "." + strconv.Itoa(k+1)); err == nil {
			f.Close()
			continue
		}
		return f, nil
	}
	return nil, fmt.Errorf("log %s: rotating too fast to read: %w", path, errdefs.ErrUnavailable)
}

// follower is the file being read and its unparsed tail.
type follower struct {
	f    *os.File
	pend []byte
}

func (c *follower) close() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
	c.pend = nil
}

func inode(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}

// advance moves cur to the file written after it once cur is no longer the
// current file (it was rotated away, or replaced by a reopen), and reports
// whether it moved. The successor of Path.k is Path.(k-1), or Path for k=1;
// it is trusted only if cur is still Path.k after the successor was opened
// (rotation renames the older file first). When cur cannot be found (it was
// deleted, or gzipped), the reader jumps to Path.
func (r *logReader) advance(cur *follower) (bool, error) {
	path := r.opts.Path
	fi, err := os.Stat(path)
	if err != nil {
		if cur.f != nil {
			if cfi, err := cur.f.Stat(); err == nil {
				return r.advanceFrom(cur, inode(cfi))
			}
		}
		return false, nil // between a rename and the create: look again later
	}
	if cur.f == nil {
		f, err := os.Open(path)
		if err != nil {
			return false, nil
		}
		cur.f = f
		return true, nil
	}
	cfi, err := cur.f.Stat()
	if err != nil {
		return false, err
	}
	if inode(cfi) == inode(fi) {
		if off, err := cur.f.Seek(0, io.SeekCurrent); err == nil && fi.Size() < off {
			// Truncated in place (copytruncate): start again at the top.
			cur.f.Seek(0, io.SeekStart)
			cur.pend = nil
		}
		return false, nil
	}
	return r.advanceFrom(cur, inode(cfi))
}

func (r *logReader) advanceFrom(cur *follower, old uint64) (bool, error) {
	path := r.opts.Path
	// cur gets no more writes: finish it before leaving it.
	if err := r.drain(cur); err != nil {
		return false, err
	}
	misses := 0
	for k := 1; misses < 2; k++ {
		name := path + "." + strconv.Itoa(k)
		st, err := os.Stat(name)
		if err != nil {
			// A rotation under way leaves one gap in the numbers.
			misses++
			continue
		}
		misses = 0
		if inode(st) != old {
			continue
		}
		succ := path
		if k > 1 {
			succ = path + "." + strconv.Itoa(k-1)
		}
		f, err := os.Open(succ)
		if err != nil {
			return false, nil // mid-rotation: look again later
		}
		if st, err := os.Stat(name); err != nil || inode(st) != old {
			f.Close()
			return false, nil // rotated meanwhile: look again later
		}
		cur.close()
		cur.f = f
		return true, nil
	}
	if cfi, err := cur.f.Stat(); err == nil {
		if st, ok := cfi.Sys().(*syscall.Stat_t); ok && st.Nlink > 0 {
			return false, nil // still has a name we did not see: look again later
		}
	}
	// Deleted (beyond max-files) or replaced by its gzipped copy.
	f, err := os.Open(path)
	if err != nil {
		return false, nil
	}
	cur.close()
	cur.f = f
	return true, nil
}

// drain reads cur to its end, emitting complete lines and keeping a last
// incomplete one for later.
func (r *logReader) drain(cur *follower) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := cur.f.Read(buf)
		if n > 0 {
			cur.pend = append(cur.pend, buf[:n]...)
			for {
				i := bytes.IndexByte(cur.pend, '\n')
				if i < 0 {
					break
				}
				if r.parse(cur.pend[:i], &r.rec) {
					if err := r.emit(&r.rec); err != nil {
						return err
					}
				}
				cur.pend = cur.pend[i+1:]
			}
			cur.pend = append([]byte(nil), cur.pend...)
		}
		if err == io.EOF || n == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readFile reads a whole (rotated, maybe gzipped) file.
func (r *logReader) readFile(ctx context.Context, name string) error {
	f, err := os.Open(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // rotated away meanwhile
		}
		return err
	}
	defer f.Close()
	var in io.Reader = f
	if len(name) > 3 && name[len(name)-3:] == ".gz" {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("log %s: %w", name, err)
		}
		defer zr.Close()
		in = zr
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if err := ctx.Err(); err != nil {
			return err
		}
		if r.parse(sc.Bytes(), &r.rec) {
			if err := r.emit(&r.rec); err != nil {
				return err
			}
		}
	}
	return sc.Err()
}

// tailBuf keeps the last max lines.
type tailBuf struct {
	max   int
	recs  []Record
	lines int // complete lines in recs
}

func (t *tailBuf) add(rec *Record) {
	c := *rec
	c.Line = append([]byte(nil), rec.Line...)
	t.recs = append(t.recs, c)
	if !c.Partial {
		t.lines++
	}
	for t.lines > t.max {
		// Drop the oldest line: its partial pieces and its end.
		i := 0
		for i < len(t.recs) && t.recs[i].Partial {
			i++
		}
		t.recs = t.recs[i+1:]
		t.lines--
	}
}

func (t *tailBuf) flush(fn func(*Record) error) error {
	for i := range t.recs {
		if err := fn(&t.recs[i]); err != nil {
			return err
		}
	}
	return nil
}

// ParseK8sLine parses one CRI log line (without its newline) into rec;
// rec.Line aliases line. It reports false for a malformed line.
func ParseK8sLine(line []byte, rec *Record) bool {
	i := bytes.IndexByte(line, ' ')
	if i < 0 {
		return false
	}
	t, err := time.Parse(time.RFC3339Nano, string(line[:i]))
	if err != nil {
		return false
	}
	rest := line[i+1:]
	var s Stream
	switch {
	case bytes.HasPrefix(rest, []byte("stdout ")):
		s = Stdout
	case bytes.HasPrefix(rest, []byte("stderr ")):
		s = Stderr
	default:
		return false
	}
	rest = rest[7:]
	if len(rest) < 2 || rest[1] != ' ' || (rest[0] != 'P' && rest[0] != 'F') {
		return false
	}
	*rec = Record{Time: t, Stream: s, Partial: rest[0] == 'P', Line: rest[2:]}
	return true
}

// ParseJSONLine parses one json-file line into rec.
func ParseJSONLine(line []byte, rec *Record) bool {
	var e struct {
		Log    string    `json:"log"`
		Stream string    `json:"stream"`
		Time   time.Time `json:"time"`
	}
	if json.Unmarshal(line, &e) != nil {
		return false
	}
	*rec = Record{Time: e.Time}
	switch e.Stream {
	case "stdout":
		rec.Stream = Stdout
	case "stderr":
		rec.Stream = Stderr
	default:
		return false
	}
	if n := len(e.Log); n > 0 && e.Log[n-1] == '\n' {
		rec.Line = []byte(e.Log[:n-1])
	} else {
		rec.Line, rec.Partial = []byte(e.Log), true
	}
	return true
}
