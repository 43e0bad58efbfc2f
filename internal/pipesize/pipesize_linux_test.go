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

// TestGrower: a pipe is grown once a read returns its whole size, and only
// where the policy allows; a read that did not find it full, or a second
// full one after a refusal, changes nothing.
func TestGrower(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow bool
		reads []int // each read: bytes, as a fraction of the kernel's size when negative (-1: all)
		grown bool
	}{
		{"full read, allowed", true, []int{-1}, true},
		{"full read, not allowed", false, []int{-1}, false},
		{"partial reads", true, []int{4096, 60000, 65535}, false},
		{"partial then full", true, []int{4096, -1}, true},
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
			for _, n := range tc.reads {
				if n < 0 {
					n = def
				}
				g.Observe(r.Fd(), n)
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
			if g.Wants(def) && tc.grown {
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
	none.Observe(1 << 20) // must not panic

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	def := pipeSize(t, r)
	rg := ForReader(r)
	rg.g.allow = func() bool { return true }
	rg.Observe(def)
	if got := pipeSize(t, r); got < Busy && Allowed() {
		t.Fatalf("size %d after a full read, want %d", got, Busy)
	}
}
