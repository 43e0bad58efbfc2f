package main

import (
	"runtime"
	"runtime/debug"

	"github.com/containers/conmon-v2/internal/exemap"
)

// trimmer gives back, once the daemon is quiet, the memory an idle daemon
// does not need:
//
//   - free heap pages (debug.FreeOSMemory): a burst of requests grows the
//     heap far above what the containers keep, and Go's background
//     scavenger returns the difference only slowly;
//   - the page-table entries of the executable's code and read-only data.
//     The kernel maps file pages in large blocks around every fault (whole
//     large folios, 64 KiB fault-around), so after start-up and a few
//     requests nearly the whole binary (about 11 MiB) is in the daemon's
//     RSS and PSS, although an idle daemon runs a few functions.
//     MADV_DONTNEED on a private mapping that was never written only drops
//     those entries: the pages stay in the page cache, and what the daemon
//     runs again faults back in.
//
// The spans are read once, at start, so that the trim itself allocates
// nothing and runs little code (package exemap).
type trimmer struct {
	spans exemap.Spans
}

func newTrimmer() *trimmer { return &trimmer{spans: exemap.ReadOnly()} }

func (t *trimmer) trim() {
	// A GC halves the stack of a goroutine that uses less than a quarter
	// of it: the output copiers of a burst of containers, grown while
	// they wrote, shrink over a few cycles once they wait again.
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory() // runs the GC, whose code the madvise below drops again
	t.spans.Drop()
}
