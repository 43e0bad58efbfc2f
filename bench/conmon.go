package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// conmonSystem drives a conmon-compatible monitor (Debian's conmon 2.1.6,
// or conmon-v2's drop-in) through its command line, the way CRI-O and
// Podman do: one monitor process per container, the start and sync pipes
// passed as inherited fds, `runc start` run by the caller, the exit seen
// as a file in the exit directory.
type conmonSystem struct {
	env  *Env
	name string
	bin  string
}

type conmonState struct {
	exitDir string
}

func (s *conmonSystem) Name() string { return s.name }

func (s *conmonSystem) Launch(ctx context.Context, c *Container) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	exitDir := filepath.Join(c.Bundle, "exits")
	sockDir := filepath.Join(s.env.Dir, "sock")
	for _, d := range []string{exitDir, sockDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	c.priv = &conmonState{exitDir: exitDir}
	logSpec := "none"
	if c.LogPath != "" {
		logSpec = "k8s-file:" + c.LogPath
	}
	args := []string{
		"--api-version", "1",
		"-c", c.ID, "-u", c.ID, "-n", c.ID,
		"-r", s.env.Runc, "--runtime-arg", "--root=" + s.env.RuncRoot,
		"-b", c.Bundle, "-p", filepath.Join(c.Bundle, "pidfile"),
		"-l", logSpec, "--log-level", "warning",
		"--exit-dir", exitDir, "--socket-dir-path", sockDir,
		"--conmon-pidfile", filepath.Join(c.Bundle, "conmon.pid"),
	}
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer syncR.Close()
	startR, startW, err := os.Pipe()
	if err != nil {
		syncW.Close()
		return err
	}
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.WaitDelay = time.Second
	cmd.Dir = c.Bundle
	cmd.Env = append(os.Environ(), "_OCI_SYNCPIPE=3", "_OCI_STARTPIPE=4")
	cmd.ExtraFiles = []*os.File{syncW, startR}
	// A file, not a pipe: a pipe inherited by the daemonised monitor would
	// keep cmd.Wait waiting.
	errPath := filepath.Join(c.Bundle, "conmon.err")
	errFile, err := os.Create(errPath)
	if err != nil {
		syncW.Close()
		startR.Close()
		startW.Close()
		return err
	}
	cmd.Stdout, cmd.Stderr = errFile, errFile
	err = cmd.Start()
	errFile.Close()
	syncW.Close()
	startR.Close()
	if err != nil {
		startW.Close()
		return fmt.Errorf("%s: %w", s.bin, err)
	}
	// The monitor waits on the start pipe so that its caller can move it
	// into a cgroup first; the harness has nothing to do there.
	_, _ = startW.Write([]byte{0})
	startW.Close()
	if err := cmd.Wait(); err != nil {
		msg, _ := os.ReadFile(errPath)
		return fmt.Errorf("%s %s: %w: %s", s.name, c.ID, err, strings.TrimSpace(string(msg)))
	}
	pid, err := readPidFile(ctx, filepath.Join(c.Bundle, "conmon.pid"))
	if err != nil {
		return err
	}
	c.MonitorPID = pid
	msg, err := readSync(ctx, syncR)
	if err != nil {
		killAndReap(pid)
		return fmt.Errorf("%s %s: sync pipe: %w", s.name, c.ID, err)
	}
	if msg.Data <= 0 {
		killAndReap(pid)
		return fmt.Errorf("%s %s: create failed: %s", s.name, c.ID, msg.Message)
	}
	c.Pid = msg.Data
	if _, err := run(ctx, "", nil, s.env.Runc, "--root", s.env.RuncRoot, "start", c.ID); err != nil {
		return err
	}
	return nil
}

// syncMsg is one JSON message of conmon's sync pipe; the key is "data"
// with --api-version, "pid" or "exit_code" without.
type syncMsg struct {
	Data     int    `json:"data"`
	Pid      int    `json:"pid"`
	ExitCode *int   `json:"exit_code"`
	Message  string `json:"message"`
}

func readSync(ctx context.Context, f *os.File) (syncMsg, error) {
	type result struct {
		m   syncMsg
		err error
	}
	ch := make(chan result, 1)
	go func() { // ends when the monitor writes or closes its end
		line, err := bufio.NewReader(f).ReadBytes('\n')
		if err != nil && len(line) == 0 {
			ch <- result{err: err}
			return
		}
		var m syncMsg
		err = json.Unmarshal(line, &m)
		ch <- result{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-ctx.Done():
		f.Close() // unblocks the reader
		return syncMsg{}, ctx.Err()
	}
}

func (s *conmonSystem) Wait(ctx context.Context, c *Container) (int, error) {
	st := c.priv.(*conmonState)
	path := filepath.Join(st.exitDir, c.ID)
	var code int
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			code, err = strconv.Atoi(strings.TrimSpace(string(data)))
			if err != nil {
				return -1, fmt.Errorf("exit file %s: %w", path, err)
			}
			break
		}
		if ctx.Err() != nil {
			return -1, fmt.Errorf("%s: no exit file %s: %w", s.name, path, ctx.Err())
		}
		time.Sleep(time.Millisecond)
	}
	// The monitor exits right after writing the exit file; read its CPU
	// while it is a zombie.
	if c.MonitorPID > 0 {
		pid := c.MonitorPID
		_, err := reapChild(ctx, pid, func() {
			if cpu, err := cpuSeconds(pid); err == nil {
				c.Final = &monStat{CPU: cpu}
			}
		})
		c.MonitorPID = 0
		if err != nil {
			return code, err
		}
	}
	return code, nil
}

// Exec runs args the way CRI-O's ExecSync does: a second monitor in
// legacy exec mode with --sync, which reports the exit code on the sync
// pipe and exits with the process.
func (s *conmonSystem) Exec(ctx context.Context, c *Container, args []string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	dir, err := os.MkdirTemp(c.Bundle, "exec")
	if err != nil {
		return -1, err
	}
	defer os.RemoveAll(dir)
	spec, err := processSpec(args)
	if err != nil {
		return -1, err
	}
	specPath := filepath.Join(dir, "process.json")
	if err := os.WriteFile(specPath, spec, 0o600); err != nil {
		return -1, err
	}
	syncR, syncW, err := os.Pipe()
	if err != nil {
		return -1, err
	}
	defer syncR.Close()
	cmd := exec.CommandContext(ctx, s.bin,
		"-c", c.ID, "-n", c.ID, "-r", s.env.Runc, "--runtime-arg", "--root="+s.env.RuncRoot,
		"-p", filepath.Join(dir, "pid"), "-e", "-l", "k8s-file:"+filepath.Join(dir, "log"),
		"--socket-dir-path", filepath.Join(s.env.Dir, "sock"), "--log-level", "warning",
		"--sync", "--exec-process-spec", specPath)
	cmd.Env = append(os.Environ(), "_OCI_SYNCPIPE=3")
	cmd.ExtraFiles = []*os.File{syncW}
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	err = cmd.Start()
	syncW.Close()
	if err != nil {
		return -1, err
	}
	msg, rerr := readSync(ctx, syncR)
	werr := cmd.Wait()
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return -1, werr
	}
	if rerr != nil {
		return -1, fmt.Errorf("%s exec: sync pipe: %w: %s", s.name, rerr, strings.TrimSpace(stderr.String()))
	}
	if msg.ExitCode == nil || *msg.ExitCode < 0 {
		return -1, fmt.Errorf("%s exec failed: %s", s.name, msg.Message)
	}
	return *msg.ExitCode, nil
}

func (s *conmonSystem) Delete(ctx context.Context, c *Container) error {
	_, err := run(ctx, "", nil, s.env.Runc, "--root", s.env.RuncRoot, "delete", "-f", c.ID)
	if c.MonitorPID > 0 {
		// The monitor exits once its container is gone; give it a moment
		// to write its exit file, then make sure.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, werr := reapChild(wctx, c.MonitorPID, nil)
		cancel()
		if werr != nil {
			killAndReap(c.MonitorPID)
		}
		c.MonitorPID = 0
	}
	return err
}

func (s *conmonSystem) Close(context.Context) error { return nil }
