package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/reaper"
)

// unknownExit is the status of a process whose real status is lost (it
// exited and was reaped while no monitor watched it), as containerd
// reports for a task it lost.
const unknownExit = 255

// KeeperExitDir is where a group's keeper records the exit status of the
// containers it reaped (their daemon was dead), under the namespace's
// state directory. It starts with a dot: no task ID does.
func KeeperExitDir(stateDir string) string { return filepath.Join(stateDir, ".keeper-exits") }

// WriteKeeperExit records that pid exited with status (atomically: a
// reader sees the whole record or none).
func WriteKeeperExit(dir string, pid, status int) error {
	data := fmt.Sprintf("%d %d\n", status, time.Now().UnixNano())
	tmp := filepath.Join(dir, "."+strconv.Itoa(pid)+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, strconv.Itoa(pid)))
}

// keeperExit returns the status the keeper recorded for pid, if it
// exited after since (an older record is of an earlier process with the
// same pid), and removes the record.
func (s *Service) keeperExit(pid int, since time.Time) (int, bool) {
	path := filepath.Join(KeeperExitDir(s.cfg.StateDir), strconv.Itoa(pid))
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	_ = os.Remove(path)
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return 0, false
	}
	status, err1 := strconv.Atoi(f[0])
	at, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || time.Unix(0, at).Before(since) {
		return 0, false
	}
	return status, true
}

// Adopt takes over the tasks recorded in the state directory that no
// service of this process serves yet and for which keep (nil: all) is
// true: the tasks of a monitor that died (kill -9, OOM, a crash). It
// returns the IDs adopted.
//
// An adopted task answers every request again except those that need its
// stdio (its pipes died with the old monitor: output written while no
// monitor ran is lost, and so is stdin). Its init is watched through a
// pidfd, since this process is not its parent: when it exits, its status
// is read from /proc while it is a zombie (until init or a subreaper reaps
// it), else it is 255. A task whose init exited while no monitor ran gets
// that zombie's status, or 255 once it was reaped. A pid that now belongs
// to another process (runc's recorded start time differs) counts as
// exited, status 255.
func (s *Service) Adopt(ctx context.Context, keep func(process.Record) bool) ([]string, error) {
	ents, err := os.ReadDir(s.cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	var ids []string
	for _, ent := range ents {
		// Not a task's: the keeper's exits, a name no task has.
		if ent.IsDir() && process.ValidateID("task", ent.Name()) == nil {
			ids = append(ids, ent.Name())
		}
	}
	return s.AdoptTasks(ctx, ids, keep)
}

// AdoptTasks is Adopt for the tasks named ids only: it reads no other
// task's record. A daemon whose group can own only known tasks (one per
// container: its own) calls it instead of Adopt, so that its start does
// not grow with the number of tasks in the namespace (reading 300 records
// took a per-container daemon's start from about 17 to 144 ms). A named
// task without a record is skipped: it is the usual case of a daemon
// started for a new container. An ID that is no valid task ID is an
// error.
func (s *Service) AdoptTasks(ctx context.Context, ids []string, keep func(process.Record) bool) ([]string, error) {
	var adopted []string
	for _, id := range ids {
		if ctx.Err() != nil {
			return adopted, fmt.Errorf("adopt: %w", ctx.Err())
		}
		if err := process.ValidateID("task", id); err != nil {
			return adopted, fmt.Errorf("adopt: %w", err)
		}
		s.mu.Lock()
		held := s.containers[id] != nil
		s.mu.Unlock()
		if held {
			continue // ours already (restored after a live upgrade)
		}
		rec, err := process.ReadRecord(s.cfg.StateDir, id)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				s.cfg.Log.Warn("adopt: unreadable task record", "task", id, "error", err)
			}
			continue
		}
		if rec.ID != id || (keep != nil && !keep(rec)) {
			continue
		}
		c, watched, err := s.adopt(rec)
		if err != nil {
			s.cfg.Log.Warn("adopt", "task", rec.ID, "error", err)
			continue
		}
		if c == nil {
			continue
		}
		if watched {
			s.rewatchOOM(c) // as Create does: /tasks/oom again
		}
		adopted = append(adopted, rec.ID)
	}
	return adopted, nil
}

// adopt adds one task; watched says its init runs and is watched.
func (s *Service) adopt(rec process.Record) (_ *process.Container, watched bool, _ error) {
	return s.adoptWith(rec, false, nil)
}

// adoptWith is adopt; prepare, if not nil, is called with the task before
// it is registered and its init watched (Restore gives it its stdio
// there), and not when the task is refused. With execs, the task's execs
// are taken back too (process.Restore): each live one is watched through
// a pidfd as init is, instead of being reported exited with 255; for a
// keeper's hand-back, whose execs' stdio it held.
func (s *Service) adoptWith(rec process.Record, execs bool, prepare func(*process.Container)) (_ *process.Container, watched bool, _ error) {
	adopt := process.Adopt
	if execs {
		adopt = process.Restore
	}
	c, err := adopt(rec, s.rt, s.cfg.Log)
	if err != nil {
		return nil, false, err
	}
	c.Custody = s.cfg.Custody
	s.mu.Lock()
	taken := s.containers[c.ID] != nil || s.reserved[c.ID]
	s.mu.Unlock()
	if !taken && prepare != nil {
		prepare(c)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, fmt.Errorf("service is closed")
	}
	if s.containers[c.ID] != nil || s.reserved[c.ID] {
		return nil, false, nil // ours already
	}
	s.containers[c.ID] = c
	if execs {
		s.watchAdoptedExecsLocked(c)
	}
	p := c.Init
	if p.Status == process.Stopped || p.Status == process.Deleted || p.Pid <= 0 {
		s.recordLocked(c)
		return c, false, nil
	}
	ps := process.ProcStatus(p.Pid)
	if ps.Exists {
		if rpid, start, err := process.RuncInitStart(s.cfg.RuntimeRoot, c.ID); err == nil && (rpid != p.Pid || start != ps.StartTime) {
			ps = process.ProcState{} // the pid was reused
		}
	}
	now := time.Now()
	since := p.StartedAt
	if since.IsZero() {
		since = p.CreatedAt
	}
	switch {
	case !ps.Exists:
		status := unknownExit
		if st, ok := s.keeperExit(p.Pid, since); ok {
			status = st
		}
		s.handleExitLocked(p, process.Exit{Pid: p.Pid, Status: status, Timestamp: now})
		return c, false, nil
	case ps.Zombie:
		s.handleExitLocked(p, process.Exit{Pid: p.Pid, Status: ps.ExitStatus, Timestamp: now})
		return c, false, nil
	}
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if err != nil {
		s.handleExitLocked(p, process.Exit{Pid: p.Pid, Status: unknownExit, Timestamp: now})
		return c, false, nil
	}
	s.byPid[p.Pid] = p
	s.recordLocked(c)
	s.wg.Add(1)
	go s.watchAdopted(fd, p.Pid, since)
	return c, true, nil
}

// watchAdoptedExecsLocked watches the live execs of a task taken back
// after a crash: they are not this process's children (the keeper reaps
// them), so each is watched through a pidfd; one already gone gets the
// keeper's record of its status, or 255. A pid is trusted to be the
// exec's (execs have no runtime state to check its start against); the
// crash window is short.
func (s *Service) watchAdoptedExecsLocked(c *process.Container) {
	now := time.Now()
	for _, x := range c.Execs {
		if !live(x.Status.String()) || x.Pid <= 0 || ourChild(x.Pid) {
			continue
		}
		since := x.StartedAt
		if since.IsZero() {
			since = x.CreatedAt
		}
		ps := process.ProcStatus(x.Pid)
		switch {
		case !ps.Exists:
			status := unknownExit
			if st, ok := s.keeperExit(x.Pid, since); ok {
				status = st
			}
			s.handleExitLocked(x, process.Exit{Pid: x.Pid, Status: status, Timestamp: now})
			continue
		case ps.Zombie:
			s.handleExitLocked(x, process.Exit{Pid: x.Pid, Status: ps.ExitStatus, Timestamp: now})
			continue
		}
		fd, err := unix.PidfdOpen(x.Pid, 0)
		if err != nil {
			s.handleExitLocked(x, process.Exit{Pid: x.Pid, Status: unknownExit, Timestamp: now})
			continue
		}
		s.byPid[x.Pid] = x
		s.wg.Add(1)
		go s.watchAdopted(fd, x.Pid, since)
	}
}

// watchAdopted waits for an adopted init to exit and hands its exit to the
// exit path, as the reaper would for a child. It stops with the service.
func (s *Service) watchAdopted(fd, pid int, since time.Time) {
	defer s.wg.Done()
	defer unix.Close(fd)
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, 500)
		if s.ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			s.cfg.Log.Error("watching an adopted process", "pid", pid, "error", err)
			return
		}
		if n > 0 {
			break
		}
	}
	status, ok := s.adoptedExit(fd, pid, since)
	for i := 0; !ok && i < 20 && s.ctx.Err() == nil; i++ {
		// Reaped by a keeper that has not written its record yet, on a
		// kernel without PIDFD_INFO_EXIT.
		time.Sleep(100 * time.Millisecond)
		status, ok = s.adoptedExit(fd, pid, since)
	}
	if !ok {
		status = unknownExit
	}
	s.handleExit(reaper.Exit{Pid: pid, Status: status, Timestamp: time.Now()})
}

// adoptedExit finds the exit status of an adopted process that exited:
// from its zombie, else from the pidfd (Linux 6.15+, once reaped), else
// from its keeper's record.
func (s *Service) adoptedExit(fd, pid int, since time.Time) (int, bool) {
	if ps := process.ProcStatus(pid); ps.Exists && ps.Zombie {
		return ps.ExitStatus, true
	}
	var info unix.PidfdInfo
	info.Mask = unix.PIDFD_INFO_EXIT
	if unix.IoctlPidfdInfo(fd, &info) == nil && info.Mask&unix.PIDFD_INFO_EXIT != 0 {
		_, _ = s.keeperExit(pid, since) // drop the keeper's record, if already written
		w := unix.WaitStatus(info.Exit_code)
		if w.Signaled() {
			return 128 + int(w.Signal()), true
		}
		return w.ExitStatus(), true
	}
	return s.keeperExit(pid, since)
}
