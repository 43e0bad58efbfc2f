package pipesize

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// allowed is the decision for this process, computed once: the facts do
// not change while it runs (capabilities are not raised, the namespace
// is not left, the sysctls are the administrator's). Like a sync.Pool, it
// is a cache of what the process is, not state that code changes.
var allowed = sync.OnceValue(func() bool { return Decide(ReadFacts()) })

// Allowed reports whether this process grows busy pipes (Decide on
// ReadFacts, once per process).
func Allowed() bool { return allowed() }

// ReadFacts reads this process's Facts.
func ReadFacts() Facts {
	f := Facts{SoftPages: sysctlPages("pipe-user-pages-soft"), HardPages: sysctlPages("pipe-user-pages-hard")}
	if m, err := os.ReadFile("/proc/self/uid_map"); err == nil {
		f.UIDMap = m
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/user", &st); err == nil {
		f.UserNS = st.Ino
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err == nil {
		f.CapEff = uint64(data[1].Effective)<<32 | uint64(data[0].Effective)
	}
	return f
}

func sysctlPages(name string) int64 {
	b, err := os.ReadFile("/proc/sys/fs/" + name)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// Observe is called with the pipe's descriptor after each read of n
// bytes into a buffer of buf bytes (at least when Wants). The first call
// learns the pipe's size (F_GETPIPE_SZ; not a pipe, already Busy or more,
// or not Allowed: done). A read that came back full, taking all the
// buffer could hold or all the pipe could, shows a stream that outruns
// its reader: the pipe is grown to Busy. Once Quiet consecutive reads of
// the grown pipe came back quiet, over at least QuietFor, it is shrunk to
// its learned size; the kernel refuses (EBUSY) while the pipe holds more
// than that size's slots, and the next quiet read tries again. A shrunk
// pipe is grown again at its next full read. Any other refusal, of a
// growth or a shrink, ends it: the pipe keeps the size it has.
func (g *Grower) Observe(fd uintptr, n, buf int) {
	if !g.Wants(n, buf) {
		return
	}
	switch {
	case g.size == 0:
		allow := g.allow
		if allow == nil {
			allow = Allowed
		}
		sz, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0)
		if !allow() || err != nil || sz <= 0 || sz >= Busy {
			g.size = -1
			return
		}
		g.size = sz
		if !full(n, buf, sz) {
			return
		}
	case g.grown:
		if !quiet(n, buf, g.size) {
			g.count = 0
			return
		}
		if g.count++; g.count == 1 {
			g.since = g.clock()
		}
		if g.count < Quiet || g.clock().Sub(g.since) < QuietFor {
			return
		}
		switch _, err := unix.FcntlInt(fd, unix.F_SETPIPE_SZ, g.size); err {
		case nil:
			g.grown, g.count = false, 0
		case unix.EBUSY: // more than fits: at the next quiet read
		default:
			g.size = -1
		}
		return
	}
	if _, err := unix.FcntlInt(fd, unix.F_SETPIPE_SZ, Busy); err != nil {
		g.size = -1
		return
	}
	g.grown, g.count = true, 0
}

func (g *Grower) clock() time.Time {
	if g.now == nil {
		return time.Now()
	}
	return g.now()
}

// ReaderGrower is a Grower for a reader that exposes its descriptor
// (syscall.Conn, like *os.File), for readers that do not hold it.
type ReaderGrower struct {
	rc syscall.RawConn
	g  Grower
}

// ForReader returns a ReaderGrower for r, or nil (on which Observe does
// nothing) when r exposes no descriptor.
func ForReader(r io.Reader) *ReaderGrower {
	c, ok := r.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	return &ReaderGrower{rc: rc}
}

// Observe is Grower.Observe for the reader's descriptor; call it after each
// read of n bytes into a buffer of buf bytes.
func (rg *ReaderGrower) Observe(n, buf int) {
	if rg == nil || !rg.g.Wants(n, buf) {
		return
	}
	_ = rg.rc.Control(func(fd uintptr) { rg.g.Observe(fd, n, buf) })
}
