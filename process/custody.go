package process

import (
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/logging"
)

// Descriptor custody (docs/resilience.md §4, "The keeper"): under a
// keeper, a monitor gives the keeper a duplicate of every descriptor of a
// process's IO as soon as it has it and before it copies anything, and
// tells it when it closes one. When the monitor dies the keeper still
// holds the pipes: what the container writes waits in them (no EPIPE),
// and the keeper hands them to the next monitor in the live upgrade's
// format (IOFDs, RestoreIO).

// Custodian keeps duplicates of processes' descriptors outside the
// monitor. A process is named by its task ID and exec ID ("" for init).
// Its methods must not block for long: they run on the IO's paths.
type Custodian interface {
	// Hold takes ownership of the descriptors in fds (duplicates, which
	// it closes once sent); they replace what it held for the process.
	Hold(task, exec string, fds IOFDs)
	// HoldMore takes ownership of the descriptors in fds and adds them
	// to what it holds for the process (a descriptor opened later: the
	// client's stdin FIFO), replacing those of the same roles.
	HoldMore(task, exec string, fds IOFDs)
	// Drop forgets the process's descriptors in the given roles (IOFDs'
	// JSON names): the monitor closed its own.
	Drop(task, exec string, roles ...string)
	// Release forgets every descriptor of the process (its IO closed).
	Release(task, exec string)
}

// The roles of IOFDs, as their JSON names.
const (
	RoleStdin        = "stdin"
	RoleStdout       = "stdout"
	RoleStderr       = "stderr"
	RoleConsole      = "console"
	RoleStdinFifo    = "stdin_fifo"
	RoleStdoutFifo   = "stdout_fifo"
	RoleStderrFifo   = "stderr_fifo"
	RoleLoggerStdout = "logger_stdout"
	RoleLoggerStderr = "logger_stderr"
)

// Slot returns the field of d that holds the descriptor of role, or nil
// for an unknown role.
func (d *IOFDs) Slot(role string) *int {
	switch role {
	case RoleStdin:
		return &d.Stdin
	case RoleStdout:
		return &d.Stdout
	case RoleStderr:
		return &d.Stderr
	case RoleConsole:
		return &d.Console
	case RoleStdinFifo:
		return &d.StdinFifo
	case RoleStdoutFifo:
		return &d.StdoutFifo
	case RoleStderrFifo:
		return &d.StderrFifo
	case RoleLoggerStdout:
		return &d.LoggerStdout
	case RoleLoggerStderr:
		return &d.LoggerStderr
	}
	if n := journalSlot(role); n >= 0 {
		if len(d.Journal) < 2*journalSlots {
			d.Journal = append(d.Journal, make([]int, 2*journalSlots-len(d.Journal))...)
		}
		return &d.Journal[n]
	}
	return nil
}

// Roles lists the roles of d that hold a descriptor, in a fixed order.
func (d *IOFDs) Roles() []string {
	var out []string
	for _, r := range []string{RoleStdin, RoleStdout, RoleStderr, RoleConsole, RoleStdinFifo, RoleStdoutFifo, RoleStderrFifo, RoleLoggerStdout, RoleLoggerStderr} {
		if *d.Slot(r) > 0 {
			out = append(out, r)
		}
	}
	for n, fd := range d.Journal {
		if fd > 0 {
			out = append(out, journalRole(n))
		}
	}
	return out
}

// custodyFDs duplicates what the keeper should hold of this IO, about to
// be copied (startCopying): the pipes or terminal, the client's output
// FIFOs and a binary:// logger's pipes, of the streams that have not
// ended. The client's stdin FIFO is held once the stdin copier has
// opened it (stdinCustody). Failed duplicates are left out: custody is
// best effort.
func (i *IO) custodyFDs() IOFDs {
	i.mu.Lock()
	defer i.mu.Unlock()
	var d IOFDs
	dup := func(dst *int, f any) {
		if f == nil {
			return
		}
		if fd, err := dupOf(f); err == nil {
			*dst = fd
		}
	}
	copied := func(s logging.Stream) bool { return !i.ended[s] && len(i.dests[s]) > 0 }
	var out, errs bool
	if i.pty != nil {
		dup(&d.Console, i.pty)
		out = !i.ended[logging.Stdout]
	} else if i.pio != nil {
		if w := i.pio.Stdin(); w != nil && i.cfg.Stdio.Stdin != "" && !i.stdinCl && !i.stdinEnded {
			dup(&d.Stdin, w)
		}
		if r := i.pio.Stdout(); r != nil && copied(logging.Stdout) {
			dup(&d.Stdout, r)
			out = true
		}
		if r := i.pio.Stderr(); r != nil && copied(logging.Stderr) {
			dup(&d.Stderr, r)
			errs = true
		}
	}
	d.StdinEnded = i.stdinEnded || i.stdinCl
	if f := i.fifos[logging.Stdout]; f != nil && out {
		dup(&d.StdoutFifo, f)
	}
	if f := i.fifos[logging.Stderr]; f != nil && errs {
		dup(&d.StderrFifo, f)
	}
	if l := i.logger; l != nil {
		d.LoggerPid = l.pid
		if out {
			dup(&d.LoggerStdout, l.out)
		}
		if errs && !i.cfg.Stdio.Terminal {
			dup(&d.LoggerStderr, l.err)
		}
	}
	for s, on := range [3]bool{logging.Stdout: out, logging.Stderr: errs} {
		sj := i.journal.stream(logging.Stream(s))
		if sj == nil || !on {
			continue
		}
		for k, fd := range sj.fds() {
			if fd > 0 {
				dup(d.Slot(journalRole((s-1)*journalSlots+k)), fdFile(fd))
			}
		}
	}
	return d
}

// fdFile lets dupOf duplicate a bare descriptor.
type fdFile int

func (f fdFile) Fd() uintptr { return uintptr(f) }

// holdInCustody gives the keeper this IO's descriptors (a no-op without
// a custodian) and makes closing the process's stdin tell it.
func (i *IO) holdInCustody() {
	c := i.cfg.Custody
	if c == nil {
		if i.journal != nil { // handed over, and no keeper now
			for _, fd := range i.journal.adopt {
				if fd > 0 {
					_ = unix.Close(fd)
				}
			}
			i.journal.adopt = nil
		}
		return
	}
	i.setupJournals()
	c.Hold(i.cfg.ID, i.cfg.Exec, i.custodyFDs())
	i.mu.Lock()
	if i.pty == nil && i.stdinW != nil {
		if _, ok := i.stdinW.(*custodyStdin); !ok {
			i.stdinW = &custodyStdin{WriteCloser: i.stdinW, drop: func() { c.Drop(i.cfg.ID, i.cfg.Exec, RoleStdin) }}
		}
	}
	i.mu.Unlock()
}

// stdinCustody makes a stdin copier give the keeper the client's FIFO
// once it is open, and drop it once the copier closed it: while no
// monitor runs, the client's writes then wait in the FIFO instead of
// failing with EPIPE. Called before sc.start.
func (i *IO) stdinCustody(sc *stdinCopier) {
	c := i.cfg.Custody
	if c == nil {
		return
	}
	task, exec := i.cfg.ID, i.cfg.Exec
	sc.onOpen = func(f *os.File) {
		if fd, err := dupOf(f); err == nil {
			c.HoldMore(task, exec, IOFDs{StdinFifo: fd})
		}
	}
	sc.onEnd = func() { c.Drop(task, exec, RoleStdinFifo) }
}

// streamEnded tells the keeper that stream reached its end: the monitor
// closed its destinations, and the keeper must not keep the client's
// FIFO (or the logger's pipe) open, or the client would never see EOF.
func (i *IO) streamEnded(stream logging.Stream) {
	c := i.cfg.Custody
	if c == nil {
		return
	}
	switch stream {
	case logging.Stdout:
		c.Drop(i.cfg.ID, i.cfg.Exec, append([]string{RoleStdout, RoleConsole, RoleStdoutFifo, RoleLoggerStdout}, journalRoles(stream)...)...)
	case logging.Stderr:
		c.Drop(i.cfg.ID, i.cfg.Exec, append([]string{RoleStderr, RoleStderrFifo, RoleLoggerStderr}, journalRoles(stream)...)...)
	}
	// The copier that calls this is the journal's only user.
	i.mu.Lock()
	sj := i.journal.stream(stream)
	if sj != nil {
		i.journal.streams[stream] = nil
	}
	i.mu.Unlock()
	sj.close()
}

// releaseCustody tells the keeper the IO is closed, and closes the
// journals no copier uses (one stuck on a destination keeps its own).
func (i *IO) releaseCustody() {
	if c := i.cfg.Custody; c != nil {
		c.Release(i.cfg.ID, i.cfg.Exec)
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.journal == nil {
		return
	}
	for s, sj := range i.journal.streams {
		if sj == nil {
			continue
		}
		if ch := i.copying[s]; ch != nil {
			select {
			case <-ch:
			default:
				continue
			}
		}
		i.journal.streams[s] = nil
		sj.close()
	}
}

// custodyStdin is the process's stdin pipe under custody: closing it (the
// process's EOF) also drops the keeper's duplicate, which would otherwise
// keep the pipe open.
type custodyStdin struct {
	io.WriteCloser
	once sync.Once
	drop func()
}

func (c *custodyStdin) Close() error {
	err := c.WriteCloser.Close()
	c.once.Do(c.drop)
	return err
}
