package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// runcSystem is the floor: runc alone, no monitor at all. The container's
// init is re-parented to the harness (a subreaper), which waits for it.
// Its stdio is /dev/null, or, for the raw-copy references of the log
// figure, a pipe that `cat` copies into a file.
type runcSystem struct {
	env *Env
	// rawCopy: stdout goes through a pipe into `cat > LogPath`, the cheapest
	// way to move the container's output into a file.
	rawCopy bool
	// syncBin, with rawCopy, is coreutils' sync, run on LogPath once cat
	// has exited and before Wait returns (`sync FILE` is fsync(2) of that
	// file): the raw copy with the durability conmon and the drop-in give
	// the log before they report the exit.
	syncBin string
	// idleBin, if set, is started beside each container as its "monitor":
	// the smallest Go process, the memory reference of a Go monitor.
	idleBin string
}

type runcState struct {
	cat  *exec.Cmd
	idle *exec.Cmd
}

func (s *runcSystem) Name() string {
	switch {
	case s.rawCopy && s.syncBin != "":
		return "raw pipe→file (cat + fsync)"
	case s.rawCopy:
		return "raw pipe→file (cat)"
	case s.idleBin != "":
		return "minimal Go process (reference)"
	}
	return "runc (floor)"
}

func (s *runcSystem) runc(ctx context.Context, args ...string) error {
	_, err := run(ctx, "", nil, s.env.Runc, append([]string{"--root", s.env.RuncRoot}, args...)...)
	return err
}

func (s *runcSystem) Launch(ctx context.Context, c *Container) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	pidFile := filepath.Join(c.Bundle, "init.pid")
	cmd := exec.CommandContext(ctx, s.env.Runc, "--root", s.env.RuncRoot, "create", "--bundle", c.Bundle, "--pid-file", pidFile, c.ID)
	var st runcState
	if s.rawCopy {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		out, err := os.Create(c.LogPath)
		if err != nil {
			r.Close()
			w.Close()
			return err
		}
		st.cat = exec.Command("cat")
		st.cat.Stdin, st.cat.Stdout = r, out
		err = st.cat.Start()
		r.Close()
		out.Close()
		if err != nil {
			w.Close()
			return err
		}
		cmd.Stdout = w
		defer w.Close()
	}
	c.priv = &st
	// runc create hands its own stdio to the container: a pipe here would
	// be held open by the container, so stderr goes to a file.
	errPath := filepath.Join(c.Bundle, "runc-create.err")
	errFile, err := os.Create(errPath)
	if err != nil {
		return err
	}
	cmd.Stderr = errFile
	err = cmd.Run()
	errFile.Close()
	if err != nil {
		msg, _ := os.ReadFile(errPath)
		return fmt.Errorf("runc create %s: %w: %s", c.ID, err, msg)
	}
	pid, err := readPidFile(ctx, pidFile)
	if err != nil {
		return err
	}
	c.Pid = pid
	if s.rawCopy {
		c.MonitorPID = st.cat.Process.Pid
	}
	if s.idleBin != "" {
		st.idle = exec.Command(s.idleBin)
		if err := st.idle.Start(); err != nil {
			st.idle = nil
			return err
		}
		c.MonitorPID = st.idle.Process.Pid
	}
	return s.runc(ctx, "start", c.ID)
}

func (s *runcSystem) Wait(ctx context.Context, c *Container) (int, error) {
	code, err := reapChild(ctx, c.Pid, nil)
	if err != nil {
		return code, err
	}
	if st, _ := c.priv.(*runcState); st != nil && st.cat != nil {
		// The copy is done when cat has read EOF and exited; its rusage is
		// its own (cat has no children).
		err := st.cat.Wait()
		if ps := st.cat.ProcessState; ps != nil {
			// Not ru_maxrss: cat was forked (vfork) from the harness, and
			// the kernel carries the harness's peak into the child's
			// maxrss at exec. Its peak RSS is sampled from VmHWM instead.
			c.Final = &monStat{CPU: cpuOf(ps)}
		}
		st.cat = nil
		if err != nil {
			return code, fmt.Errorf("cat: %w", err)
		}
		if s.syncBin != "" {
			// The fsync runs in its own process so that its CPU time (the
			// write-back submitted from fsync's caller) is counted with
			// cat's, as a monitor's exit fsync is counted in its own.
			cmd := exec.CommandContext(ctx, s.syncBin, c.LogPath)
			out, err := cmd.CombinedOutput()
			if ps := cmd.ProcessState; ps != nil && c.Final != nil {
				c.Final.CPU += cpuOf(ps)
			}
			if err != nil {
				return code, fmt.Errorf("sync %s: %w: %s", c.LogPath, err, out)
			}
		}
	}
	return code, nil
}

// cpuOf is a reaped child's user and system CPU time in seconds.
func cpuOf(ps *os.ProcessState) float64 {
	return ps.UserTime().Seconds() + ps.SystemTime().Seconds()
}

func (s *runcSystem) Exec(ctx context.Context, c *Container, args []string) (int, error) {
	cmd := exec.CommandContext(ctx, s.env.Runc, append([]string{"--root", s.env.RuncRoot, "exec", c.ID}, args...)...)
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return -1, err
	}
	return 0, nil
}

func (s *runcSystem) Delete(ctx context.Context, c *Container) error {
	err := s.runc(ctx, "delete", "-f", c.ID)
	killAndReap(c.Pid) // already gone after delete -f; reaps the zombie
	if st, _ := c.priv.(*runcState); st != nil {
		for _, cmd := range []*exec.Cmd{st.cat, st.idle} {
			if cmd != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}
		st.cat, st.idle = nil, nil
	}
	return err
}

func (s *runcSystem) Close(context.Context) error { return nil }
