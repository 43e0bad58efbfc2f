package main

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"

	"golang.org/x/sys/unix"
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
// nothing and runs little code.
type trimmer struct {
	spans [][2]uintptr
}

func newTrimmer() *trimmer { return &trimmer{spans: readOnlyExeSpans()} }

func (t *trimmer) trim() {
	// A GC halves the stack of a goroutine that uses less than a quarter
	// of it: the output copiers of a burst of containers, grown while
	// they wrote, shrink over a few cycles once they wait again.
	for range 3 {
		runtime.GC()
	}
	debug.FreeOSMemory() // runs the GC, whose code the madvise below drops again
	for _, sp := range t.spans {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, sp[0], sp[1]-sp[0], unix.MADV_DONTNEED)
	}
}

// readOnlyExeSpans lists the mappings of the executable that are readable
// and never written (r-xp, r--p) from /proc/self/maps.
func readOnlyExeSpans() [][2]uintptr {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil
	}
	defer f.Close()
	var spans [][2]uintptr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 6 || string(fields[5]) != exe {
			continue
		}
		if p := string(fields[1]); p != "r-xp" && p != "r--p" {
			continue
		}
		lo, hi, ok := bytes.Cut(fields[0], []byte("-"))
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(string(lo), 16, 64)
		e, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			continue
		}
		spans = append(spans, [2]uintptr{uintptr(s), uintptr(e)})
	}
	return spans
}
