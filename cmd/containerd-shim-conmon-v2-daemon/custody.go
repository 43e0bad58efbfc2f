package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/service"
)

// Descriptor custody (docs/resilience.md §4, "The keeper"): a daemon run
// by a keeper sends the keeper, over a SOCK_SEQPACKET socketpair with
// SCM_RIGHTS, a duplicate of every descriptor a live upgrade would hand
// over (each process's pipes, terminal, client FIFOs, logger pipes; the
// accepted ttrpc connections), tagged with what it is, as soon as it has
// it and before it uses it; and tells it when one is closed. The keeper
// never reads or writes them. When the daemon dies, the keeper starts the
// next one with them and a handover description in the live upgrade's
// format (upgrade.go), so the new daemon restores the tasks through the
// same path (service.Restore) and copying goes on where the dead one
// stopped; what the containers wrote meanwhile waited in the pipes.

// custodyEnv names the daemon's end of the custody socket.
const custodyEnv = "CONMON_V2_KEEPER_CUSTODY_FD"

// custodyMsg is one message of the custody protocol (JSON, one per
// datagram; the descriptors of a hold ride along as SCM_RIGHTS).
type custodyMsg struct {
	// Op: "hold" (Fds' roles, replacing what is held for the process),
	// "add" (Fds' roles, added to what is held for the process),
	// "drop" (Roles of the process), "release" (the whole process),
	// "conn" (an accepted connection, one descriptor), "conn_close",
	// "synced" (a daemon started with a handover has held again all it
	// restored: the rest of what was handed is not in use any more).
	Op   string `json:"op"`
	Task string `json:"task,omitempty"`
	Exec string `json:"exec,omitempty"`
	// Roles are the roles of the descriptors sent (hold, in order) or
	// dropped (drop): process.IOFDs' JSON names.
	Roles      []string `json:"roles,omitempty"`
	LoggerPid  int      `json:"logger_pid,omitempty"`
	StdinEnded bool     `json:"stdin_ended,omitempty"`
	// Conn identifies an accepted connection (conn, conn_close).
	Conn uint64 `json:"conn,omitempty"`
}

// custodyMaxFDs bounds the descriptors of one message (a hold sends at
// most the nine roles of IOFDs and the journals' descriptors).
const custodyMaxFDs = 32

// custodyClient is the daemon's side: a process.Custodian, and the
// connections' custodian (drain.Listener's hooks). Sends are synchronous
// (a small datagram to a keeper that only reads): the descriptor is held
// before the caller goes on to use it.
type custodyClient struct {
	fd  int
	log *slog.Logger

	mu     sync.Mutex
	failed bool
}

// custodyFromEnv returns the custody client of a daemon run by a keeper,
// or nil. The descriptor stays close-on-exec (no runc or logger gets it)
// and the variable stays set, so that a live upgrade passes both on.
func custodyFromEnv(log *slog.Logger) *custodyClient {
	s := os.Getenv(custodyEnv)
	if s == "" {
		return nil
	}
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 3 {
		log.Error("keeper custody: bad descriptor; running without custody", "value", s)
		os.Unsetenv(custodyEnv)
		return nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		log.Error("keeper custody: descriptor not open; running without custody", "fd", fd, "error", err)
		os.Unsetenv(custodyEnv)
		return nil
	}
	unix.CloseOnExec(fd)
	return &custodyClient{fd: fd, log: log}
}

func (c *custodyClient) send(m custodyMsg, fds []int) {
	data, err := json.Marshal(m)
	if err != nil {
		return
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed {
		return
	}
	for {
		err = unix.Sendmsg(c.fd, data, oob, nil, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		// The keeper is gone: we are back to the behaviour without it.
		c.failed = true
		c.log.Error("keeper custody: send failed; descriptors no longer kept", "op", m.Op, "error", err)
	}
}

// Hold is process.Custodian.
func (c *custodyClient) Hold(task, exec string, d process.IOFDs) {
	c.sendFDs(custodyMsg{Op: "hold", Task: task, Exec: exec, LoggerPid: d.LoggerPid, StdinEnded: d.StdinEnded}, d)
}

// HoldMore is process.Custodian.
func (c *custodyClient) HoldMore(task, exec string, d process.IOFDs) {
	c.sendFDs(custodyMsg{Op: "add", Task: task, Exec: exec}, d)
}

// sendFDs sends m with d's descriptors, their roles listed in m, and
// closes d (the keeper holds its own duplicates).
func (c *custodyClient) sendFDs(m custodyMsg, d process.IOFDs) {
	var fds []int
	for _, r := range d.Roles() {
		m.Roles = append(m.Roles, r)
		fds = append(fds, *d.Slot(r))
	}
	c.send(m, fds)
	d.Close()
}

// Drop is process.Custodian.
func (c *custodyClient) Drop(task, exec string, roles ...string) {
	c.send(custodyMsg{Op: "drop", Task: task, Exec: exec, Roles: roles}, nil)
}

// Release is process.Custodian.
func (c *custodyClient) Release(task, exec string) {
	c.send(custodyMsg{Op: "release", Task: task, Exec: exec}, nil)
}

// HoldConn gives the keeper fd, a duplicate of an accepted connection,
// and closes it here.
func (c *custodyClient) HoldConn(id uint64, fd int) {
	c.send(custodyMsg{Op: "conn", Conn: id}, []int{fd})
	_ = unix.Close(fd)
}

// Synced tells the keeper that everything restored from its handover is
// held again.
func (c *custodyClient) Synced() {
	c.send(custodyMsg{Op: "synced"}, nil)
}

// DropConn tells the keeper the connection is closed.
func (c *custodyClient) DropConn(id uint64) {
	c.send(custodyMsg{Op: "conn_close", Conn: id}, nil)
}

// The keeper's side.

type procKey struct{ task, exec string }

type heldProc struct {
	fds        map[string]int // by role
	loggerPid  int
	stdinEnded bool
	gen        int // the daemon that held it (custodySet.gen)
}

type heldConn struct {
	fd  int
	gen int
}

// custodySet is what the keeper holds for its daemon.
type custodySet struct {
	log *slog.Logger

	mu    sync.Mutex
	procs map[procKey]*heldProc
	conns map[uint64]heldConn
	// gen counts the daemons started with a handover: what the current
	// one has not held again by its "synced" was not restored (a task
	// whose record was gone, a connection that failed) and is closed.
	gen int
}

func newCustodySet(log *slog.Logger) *custodySet {
	return &custodySet{log: log, procs: make(map[procKey]*heldProc), conns: make(map[uint64]heldConn)}
}

// serve applies the messages read from fd (the keeper's end of one
// daemon's custody socket) until the daemon's end is closed (it died, or
// exited), then closes fd and returns.
func (s *custodySet) serve(fd int) {
	defer unix.Close(fd)
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(custodyMaxFDs*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			s.log.Error("keeper custody: receive", "error", err)
			return
		}
		var fds []int
		if oobn > 0 {
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cmsgs {
					if got, err := unix.ParseUnixRights(&cm); err == nil {
						fds = append(fds, got...)
					}
				}
			}
		}
		if n == 0 && oobn == 0 {
			return // the daemon's end is closed
		}
		var m custodyMsg
		if err := json.Unmarshal(buf[:n], &m); err != nil {
			s.log.Error("keeper custody: bad message", "error", err)
			closeFDs(fds)
			continue
		}
		s.apply(m, fds)
	}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// apply takes ownership of fds.
func (s *custodySet) apply(m custodyMsg, fds []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := procKey{m.Task, m.Exec}
	switch m.Op {
	case "hold":
		if len(fds) != len(m.Roles) {
			s.log.Error("keeper custody: hold with roles and descriptors that do not match", "task", m.Task, "exec", m.Exec, "roles", m.Roles, "fds", len(fds))
			closeFDs(fds)
			return
		}
		if old := s.procs[k]; old != nil {
			for _, fd := range old.fds {
				_ = unix.Close(fd)
			}
		}
		p := &heldProc{fds: make(map[string]int), loggerPid: m.LoggerPid, stdinEnded: m.StdinEnded, gen: s.gen}
		var d process.IOFDs
		for j, r := range m.Roles {
			if d.Slot(r) == nil || p.fds[r] != 0 {
				_ = unix.Close(fds[j]) // unknown or repeated role
				continue
			}
			p.fds[r] = fds[j]
		}
		s.procs[k] = p
	case "add":
		if len(fds) != len(m.Roles) {
			s.log.Error("keeper custody: add with roles and descriptors that do not match", "task", m.Task, "exec", m.Exec, "roles", m.Roles, "fds", len(fds))
			closeFDs(fds)
			return
		}
		p := s.procs[k]
		if p == nil {
			p = &heldProc{fds: make(map[string]int), gen: s.gen}
			s.procs[k] = p
		}
		var d process.IOFDs
		for j, r := range m.Roles {
			if d.Slot(r) == nil {
				_ = unix.Close(fds[j])
				continue
			}
			if old, ok := p.fds[r]; ok {
				_ = unix.Close(old)
			}
			p.fds[r] = fds[j]
		}
	case "drop":
		closeFDs(fds)
		p := s.procs[k]
		if p == nil {
			return
		}
		for _, r := range m.Roles {
			if fd, ok := p.fds[r]; ok {
				_ = unix.Close(fd)
				delete(p.fds, r)
			}
			if r == process.RoleStdin {
				p.stdinEnded = true
			}
		}
	case "release":
		closeFDs(fds)
		if p := s.procs[k]; p != nil {
			for _, fd := range p.fds {
				_ = unix.Close(fd)
			}
			delete(s.procs, k)
		}
	case "conn":
		if len(fds) != 1 {
			closeFDs(fds)
			return
		}
		if old, ok := s.conns[m.Conn]; ok {
			_ = unix.Close(old.fd)
		}
		s.conns[m.Conn] = heldConn{fd: fds[0], gen: s.gen}
	case "conn_close":
		closeFDs(fds)
		if c, ok := s.conns[m.Conn]; ok {
			_ = unix.Close(c.fd)
			delete(s.conns, m.Conn)
		}
	case "synced":
		closeFDs(fds)
		n := 0
		for k, p := range s.procs {
			if p.gen < s.gen {
				for _, fd := range p.fds {
					_ = unix.Close(fd)
					n++
				}
				delete(s.procs, k)
			}
		}
		for k, c := range s.conns {
			if c.gen < s.gen {
				_ = unix.Close(c.fd)
				delete(s.conns, k)
				n++
			}
		}
		if n > 0 {
			s.log.Warn("keeper custody: descriptors handed over and not taken back by the new daemon; closed", "descriptors", n)
		}
	default:
		closeFDs(fds)
		s.log.Error("keeper custody: unknown message", "op", m.Op)
	}
}

// handover describes what the set holds for the next daemon, numbering
// the descriptors as that daemon will see them: files[j] becomes
// descriptor base+j. The set keeps its own (the next daemon sends its
// duplicates again as it restores: they replace these; what it does not
// take back is closed at its "synced").
func (s *custodySet) handover(base int) (tasks []service.TaskFDs, conns []handedConn, files []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	add := func(fd int) int {
		files = append(files, fd)
		return base + len(files) - 1
	}
	ids := make([]uint64, 0, len(s.conns))
	for id := range s.conns {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
	for _, id := range ids {
		conns = append(conns, handedConn{FD: add(s.conns[id].fd)})
	}
	byTask := make(map[string]*service.TaskFDs)
	keys := make([]procKey, 0, len(s.procs))
	for k := range s.procs {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if keys[a].task != keys[b].task {
			return keys[a].task < keys[b].task
		}
		return keys[a].exec < keys[b].exec
	})
	var order []string
	for _, k := range keys {
		p := s.procs[k]
		d := process.IOFDs{LoggerPid: p.loggerPid, StdinEnded: p.stdinEnded}
		roles := make([]string, 0, len(p.fds))
		for r := range p.fds {
			roles = append(roles, r)
		}
		sort.Strings(roles)
		for _, r := range roles {
			*d.Slot(r) = add(p.fds[r])
		}
		t := byTask[k.task]
		if t == nil {
			t = &service.TaskFDs{ID: k.task}
			byTask[k.task] = t
			order = append(order, k.task)
		}
		if k.exec == "" {
			t.Init = d
		} else {
			if t.Execs == nil {
				t.Execs = make(map[string]process.IOFDs)
			}
			t.Execs[k.exec] = d
		}
	}
	for _, id := range order {
		tasks = append(tasks, *byTask[id])
	}
	return tasks, conns, files
}

// count is the number of descriptors held (for the keeper's log).
func (s *custodySet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.conns)
	for _, p := range s.procs {
		n += len(p.fds)
	}
	return n
}

// custodyPair returns a new custody socketpair: the keeper's end and the
// daemon's (both close-on-exec; the spawn clears it on the daemon's copy).
func custodyPair() (keeper, daemon int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("custody socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

// waitServed waits up to d for done (the custody reader saw the daemon's
// end close: every message it sent has been applied).
func waitServed(done <-chan struct{}, d time.Duration) bool {
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}
