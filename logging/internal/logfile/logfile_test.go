package logfile_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/internal/logfile"
)

// plain encodes a record as its line and a newline.
type plain struct{}

func (plain) Encode(dst []byte, r *logging.Record) []byte {
	return append(append(dst, r.Line...), '\n')
}

func appendN(t *testing.T, f *logfile.File, n int, format string) {
	t.Helper()
	for i := range n {
		r := logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: fmt.Appendf(nil, format, i)}
		if err := f.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

func TestTruncateModeLikeConmon(t *testing.T) {
	// conmon.md §3.3: 60 lines of 53 bytes with max 1000 leave only the
	// last lines; the file never exceeds the limit.
	p := filepath.Join(t.TempDir(), "ctr.log")
	f, err := logfile.Open(logfile.Options{Path: p, MaxSize: 1000, Truncate: true}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 60, "line %02d "+strings.Repeat("x", 44))
	f.Close()
	got := read(t, p)
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(got) > 1000 || !strings.HasPrefix(lines[len(lines)-1], "line 59 ") {
		t.Fatalf("%d bytes, last %q", len(got), lines[len(lines)-1])
	}
	// 18 lines of 53 bytes fit in 1000: 60 = 3*18 + 6.
	if len(lines) != 6 {
		t.Fatalf("got %d lines, want 6", len(lines))
	}
	if _, err := os.Stat(p + ".1"); !os.IsNotExist(err) {
		t.Fatal("truncate mode kept a backup")
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatal("left a .tmp file")
	}
}

func TestRotationKeepsFilesAndEveryLine(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprint("compress=", compress), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "ctr.log")
			f, err := logfile.Open(logfile.Options{Path: p, MaxSize: 1000, MaxFiles: 3, Compress: compress}, plain{})
			if err != nil {
				t.Fatal(err)
			}
			appendN(t, f, 100, "seq %04d "+strings.Repeat("y", 40)) // 50 bytes: 20 per file
			f.Close()
			ext := ""
			if compress {
				ext = ".gz"
			}
			for _, name := range []string{p, p + ".1" + ext, p + ".2" + ext} {
				if _, err := os.Stat(name); err != nil {
					t.Fatalf("missing %s", name)
				}
			}
			if _, err := os.Stat(p + ".3" + ext); !os.IsNotExist(err) {
				t.Fatal("kept more than max-files")
			}
			cur := read(t, p)
			if len(cur) > 1000 || !strings.Contains(cur, "seq 0099") || !strings.HasPrefix(cur, "seq 0080") {
				t.Fatalf("current file: %q", cur)
			}
		})
	}
}

func TestSizeStartsFromExistingFile(t *testing.T) {
	// conmon#266: a restarted container's log still rotates.
	p := filepath.Join(t.TempDir(), "ctr.log")
	os.WriteFile(p, bytes.Repeat([]byte("old line\n"), 100), 0o600) // 900 bytes
	f, err := logfile.Open(logfile.Options{Path: p, MaxSize: 1000, MaxFiles: 2}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 20, "new %03d")
	f.Close()
	if fi, err := os.Stat(p); err != nil || fi.Size() > 1000 {
		t.Fatalf("current file %v %v", fi.Size(), err)
	}
	if !strings.HasPrefix(read(t, p+".1"), "old line") {
		t.Fatal("old content not rotated")
	}
}

func TestGlobalSizeMax(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ctr.log")
	f, err := logfile.Open(logfile.Options{Path: p, GlobalSizeMax: 100}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 30, "%09d") // 10 bytes each
	f.Close()
	if got := read(t, p); len(got) != 100 {
		t.Fatalf("wrote %d bytes, want 100", len(got))
	}
	if lines, _ := f.Lost(); lines != 20 {
		t.Fatalf("lost %d, want 20", lines)
	}
}

func TestReopenAfterRename(t *testing.T) {
	// kubelet's ReopenContainerLog: rename, then reopen.
	dir := t.TempDir()
	p := filepath.Join(dir, "ctr.log")
	f, err := logfile.Open(logfile.Options{Path: p}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 1, "before %d")
	os.Rename(p, p+".rotated")
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 1, "after %d")
	f.Close()
	if read(t, p+".rotated") != "before 0\n" || read(t, p) != "after 0\n" {
		t.Fatalf("got %q and %q", read(t, p+".rotated"), read(t, p))
	}
	// Reopen without a rename keeps the content (conmon would truncate).
	f, _ = logfile.Open(logfile.Options{Path: p}, plain{})
	f.Reopen()
	appendN(t, f, 1, "again %d")
	f.Close()
	if read(t, p) != "after 0\nagain 0\n" {
		t.Fatalf("got %q", read(t, p))
	}
}

func TestFullDiskNeverFailsHard(t *testing.T) {
	// /dev/full refuses every write with ENOSPC: what is held stays under
	// MaxPending, the rest is counted lost, and nothing panics or blocks.
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	f, err := logfile.Open(logfile.Options{Path: "/dev/full", MaxPending: 4096, FlushAt: 1024}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	var errs int
	for i := range 1000 {
		r := logging.Record{Stream: logging.Stdout, Line: fmt.Appendf(nil, "line %04d", i)}
		if f.Append(&r) != nil {
			errs++
		}
	}
	if f.Flush() == nil || errs == 0 {
		t.Fatal("no error reported on a full disk")
	}
	lines, nbytes := f.Lost()
	if lines < 1000-410 || nbytes == 0 {
		t.Fatalf("lost %d lines %d bytes", lines, nbytes)
	}
	if !strings.Contains(f.LastError(), "no space") {
		t.Fatalf("last error %q", f.LastError())
	}
	f.Close()
	if l, _ := f.Lost(); l != 1000 {
		t.Fatalf("after close lost %d of 1000", l)
	}
}

func TestFailedReopenRetriesAtNextWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	os.MkdirAll(dir, 0o755)
	p := filepath.Join(dir, "ctr.log")
	f, err := logfile.Open(logfile.Options{Path: p}, plain{})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, f, 1, "first %d")
	os.RemoveAll(dir) // the directory is gone: the reopen cannot create the file
	if err := f.Reopen(); err == nil {
		t.Fatal("reopen into a missing directory succeeded")
	}
	r := logging.Record{Line: []byte("held")}
	f.Append(&r) // held: no file
	if f.Flush() == nil {
		t.Fatal("flush without a file succeeded")
	}
	os.MkdirAll(dir, 0o755) // back
	appendN(t, f, 1, "after %d")
	f.Close()
	if got := read(t, p); got != "held\nafter 0\n" {
		t.Fatalf("got %q", got)
	}
}
