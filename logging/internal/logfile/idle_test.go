package logfile

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/containers/conmon-v2/logging"
)

type lineEnc struct{}

func (lineEnc) Encode(dst []byte, r *logging.Record) []byte {
	return append(append(dst, r.Line...), '\n')
}

// An idle log holds no batch buffer: it is taken for a read's entries and
// given back once Flush wrote them, so N idle containers do not hold N
// batches. A steady stream reuses pooled buffers without allocating.
func TestIdleFileHoldsNoBuffer(t *testing.T) {
	f, err := Open(Options{Path: filepath.Join(t.TempDir(), "ctr.log")}, lineEnc{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.buf != nil {
		t.Fatalf("a new file holds a %d-byte buffer", cap(f.buf))
	}
	r := logging.Record{Time: time.Now(), Stream: logging.Stdout, Line: []byte("hello")}
	if err := f.Append(&r); err != nil {
		t.Fatal(err)
	}
	if f.buf == nil {
		t.Fatal("Append held its entry without a buffer")
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if f.buf != nil {
		t.Fatalf("after Flush the file still holds a %d-byte buffer", cap(f.buf))
	}
	allocs := testing.AllocsPerRun(200, func() {
		for range 10 {
			_ = f.Append(&r)
		}
		_ = f.Flush()
	})
	if allocs > 0 {
		t.Fatalf("%.1f allocations per read batch, want 0", allocs)
	}
}
