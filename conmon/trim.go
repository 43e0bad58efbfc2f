package conmon

import (
	"runtime/debug"

	"github.com/containers/conmon-v2/internal/exemap"
)

// TrimMemory gives back what the monitor's start-up touched and an idle
// monitor no longer needs: freed heap pages (debug.FreeOSMemory) and the
// page-table entries of the executable's read-only mappings (code and
// read-only data; package exemap says why that is safe and pays).
//
// withGC also runs a garbage collection first and returns free heap pages
// to the kernel; the GC's own code then runs (and faults back in) for a
// while, so a later call without GC trims what that touched.
//
// It returns a function that repeats the trim of the mappings alone, with
// nothing but the madvise calls, so that the trim itself runs as little
// code as possible (every page it runs is mapped again).
func TrimMemory(withGC bool) (again func()) {
	if withGC {
		debug.FreeOSMemory()
	}
	again = exemap.ReadOnly().Drop
	again()
	return again
}
