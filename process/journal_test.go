package process

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// fileDest is a destination appending to a file of its own (a LogFiler,
// as the logging tap is), which can be made to die half-way through a
// write, as a killed daemon would.
type fileDest struct {
	f       *os.File
	dieHalf bool
}

var errDied = errors.New("killed")

func (d *fileDest) Write(b []byte) (int, error) {
	if d.dieHalf {
		_, _ = d.f.Write(b[:len(b)/2])
		panic(errDied)
	}
	return d.f.Write(b)
}
func (d *fileDest) Close() error    { return nil }
func (d *fileDest) LogFile() string { return d.f.Name() }
func (d *fileDest) content() string { b, _ := os.ReadFile(d.f.Name()); return string(b) }
func openFileDest(t *testing.T, p string) *fileDest {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fileDest{f: f}
}

// bufDest is a destination with no mark of its own.
type bufDest struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (d *bufDest) Write(b []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.b.Write(b)
}
func (d *bufDest) Close() error { return nil }

// TestJournalReplay kills (in effect) a copier at each point of a batch:
// after its read, after some of its writes, in the middle of the file
// destination's write, after all of them; a new journal made from the
// descriptors a keeper would hold then writes what each destination
// misses: every destination has the batch exactly once.
func TestJournalReplay(t *testing.T) {
	const batch = "one\ntwo\nthree\n"
	for _, tc := range []struct {
		name      string
		written   int  // destinations written before the kill
		cutFile   bool // the kill lands inside the file destination's write
		cutReplay bool // and the next daemon is killed inside its replay's
	}{
		{"after the read", 0, false, false},
		{"after the pipe", 1, false, false},
		{"inside the file write", 1, true, false},
		{"inside the file write, twice", 1, true, true},
		{"after the file", 2, false, false},
		{"after every write", 3, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, srcW := pipe(t)
			pr, pw := pipe(t)
			file := openFileDest(t, filepath.Join(t.TempDir(), "log"))
			buf := &bufDest{}
			dests := []io.WriteCloser{pw, file, buf}
			j, err := newStreamJournal(&ioJournal{}, nil, dests)
			if err != nil {
				t.Fatal(err)
			}
			if j.kind != [JournalMaxDests]uint8{jkPipe, jkFile, jkOther} {
				t.Fatalf("kinds %v", j.kind)
			}
			if _, err := srcW.WriteString("zero\n"); err != nil {
				t.Fatal(err)
			}
			copyBatch(t, j, src, dests) // a batch written everywhere before
			// The keeper's duplicates.
			var held []int
			for _, fd := range j.fds() {
				if fd > 0 {
					fd, _ = unix.Dup(fd)
				}
				held = append(held, fd)
			}
			if _, err := srcW.WriteString(batch); err != nil {
				t.Fatal(err)
			}
			read := j.reader(src)
			bp, n, err := read()
			if err != nil || string((*bp)[:n]) != batch {
				t.Fatalf("read %q %v", (*bp)[:n], err)
			}
			for k := 0; k < tc.written; k++ {
				if err := j.write(k, dests[k], (*bp)[:n]); err != nil {
					t.Fatal(err)
				}
			}
			if tc.cutFile {
				file.dieHalf = true
				func() {
					defer func() {
						if r := recover(); r != errDied {
							t.Fatalf("recovered %v", r)
						}
					}()
					_ = j.write(1, file, (*bp)[:n])
				}()
				file.dieHalf = false
				if got := file.content(); got != "zero\n"+batch[:len(batch)/2] {
					t.Fatalf("file after the cut write: %q", got)
				}
			}
			j.close() // the daemon dies: the keeper's descriptors remain

			j2, err := newStreamJournal(&ioJournal{}, held, dests)
			if err != nil {
				t.Fatal(err)
			}
			alive := []bool{true, true, true}
			if tc.cutReplay {
				held = held[:0]
				for _, fd := range j2.fds() {
					if fd > 0 {
						fd, _ = unix.Dup(fd)
					}
					held = append(held, fd)
				}
				file.dieHalf = true
				func() {
					defer func() {
						if r := recover(); r != errDied {
							t.Fatalf("recovered %v", r)
						}
					}()
					j2.replay(dests, alive, func(k int, err error) { t.Errorf("destination %d: %v", k, err) })
				}()
				file.dieHalf = false
				j2.close()
				if j2, err = newStreamJournal(&ioJournal{}, held, dests); err != nil {
					t.Fatal(err)
				}
			}
			defer j2.close()
			j2.replay(dests, alive, func(k int, err error) { t.Errorf("destination %d: %v", k, err) })
			want := "zero\n" + batch
			if got := readAvail(t, pr); got != want {
				t.Errorf("pipe destination got %q, want %q", got, want)
			}
			if got := file.content(); got != want {
				t.Errorf("file destination has %q, want %q", got, want)
			}
			if got := buf.b.String(); got != want {
				t.Errorf("buffer destination got %q, want %q", got, want)
			}
			// And copying goes on from the same journal.
			if _, err := srcW.WriteString("four\n"); err != nil {
				t.Fatal(err)
			}
			copyBatch(t, j2, src, dests)
			if got := readAvail(t, pr); got != "four\n" {
				t.Errorf("pipe destination then got %q", got)
			}
			if got := file.content(); got != want+"four\n" {
				t.Errorf("file destination then has %q", got)
			}
		})
	}
}

// TestJournalResets: many batches through a journal, past its limit many
// times, with the pipe destination read only at the end: the pages the
// pipe still references when the journal is reset keep their bytes.
func TestJournalResets(t *testing.T) {
	src, srcW := pipe(t)
	pr, pw := pipe(t)
	for _, f := range []*os.File{srcW, pw} {
		rc, _ := f.SyscallConn()
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
	file := openFileDest(t, filepath.Join(t.TempDir(), "log"))
	dests := []io.WriteCloser{pw, file}
	j, err := newStreamJournal(&ioJournal{}, nil, dests)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	var want strings.Builder
	for b := 0; b < 40; b++ {
		line := strings.Repeat(string(rune('a'+b%26)), 9000) + "\n"
		want.WriteString(line)
		if _, err := srcW.WriteString(line); err != nil {
			t.Fatal(err)
		}
		copyBatch(t, j, src, dests)
	}
	if got := readAvail(t, pr); got != want.String() {
		t.Errorf("pipe destination: %d bytes, want %d (equal: %v)", len(got), want.Len(), got == want.String())
	}
	if got := file.content(); got != want.String() {
		t.Errorf("file destination: %d bytes, want %d", len(got), want.Len())
	}
}

// copyBatch does what the copier does with one read.
func copyBatch(t *testing.T, j *streamJournal, src io.Reader, dests []io.WriteCloser) {
	t.Helper()
	bp, n, err := j.reader(src)()
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range dests {
		if err := j.write(k, d, (*bp)[:n]); err != nil {
			t.Fatal(err)
		}
	}
	j.written()
}

func pipe(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// readAvail reads what the pipe holds now.
func readAvail(t *testing.T, r *os.File) string {
	t.Helper()
	var out []byte
	buf := make([]byte, 64<<10)
	rc, _ := r.SyscallConn()
	for {
		var n int
		var err error
		_ = rc.Control(func(fd uintptr) { n, err = unix.Read(int(fd), buf) })
		if n > 0 {
			out = append(out, buf[:n]...)
		}
		if err == unix.EAGAIN || n == 0 {
			return string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestJournalRoles: the journal's descriptors have custody roles that
// Slot and Roles agree on.
func TestJournalRoles(t *testing.T) {
	var d IOFDs
	for _, r := range []string{"journal0", "journal9"} {
		p := d.Slot(r)
		if p == nil {
			t.Fatalf("Slot(%q) = nil", r)
		}
		*p = 42
	}
	for _, r := range []string{"journal10", "journal-1", "journal01", "journalx", "journal"} {
		if d.Slot(r) != nil {
			t.Errorf("Slot(%q) is a slot", r)
		}
	}
	if got := strings.Join(d.Roles(), ","); got != "journal0,journal9" {
		t.Errorf("Roles = %s", got)
	}
	if got := len(d.List()); got != 2 {
		t.Errorf("List has %d", got)
	}
}

// BenchmarkCopyBatch is one batch of the copier (a read of the pipe and
// its write to a file:// destination, and to a FIFO that a goroutine
// drains), without a journal (the default) and with one (under a
// keeper): the journal's cost per read.
func BenchmarkCopyBatch(b *testing.B) {
	for _, size := range []int{80 * 50, 64 << 10} {
		for _, fifo := range []bool{false, true} {
			for _, journaled := range []bool{false, true} {
				name := fmt.Sprintf("%dB/file/plain", size)
				if fifo {
					name = fmt.Sprintf("%dB/file+fifo/plain", size)
				}
				if journaled {
					name = strings.TrimSuffix(name, "plain") + "journal"
				}
				b.Run(name, func(b *testing.B) { benchCopyBatch(b, size, fifo, journaled) })
			}
		}
	}
}

func benchCopyBatch(b *testing.B, size int, fifo, journaled bool) {
	src, srcW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	defer srcW.Close()
	rc, _ := srcW.SyscallConn()
	_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	dest := &sharedWriter{w: f, r: &refCloser{c: f, n: 1}}
	dests := []io.WriteCloser{dest}
	if fifo {
		fr, fw, err := os.Pipe()
		if err != nil {
			b.Fatal(err)
		}
		drained := make(chan struct{})
		go func() { // owned by the benchmark: ends at fw's close
			defer close(drained)
			_, _ = io.Copy(io.Discard, fr)
		}()
		defer func() { fw.Close(); <-drained; fr.Close() }()
		dests = append(dests, fw)
	}
	var j *streamJournal
	if journaled {
		if j, err = newStreamJournal(&ioJournal{}, nil, dests); err != nil {
			b.Fatal(err)
		}
		defer j.close()
	}
	chunk := bytes.Repeat([]byte(strings.Repeat("x", 79)+"\n"), size/80+1)[:size]
	read := j.reader(src)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		if n%64 == 0 {
			b.StopTimer()
			_ = f.Truncate(0)
			b.StartTimer()
		}
		if _, err := srcW.Write(chunk); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < size; {
			bp, m, err := read()
			if err != nil {
				b.Fatal(err)
			}
			for k, d := range dests {
				if err := j.write(k, d, (*bp)[:m]); err != nil {
					b.Fatal(err)
				}
			}
			j.written()
			j.put(bp)
			got += m
		}
	}
}
