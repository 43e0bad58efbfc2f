package conmon

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// TrimMemory gives back what the monitor's start-up touched and an idle
// monitor no longer needs: freed heap pages (debug.FreeOSMemory) and the
// page-table entries of the executable's read-only mappings (code and
// read-only data). The kernel maps file pages 64 KiB around every fault,
// so after start-up most of the binary counts in the process's RSS and
// PSS although an idle monitor runs a few functions only; MADV_DONTNEED on
// a private, never written file mapping just drops those entries, and the
// pages an idle monitor does run fault back in from the page cache. The
// writable data mapping is never touched.
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
	spans := readOnlyExeSpans()
	again = func() {
		for _, sp := range spans {
			_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(sp.start), uintptr(sp.end-sp.start), unix.MADV_DONTNEED)
		}
	}
	again()
	return again
}

type span struct{ start, end uint64 }

func readOnlyExeSpans() []span {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil
	}
	defer f.Close()
	var spans []span
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe {
			continue
		}
		perms := fields[1]
		if perms != "r-xp" && perms != "r--p" {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || e <= s {
			continue
		}
		spans = append(spans, span{s, e})
	}
	return spans
}
