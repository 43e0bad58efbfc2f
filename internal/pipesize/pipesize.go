// Package pipesize is the project's one policy for growing the pipe of a
// busy container output stream: the shim's output copiers (package
// process) and the log pipeline (package logging, which the conmon
// drop-in reads through) both use it.
//
// The kernel gives a pipe 64 KiB. A container that writes faster than its
// monitor reads then blocks, and the monitor wakes, once per 64 KiB. Once
// a read comes back full (it took all the reader's buffer could hold, or
// the pipe's whole capacity), the stream outruns its reader and the pipe
// is grown to Busy (F_SETPIPE_SZ): one wake-up per MiB. A stream whose
// reads never come back full keeps the kernel's size. (The shim's copiers
// read 128 KiB, so for them "full" is a full pipe; the log pipeline reads
// 8 KiB until a read fills it, and growing at that first full read
// measured faster for the drop-in than waiting for a full pipe:
// docs/logging.md, "Speed".)
//
// A grown pipe is shrunk back to the size it had (the kernel's, as the
// first F_GETPIPE_SZ found it) once its stream has gone quiet: Quiet (16)
// consecutive reads came back quiet, over at least QuietFor (2 s) from
// the first of them to the last. A read is quiet when it took all the
// pipe held and that was under an eighth of the old size (8 KiB of 64
// KiB): a reader that finds the pipe that empty is well ahead of its
// writer, which the kernel's size serves as well. A stream that still
// outruns its reader fills its reads (a grown pipe holds more than any
// buffer), so a steady busy stream is never shrunk; one busy read
// restarts the count, so a stream whose reader only now and then catches
// up (bursts, or a writer a little slower than its reader) stays grown.
// The kernel refuses to shrink a pipe that holds more slots than fit
// (EBUSY): the next quiet read tries again. A shrunk pipe is grown again,
// by the same rule, at its next full read; as a shrink takes 2 s of
// quiet, a pipe changes size at most twice per 2 s (and a refused shrink
// is retried only at a quiet read). Any other refusal, of a growth or a
// shrink, ends it for that pipe. The Grower sees only reads, with a clock
// read at the first quiet read of a run and at each one from the 16th
// (no timer, no goroutine): a stream that stops dead right after a
// burst, with no small reads after it, keeps its grown pipe until it
// writes again (2 s of small reads) or exits.
//
// What the kernel does (fs/pipe.c: account_pipe_buffers,
// too_many_pipe_buffers_soft/_hard, pipe_is_unprivileged_user,
// alloc_pipe_info, pipe_set_size): every pipe's pages are charged, always,
// to the user that created it (its real uid; user_struct is global, so a
// uid inside a user namespace is charged as the host uid it maps to), and
// stay charged until the pipe is freed. The limits fs.pipe-user-pages-soft
// (default 16384 pages, 64 MiB) and fs.pipe-user-pages-hard (default 0,
// none) bind only a process that is "unprivileged": without
// CAP_SYS_RESOURCE and without CAP_SYS_ADMIN in the initial user
// namespace (capable()). Past the soft limit such a process gets pipes of
// two pages and cannot grow one. Privilege thus exempts the process that
// holds it; it does not stop the charge.
//
// The rule (Decide): grow only when
//   - both limits are off (fs.pipe-user-pages-soft and -hard are 0):
//     nobody is limited, whatever is charged; or
//   - the process runs in the initial user namespace (an identity
//     uid_map, and /proc/self/ns/user is that namespace's inode) with
//     CAP_SYS_RESOURCE or CAP_SYS_ADMIN effective: a rootful engine,
//     whose pipes are charged to root.
//
// Under a rootless engine (rootless Podman, containerd in RootlessKit) the
// monitor's pipes are charged to the user who runs it, and that user's
// other processes, in any program, are unprivileged: each grown pipe would
// take 256 of their 16384 pages while it stays grown, and past that
// every new pipe of theirs gets two pages. There pipes keep the kernel's
// size, as with conmon.
//
// What remains under a rootful engine: root's charge is shared with
// processes that run as host uid 0 without those capabilities, chiefly
// containers without a user namespace (engines drop CAP_SYS_RESOURCE and
// CAP_SYS_ADMIN by default). Each grown pipe takes 256 of root's 16384
// soft pages from them, but only while its stream is busy: 2 s of quiet
// reads give back the 240 above the kernel's 16. It takes some 60 streams
// busy at the same time on one host (fewer, by what root's other pipes
// hold), not 60 that were ever busy, before those containers' new pipes
// get two pages; a stream that fell silent right after a burst still
// counts until it writes again or exits (above). No interface shows a
// user's charge, so no budget is kept here.
package pipesize

import (
	"os"
	"strings"
	"time"
)

// Busy is what a busy stream's pipe is grown to: 1 MiB, the default
// fs.pipe-max-size, so no CAP_SYS_RESOURCE is needed for the size itself.
const Busy = 1 << 20

// Capability bits (linux/capability.h).
const (
	capSysAdmin    = 21
	capSysResource = 24
)

// Facts is what the decision depends on, as read from this process's
// /proc (ReadFacts) or given by a test.
type Facts struct {
	UIDMap []byte // /proc/self/uid_map; nil if unreadable
	CapEff uint64 // effective capabilities (capget(2) or CapEff in /proc/self/status)
	// fs.pipe-user-pages-soft and -hard, in pages: 0 is no limit, -1
	// unknown (unreadable: counted as a limit).
	SoftPages, HardPages int64
	// UserNS is the inode of /proc/self/ns/user; 0 if unknown. A child
	// user namespace can be given an identity uid_map too, but its
	// capabilities are not the initial namespace's, where the kernel
	// checks them.
	UserNS uint64
}

// initUserNS is the inode number of the initial user namespace
// (PROC_USER_INIT_INO in the kernel's include/linux/proc_ns.h, fixed).
const initUserNS = 0xEFFFFFFD

// Decide reports whether a process with facts f grows busy pipes: see the
// package comment for the rule and why.
func Decide(f Facts) bool {
	if f.SoftPages == 0 && f.HardPages == 0 {
		return true
	}
	const privileged = 1<<capSysResource | 1<<capSysAdmin
	initial := identityIDMap(f.UIDMap) && (f.UserNS == 0 || f.UserNS == initUserNS)
	return initial && f.CapEff&privileged != 0
}

// identityIDMap reports whether an uid_map is the initial user namespace's:
// every id mapped to itself.
func identityIDMap(m []byte) bool {
	f := strings.Fields(string(m))
	return len(f) == 3 && f[0] == "0" && f[1] == "0" && f[2] == "4294967295"
}

// A grown pipe is shrunk once its stream has gone quiet: Quiet
// consecutive quiet reads (Grower) over at least QuietFor, from the first
// of them to the last.
const (
	Quiet    = 16
	QuietFor = 2 * time.Second
)

// Grower grows one pipe to Busy when a read comes back full, and shrinks
// it back to the size it had once its stream has gone quiet (Quiet,
// QuietFor); it grows it again at the next full read. Its zero value asks
// Allowed and reads the clock with time.Now; it is not safe for
// concurrent use (one reader owns it) and allocates nothing.
type Grower struct {
	size  int              // 0: not asked yet; >0: the pipe's size before growth; <0: done (never to grow or shrink)
	grown bool             // the pipe is Busy (size > 0)
	count int              // grown: consecutive quiet reads
	since time.Time        // grown, count > 0: when the first of them was observed
	allow func() bool      // nil: Allowed; tests inject
	now   func() time.Time // nil: time.Now; tests inject
}

// Wants reports whether a read of n bytes into a buffer of buf bytes
// needs Observe: a few integer compares, so that a reader that must fetch
// the descriptor for Observe can skip that. A grown pipe wants its quiet
// reads, and the first busy read after some (which restarts the count);
// a pipe at its own size wants its full reads.
func (g *Grower) Wants(n, buf int) bool {
	switch {
	case n <= 0 || g.size < 0:
		return false
	case g.size == 0:
		return true
	case g.grown:
		return g.count > 0 || quiet(n, buf, g.size)
	}
	return full(n, buf, g.size)
}

// full reports whether a read of n bytes into a buffer of buf bytes, from
// a pipe of size bytes, came back full: it took all the buffer could
// hold, or all the pipe could. A full pipe can hold up to a page less
// than its size: a write larger than a page that is not a multiple of it
// (say 65,520 bytes of whole 80-byte lines) fills the pipe's last page
// only partly, and the next such write waits for a whole free page. So a
// read within a page of the pipe's size counts as full.
func full(n, buf, size int) bool {
	if buf < size {
		return n >= buf
	}
	return n > size-os.Getpagesize()
}

// quiet reports whether a read of n bytes into a buffer of buf bytes
// came back quiet for a pipe whose size before growth is size: it took
// everything the pipe held (less than the buffer) and that was under an
// eighth of size. A stream whose reader finds its pipe that empty, read
// after read, does not need more than the kernel's size.
func quiet(n, buf, size int) bool { return n < buf && n < size>>3 }
