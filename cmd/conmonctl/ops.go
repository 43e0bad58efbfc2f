package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
	"github.com/containers/conmon-v2/client"
)

// psEntry is one line of `ps`; its JSON names are a contract with scripts.
type psEntry struct {
	Name      string    `json:"name"`
	ID        string    `json:"id"`
	Group     string    `json:"group"`
	Status    string    `json:"status"`
	Pid       uint32    `json:"pid"`
	ExitCode  *uint32   `json:"exit_code"`
	ShimPid   uint32    `json:"shim_pid"`
	Created   time.Time `json:"created"`
	StartedAt time.Time `json:"started_at,omitzero"`
	ExitedAt  time.Time `json:"exited_at,omitzero"`
	Uptime    string    `json:"uptime"`
	Command   string    `json:"command"`
	LogDriver string    `json:"log_driver"`
	Address   string    `json:"address"`
}

// shimConns caches one connection per shim address for commands that look
// at many containers.
type shimConns struct {
	a     *app
	conns map[string]*client.Shim
	errs  map[string]error
	tasks map[string]map[string]client.TaskInfo
	infos map[string]client.ShimInfo
}

func newShimConns(a *app) *shimConns {
	return &shimConns{a: a, conns: map[string]*client.Shim{}, errs: map[string]error{},
		tasks: map[string]map[string]client.TaskInfo{}, infos: map[string]client.ShimInfo{}}
}

func (c *shimConns) get(ctx context.Context, r *record) (*client.Shim, error) {
	if s, ok := c.conns[r.Address]; ok {
		return s, nil
	}
	if err, ok := c.errs[r.Address]; ok {
		return nil, err
	}
	s, err := c.a.connect(ctx, r)
	if err != nil {
		c.errs[r.Address] = err
		return nil, err
	}
	c.conns[r.Address] = s
	return s, nil
}

// taskInfo returns the shim's List entry of r (zero when unavailable).
func (c *shimConns) taskInfo(ctx context.Context, s *client.Shim, r *record) (client.TaskInfo, bool) {
	m, ok := c.tasks[r.Address]
	if !ok {
		m = map[string]client.TaskInfo{}
		cctx, cancel := withTimeout(ctx)
		list, err := s.List(cctx)
		cancel()
		if err == nil {
			for _, t := range list {
				m[t.ID] = t
			}
		}
		c.tasks[r.Address] = m
	}
	t, ok := m[r.ID]
	return t, ok
}

func (c *shimConns) close() {
	for _, s := range c.conns {
		s.Close()
	}
}

// describe builds r's ps entry from its shim.
func (c *shimConns) describe(ctx context.Context, r *record) psEntry {
	e := psEntry{Name: r.Name, ID: r.ID, Group: r.Group, Created: r.Created, Command: strings.Join(r.Args, " "),
		LogDriver: r.LogDriver, Address: r.Address, Status: string(client.Stopped)}
	s, err := c.get(ctx, r)
	if err != nil {
		// The shim died (or was killed): nobody knows the container's
		// state any more. `rm` cleans up with the shim's delete action.
		e.Status = string(client.Unknown)
		return e
	}
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	st, err := s.State(cctx, r.ID, "")
	if err != nil {
		e.Status = string(client.Unknown)
		return e
	}
	e.Status, e.Pid = string(st.Status), st.Pid
	if st.Status == client.Stopped {
		code := st.ExitStatus
		e.ExitCode = &code
		e.ExitedAt = st.ExitedAt
	}
	if ci, err := s.ConnectTask(cctx, r.ID); err == nil {
		e.ShimPid = ci.ShimPid
	}
	if t, ok := c.taskInfo(ctx, s, r); ok {
		e.StartedAt = t.StartedAt
		if e.ExitedAt.IsZero() {
			e.ExitedAt = t.ExitedAt
		}
	}
	if e.Status == string(client.Running) || e.Status == string(client.Paused) {
		// Without the shim's start time (a shim without the Monitor API),
		// the record's creation time is close enough.
		since := e.StartedAt
		if since.IsZero() {
			since = r.Created
		}
		e.Uptime = time.Since(since).Round(time.Second).String()
	}
	return e
}

func cmdPs(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 0, 0, ""); err != nil {
		return err
	}
	recs, err := a.store().list()
	if err != nil {
		return err
	}
	conns := newShimConns(a)
	defer conns.close()
	entries := make([]psEntry, 0, len(recs))
	for _, r := range recs {
		entries = append(entries, conns.describe(ctx, r))
	}
	if a.json {
		return printJSON(a, entries)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tID\tGROUP\tSTATUS\tPID\tEXIT\tUPTIME\tSHIM PID\tCOMMAND")
	for _, e := range entries {
		exit := "-"
		if e.ExitCode != nil {
			exit = strconv.Itoa(int(*e.ExitCode))
		}
		group := e.Group
		if group == e.ID {
			group = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Name, shortID(e.ID), group, e.Status,
			dash(e.Pid), exit, orDash(e.Uptime), dash(e.ShimPid), truncate(e.Command, 30))
	}
	return w.Flush()
}

func dash(n uint32) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(int(n))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func printJSON(a *app, v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func parseSignal(s string) (unix.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d out of range: %w", n, errdefs.ErrInvalidArgument)
		}
		return unix.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q: %w", s, errdefs.ErrInvalidArgument)
}

func cmdKill(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, -1, "container NAME"); err != nil {
		return err
	}
	sig, err := parseSignal(a.opts.signal)
	if err != nil {
		return usagef("-s %s: %v", a.opts.signal, err)
	}
	return a.forEachShim(ctx, args, func(ctx context.Context, s *client.Shim, r *record) error {
		cctx, cancel := withTimeout(ctx)
		defer cancel()
		err := s.Kill(cctx, r.ID, "", uint32(sig), sig == unix.SIGKILL)
		if errdefs.IsNotFound(err) {
			return fmt.Errorf("container %s is not running: %w", r.Name, err)
		}
		return err
	})
}

func cmdStop(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, -1, "container NAME"); err != nil {
		return err
	}
	if a.opts.timeout < 0 {
		return usagef("-t %d: must not be negative", a.opts.timeout)
	}
	return a.forEachShim(ctx, args, func(ctx context.Context, s *client.Shim, r *record) error {
		if err := stopTask(ctx, s, r.ID, time.Duration(a.opts.timeout)*time.Second); err != nil {
			return fmt.Errorf("stop %s: %w", r.Name, err)
		}
		return nil
	})
}

// stopTask sends TERM, waits up to timeout for the exit, then KILLs every
// process of the container and waits for the exit.
func stopTask(ctx context.Context, s *client.Shim, id string, timeout time.Duration) error {
	cctx, cancel := withTimeout(ctx)
	st, err := s.State(cctx, id, "")
	cancel()
	if err != nil {
		return err
	}
	if st.Status == client.Stopped {
		return nil
	}
	if st.Status == client.Paused {
		cctx, cancel := withTimeout(ctx)
		// A frozen process cannot handle TERM; thaw it so it can.
		_ = s.Resume(cctx, id)
		cancel()
	}
	cctx, cancel = withTimeout(ctx)
	err = s.Kill(cctx, id, "", uint32(unix.SIGTERM), false)
	cancel()
	if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	_, err = s.Wait(wctx, id, "")
	wcancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	cctx, cancel = withTimeout(ctx)
	err = s.Kill(cctx, id, "", uint32(unix.SIGKILL), true)
	cancel()
	if err != nil && !errdefs.IsNotFound(err) {
		return err
	}
	wctx, wcancel = context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	_, err = s.Wait(wctx, id, "")
	return err
}

func cmdWait(ctx context.Context, a *app, args []string) error {
	r, s, err := a.connectOne(ctx, args)
	if err != nil {
		return err
	}
	defer s.Close()
	e, err := s.Wait(ctx, r.ID, "")
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, e.Status)
	return exitCode(int(e.Status))
}

func cmdRm(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, -1, "container NAME"); err != nil {
		return err
	}
	return a.forEach(ctx, args, func(ctx context.Context, r *record) error {
		if err := a.removeContainer(ctx, r, nil, a.opts.force); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, r.Name)
		return nil
	})
}

func cmdPause(ctx context.Context, a *app, args []string) error {
	return pauseResume(ctx, a, args, true)
}

func cmdResume(ctx context.Context, a *app, args []string) error {
	return pauseResume(ctx, a, args, false)
}

func pauseResume(ctx context.Context, a *app, args []string, pause bool) error {
	if err := needArgs(args, 1, -1, "container NAME"); err != nil {
		return err
	}
	return a.forEachShim(ctx, args, func(ctx context.Context, s *client.Shim, r *record) error {
		cctx, cancel := withTimeout(ctx)
		defer cancel()
		if pause {
			return s.Pause(cctx, r.ID)
		}
		return s.Resume(cctx, r.ID)
	})
}

// statsEntry is one line of `stats --json`.
type statsEntry struct {
	Name        string  `json:"name"`
	ID          string  `json:"id"`
	CPUPercent  float64 `json:"cpu_percent"`
	MemoryBytes uint64  `json:"memory_bytes"`
	MemoryLimit uint64  `json:"memory_limit"`
	MemPercent  float64 `json:"memory_percent"`
	Pids        uint64  `json:"pids"`
}

func cmdStats(ctx context.Context, a *app, args []string) error {
	var recs []*record
	if len(args) == 0 {
		all, err := a.store().list()
		if err != nil {
			return err
		}
		recs = all
	} else {
		for _, n := range args {
			r, err := a.store().find(n)
			if err != nil {
				return err
			}
			recs = append(recs, r)
		}
	}
	conns := newShimConns(a)
	defer conns.close()
	prev := map[string]client.Stats{}
	sample := func() []statsEntry {
		var out []statsEntry
		for _, r := range recs {
			s, err := conns.get(ctx, r)
			if err != nil {
				continue
			}
			cctx, cancel := withTimeout(ctx)
			st, err := s.Stats(cctx, r.ID)
			cancel()
			if err != nil {
				if len(args) > 0 && !gone(err) {
					fmt.Fprintf(a.stderr, "conmonctl stats: %s: %v\n", r.Name, cleanError(err))
				}
				continue
			}
			e := statsEntry{Name: r.Name, ID: r.ID, MemoryBytes: st.MemoryBytes, MemoryLimit: st.MemoryLimit, Pids: st.Pids}
			if p, ok := prev[r.ID]; ok {
				e.CPUPercent = client.CPUPercent(p, st)
			}
			if st.MemoryLimit > 0 && st.MemoryLimit < 1<<62 {
				e.MemPercent = float64(st.MemoryBytes) / float64(st.MemoryLimit) * 100
			}
			prev[r.ID] = st
			out = append(out, e)
		}
		return out
	}
	// The CPU percentage needs two samples; the first is taken silently.
	sample()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
		entries := sample()
		if a.json {
			if err := printJSON(a, entries); err != nil {
				return err
			}
		} else {
			if !a.opts.noStream {
				fmt.Fprint(a.stdout, "\033[2J\033[H")
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tID\tCPU %\tMEM USAGE / LIMIT\tMEM %\tPIDS")
			for _, e := range entries {
				limit := "-"
				memPct := "-"
				if e.MemoryLimit > 0 && e.MemoryLimit < 1<<62 {
					limit = humanBytes(e.MemoryLimit)
					memPct = fmt.Sprintf("%.2f%%", e.MemPercent)
				}
				fmt.Fprintf(w, "%s\t%s\t%.2f%%\t%s / %s\t%s\t%d\n", e.Name, shortID(e.ID), e.CPUPercent,
					humanBytes(e.MemoryBytes), limit, memPct, e.Pids)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if a.opts.noStream {
			return nil
		}
	}
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// eventLine is one line of `events --json`.
type eventLine struct {
	Time      time.Time      `json:"time"`
	Topic     string         `json:"topic"`
	Namespace string         `json:"namespace"`
	Type      string         `json:"type"`
	Container string         `json:"container,omitempty"`
	Name      string         `json:"name,omitempty"`
	Event     map[string]any `json:"event,omitempty"`
	summary   string
}

func cmdEvents(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 0, 0, ""); err != nil {
		return err
	}
	// One subscription per live shim address. A stream that ends (its shim
	// exited) is forgotten, so that a new shim of the same group, which
	// listens on the same address, is subscribed to again.
	subs := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range subs {
			cancel()
		}
	}()
	lines := make(chan eventLine, 64)
	ended := make(chan string, 16)
	// New shims appear as containers are run: look for them every second.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		recs, _ := a.store().list()
		names := map[string]string{}
		for _, r := range recs {
			names[r.ID] = r.Name
			if _, ok := subs[r.Address]; ok || r.Address == "" {
				continue
			}
			s, err := a.connect(ctx, r)
			if err != nil {
				continue // not up yet, or gone: look again at the next tick
			}
			sctx, cancel := context.WithCancel(ctx)
			evc, errc, err := s.Subscribe(sctx)
			if err != nil {
				cancel()
				s.Close()
				continue
			}
			subs[r.Address] = cancel
			addr := r.Address
			go func() {
				defer s.Close()
				defer func() {
					// A stream cut off (the shim's queue for a client that
					// fell behind overflowed) is said so, then resubscribed.
					if err := <-errc; err != nil {
						fmt.Fprintf(a.stderr, "conmonctl events: %s; subscribing again\n", cleanError(err))
					}
					select {
					case ended <- addr:
					case <-sctx.Done():
					}
				}()
				for ev := range evc {
					l := eventLine{Time: ev.Time, Topic: ev.Topic, Namespace: ev.Namespace, Type: ev.TypeURL}
					if m, err := ev.Decode(); err == nil {
						l.Container = containerOf(m)
						l.summary = eventSummary(m)
						if data, err := json.Marshal(m); err == nil {
							_ = json.Unmarshal(data, &l.Event)
						}
					}
					select {
					case lines <- l:
					case <-sctx.Done():
						return
					}
				}
			}()
		}
	drain:
		for {
			select {
			case <-ctx.Done():
				return nil
			case l := <-lines:
				l.Name = names[l.Container]
				if l.Name == "" {
					if r, err := a.store().find(l.Container); err == nil {
						l.Name = r.Name
					}
				}
				if a.json {
					data, _ := json.Marshal(l)
					fmt.Fprintln(a.stdout, string(data))
				} else {
					fmt.Fprintf(a.stdout, "%s %s %s %s\n", l.Time.Format(time.RFC3339Nano), l.Topic, orDash(l.Name), l.summary)
				}
			case addr := <-ended:
				if cancel, ok := subs[addr]; ok {
					cancel()
					delete(subs, addr)
				}
			case <-tick.C:
				break drain
			}
		}
	}
}

// containerOf returns the container ID of the task events `events` shows
// ("" for any other message), all read through the one generated getter.
func containerOf(m any) string {
	switch m.(type) {
	case *apievents.TaskCreate, *apievents.TaskStart, *apievents.TaskExit,
		*apievents.TaskDelete, *apievents.TaskOOM, *apievents.TaskExecAdded,
		*apievents.TaskExecStarted, *apievents.TaskPaused, *apievents.TaskResumed:
		return m.(interface{ GetContainerID() string }).GetContainerID()
	case *conmonapi.LogDriverEvent:
		return m.(*conmonapi.LogDriverEvent).GetContainerId()
	}
	return ""
}

// eventSummary is the human part of an event line: the exec, pid and exit
// status the event carries.
func eventSummary(m any) string {
	switch e := m.(type) {
	case *apievents.TaskCreate:
		return fmt.Sprintf("pid=%d", e.Pid)
	case *apievents.TaskStart:
		return fmt.Sprintf("pid=%d", e.Pid)
	case *apievents.TaskExit:
		s := fmt.Sprintf("pid=%d exit_status=%d", e.Pid, e.ExitStatus)
		if e.ID != "" && e.ID != e.ContainerID {
			s = "exec_id=" + e.ID + " " + s
		}
		return s
	case *apievents.TaskDelete:
		return fmt.Sprintf("pid=%d exit_status=%d", e.Pid, e.ExitStatus)
	case *apievents.TaskExecAdded:
		return "exec_id=" + e.ExecID
	case *apievents.TaskExecStarted:
		return fmt.Sprintf("exec_id=%s pid=%d", e.ExecID, e.Pid)
	case *conmonapi.LogDriverEvent: // /conmon-v2/log/failing, /conmon-v2/log/recovered
		return fmt.Sprintf("driver=%s failed_lines=%d lost_lines=%d error=%q", e.GetDriver(),
			e.GetErrors().GetLines(), e.GetLost().GetLines(), e.GetError())
	}
	return ""
}

// shimEntry is one line of `shims`; its JSON names are a contract.
type shimEntry struct {
	Pid        uint32   `json:"pid"`
	Group      string   `json:"group"`
	Containers []string `json:"containers"`
	RSSKB      uint64   `json:"rss_kb"`
	PSSKB      uint64   `json:"pss_kb"`
	Address    string   `json:"address"`
	Namespace  string   `json:"namespace"`
	Version    string   `json:"version,omitempty"`
}

func cmdShims(ctx context.Context, a *app, args []string) error {
	wd, _ := os.Getwd()
	sa, err := parseShimsArgs(args, a.opts.binary, a.opts.all, wd)
	if err != nil {
		return err
	}
	if sa.upgrade {
		return cmdShimsUpgrade(ctx, a, sa)
	}
	recs, err := a.store().list()
	if err != nil {
		return err
	}
	conns := newShimConns(a)
	defer conns.close()
	byAddr := map[string]*shimEntry{}
	var order []string
	for _, r := range recs {
		e, ok := byAddr[r.Address]
		if !ok {
			s, err := conns.get(ctx, r)
			if err != nil {
				continue
			}
			cctx, cancel := withTimeout(ctx)
			info, err := s.Info(cctx)
			if errdefs.IsNotImplemented(err) {
				// A shim without the Monitor API: its pid from the task API,
				// its memory from /proc (same host).
				var ci client.ConnectInfo
				if ci, err = s.ConnectTask(cctx, r.ID); err == nil {
					info = client.ShimInfo{Pid: ci.ShimPid, Group: r.Group, Namespace: r.Namespace}
					info.RSSKB, info.PSSKB = procMemory(int(ci.ShimPid))
				}
			}
			cancel()
			if err != nil {
				continue
			}
			e = &shimEntry{Pid: info.Pid, Group: info.Group, RSSKB: info.RSSKB, PSSKB: info.PSSKB,
				Address: r.Address, Namespace: info.Namespace, Version: info.Version, Containers: []string{}}
			byAddr[r.Address] = e
			order = append(order, r.Address)
		}
		e.Containers = append(e.Containers, r.Name)
	}
	entries := make([]shimEntry, 0, len(order))
	for _, addr := range order {
		entries = append(entries, *byAddr[addr])
	}
	if a.json {
		return printJSON(a, entries)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PID\tGROUP\tRSS\tPSS\tCONTAINERS")
	for _, e := range entries {
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\n", e.Pid, truncate(e.Group, 32), humanBytes(e.RSSKB*1024),
			humanBytes(e.PSSKB*1024), strings.Join(e.Containers, ","))
	}
	return w.Flush()
}

func cmdExec(ctx context.Context, a *app, args []string) error {
	if len(args) < 1 {
		return usagef("missing container NAME")
	}
	ref, cmdArgs := args[0], args[1:]
	if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
		cmdArgs = cmdArgs[1:]
	}
	if len(cmdArgs) == 0 {
		return usagef("missing the command to run (after --)")
	}
	r, err := a.store().find(ref)
	if err != nil {
		return err
	}
	s, err := a.connect(ctx, r)
	if err != nil {
		return err
	}
	defer s.Close()
	spec, err := client.ReadSpec(r.Bundle)
	if err != nil {
		return err
	}
	p := *spec.Process
	p.Args = cmdArgs
	p.Terminal = a.opts.tty
	p.Env = append([]string(nil), spec.Process.Env...)
	for _, kv := range a.opts.env {
		if !strings.Contains(kv, "=") {
			return usagef("--env %q is not K=V", kv)
		}
		p.Env = append(p.Env, kv)
	}
	if a.opts.workdir != "" {
		p.Cwd = a.opts.workdir
	}
	execID := "exec-" + newID()[:12]
	proc := &process{a: a, shim: s, id: r.ID, execID: execID, tty: a.opts.tty, stdin: a.opts.interactive}
	if err := proc.openIO(ctx, filepath.Join(a.store().dir(r.ID), "io"), execID); err != nil {
		return err
	}
	defer proc.closeIO()
	cctx, cancel := withTimeout(ctx)
	err = s.Exec(cctx, r.ID, execID, &p, proc.fifos.Stdio)
	cancel()
	if err != nil {
		if errdefs.IsNotFound(err) || errdefs.IsFailedPrecondition(err) {
			return fmt.Errorf("container %s is not running: %w", r.Name, err)
		}
		return err
	}
	code, err := proc.run(ctx)
	dctx, dcancel := withTimeout(context.WithoutCancel(ctx))
	_, _ = s.Delete(dctx, r.ID, execID)
	dcancel()
	if err != nil {
		return err
	}
	return exitCode(code)
}

func cmdAttach(ctx context.Context, a *app, args []string) error {
	r, s, err := a.connectOne(ctx, args)
	if err != nil {
		return err
	}
	defer s.Close()
	cctx, cancel := withTimeout(ctx)
	st, err := s.State(cctx, r.ID, "")
	cancel()
	if err != nil {
		return err
	}
	if st.Status != client.Running && st.Status != client.Paused {
		return fmt.Errorf("container %s is %s, not running: %w", r.Name, st.Status, errdefs.ErrFailedPrecondition)
	}
	src, err := logSource(r)
	if err != nil {
		return err
	}
	r.LogPath, r.LogDriver = src.Path, src.Format
	fwdCtx, stop := context.WithCancel(ctx)
	defer stop()
	in := a.stdin
	if r.Terminal {
		if con, err := consoleOf(os.Stdin); err == nil {
			// Raw: keys (^C included) go to the container's terminal as
			// typed; ^P^Q detaches.
			if r.Stdin && con.SetRaw() == nil {
				defer con.Reset()
				in = &detachReader{r: con, detach: stop}
			}
			s.ForwardResize(fwdCtx, con, r.ID, "", nil)
		}
	}
	// The input starts once the log is followed from its end: output to
	// it written before that position would be skipped.
	startInput := func() {}
	if r.Stdin {
		stdinPath := filepath.Join(a.store().dir(r.ID), "io", "init-stdin")
		startInput = func() { go forwardStdin(fwdCtx, stdinPath, in) }
	}
	// Output: the log from now on, until the container exits.
	waitc := make(chan client.Exit, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		if e, err := s.Wait(fwdCtx, r.ID, ""); err == nil {
			waitc <- e
		}
	}()
	if err := followLog(fwdCtx, a, r, logQuery{tail: 0, follow: true, ready: startInput}, exited); err != nil {
		return err
	}
	select {
	case e := <-waitc:
		return exitCode(int(e.Status))
	default:
		return nil
	}
}

// procMemory reads a process's RSS and PSS in KiB from /proc (0 when
// unreadable).
func procMemory(pid int) (rss, pss uint64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseUint(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = n
		case "Pss:":
			pss = n
		}
	}
	return rss, pss
}

// detachReader passes input through until the detach keys ^P^Q, then calls
// detach and reports EOF. (The container's input ends with the attach: the
// shim closes its stdin when the fifo's last writer goes.)
type detachReader struct {
	r      io.Reader
	detach func()
	prevP  bool
}

func (d *detachReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	for i := 0; i < n; i++ {
		switch {
		case p[i] == 0x10: // ^P
			d.prevP = true
		case p[i] == 0x11 && d.prevP: // ^Q after ^P
			d.detach()
			return max(i-1, 0), io.EOF
		default:
			d.prevP = false
		}
	}
	return n, err
}

func cmdTop(ctx context.Context, a *app, args []string) error {
	r, s, err := a.connectOne(ctx, args)
	if err != nil {
		return err
	}
	defer s.Close()
	cctx, cancel := withTimeout(ctx)
	defer cancel()
	pids, err := s.Pids(cctx, r.ID)
	if err != nil {
		return err
	}
	type proc struct {
		Pid     uint32 `json:"pid"`
		Command string `json:"command"`
	}
	procs := make([]proc, 0, len(pids))
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		procs = append(procs, proc{Pid: pid, Command: strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))})
	}
	if a.json {
		return printJSON(a, procs)
	}
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "PID\tCOMMAND")
	for _, p := range procs {
		fmt.Fprintf(w, "%d\t%s\n", p.Pid, p.Command)
	}
	return w.Flush()
}

func cmdUpdate(ctx context.Context, a *app, args []string) error {
	if err := needArgs(args, 1, -1, "container NAME"); err != nil {
		return err
	}
	memory, err := parseBytes(a.opts.memory)
	if err != nil {
		return usagef("--memory %q: %v", a.opts.memory, err)
	}
	if memory == 0 {
		return usagef("nothing to update: give --memory")
	}
	res := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &memory}}
	return a.forEachShim(ctx, args, func(ctx context.Context, s *client.Shim, r *record) error {
		cctx, cancel := withTimeout(ctx)
		defer cancel()
		return s.Update(cctx, r.ID, res, nil)
	})
}
