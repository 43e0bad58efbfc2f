// Package logfile is the file machinery the file drivers (k8s-file,
// json-file) share: a batching writer that survives a full disk, size
// rotation with kept files or conmon's truncate mode, reopen, a global size
// cap and an fsync policy. A driver supplies the encoding of one record.
package logfile

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containers/conmon-v2/logging"
)

// Encoder appends one encoded record (one whole line of the file, with its
// newline) to dst. It is called with the File's lock held, so it may use
// state of its own without locking (a timestamp cache).
type Encoder interface {
	Encode(dst []byte, r *logging.Record) []byte
}

// ReadEncoder is an Encoder that can also encode every record of one read
// at once (see logging.ReadWriter): EncodeRead appends exactly what Encode
// would append for each record cut from chunk, all stamped t and s.
type ReadEncoder interface {
	Encoder
	EncodeRead(dst []byte, t time.Time, s logging.Stream, chunk []byte) []byte
}

// Options configure a File.
type Options struct {
	Path string
	// MaxSize rotates (or truncates) the file before an entry would make it
	// larger than MaxSize bytes; 0 disables. Entries are never split across
	// files.
	MaxSize int64
	// MaxFiles is the number of files kept, the current one included: Path,
	// Path.1, ..., Path.<MaxFiles-1>. 1 means conmon's truncate mode.
	MaxFiles int
	// Truncate selects conmon's --log-size-max behaviour whatever MaxFiles
	// says: the file is replaced by an empty one (a .tmp file renamed over
	// it) and its content is lost.
	Truncate bool
	// Compress gzips rotated files (Path.1.gz, ...), in the background;
	// Close waits for it.
	Compress bool
	// GlobalSizeMax stops writing, for the life of the File, once this many
	// bytes were written (conmon's --log-global-size-max); what follows is
	// counted lost. 0 disables.
	GlobalSizeMax int64
	// Fsync is logging.FsyncNone, FsyncExit (Sync forces the data down) or
	// FsyncInterval (also a background fdatasync every FsyncInterval while
	// there is unsynced data; the writers never wait for it).
	Fsync         string
	FsyncInterval time.Duration
	// Perm is the mode of created files; default 0640.
	Perm os.FileMode
	// MaxPending bounds the bytes held for retry while writes fail (a full
	// disk); past it the oldest are dropped and counted. Default 1 MiB.
	MaxPending int
	// FlushAt writes the batch out once it holds this many bytes, even
	// before Flush; default 64 KiB.
	FlushAt int
}

// File is an append-only log file. Its methods are safe for concurrent use.
type File struct {
	opts Options
	enc  Encoder

	mu     sync.Mutex
	f      *os.File
	size   int64   // bytes in the current file
	total  int64   // bytes written over the File's life (GlobalSizeMax)
	buf    []byte  // batch; buf[off:] is not written yet; nil between reads when all was written
	bufp   *[]byte // the pooled buffer buf came from; nil when buf is nil
	off    int
	capped bool
	torn   bool        // the file ends inside an entry whose rest starts buf[off:]
	dirty  atomic.Bool // written since the last fsync
	closed bool

	lostLines, lostBytes atomic.Uint64
	lastErr              atomic.Pointer[string]

	stop         chan struct{}
	wg           sync.WaitGroup // the fsync loop and the compressions
	compressDone chan struct{}  // closed when the last compression ends; guarded by mu
}

// Open opens (creating it if needed) the file at opts.Path for appending.
// The size count starts from the file's current size, so a restarted
// container's log is still bounded (conmon#266).
func Open(opts Options, enc Encoder) (*File, error) {
	if opts.Path == "" {
		return nil, errors.New("no path")
	}
	if opts.Perm == 0 {
		opts.Perm = 0o640
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 1 << 20
	}
	if opts.FlushAt <= 0 {
		opts.FlushAt = 64 << 10
	}
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = 1
	}
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = time.Second
	}
	lf := &File{opts: opts, enc: enc}
	if err := lf.openLocked(); err != nil {
		return nil, err
	}
	if opts.Fsync == logging.FsyncInterval {
		lf.stop = make(chan struct{})
		lf.wg.Add(1)
		go lf.syncLoop()
	}
	return lf, nil
}

func (lf *File) openLocked() error {
	f, err := os.OpenFile(lf.opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, lf.opts.Perm)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	lf.dropTornLocked()
	lf.f, lf.size = f, st.Size()
	return nil
}

// dropTornLocked gives up the rest of an entry whose start went to the
// previous file, so that the new file does not begin with a fragment.
func (lf *File) dropTornLocked() {
	if !lf.torn {
		return
	}
	lf.torn = false
	held := lf.buf[lf.off:]
	i := bytes.IndexByte(held, '\n') + 1
	lf.lost(1, i)
	lf.off += i
	if lf.off == len(lf.buf) {
		lf.buf, lf.off = lf.buf[:0], 0
	}
}

// Path returns the current file's path.
func (lf *File) Path() string { return lf.opts.Path }

// Append encodes r into the batch, rotating first if the entry would make
// the file larger than MaxSize. It returns nil when the entry is batched or
// written. A write error is returned wrapped as logging.ErrHeld: the entry
// is kept for retry (reported again by Flush) and, if shed later, counted
// by Lost, not by the caller. Append never blocks on anything but the disk.
func (lf *File) Append(r *logging.Record) error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.closed {
		return os.ErrClosed
	}
	if lf.buf == nil {
		lf.takeBufLocked()
	}
	return lf.appendLocked(r)
}

// AppendRead appends the records of one read (logging.ReadWriter) with
// enc, which must be the File's encoder. When the whole read fits under
// MaxSize and GlobalSizeMax it is encoded in one go; otherwise each record
// goes through Append's rules, so that rotation and the cap cut between
// the same entries.
func (lf *File) AppendRead(enc ReadEncoder, t time.Time, s logging.Stream, meta *logging.Metadata, chunk []byte) error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.closed {
		return os.ErrClosed
	}
	if lf.buf == nil {
		lf.takeBufLocked()
	}
	start := len(lf.buf)
	lf.buf = enc.EncodeRead(lf.buf, t, s, chunk)
	n := int64(len(lf.buf) - start)
	pending := int64(start - lf.off)
	if !lf.capped && (lf.opts.GlobalSizeMax <= 0 || lf.total+pending+n <= lf.opts.GlobalSizeMax) &&
		(lf.opts.MaxSize <= 0 || lf.size+pending+n <= lf.opts.MaxSize) {
		if len(lf.buf)-lf.off >= lf.opts.FlushAt {
			if err := lf.writeLocked(len(lf.buf)); err != nil {
				lf.shedLocked()
				return logging.Held(err)
			}
		}
		return nil
	}
	// A rotation or the cap falls inside this read: record by record.
	lf.buf = lf.buf[:start]
	var errs error
	r := logging.Record{Time: t, Stream: s, Meta: meta}
	for len(chunk) > 0 {
		if i := bytes.IndexByte(chunk, '\n'); i >= 0 {
			r.Line, r.Partial, chunk = chunk[:i], false, chunk[i+1:]
		} else {
			r.Line, r.Partial, chunk = chunk, true, nil
		}
		if err := lf.appendLocked(&r); err != nil && errs == nil {
			errs = err
		}
	}
	return errs
}

func (lf *File) appendLocked(r *logging.Record) error {
	start := len(lf.buf)
	lf.buf = lf.enc.Encode(lf.buf, r)
	n := int64(len(lf.buf) - start)
	pending := int64(start - lf.off)
	if lf.capped || lf.opts.GlobalSizeMax > 0 && lf.total+pending+n > lf.opts.GlobalSizeMax {
		lf.buf = lf.buf[:start]
		lf.capped = true
		lf.lost(1, len(r.Line))
		return nil
	}
	var err error
	if lf.opts.MaxSize > 0 && lf.size+pending+n > lf.opts.MaxSize && lf.size+pending > 0 {
		if err = lf.writeLocked(start); err == nil {
			err = lf.rotateLocked()
		}
	}
	if err == nil && len(lf.buf)-lf.off >= lf.opts.FlushAt {
		err = lf.writeLocked(len(lf.buf))
	}
	if err != nil {
		// The entry stays in the batch, to be written or shed (and
		// counted lost): the pipeline must not count it failed too.
		lf.shedLocked()
		return logging.Held(err)
	}
	return nil
}

// writeLocked writes buf[off:end]; bytes after end stay in the batch.
func (lf *File) writeLocked(end int) error {
	for lf.off < end {
		if lf.f == nil {
			// A failed rotation or reopen left no file: try again now.
			if err := lf.openLocked(); err != nil {
				return lf.fail(err)
			}
		}
		n, err := lf.f.Write(lf.buf[lf.off:end])
		lf.off += n
		lf.size += int64(n)
		lf.total += int64(n)
		if n > 0 {
			lf.dirty.Store(true)
			lf.torn = lf.buf[lf.off-1] != '\n'
		}
		if err != nil {
			return lf.fail(err)
		}
	}
	if lf.off == len(lf.buf) {
		lf.buf, lf.off = lf.buf[:0], 0
	} else if lf.off > 0 && lf.buf[lf.off-1] == '\n' {
		lf.buf = append(lf.buf[:0], lf.buf[lf.off:]...)
		lf.off = 0
	}
	return nil
}

func (lf *File) fail(err error) error {
	s := err.Error()
	lf.lastErr.Store(&s)
	return err
}

// shedLocked drops the oldest held entries once more than MaxPending bytes
// wait for a disk that refuses them. The rest of an entry already partly
// written is kept, so the file never holds a torn line once writes resume.
func (lf *File) shedLocked() {
	held := lf.buf[lf.off:]
	if len(held) <= lf.opts.MaxPending {
		return
	}
	keep := 0
	if lf.torn {
		keep = bytes.IndexByte(held, '\n') + 1
	}
	dropped := held[keep:]
	lf.lost(bytes.Count(dropped, []byte{'\n'}), len(dropped))
	lf.buf = append(lf.buf[:0], held[:keep]...)
	lf.off = 0
}

func (lf *File) lost(lines, n int) {
	lf.lostLines.Add(uint64(lines))
	lf.lostBytes.Add(uint64(n))
}

// Lost returns the entries and bytes given up: shed on a full disk, or past
// GlobalSizeMax. Bytes count encoded bytes when shed, record bytes when
// capped.
func (lf *File) Lost() (lines, nbytes uint64) { return lf.lostLines.Load(), lf.lostBytes.Load() }

// LastError returns the last write error, or "".
func (lf *File) LastError() string {
	if s := lf.lastErr.Load(); s != nil {
		return *s
	}
	return ""
}

// rotateLocked closes the current file and starts an empty one: rotation
// with kept files, or conmon's truncate.
func (lf *File) rotateLocked() error {
	p := lf.opts.Path
	if lf.opts.Truncate || lf.opts.MaxFiles <= 1 {
		// conmon's reopen_k8s_file: a fresh file renamed over the old one,
		// so a reader never sees a half-truncated file.
		tmp := p + ".tmp"
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, lf.opts.Perm)
		if err != nil {
			return lf.fail(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			f.Close()
			os.Remove(tmp)
			return lf.fail(err)
		}
		if lf.f != nil {
			lf.f.Close()
		}
		lf.dropTornLocked()
		lf.f, lf.size = f, 0
		return nil
	}
	if lf.f != nil {
		lf.f.Close()
		lf.f = nil
	}
	n := lf.opts.MaxFiles - 1
	ext := ""
	if lf.opts.Compress {
		ext = ".gz"
		if lf.compressDone != nil {
			// Path.1 is still being gzipped: it must be Path.1.gz before
			// the files move up. Writers wait only if files fill faster
			// than they compress.
			<-lf.compressDone
			lf.compressDone = nil
		}
	}
	os.Remove(p + "." + strconv.Itoa(n) + ext)
	os.Remove(p + "." + strconv.Itoa(n)) // a leftover from an uncompressed run
	// Shift only the backups that exist: max-files may be large.
	top := 0
	for top < n-1 {
		if _, err := os.Lstat(p + "." + strconv.Itoa(top+1) + ext); err != nil {
			break
		}
		top++
	}
	for i := top; i >= 1; i-- {
		from, to := p+"."+strconv.Itoa(i), p+"."+strconv.Itoa(i+1)
		if err := os.Rename(from+ext, to+ext); err != nil && !os.IsNotExist(err) {
			return lf.fail(err)
		}
	}
	if err := os.Rename(p, p+".1"); err != nil && !os.IsNotExist(err) {
		return lf.fail(err)
	}
	if err := lf.openLocked(); err != nil {
		return lf.fail(err)
	}
	lf.size = 0
	if lf.opts.Compress {
		// Off the write path: the container's output goes on meanwhile.
		done := make(chan struct{})
		lf.compressDone = done
		lf.wg.Add(1)
		go func() {
			defer lf.wg.Done()
			defer close(done)
			if err := gzipFile(p + ".1"); err != nil {
				lf.fail(fmt.Errorf("compress %s: %w", filepath.Base(p)+".1", err))
			}
		}()
	}
	return nil
}

// gzipFile replaces name by name.gz.
func gzipFile(name string) error {
	in, err := os.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(name+".gz.tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	// BestSpeed: a monitor's CPU is better spent elsewhere than on the
	// last percent of ratio.
	zw, _ := gzip.NewWriterLevel(out, gzip.BestSpeed)
	_, err = io.Copy(zw, in)
	err = errors.Join(err, zw.Close(), out.Close())
	if err == nil {
		err = os.Rename(name+".gz.tmp", name+".gz")
	}
	if err != nil {
		os.Remove(name + ".gz.tmp")
		return err
	}
	return os.Remove(name)
}

// Flush writes the batch. On error the data stays held for the next Append
// or Flush (up to MaxPending).
func (lf *File) Flush() error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.closed || lf.off == len(lf.buf) {
		return nil
	}
	err := lf.writeLocked(len(lf.buf))
	if err != nil {
		lf.shedLocked()
	} else {
		lf.releaseBufLocked()
	}
	return err
}

// batchCap is the capacity of a pooled batch buffer: a full batch plus two
// reads' worth of entries.
const batchCap = 64<<10 + 2*logging.DefaultReadSize

// batchPool lends batch buffers to files while a read's entries are being
// written: the pipeline flushes after every read, so an idle container's
// log holds no buffer (docs/memory.md: 80 KiB per container otherwise). It
// is a cache, not state: any buffer can serve any file.
var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, batchCap)
	return &b
}}

// takeBufLocked gives lf a batch buffer for the coming entries.
func (lf *File) takeBufLocked() {
	if need := lf.opts.FlushAt + 2*logging.DefaultReadSize; need > batchCap {
		lf.buf = make([]byte, 0, need) // an unusual FlushAt: not pooled
		return
	}
	lf.bufp = batchPool.Get().(*[]byte)
	lf.buf = (*lf.bufp)[:0]
}

// releaseBufLocked returns the batch buffer once everything in it is
// written; held data (a refusing disk) keeps it.
func (lf *File) releaseBufLocked() {
	if lf.buf == nil || lf.off != len(lf.buf) {
		return
	}
	if lf.bufp != nil && cap(lf.buf) <= 2*batchCap {
		*lf.bufp = lf.buf[:0]
		batchPool.Put(lf.bufp)
	}
	lf.buf, lf.bufp, lf.off = nil, nil, 0
}

// Reopen writes the batch and reopens Path, creating it if it was renamed
// or deleted (kubelet's ReopenContainerLog renames the file first). Unlike
// conmon, Reopen does not truncate a file that is still there, and does not
// fsync the old one on the caller's time (cri-o#6743).
func (lf *File) Reopen() error {
	lf.mu.Lock()
	defer lf.mu.Unlock()
	if lf.closed {
		return os.ErrClosed
	}
	werr := lf.writeLocked(len(lf.buf))
	if lf.f != nil {
		lf.f.Close()
		lf.f = nil
	}
	if err := lf.openLocked(); err != nil {
		return lf.fail(err)
	}
	return werr
}

// Sync writes the batch and, unless the policy is FsyncNone, fsyncs.
func (lf *File) Sync() error {
	lf.mu.Lock()
	err := lf.writeLocked(len(lf.buf))
	f := lf.f
	lf.mu.Unlock()
	if lf.opts.Fsync == logging.FsyncNone || f == nil {
		return err
	}
	lf.dirty.Store(false)
	return errors.Join(err, f.Sync())
}

func (lf *File) syncLoop() {
	defer lf.wg.Done()
	t := time.NewTicker(lf.opts.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-lf.stop:
			return
		case <-t.C:
		}
		if !lf.dirty.Swap(false) {
			continue
		}
		lf.mu.Lock()
		f := lf.f
		lf.mu.Unlock()
		if f != nil {
			// Outside the lock: writers go on while the disk catches up.
			// A file closed meanwhile by a rotation just fails here.
			f.Sync()
		}
	}
}

// Close writes the batch and closes the file. It does not fsync (the
// Pipeline calls Sync first).
func (lf *File) Close() error {
	lf.mu.Lock()
	if lf.closed {
		lf.mu.Unlock()
		return nil
	}
	err := lf.writeLocked(len(lf.buf))
	if err != nil {
		held := len(lf.buf) - lf.off
		lf.lost(bytes.Count(lf.buf[lf.off:], []byte{'\n'}), held)
	}
	lf.closed = true
	if err == nil {
		lf.releaseBufLocked()
	}
	if lf.f != nil {
		err = errors.Join(err, lf.f.Close())
		lf.f = nil
	}
	lf.mu.Unlock()
	if lf.stop != nil {
		close(lf.stop)
	}
	lf.wg.Wait()
	return err
}
