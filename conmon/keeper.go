package conmon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/reaper"
)

// The exit keeper (opt-in, docs/conmon.md "Exit keeper") is one process per
// node that starts the drop-in's monitors as its children and is their
// child subreaper. A monitor killed while its container runs leaves the
// container re-parented to the keeper, which reaps it and writes the exit
// files the monitor would have written.
//
// Protocol: SOCK_SEQPACKET on the keeper's socket (0600, and every peer
// must have the keeper's uid, checked with SO_PEERCRED), one request and
// one reply per connection, both JSON (keeperRequest, keeperReply):
//
//   - "spawn", from the drop-in's first process, with the fds the monitor
//     is to have (SCM_RIGHTS, in the order of FDs, which names their
//     numbers in the monitor; 0, 1 and 2 are required). The keeper starts
//     the peer's own executable (/proc/<peer>/exe) with Args, Env and Dir
//     as a new session and replies with its pid.
//   - "container" (Pid: the container's pid), "exited" (Status: the
//     container's exit status, sent as soon as the monitor reaped it) and
//     "done" (the exit files are written), from a monitor the keeper
//     started (the peer's pid must be one).
const (
	keeperOpSpawn     = "spawn"
	keeperOpContainer = "container"
	keeperOpExited    = "exited"
	keeperOpDone      = "done"
)

// EnvKeeper carries the keeper's socket path to a monitor it started: the
// monitor reports its container there.
const EnvKeeper = "_CONMON_V2_EXIT_KEEPER"

// keeperMaxFDs bounds the fds of one spawn request (the caller's pipes,
// stdio, preserved fds and reserved ports).
const keeperMaxFDs = 250

// keeperMaxMsg bounds one request (arguments and environment).
const keeperMaxMsg = 256 << 10

type keeperRequest struct {
	Op     string   `json:"op"`
	Args   []string `json:"args,omitempty"`
	Env    []string `json:"env,omitempty"`
	Dir    string   `json:"dir,omitempty"`
	FDs    []int    `json:"fds,omitempty"`
	Pid    int      `json:"pid,omitempty"`
	Status int      `json:"status,omitempty"`
}

type keeperReply struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
}

// keeperEntry is one monitor the keeper started and what it knows of its
// container.
type keeperEntry struct {
	monitor int
	cid     string
	exitDir string
	persist string
	exitCmd []string // command and arguments; nil: none
	delay   time.Duration
	env     []string // the exit command's environment

	ctr         int  // container pid, 0 until reported
	exited      bool // the monitor reported the container's exit status
	status      int
	done        bool // the monitor wrote the exit files
	monitorGone bool
}

// Keeper is the state of the exit keeper. The zero value is not usable;
// use NewKeeper.
type Keeper struct {
	r   *reaper.Reaper
	log *log.Logger
	// exe names the executable a spawn request starts: the peer's.
	exe func(peer int) string
	// start starts a monitor (tests replace it).
	start func(cmd *exec.Cmd) error
	// runExit runs an entry's exit command (tests replace it).
	runExit func(e *keeperEntry)
	// alive tells whether a process exists (tests replace it).
	alive func(pid int) bool
	// writeFiles writes an entry's exit files (writeExitFiles; the fuzz
	// test replaces it: its paths are arbitrary).
	writeFiles func(exitDir, persist, cid string, status int) []error
	// socket is the keeper's address, passed to the monitors.
	socket string
	uid    int

	mu    sync.Mutex
	byMon map[int]*keeperEntry // monitor pid -> entry, until the monitor is reaped and its container accounted for; guarded by mu
	byCtr map[int]*keeperEntry // container pid -> entry, until the container is accounted for; guarded by mu
}

// NewKeeper returns a keeper listening (later, Serve) on socket, reaping
// through r and logging to out.
func NewKeeper(socket string, r *reaper.Reaper, out io.Writer) *Keeper {
	k := &Keeper{
		r:      r,
		log:    log.New(out, "conmon-v2 exit-keeper: ", log.LstdFlags),
		exe:    func(peer int) string { return "/proc/" + strconv.Itoa(peer) + "/exe" },
		socket: socket,
		uid:    os.Geteuid(),
		byMon:  map[int]*keeperEntry{},
		byCtr:  map[int]*keeperEntry{},
	}
	k.start = func(cmd *exec.Cmd) error { return cmd.Start() }
	k.runExit = k.runExitCommand
	k.writeFiles = writeExitFiles
	k.alive = func(pid int) bool { return !errors.Is(unix.Kill(pid, 0), unix.ESRCH) }
	return k
}

// RunKeeper is `conmon-v2 --exit-keeper SOCKET`: it becomes a child
// subreaper, listens on SOCKET and serves until SIGTERM or SIGINT. It
// returns the process's exit code.
func RunKeeper(socket string) int {
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "conmon-v2 exit-keeper: "+format+"\n", a...) }
	if socket == "" || !filepath.IsAbs(socket) {
		logf("socket path %q: must be absolute: %v", socket, errdefs.ErrInvalidArgument)
		return 1
	}
	// What the drop-in's first process does for the monitor it starts
	// (umask 0022, oom_score_adj -1000 where allowed): the monitors
	// inherit both from the keeper now.
	PrepareProcess()
	if err := reaper.SetSubreaper(); err != nil {
		logf("set child subreaper: %v", err)
		return 1
	}
	ln, err := listenKeeper(socket)
	if err != nil {
		logf("%v", err)
		return 1
	}
	r := reaper.New()
	k := NewKeeper(socket, r, os.Stderr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT)
	go func() {
		<-sigc
		cancel()
	}()
	sub := r.Subscribe()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); _ = r.Run(ctx) }()
	go func() { defer wg.Done(); k.exits(ctx, sub) }()
	go func() { defer wg.Done(); k.Serve(ctx, ln) }()
	k.log.Printf("listening on %s", socket)
	<-ctx.Done()
	ln.Close()
	_ = os.Remove(socket)
	wg.Wait()
	sub.Close()
	k.log.Printf("stopped; monitors it started are re-parented to init")
	return 0
}

// listenKeeper listens on socket (mode 0600), replacing a stale socket
// file but not a live keeper.
func listenKeeper(socket string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, fmt.Errorf("exit keeper socket %s: %w", socket, err)
	}
	if c, err := net.Dial("unixpacket", socket); err == nil {
		c.Close()
		return nil, fmt.Errorf("exit keeper socket %s: a keeper is already listening: %w", socket, errdefs.ErrAlreadyExists)
	}
	_ = os.Remove(socket)
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: socket, Net: "unixpacket"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("exit keeper socket %s: %w", socket, err)
	}
	ln.SetUnlinkOnClose(false)
	return ln, nil
}

// Serve accepts requests until ctx is done or ln fails. Each connection
// is served by its own short-lived goroutine (one request, one reply).
func (k *Keeper) Serve(ctx context.Context, ln *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				k.log.Printf("accept: %v", err)
			}
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.serveConn(c)
		}()
	}
}

func (k *Keeper) serveConn(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cred, err := peerCred(c)
	if err != nil {
		k.log.Printf("peer credentials: %v", err)
		return
	}
	buf := make([]byte, keeperMaxMsg)
	oob := make([]byte, unix.CmsgSpace(4*keeperMaxFDs))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		if !errors.Is(err, io.EOF) { // EOF: a probe that connected and closed
			k.log.Printf("read request of pid %d: %v", cred.Pid, err)
		}
		return
	}
	files, ferr := parseRights(oob[:oobn])
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var rep keeperReply
	var req keeperRequest
	switch {
	case ferr != nil:
		rep.Error = ferr.Error()
	case flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		rep.Error = fmt.Sprintf("request too large (at most %d bytes and %d fds): %v", keeperMaxMsg, keeperMaxFDs, errdefs.ErrInvalidArgument)
	case int(cred.Uid) != k.uid:
		rep.Error = fmt.Sprintf("peer uid %d is not the keeper's (%d): %v", cred.Uid, k.uid, errdefs.ErrPermissionDenied)
	default:
		if err := json.Unmarshal(buf[:n], &req); err != nil {
			rep.Error = fmt.Sprintf("bad request: %v: %v", err, errdefs.ErrInvalidArgument)
			break
		}
		pid, err := k.handle(int(cred.Pid), &req, files)
		rep.Pid = pid
		if err != nil {
			rep.Error = err.Error()
		}
	}
	if rep.Error != "" {
		k.log.Printf("request %q of pid %d: %s", req.Op, cred.Pid, rep.Error)
	}
	out, _ := json.Marshal(rep)
	_, _ = c.Write(out)
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// parseRights returns the fds of the control messages as files (closed
// by the caller).
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("control message: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "fd"+strconv.Itoa(fd)))
		}
	}
	return files, nil
}

// handle serves one request of peer; it returns the spawned monitor's pid
// for "spawn".
func (k *Keeper) handle(peer int, req *keeperRequest, files []*os.File) (int, error) {
	if req.Op != keeperOpSpawn && len(files) > 0 {
		return 0, fmt.Errorf("request %q carries fds: %w", req.Op, errdefs.ErrInvalidArgument)
	}
	switch req.Op {
	case keeperOpSpawn:
		return k.spawn(peer, req, files)
	case keeperOpContainer, keeperOpExited, keeperOpDone:
		return 0, k.report(peer, req)
	}
	return 0, fmt.Errorf("unknown request %q: %w", req.Op, errdefs.ErrInvalidArgument)
}

// spawn starts a monitor for peer (the drop-in's first process).
func (k *Keeper) spawn(peer int, req *keeperRequest, files []*os.File) (int, error) {
	if len(req.Args) == 0 {
		return 0, fmt.Errorf("spawn: no arguments: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.FDs) != len(files) {
		return 0, fmt.Errorf("spawn: %d fd numbers for %d fds: %w", len(req.FDs), len(files), errdefs.ErrInvalidArgument)
	}
	opts, err := Parse(req.Args[1:])
	if err != nil {
		return 0, fmt.Errorf("spawn: command line: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	byNum := map[int]*os.File{}
	maxfd := 2
	for i, n := range req.FDs {
		if n < 0 || n > 1023 || byNum[n] != nil {
			return 0, fmt.Errorf("spawn: fd number %d (bad or repeated): %w", n, errdefs.ErrInvalidArgument)
		}
		byNum[n] = files[i]
		maxfd = max(maxfd, n)
	}
	for n := 0; n < 3; n++ {
		if byNum[n] == nil {
			return 0, fmt.Errorf("spawn: fd %d (stdio) missing: %w", n, errdefs.ErrInvalidArgument)
		}
	}
	cmd := &exec.Cmd{
		Path:        k.exe(peer),
		Args:        req.Args,
		Env:         append(append([]string{}, req.Env...), EnvKeeper+"="+k.socket),
		Dir:         req.Dir,
		Stdin:       byNum[0],
		Stdout:      byNum[1],
		Stderr:      byNum[2],
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	if maxfd > 2 {
		cmd.ExtraFiles = make([]*os.File, maxfd-2)
		for n, f := range byNum {
			if n > 2 {
				cmd.ExtraFiles[n-3] = f
			}
		}
	}
	e := &keeperEntry{
		cid:     opts.CID,
		exitDir: opts.ExitDir,
		persist: opts.PersistDir,
		delay:   time.Duration(opts.ExitDelay) * time.Second,
		env:     exitCommandEnv(req.Env),
	}
	if opts.ExitCommand != "" {
		e.exitCmd = append([]string{opts.ExitCommand}, opts.ExitCommandArgs...)
	}
	// The lock is held across the start: the exit loop cannot see the
	// monitor's exit before the monitor is known.
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.start(cmd); err != nil {
		return 0, fmt.Errorf("spawn: start monitor: %w", err)
	}
	e.monitor = cmd.Process.Pid
	// The reaper is the one wait loop; the pidfd os.Process may hold is
	// not needed.
	_ = cmd.Process.Release()
	k.byMon[e.monitor] = e
	k.log.Printf("started monitor %d for container %s", e.monitor, e.cid)
	return e.monitor, nil
}

// report records what a monitor the keeper started says of its container.
func (k *Keeper) report(peer int, req *keeperRequest) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.byMon[peer]
	if e == nil || e.monitorGone {
		return fmt.Errorf("pid %d is not a monitor this keeper started: %w", peer, errdefs.ErrPermissionDenied)
	}
	switch req.Op {
	case keeperOpContainer:
		if req.Pid <= 1 {
			return fmt.Errorf("container pid %d: %w", req.Pid, errdefs.ErrInvalidArgument)
		}
		if e.ctr != 0 && e.ctr != req.Pid {
			delete(k.byCtr, e.ctr)
		}
		e.ctr = req.Pid
		k.byCtr[req.Pid] = e
	case keeperOpExited:
		e.exited, e.status = true, req.Status
	case keeperOpDone:
		e.done = true
		if e.ctr != 0 {
			delete(k.byCtr, e.ctr)
		}
	}
	return nil
}

// exits handles every exit the reaper reports until ctx is done.
func (k *Keeper) exits(ctx context.Context, sub *reaper.Subscription) {
	for {
		e, err := sub.Recv(ctx)
		if err != nil {
			return
		}
		k.handleExit(e.Pid, e.Status)
	}
}

// handleExit accounts for one reaped process: a monitor, a container whose
// monitor died, or another orphan (ignored).
func (k *Keeper) handleExit(pid, status int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e := k.byCtr[pid]; e != nil && !e.done {
		// Only a container re-parented to the keeper is reaped here: its
		// monitor is dead (or dying, its exit not yet seen).
		delete(k.byCtr, pid)
		k.log.Printf("container %s (pid %d) exited with status %d after its monitor %d died", e.cid, pid, status, e.monitor)
		k.finish(e, status)
		return
	}
	e := k.byMon[pid]
	if e == nil {
		return
	}
	e.monitorGone = true
	delete(k.byMon, pid)
	switch {
	case e.done:
		// The normal end: the monitor wrote the exit files.
	case e.exited:
		k.log.Printf("monitor %d of container %s died (status %d) after its container exited with status %d", pid, e.cid, status, e.status)
		if e.ctr != 0 {
			delete(k.byCtr, e.ctr)
		}
		k.finish(e, e.status)
	case e.ctr != 0 && k.byCtr[e.ctr] == e:
		if !k.alive(e.ctr) {
			// Reaped by the monitor, which died before it could say
			// with which status: nothing to report.
			delete(k.byCtr, e.ctr)
			k.log.Printf("monitor %d of container %s died (status %d); the container's exit status is lost", pid, e.cid, status)
			return
		}
		k.log.Printf("monitor %d of container %s died (status %d); keeping container pid %d", pid, e.cid, status, e.ctr)
	case e.ctr != 0:
		// The container was reaped here already (finish ran).
	default:
		k.log.Printf("monitor %d of container %s exited (status %d) without a container", pid, e.cid, status)
	}
}

// finish writes e's exit files with status and runs its exit command, as
// the monitor would have. Called with k.mu held.
func (k *Keeper) finish(e *keeperEntry, status int) {
	e.done = true
	for _, err := range k.writeFiles(e.exitDir, e.persist, e.cid, status) {
		k.log.Printf("container %s: %v", e.cid, err)
	}
	if e.exitCmd != nil {
		go k.runExit(e)
	}
}

// writeExitFiles writes conmon's exit files for status: <persist>/exit,
// then <exitDir>/<cid>, each the decimal status without a newline, written
// atomically. Empty directories are skipped.
func writeExitFiles(exitDir, persist, cid string, status int) []error {
	data := []byte(strconv.Itoa(status))
	var errs []error
	if persist != "" {
		if err := WriteFileAtomic(filepath.Join(persist, "exit"), data, 0o666); err != nil {
			errs = append(errs, err)
		}
	}
	if exitDir != "" {
		if err := WriteFileAtomic(filepath.Join(exitDir, cid), data, 0o666); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// runExitCommand runs e's exit command after its delay, with the caller's
// environment, and waits for it through the reaper.
func (k *Keeper) runExitCommand(e *keeperEntry) {
	if e.delay > 0 {
		time.Sleep(e.delay)
	}
	cmd := exec.Command(e.exitCmd[0], e.exitCmd[1:]...)
	cmd.Env = e.env
	ec, err := k.r.Start(cmd)
	if err != nil {
		k.log.Printf("container %s: exit command: %v", e.cid, err)
		return
	}
	if st, _ := k.r.Wait(cmd, ec); st != 0 {
		k.log.Printf("container %s: exit command %s exited with status %d", e.cid, e.exitCmd[0], st)
	}
}

// exitCommandEnv returns the caller's environment from the monitor's:
// without the variables the first process added, with the caller's
// GOMAXPROCS back (what MonitorEnvCleanup does in the monitor).
func exitCommandEnv(monitorEnv []string) []string {
	var out []string
	gomax, hadGomax := "", false
	for _, kv := range monitorEnv {
		switch {
		case strings.HasPrefix(kv, envGOMAXPROCS+"="):
			gomax, hadGomax = strings.TrimPrefix(strings.TrimPrefix(kv, envGOMAXPROCS+"="), "set:"), true
		case strings.HasPrefix(kv, "_CONMON_V2_"), strings.HasPrefix(kv, "GOMAXPROCS="):
		default:
			out = append(out, kv)
		}
	}
	if hadGomax {
		out = append(out, "GOMAXPROCS="+gomax)
	}
	return out
}
