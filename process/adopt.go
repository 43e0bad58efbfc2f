package process

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ParseStatus is the inverse of Status.String.
func ParseStatus(s string) (Status, error) {
	for st := Created; st <= Deleted; st++ {
		if st.String() == s {
			return st, nil
		}
	}
	return 0, fmt.Errorf("unknown process status %q", s)
}

// Adopt rebuilds a task from the record its previous monitor wrote, for a
// monitor restarted after that one died (see docs/resilience.md). The
// init process keeps its pid and status; the caller decides whether it is
// still alive (ProcStatus) and watches it. Execs are not adopted: they
// come back as exited, status 255 (unknown), so that Wait and Delete still
// answer for them. Neither is the container's stdio: its pipes died with
// the previous monitor.
func Adopt(rec Record, rt Runtime, log *slog.Logger) (*Container, error) {
	if err := ValidateID("container id", rec.ID); err != nil {
		return nil, err
	}
	st, err := ParseStatus(rec.Status)
	if err != nil {
		return nil, fmt.Errorf("record of %q: %w", rec.ID, err)
	}
	if log == nil {
		log = slog.Default()
	}
	spec, _ := ReadSpec(rec.Bundle) // informative only; the bundle may be gone
	c := &Container{
		ID:        rec.ID,
		Namespace: rec.Namespace,
		Bundle:    rec.Bundle,
		Spec:      spec,
		Init:      adoptProcess(rec.ID, rec, true, st),
		Execs:     make(map[string]*Process),
		rt:        rt,
		log:       log,
	}
	for id, x := range rec.Execs {
		xs, err := ParseStatus(x.Status)
		if err != nil {
			continue
		}
		p := adoptProcess(rec.ID, x, false, xs)
		p.ID = id
		if p.Status != Stopped {
			p.Status = Running
			p.SetExited(255, time.Now())
		}
		c.Execs[id] = p
	}
	return c, nil
}

// Restore rebuilds a task from its record in the monitor it was handed to
// by a live upgrade (the same process after execve): unlike Adopt, its
// processes are still this process's children, so execs keep their state
// and pid (their exits reach the reaper), and init's exit held back for
// its execs comes back. The caller restores their IO (RestoreIO) and
// registers the live pids before its wait loop runs.
func Restore(rec Record, rt Runtime, log *slog.Logger) (*Container, error) {
	c, err := Adopt(rec, rt, log)
	if err != nil {
		return nil, err
	}
	for id, x := range rec.Execs {
		xs, err := ParseStatus(x.Status)
		if err != nil {
			return nil, fmt.Errorf("record of exec %q of %q: %w", id, rec.ID, err)
		}
		p := adoptProcess(rec.ID, x, false, xs)
		p.ID = id
		p.Spec = x.Spec
		c.Execs[id] = p
	}
	if rec.InitExitDeferred != nil {
		e := *rec.InitExitDeferred
		c.InitExitDeferred = &e
	}
	return c, nil
}

func adoptProcess(containerID string, r Record, init bool, st Status) *Process {
	p := newProcess(containerID, r.ID, init, r.Stdio)
	p.Pid = r.Pid
	p.CreatedAt = r.CreatedAt
	if r.StartedAt != nil {
		p.StartedAt = *r.StartedAt
	}
	p.Status = st
	if st == Stopped || st == Deleted {
		p.ExitStatus = r.ExitStatus
		if r.ExitedAt != nil {
			p.ExitedAt = *r.ExitedAt
		}
		close(p.done)
	}
	return p
}

// ProcState is what /proc says about a pid.
type ProcState struct {
	Exists    bool
	Zombie    bool
	PPid      int    // parent (field 4)
	StartTime uint64 // clock ticks after boot (field 22)
	// ExitStatus is the exit code of a zombie (field 52, as a shell
	// reports it: 128+signal for a signal).
	ExitStatus int
}

// ProcStatus reads /proc/<pid>/stat. A zombie's exit code is there until
// its parent (init or a subreaper after its monitor died) reaps it.
func ProcStatus(pid int) ProcState {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcState{}
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return ProcState{}
	}
	f := bytes.Fields(data[i+1:]) // f[0] is field 3 (state)
	ps := ProcState{Exists: true}
	if len(f) > 0 {
		ps.Zombie = string(f[0]) == "Z" || string(f[0]) == "X"
	}
	if len(f) > 1 {
		ps.PPid, _ = strconv.Atoi(string(f[1]))
	}
	if len(f) > 19 {
		ps.StartTime, _ = strconv.ParseUint(string(f[19]), 10, 64)
	}
	if len(f) > 49 {
		if ws, err := strconv.Atoi(string(f[49])); err == nil {
			w := unix.WaitStatus(ws)
			switch {
			case w.Signaled():
				ps.ExitStatus = 128 + int(w.Signal())
			default:
				ps.ExitStatus = w.ExitStatus()
			}
		}
	}
	return ps
}

// RuncInitStart returns the start time (clock ticks) runc recorded for a
// container's init, from <root>/<id>/state.json, to tell the container's
// process from a later one that reused its pid.
func RuncInitStart(root, id string) (pid int, start uint64, err error) {
	data, err := os.ReadFile(filepath.Join(root, id, "state.json"))
	if err != nil {
		return 0, 0, err
	}
	var st struct {
		Pid   int    `json:"init_process_pid"`
		Start uint64 `json:"init_process_start"`
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return 0, 0, fmt.Errorf("runc state of %q: %w", id, err)
	}
	return st.Pid, st.Start, nil
}
