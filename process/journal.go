package process

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/pipesize"
	"github.com/containers/conmon-v2/logging"
)

// The in-flight journal (docs/resilience.md §4, "The keeper"): under a
// keeper, each output stream's copier reads the container's pipe into a
// memfd the keeper holds, and records there, per destination, how much of
// it that destination has. A daemon killed between its read and its
// writes leaves the bytes and the marks behind; the next one writes what
// each destination is missing before it reads the pipe again. Nothing is
// lost, and nothing is written twice where the kernel keeps the mark:
//
//   - The read is splice(2) from the pipe into the memfd at the position of
//     the journal's own open file description: the kernel moves the bytes
//     and advances that position in one system call, so the position is
//     exactly the end of what was taken from the pipe, whenever the kill
//     lands.
//   - A pipe destination (the client's FIFO, a binary:// logger's pipe) has
//     an open file description of the memfd of its own, and is written by
//     splice(2) from it: again the kernel advances that position by what
//     the destination got, even for a partial write.
//   - A destination writing a file (file://, or a logging pipeline whose
//     first readable driver writes a file: k8s-file, json-file) records the
//     file's inode and size in the journal before each write and clears
//     the record after it: the next daemon truncates the same inode back to
//     that size before it writes the bytes again. Writes to such files are
//     serialised across the IO's streams (ioJournal.fileMu), so a
//     truncation never takes away another stream's finished write.
//   - Any other destination (a pipeline in non-blocking mode or with no
//     file driver: journald, syslog, fluentd, a plugin) is marked after
//     its write returned: a kill during the write repeats it.
//   - A terminal cannot be spliced: it is read(2) into the mapping and the
//     position moved after, so a kill between the two loses that read.
//
// Each batch's bytes are appended to the memfd, which is reset (positions
// back to the start) once journalLimit bytes have been written
// everywhere. With a pipe destination the memfd's data pages are never
// written or zeroed in place: splice into a pipe moves references to
// them, and the reader of a FIFO may read them long after the reset. So
// the data area is a naturally aligned 2 MiB block (no page or large
// folio of it is shared with the header or lies partly outside it), and a
// reset punches the whole block out: the kernel then drops the pages from
// the file without touching their bytes, and the next batch gets new ones
// (the other destinations then get a pread copy of the batch, cheaper
// than faulting the new pages into the mapping). Without a pipe
// destination the pages are reused. The memfd is sparse: only the header
// and the pages of the bytes journaled since the last reset take memory
// (at most journalLimit plus one read).

const (
	journalHdr   = 2 << 20        // start of the data area; the header is the first page
	journalLimit = 32 << 10       // reset once this much was journaled
	journalSize  = 2 * journalHdr // the data area ends on a 2 MiB boundary too
	journalMagic = "CMV2JRN1"
	// JournalMaxDests is the number of destinations of one stream the
	// journal keeps marks for; a stream with more (none today) is
	// journaled for the first ones only.
	JournalMaxDests = 4
	// journalSlots is the number of descriptors of one stream's journal
	// in IOFDs.Journal: the memfd, then one per pipe destination.
	journalSlots = 1 + JournalMaxDests
)

// Header layout: magic, then per destination a block of journalDestLen
// bytes at journalDestOff + k*journalDestLen: kind, done (the end of what
// it has, for kinds other than pipe), pending (a file write under way),
// inode and size of the file before it.
const (
	journalDestOff = 64
	journalDestLen = 64
)

// Destination kinds.
const (
	jkNone  = 0
	jkPipe  = 1 // position of its own open file description
	jkFile  = 2 // done mark, and the file's size before a write
	jkOther = 3 // done mark
)

// LogFiler is implemented by a destination (a logging tap's writer) whose
// write appends to a file of its own: the journal records the file's size
// before each write, to truncate a write cut by a crash. LogFile returns
// "" when there is no such file.
type LogFiler interface {
	LogFile() string
}

// ioJournal holds the journals of one IO's output streams.
type ioJournal struct {
	fileMu  sync.Mutex // one write to a rewindable file at a time, across streams
	adopt   []int      // descriptors handed over (RestoreIO), until setup
	streams [3]*streamJournal
}

// stream returns the journal of stream s, or nil.
func (j *ioJournal) stream(s logging.Stream) *streamJournal {
	if j == nil {
		return nil
	}
	return j.streams[s]
}

// streamJournal is one stream's journal.
type streamJournal struct {
	io     *ioJournal
	log    *slog.Logger // with the container and stream; nil: quiet
	in     int          // the memfd; its position is the end of what was read
	mem    []byte       // its mapping
	n      int          // destinations journaled
	kind   [JournalMaxDests]uint8
	ofd    [JournalMaxDests]int // jkPipe: the destination's own description
	rc     [JournalMaxDests]syscall.RawConn
	file   [JournalMaxDests]string // jkFile: its path
	fileFD [JournalMaxDests]int    // jkFile: the descriptor it writes through, or -1 (stat the path)
	pipes  bool                    // a jkPipe destination: pages are punched out on reset
	moved  [JournalMaxDests]bool   // written in this batch
	cut    [JournalMaxDests]int64  // jkFile: bytes of a cut write truncated at adoption (logged by replay)
	pos    int64                   // the memfd's position, as known here
	view   []byte                  // the batch just read, in the mapping
	priv   *[]byte                 // its copy (batch), until put
	closed bool
}

func (j *streamJournal) u64(off int) uint64 { return binary.LittleEndian.Uint64(j.mem[off:]) }
func (j *streamJournal) put64(off int, v uint64) {
	binary.LittleEndian.PutUint64(j.mem[off:], v)
}
func destOff(k, field int) int { return journalDestOff + k*journalDestLen + field*8 }

// Header fields of a destination.
const (
	fKind = iota
	fDone
	fPending
	fIno
	fSize
)

// setupJournals gives each stream the IO is about to copy a journal:
// adopted from the descriptors a keeper handed over, or new. Called with
// a custodian only, before the descriptors are sent to it. A journal that
// cannot be made is left out (the stream is copied as without a keeper).
func (i *IO) setupJournals() {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.journal == nil {
		i.journal = &ioJournal{}
	}
	jio := i.journal
	adopt := jio.adopt
	jio.adopt = nil
	for _, s := range []logging.Stream{logging.Stdout, logging.Stderr} {
		var fds []int
		if b := (int(s) - 1) * journalSlots; len(adopt) >= b+journalSlots {
			fds = adopt[b : b+journalSlots]
		}
		copied := !i.ended[s] && len(i.dests[s]) > 0 && (i.pty != nil && s == logging.Stdout || i.pty == nil && i.pio != nil && i.pioStream(s) != nil)
		if jio.streams[s] != nil || !copied {
			for _, fd := range fds {
				if fd > 0 {
					_ = unix.Close(fd)
				}
			}
			continue
		}
		sj, err := newStreamJournal(jio, fds, i.dests[s])
		if err != nil {
			i.cfg.Log.Warn("keeper journal: not journaling this stream", "container", i.cfg.ID, "stream", s.String(), "error", err)
			continue
		}
		sj.log = i.cfg.Log.With("container", i.cfg.ID, "exec", i.cfg.Exec, "stream", s.String())
		jio.streams[s] = sj
	}
	for k, fd := range adopt {
		if fd > 0 && k >= 2*journalSlots {
			_ = unix.Close(fd)
		}
	}
}

func (i *IO) pioStream(s logging.Stream) io.Reader {
	if s == logging.Stdout {
		if r := i.pio.Stdout(); r != nil {
			return r
		}
	} else if r := i.pio.Stderr(); r != nil {
		return r
	}
	return nil
}

// newStreamJournal makes a stream's journal for dests, adopting fds (the
// memfd and the pipe destinations' descriptions a previous daemon left,
// or nil), which it owns.
func newStreamJournal(jio *ioJournal, fds []int, dests []io.WriteCloser) (_ *streamJournal, retErr error) {
	j := &streamJournal{io: jio, in: -1}
	old := [JournalMaxDests]int{}
	if len(fds) == journalSlots {
		j.in = fds[0]
		copy(old[:], fds[1:])
	}
	defer func() {
		for _, fd := range old {
			if fd > 0 {
				_ = unix.Close(fd)
			}
		}
		if retErr != nil {
			j.close()
		}
	}()
	adopted := j.in > 0
	if adopted {
		mem, err := unix.Mmap(j.in, 0, journalSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil || string(mem[:8]) != journalMagic {
			if err == nil {
				_ = unix.Munmap(mem)
			}
			_ = unix.Close(j.in)
			j.in, adopted = -1, false
		} else {
			j.mem = mem
		}
	}
	if !adopted {
		fd, err := unix.MemfdCreate("conmon-v2-journal", unix.MFD_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		j.in = fd
		if err := unix.Ftruncate(fd, journalSize); err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		mem, err := unix.Mmap(fd, 0, journalSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
		j.mem = mem
		copy(mem, journalMagic)
		if _, err := unix.Seek(fd, journalHdr, io.SeekStart); err != nil {
			return nil, fmt.Errorf("memfd: %w", err)
		}
	}
	pos, err := unix.Seek(j.in, 0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	j.pos = pos
	j.n = min(len(dests), JournalMaxDests)
	for k := 0; k < j.n; k++ {
		// Where destination k stands, by the previous daemon's marks.
		from := int64(journalHdr)
		if adopted {
			switch j.u64(destOff(k, fKind)) {
			case jkPipe:
				if old[k] > 0 {
					if p, err := unix.Seek(old[k], 0, io.SeekCurrent); err == nil {
						from = p
					}
				}
			case jkFile, jkOther:
				from = int64(j.u64(destOff(k, fDone)))
			default:
				from = pos
			}
			from = max(min(from, pos), journalHdr) // a reset cut short: nothing pending
		} else {
			from = pos
		}
		d := dests[k]
		switch {
		case logFile(d) != "":
			j.kind[k], j.file[k], j.fileFD[k] = jkFile, logFile(d), -1
			if sw, ok := d.(*sharedWriter); ok {
				if f, ok := sw.w.(*os.File); ok {
					j.fileFD[k] = int(f.Fd()) // a regular file: Fd changes nothing
				}
			}
			if adopted && j.u64(destOff(k, fPending)) == 1 && j.u64(destOff(k, fKind)) == jkFile {
				j.cut[k] = rewind(j.file[k], j.u64(destOff(k, fIno)), int64(j.u64(destOff(k, fSize))))
			}
			j.put64(destOff(k, fDone), uint64(from))
		case isConn(d):
			j.kind[k], j.pipes = jkPipe, true
			if old[k] > 0 && adopted && j.u64(destOff(k, fKind)) == jkPipe {
				j.ofd[k], old[k] = old[k], 0
			} else {
				fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(j.in), unix.O_RDWR|unix.O_CLOEXEC, 0)
				if err != nil {
					return nil, fmt.Errorf("memfd: %w", err)
				}
				j.ofd[k] = fd
				if _, err := unix.Seek(fd, from, io.SeekStart); err != nil {
					return nil, fmt.Errorf("memfd: %w", err)
				}
			}
		default:
			j.kind[k] = jkOther
			j.put64(destOff(k, fDone), uint64(from))
		}
		j.put64(destOff(k, fPending), 0)
		j.put64(destOff(k, fKind), uint64(j.kind[k]))
	}
	for k := j.n; k < JournalMaxDests; k++ {
		j.put64(destOff(k, fKind), jkNone)
	}
	return j, nil
}

func logFile(d io.Writer) string {
	if f, ok := d.(LogFiler); ok {
		return f.LogFile()
	}
	return ""
}

func isConn(d io.Writer) bool {
	_, ok := d.(syscall.Conn)
	return ok
}

// LogFile is LogFiler: a file:// destination appends to its file.
func (s *sharedWriter) LogFile() string {
	if f, ok := s.w.(*os.File); ok {
		return f.Name()
	}
	return ""
}

// rewind truncates the file at path back to size, if it is still the
// inode ino and longer: the part of a write a crash cut short. It returns
// how many bytes it took away.
func rewind(path string, ino uint64, size int64) int64 {
	var st unix.Stat_t
	if ino == 0 || unix.Stat(path, &st) != nil || st.Ino != ino || st.Size <= size {
		return 0
	}
	if unix.Truncate(path, size) != nil {
		return 0
	}
	return st.Size - size
}

// kindName names a destination kind in the daemon's log: "file" means
// that a cut write is truncated before it is written again, "other" that
// it is repeated.
func kindName(kind uint8) string {
	switch kind {
	case jkPipe:
		return "pipe"
	case jkFile:
		return "file"
	case jkOther:
		return "other"
	}
	return "none"
}

// at returns where destination k stands.
func (j *streamJournal) at(k int) int64 {
	if j.kind[k] == jkPipe {
		p, err := unix.Seek(j.ofd[k], 0, io.SeekCurrent)
		if err != nil {
			return j.pos
		}
		return p
	}
	return int64(j.u64(destOff(k, fDone)))
}

// replay writes to each destination what it is missing of what a previous
// daemon read (nothing for a new journal), then resets the journal. It
// runs on the copier before its first read; dests and alive are the
// copier's.
func (j *streamJournal) replay(dests []io.WriteCloser, alive []bool, warn func(k int, err error)) {
	if j == nil {
		return
	}
	for k := 0; k < j.n && k < len(dests); k++ {
		from := j.at(k)
		if from >= j.pos {
			continue
		}
		if j.log != nil {
			j.log.Info("keeper journal: writing what the previous daemon read and did not write", "destination", k, "kind", kindName(j.kind[k]), "bytes", j.pos-from, "truncated", j.cut[k])
		}
		if err := j.writeTo(k, dests[k], j.mem[from:j.pos], j.pos); err != nil {
			alive[k] = false
			warn(k, err)
		}
	}
	j.reset(true)
}

// reader returns the copier's read function (see readerOf): it reads r
// into the journal, by splice(2) when r is a pipe.
func (j *streamJournal) reader(r io.Reader) func() (*[]byte, int, error) {
	if j == nil {
		return readerOf(r)
	}
	plain := func() (*[]byte, int, error) {
		n, err := r.Read(j.mem[j.pos : j.pos+copyBufSize])
		if n > 0 {
			j.took(n, true)
		}
		return j.batch(), n, err
	}
	f, rc, ok := nonblockingConn(r)
	if !ok {
		return plain
	}
	spliceOK := true
	var grow pipesize.Grower // a busy stream's pipe (see readerOf)
	return func() (*[]byte, int, error) {
		var (
			n    int
			rerr error
			read bool // by read(2): the memfd's position is still to move
		)
		err := rc.Read(func(fd uintptr) bool {
			for {
				if spliceOK {
					var m int64
					m, rerr = unix.Splice(int(fd), nil, j.in, nil, copyBufSize, unix.SPLICE_F_NONBLOCK)
					n = int(m)
					if rerr == unix.EINVAL {
						spliceOK = false // not a pipe (a terminal): read(2)
						continue
					}
				} else {
					n, rerr = unix.Read(int(fd), j.mem[j.pos:j.pos+copyBufSize])
					read = true
				}
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				return false
			}
			grow.Observe(fd, n, copyBufSize)
			return true
		})
		if n < 0 {
			n = 0
		}
		if n > 0 {
			j.took(n, read)
		}
		switch {
		case err != nil:
			if _, cerr := f.Read(nil); cerr != nil {
				err = cerr
			}
			return nil, 0, err
		case rerr != nil:
			return j.batch(), n, &os.PathError{Op: "read", Path: f.Name(), Err: rerr}
		case n == 0:
			return nil, 0, io.EOF
		}
		return j.batch(), n, nil
	}
}

// took records n bytes read into the journal at j.pos.
func (j *streamJournal) took(n int, moveFD bool) {
	if moveFD {
		_, _ = unix.Seek(j.in, j.pos+int64(n), io.SeekStart)
	}
	j.view = j.mem[j.pos : j.pos+int64(n)]
	j.pos += int64(n)
	for k := range j.moved {
		j.moved[k] = false
	}
}

// batch returns the batch just read, for the destinations that take a
// buffer: the journal's pages themselves, or, when a pipe destination
// may reference them (they are dropped at the next reset, and touching
// them again through the mapping would fault each one in anew), a copy
// read with pread(2), which is cheaper.
func (j *streamJournal) batch() *[]byte {
	if !j.pipes || len(j.view) == 0 {
		return &j.view
	}
	bp := copyBufs.Get().(*[]byte)
	n, err := unix.Pread(j.in, (*bp)[:len(j.view)], j.pos-int64(len(j.view)))
	if err != nil || n != len(j.view) {
		copyBufs.Put(bp)
		return &j.view
	}
	j.priv = bp
	return bp
}

// put gives back a buffer the read function returned.
func (j *streamJournal) put(bp *[]byte) {
	if j == nil {
		copyBufs.Put(bp)
	} else if bp == j.priv {
		j.priv = nil
		copyBufs.Put(bp)
	}
}

// write writes b, the batch just read, to destination k (d).
func (j *streamJournal) write(k int, d io.Writer, b []byte) error {
	if j == nil || k >= j.n {
		_, err := d.Write(b)
		return err
	}
	return j.writeTo(k, d, b, j.pos)
}

// writeTo writes b, which ends at end in the journal, to destination k,
// moving its mark. On failure the mark moves too (the destination is
// dropped).
func (j *streamJournal) writeTo(k int, d io.Writer, b []byte, end int64) error {
	j.moved[k] = true
	switch j.kind[k] {
	case jkPipe:
		err := j.splice(k, d, len(b))
		if err != nil {
			_, _ = unix.Seek(j.ofd[k], end, io.SeekStart)
		}
		return err
	case jkFile:
		j.io.fileMu.Lock()
		defer j.io.fileMu.Unlock()
		var st unix.Stat_t
		var err error
		if j.fileFD[k] >= 0 {
			err = unix.Fstat(j.fileFD[k], &st) // the file written, whatever its path is now
		} else {
			err = unix.Stat(j.file[k], &st) // the file the driver writes is the one at its path
		}
		if err == nil {
			j.put64(destOff(k, fIno), st.Ino)
			j.put64(destOff(k, fSize), uint64(st.Size))
		} else {
			j.put64(destOff(k, fIno), 0)
		}
		j.put64(destOff(k, fPending), 1)
		_, err = d.Write(b)
		j.put64(destOff(k, fDone), uint64(end))
		j.put64(destOff(k, fPending), 0)
		return err
	default:
		_, err := d.Write(b)
		j.put64(destOff(k, fDone), uint64(end))
		return err
	}
}

// splice moves n bytes from destination k's description of the memfd into
// d's pipe.
func (j *streamJournal) splice(k int, d io.Writer, n int) error {
	if j.rc[k] == nil {
		rc, err := d.(syscall.Conn).SyscallConn()
		if err != nil {
			return err
		}
		j.rc[k] = rc
	}
	var serr error
	err := j.rc[k].Write(func(fd uintptr) bool {
		for n > 0 {
			m, err := unix.Splice(j.ofd[k], nil, int(fd), nil, n, unix.SPLICE_F_NONBLOCK)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return false
			case err == unix.EINVAL:
				// Not a pipe after all: write(2) from the mapping, then
				// move the description (not exact against a crash).
				p, _ := unix.Seek(j.ofd[k], 0, io.SeekCurrent)
				w, werr := unix.Write(int(fd), j.mem[p:p+int64(n)])
				if werr == unix.EAGAIN {
					return false
				}
				if w > 0 {
					_, _ = unix.Seek(j.ofd[k], int64(w), io.SeekCurrent)
					n -= w
				}
				if werr != nil && werr != unix.EINTR {
					serr = werr
					return true
				}
				continue
			case err != nil:
				serr = err
				return true
			case m == 0:
				serr = io.ErrShortWrite
				return true
			}
			n -= int(m)
		}
		return true
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "write", Path: "destination", Err: serr}
	}
	return nil
}

// written ends a batch: every destination has it (those dropped or
// skipped are moved past it), and the journal is reset once it is full.
func (j *streamJournal) written() {
	if j == nil {
		return
	}
	for k := 0; k < j.n; k++ {
		if j.moved[k] {
			continue
		}
		if j.kind[k] == jkPipe {
			_, _ = unix.Seek(j.ofd[k], j.pos, io.SeekStart)
		} else {
			j.put64(destOff(k, fDone), uint64(j.pos))
		}
	}
	if j.pos-journalHdr >= journalLimit {
		j.reset(false)
	}
}

// reset moves every position back to the start and frees the pages
// (all: also when nothing was journaled, as after an adoption, where a
// reset may have been cut short before its punch). The memfd's own position moves
// first: a crash in between leaves destinations ahead of it, which
// means nothing pending.
func (j *streamJournal) reset(all bool) {
	used := j.pos - journalHdr
	_, _ = unix.Seek(j.in, journalHdr, io.SeekStart)
	j.pos = journalHdr
	for k := 0; k < j.n; k++ {
		if j.kind[k] == jkPipe {
			_, _ = unix.Seek(j.ofd[k], journalHdr, io.SeekStart)
		} else {
			j.put64(destOff(k, fDone), journalHdr)
		}
	}
	if (used > 0 && j.pipes) || all {
		// Pages a pipe may reference are dropped, never reused; without a
		// pipe destination they are (no page allocation, no fault). The
		// whole block: a partial page would be zeroed in place.
		_ = unix.Fallocate(j.in, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, journalHdr, journalSize-journalHdr)
	}
}

// fds lists the journal's descriptors in IOFDs.Journal's order for its
// stream: the memfd, then each destination's description (0: none).
func (j *streamJournal) fds() [journalSlots]int {
	var out [journalSlots]int
	out[0] = j.in
	for k := 0; k < j.n; k++ {
		if j.kind[k] == jkPipe {
			out[1+k] = j.ofd[k]
		}
	}
	return out
}

// close unmaps and closes the journal. Only once no copier uses it.
func (j *streamJournal) close() {
	if j == nil || j.closed {
		return
	}
	j.closed = true
	if j.mem != nil {
		_ = unix.Munmap(j.mem)
		j.mem = nil
	}
	if j.in > 0 {
		_ = unix.Close(j.in)
	}
	for k, fd := range j.ofd {
		if fd > 0 {
			_ = unix.Close(fd)
			j.ofd[k] = 0
		}
	}
}

// journalRole is the custody role of slot n of IOFDs.Journal.
func journalRole(n int) string { return "journal" + strconv.Itoa(n) }

// journalSlot parses a journal role; -1 if role is not one.
func journalSlot(role string) int {
	s, ok := strings.CutPrefix(role, "journal")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n >= 2*journalSlots || strconv.Itoa(n) != s {
		return -1
	}
	return n
}

// journalRoles are the roles of stream s's journal.
func journalRoles(s logging.Stream) []string {
	b := (int(s) - 1) * journalSlots
	out := make([]string, journalSlots)
	for k := range out {
		out[k] = journalRole(b + k)
	}
	return out
}
