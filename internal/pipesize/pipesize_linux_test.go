package pipesize

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func pipeSize(t *testing.T, f *os.File) int {
	t.Helper()
	sz, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	return sz
}

// TestGrower: a pipe is grown once a read comes back full (it filled the
// buffer or took the whole pipe), and only where the policy allows; reads
// that did not come back full change nothing.
func TestGrower(t *testing.T) {
	type read struct{ n, buf int } // n < 0: the pipe's size
	for _, tc := range []struct {
		name  string
		allow bool
		reads []read
		grown bool
	}{
		{"full pipe, allowed", true, []read{{-1, 128 << 10}}, true},
		{"full pipe, not allowed", false, []read{{-1, 128 << 10}}, false},
		{"full buffer", true, []read{{8192, 8192}}, true},
		{"full buffer, not allowed", false, []read{{8192, 8192}}, false},
		{"partial reads", true, []read{{4096, 128 << 10}, {60000, 128 << 10}, {65535, 128 << 10}, {100, 8192}}, false},
		{"partial then full", true, []read{{4096, 128 << 10}, {-1, 128 << 10}}, true},
		{"nothing read", true, []read{{0, 0}, {0, 8192}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			defer w.Close()
			def := pipeSize(t, r)
			if def >= Busy {
				t.Skipf("pipes here start at %d", def)
			}
			g := Grower{allow: func() bool { return tc.allow }}
			for _, rd := range tc.reads {
				if rd.n < 0 {
					rd.n = def
				}
				g.Observe(r.Fd(), rd.n, rd.buf)
			}
			got := pipeSize(t, r)
			if tc.grown && got < Busy {
				if !Allowed() {
					t.Skipf("F_SETPIPE_SZ is not allowed to this process: size %d", got)
				}
				t.Fatalf("size %d, want %d", got, Busy)
			}
			if !tc.grown && got != def {
				t.Fatalf("size %d, want the kernel's %d", got, def)
			}
			if tc.grown && g.Wants(def, def) {
				t.Fatal("Grower still wants reads after growing")
			}
		})
	}
}

// TestReaderGrower: the io.Reader form grows the pipe behind an *os.File
// whose read returned the pipe's size, and is a no-op for a reader
// without a descriptor.
func TestReaderGrower(t *testing.T) {
	if ForReader(bytes.NewReader(nil)) != nil {
		t.Fatal("ForReader of a bytes.Reader is not nil")
	}
	var none *ReaderGrower
	none.Observe(1<<20, 1<<20) // must not panic

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	def := pipeSize(t, r)
	rg := ForReader(r)
	rg.g.allow = func() bool { return true }
	rg.Observe(def, 128<<10)
	if got := pipeSize(t, r); got < Busy && Allowed() {
		t.Fatalf("size %d after a full read, want %d", got, Busy)
	}
}
