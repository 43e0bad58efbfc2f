// Package exemap drops the page-table entries of a process's own
// executable. The kernel maps file pages in large blocks around every
// fault (64 KiB fault-around, whole large folios), so after start-up most
// of a Go binary counts in the process's RSS and PSS although an idle
// monitor runs a few functions only. MADV_DONTNEED on a private mapping
// that was never written only drops those entries: the pages stay in the
// page cache, and what the process runs again faults back in. The
// writable data mapping is never touched. The shim daemon and the conmon
// drop-in both trim this way when idle.
package exemap

import (
	"bufio"
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Spans are address ranges [start, end) of the executable's mappings
// that are readable and never written (r-xp, r--p).
type Spans [][2]uintptr

// ReadOnly lists them from /proc/self/maps; nil when it cannot be read.
// Read it once and Drop many times: Drop then runs no code but the
// madvise calls (every page the trim runs is mapped again).
func ReadOnly() Spans {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return nil
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil
	}
	defer f.Close()
	var spans Spans
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

// Drop drops the page-table entries of the spans (MADV_DONTNEED).
func (s Spans) Drop() {
	for _, sp := range s {
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, sp[0], sp[1]-sp[0], unix.MADV_DONTNEED)
	}
}
