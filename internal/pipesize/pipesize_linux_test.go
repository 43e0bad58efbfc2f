package pipesize

import (
	"bytes"
	"io"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newPipe returns a pipe that is closed when the test ends.
func newPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		w.Close()
	})
	return r, w
}

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
	// A read of n bytes into a buffer of buf; with ofPipe, of the pipe's
	// size plus n bytes.
	type read struct {
		n, buf int
		ofPipe bool
	}
	for _, tc := range []struct {
		name  string
		allow bool
		reads []read
		grown bool
	}{
		{"full pipe, allowed", true, []read{{0, 128 << 10, true}}, true},
		{"full pipe, not allowed", false, []read{{0, 128 << 10, true}}, false},
		{"full buffer", true, []read{{8192, 8192, false}}, true},
		{"full buffer, not allowed", false, []read{{8192, 8192, false}}, false},
		{"partial reads", true, []read{{4096, 128 << 10, false}, {60000, 128 << 10, false}, {-4096, 128 << 10, true}, {100, 8192, false}}, false},
		{"within a page of the pipe's size", true, []read{{-16, 128 << 10, true}}, true},
		{"partial then full", true, []read{{4096, 128 << 10, false}, {0, 128 << 10, true}}, true},
		{"nothing read", true, []read{{0, 0, false}, {0, 8192, false}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newPipe(t)
			def := pipeSize(t, r)
			if def >= Busy {
				t.Skipf("pipes here start at %d", def)
			}
			g := Grower{allow: func() bool { return tc.allow }}
			for _, rd := range tc.reads {
				if rd.ofPipe {
					rd.n += def
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

// canGrow reports whether this process may grow a pipe to Busy at all
// (an unprivileged one past fs.pipe-user-pages-soft may not).
func canGrow(t *testing.T) bool {
	t.Helper()
	r, _ := newPipe(t)
	_, err := unix.FcntlInt(r.Fd(), unix.F_SETPIPE_SZ, Busy)
	return err == nil
}

// TestGrowerLifecycle drives a Grower with reads of a real pipe and a
// test clock: a busy stream's pipe is grown and stays grown while busy
// (and through pauses of fewer than Quiet reads or shorter than QuietFor),
// a quiet one is shrunk back to the kernel's size, a shrink the kernel
// refuses (the pipe holds more than fits) is retried at a later quiet
// read, and a shrunk pipe is grown again at its next full read, but shrunk
// again no sooner than QuietFor after its quiet reads began.
func TestGrowerLifecycle(t *testing.T) {
	const buf = 128 << 10 // the shim's reads
	type phase struct {
		kind  string // "busy": fill the pipe (up to buf) and read it; "quiet": 100 bytes; "told": Observe a 100-byte read, read nothing; "hold": write 100 KiB, read nothing; "drain": read all; "wait": the clock moves QuietFor on
		times int
		want  int // the pipe's size after the phase: Busy, or 0 for the kernel's
	}
	for _, tc := range []struct {
		name   string
		allow  bool
		phases []phase
	}{
		{"busy stream grows and stays grown", true, []phase{
			{"busy", 1, Busy}, {"wait", 3, Busy}, {"busy", 40, Busy},
		}},
		{"pauses of fewer than Quiet reads keep it grown", true, []phase{
			{"busy", 1, Busy}, {"quiet", 1, Busy}, {"wait", 1, Busy}, {"quiet", Quiet - 2, Busy}, {"busy", 1, Busy},
			{"quiet", 1, Busy}, {"wait", 1, Busy}, {"quiet", Quiet - 2, Busy}, {"busy", 3, Busy},
		}},
		{"quiet reads within QuietFor keep it grown", true, []phase{
			{"busy", 1, Busy}, {"quiet", 5 * Quiet, Busy}, {"busy", 1, Busy}, {"wait", 1, Busy}, {"quiet", 5 * Quiet, Busy},
		}},
		{"quiet stream shrinks back", true, []phase{
			{"busy", 5, Busy}, {"quiet", 1, Busy}, {"wait", 1, Busy}, {"quiet", Quiet - 2, Busy}, {"quiet", 1, 0}, {"quiet", 50, 0},
		}},
		{"shrink refused while the pipe holds more, retried later", true, []phase{
			{"busy", 1, Busy}, {"hold", 1, Busy}, {"told", 1, Busy}, {"wait", 1, Busy}, {"told", Quiet, Busy}, {"told", 3, Busy},
			{"drain", 1, Busy}, {"quiet", 1, 0},
		}},
		{"a busy read restarts the quiet count after a refusal", true, []phase{
			{"busy", 1, Busy}, {"hold", 1, Busy}, {"told", 1, Busy}, {"wait", 1, Busy}, {"told", Quiet, Busy}, {"drain", 1, Busy},
			{"busy", 1, Busy}, {"quiet", Quiet, Busy}, {"wait", 1, Busy}, {"quiet", 1, 0},
		}},
		{"regrown at a full read, shrunk again only after QuietFor", true, []phase{
			{"busy", 1, Busy}, {"quiet", 1, Busy}, {"wait", 1, Busy}, {"quiet", Quiet, 0},
			{"busy", 1, Busy}, {"quiet", 10 * Quiet, Busy}, {"wait", 1, Busy}, {"quiet", 1, 0},
			{"busy", 1, Busy},
		}},
		{"not allowed: nothing", false, []phase{
			{"busy", 20, 0}, {"quiet", 1, 0}, {"wait", 1, 0}, {"quiet", Quiet * 2, 0}, {"busy", 20, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.allow && !canGrow(t) {
				t.Skip("F_SETPIPE_SZ to 1 MiB is refused to this process")
			}
			r, w := newPipe(t)
			rfd, wfd := r.Fd(), w.Fd() // blocking: writes below always fit
			def := pipeSize(t, r)
			if def >= Busy {
				t.Skipf("pipes here start at %d", def)
			}
			clock := time.Unix(1e9, 0)
			g := Grower{allow: func() bool { return tc.allow }, now: func() time.Time { return clock }}
			data, into := make([]byte, buf), make([]byte, buf)
			write := func(n int) {
				if _, err := unix.Write(int(wfd), data[:n]); err != nil {
					t.Fatal(err)
				}
			}
			read := func() int {
				n, err := unix.Read(int(rfd), into)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			for i, ph := range tc.phases {
				for range ph.times {
					switch ph.kind {
					case "busy":
						write(min(buf, pipeSize(t, r)))
						g.Observe(rfd, read(), buf)
					case "quiet":
						write(100)
						g.Observe(rfd, read(), buf)
					case "told":
						g.Observe(rfd, 100, buf)
					case "hold":
						write(100 << 10)
					case "drain":
						read()
					case "wait":
						clock = clock.Add(QuietFor)
					}
				}
				want := ph.want
				if want == 0 {
					want = def
				}
				if got := pipeSize(t, r); got != want {
					t.Fatalf("phase %d (%d× %s): size %d, want %d", i, ph.times, ph.kind, got, want)
				}
			}
		})
	}
}

// TestGrowerWholeLineWriter: a writer of whole 80-byte lines in writes of
// 65,520 bytes never fills a 64 KiB pipe to the byte (the kernel keeps
// the next write for a whole free page), and its pipe still grows.
func TestGrowerWholeLineWriter(t *testing.T) {
	r, w := newPipe(t)
	def := pipeSize(t, r)
	chunk := def - def%80 // whole lines, not a multiple of a page
	if chunk%os.Getpagesize() == 0 || def >= Busy {
		t.Skipf("pipes here start at %d", def)
	}
	done := make(chan error, 1)
	go func() {
		b := make([]byte, chunk)
		_, err := w.Write(b)
		if err == nil {
			_, err = w.Write(b) // blocks until the reader makes room
		}
		done <- err
	}()
	// Once the second write waits, the pipe holds the first one.
	time.Sleep(50 * time.Millisecond)
	buf := make([]byte, 2*def)
	n, err := r.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if n == def {
		t.Skipf("the kernel filled the pipe to the byte")
	}
	g := Grower{allow: func() bool { return true }}
	g.Observe(r.Fd(), n, len(buf))
	if got := pipeSize(t, r); got < Busy {
		if !Allowed() {
			t.Skipf("F_SETPIPE_SZ is not allowed to this process: size %d", got)
		}
		t.Fatalf("a read of %d bytes from a pipe of %d left it at %d, want it grown", n, def, got)
	}
	if _, err := io.ReadFull(r, buf[:chunk*2-n]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestGrowerWants: the fast path wants the reads Observe acts on: every
// read until the pipe is known, its full reads at the kernel's size, the
// quiet reads of a grown pipe (and the busy read that ends a count), and
// nothing once done.
func TestGrowerWants(t *testing.T) {
	const def, buf = 64 << 10, 128 << 10
	for _, tc := range []struct {
		name string
		g    Grower
		n    int
		want bool
	}{
		{"unknown, any read", Grower{}, 1, true},
		{"unknown, nothing read", Grower{}, 0, false},
		{"done", Grower{size: -1}, def, false},
		{"kernel size, full", Grower{size: def}, def, true},
		{"kernel size, within a page", Grower{size: def}, def - 16, true},
		{"kernel size, partial", Grower{size: def}, def - os.Getpagesize(), false},
		{"grown, busy", Grower{size: def, grown: true}, buf, false},
		{"grown, not quiet enough", Grower{size: def, grown: true}, def / 8, false},
		{"grown, quiet", Grower{size: def, grown: true}, def/8 - 1, true},
		{"grown, busy after quiet reads", Grower{size: def, grown: true, count: 3}, buf, true},
	} {
		if got := tc.g.Wants(tc.n, buf); got != tc.want {
			t.Errorf("%s: Wants(%d, %d) = %v, want %v", tc.name, tc.n, buf, got, tc.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		g := Grower{size: def, grown: true}
		for range Quiet - 1 {
			g.Observe(^uintptr(0), 100, buf)
		}
	}); n != 0 {
		t.Errorf("Observe allocates: %v per run", n)
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

	r, _ := newPipe(t)
	def := pipeSize(t, r)
	rg := ForReader(r)
	rg.g.allow = func() bool { return true }
	rg.Observe(def, 128<<10)
	if got := pipeSize(t, r); got < Busy && Allowed() {
		t.Fatalf("size %d after a full read, want %d", got, Busy)
	}
}
