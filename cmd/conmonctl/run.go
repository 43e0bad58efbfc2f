package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/client"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
)

// Annotations conmonctl adds to the spec besides the group and log ones.
const (
	nameAnnotation    = "io.containers.conmon-v2.name"
	criNameAnnotation = "io.kubernetes.cri.container-name"
)

// readableDrivers are the log drivers whose files `logs` reads back.
var readableDrivers = map[string]bool{logging.FormatK8sFile: true, logging.FormatJSONFile: true}

func cmdRun(ctx context.Context, a *app, args []string) (retErr error) {
	o := a.opts
	if (o.rootfs == "") == (o.bundle == "") {
		return usagef("give exactly one of --rootfs DIR and --bundle DIR")
	}
	if o.rootfs != "" && len(args) == 0 {
		return usagef("missing the command to run (after --)")
	}
	if o.detach && o.rm {
		// Nobody would be there to remove it: conmonctl is not a daemon.
		return usagef("--rm cannot be combined with -d (conmonctl has no daemon to remove it later); use conmonctl rm")
	}
	if o.tty && !o.interactive && !o.detach {
		// Allowed (docker allows it): output only, through a terminal.
	}
	if o.rootfs != "" {
		if fi, err := os.Stat(o.rootfs); err != nil || !fi.IsDir() {
			return fmt.Errorf("--rootfs %s is not a directory: %w", o.rootfs, errdefs.ErrInvalidArgument)
		}
		if _, err := os.Stat(filepath.Join(o.rootfs, "bin")); err != nil {
			if _, err2 := os.Stat(filepath.Join(o.rootfs, "usr")); err2 != nil {
				return fmt.Errorf("--rootfs %s does not look like a root filesystem (no bin/ or usr/): %w", o.rootfs, errdefs.ErrInvalidArgument)
			}
		}
	}
	if o.bundle != "" {
		if _, err := client.ReadSpec(o.bundle); err != nil {
			return fmt.Errorf("--bundle: %w", err)
		}
	}
	memory, err := parseBytes(o.memory)
	if err != nil {
		return usagef("--memory %q: %v", o.memory, err)
	}
	logOpts, err := parseLogOpts(o.logDriver, o.logOpts)
	if err != nil {
		return err
	}
	if o.group != "" {
		if err := client.ValidateID(o.group); err != nil {
			return fmt.Errorf("--group: %w", err)
		}
	}
	id := newID()
	name := o.name
	if name == "" {
		name = shortID(id)
	} else if err := client.ValidateID(name); err != nil {
		return fmt.Errorf("--name: %w", err)
	}

	st := a.store()
	unlock, err := st.lock()
	if err != nil {
		return err
	}
	if st.nameTaken(name) {
		unlock()
		return fmt.Errorf("a container named %s exists already (conmonctl rm %s): %w", name, name, errdefs.ErrAlreadyExists)
	}
	dir := st.dir(id)
	bundle := filepath.Join(dir, "bundle")
	rec := &record{
		ID: id, Name: name, Group: o.group, Namespace: a.namespace, Bundle: bundle,
		Created: time.Now(), Args: args, Terminal: o.tty, Stdin: o.interactive, Remove: o.rm,
		LogDriver: o.logDriver, LogOpts: logOpts,
	}
	if readableDrivers[o.logDriver] {
		rec.LogPath = logOpts["path"]
		if rec.LogPath == "" {
			rec.LogPath = filepath.Join(dir, "ctr.log")
		}
		p, err := filepath.Abs(rec.LogPath)
		if err != nil {
			unlock()
			return err
		}
		rec.LogPath = p
	}
	if rec.Group == "" {
		rec.Group = id
	}
	// From here on, a failure removes everything made for this container.
	var shim *client.Shim
	created := false
	defer func() {
		var ec exitCode
		if retErr == nil || errors.As(retErr, &ec) {
			if shim != nil {
				shim.Close()
			}
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if shim != nil {
			if created {
				_ = shim.Kill(cctx, id, "", uint32(unix.SIGKILL), true)
				waitGone(cctx, shim, id)
				_, _ = shim.Delete(cctx, id, "")
			}
			_ = shim.Shutdown(cctx, id, false)
			shim.Close()
		}
		_ = os.RemoveAll(dir)
	}()
	if err := st.save(rec); err != nil {
		unlock()
		return err
	}
	unlock()

	spec, err := a.makeSpec(rec, o, args, memory, logOpts)
	if err != nil {
		return err
	}
	if err := client.WriteSpec(bundle, spec); err != nil {
		return err
	}
	sctx, scancel := context.WithTimeout(ctx, slowCallTimeout)
	addr, err := client.StartShim(sctx, a.shimOpts(), id, bundle)
	scancel()
	if err != nil {
		return err
	}
	rec.Address = addr
	if err := st.save(rec); err != nil {
		return err
	}
	// The deferred cleanup above closes the connection, after its
	// Shutdown when the run failed.
	if shim, err = a.connect(ctx, rec); err != nil {
		return err
	}

	proc := &process{a: a, shim: shim, id: id, tty: o.tty, stdin: o.interactive, detach: o.detach}
	if err := proc.openIO(ctx, filepath.Join(dir, "io"), "init"); err != nil {
		return err
	}
	defer proc.closeIO()
	// runc create mounts and sets up the namespaces: it may take a while
	// on a loaded machine.
	cctx, cancel := context.WithTimeout(ctx, slowCallTimeout)
	_, err = shim.Create(cctx, client.CreateOpts{ID: id, Bundle: bundle, Stdio: proc.fifos.Stdio})
	cancel()
	if err != nil {
		return err
	}
	created = true
	if o.detach {
		cctx, cancel := withTimeout(ctx)
		defer cancel()
		if _, err := shim.Start(cctx, id, ""); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, id)
		return nil
	}
	code, err := proc.run(ctx)
	if err != nil {
		return err
	}
	if o.rm {
		if err := a.removeContainer(context.WithoutCancel(ctx), rec, shim, false); err != nil {
			fmt.Fprintf(a.stderr, "conmonctl run: --rm: %v\n", cleanError(err))
		}
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// makeSpec writes the spec of a new container: from --rootfs with
// defaults, or from --bundle's config.json with the root made absolute.
func (a *app) makeSpec(rec *record, o *options, args []string, memory int64, logOpts map[string]string) (*specs.Spec, error) {
	// The shim names the container in its logs (journald's
	// CONTAINER_NAME, the tag) after CRI's container-name annotation.
	// The manager annotation tells the shim these annotations are
	// conmonctl's, not a Kubernetes user's (logging.FromKubernetes).
	ann := map[string]string{nameAnnotation: rec.Name, criNameAnnotation: rec.Name, client.ManagerAnnotation: client.Manager}
	if o.group != "" {
		ann[client.GroupAnnotation] = o.group
	}
	ann[client.LogAnnotationPrefix+"driver"] = o.logDriver
	for k, v := range logOpts {
		ann[client.LogAnnotationPrefix+k] = v
	}
	if rec.LogPath != "" {
		ann[client.LogAnnotationPrefix+"path"] = rec.LogPath
	}
	if o.rootfs != "" {
		return client.NewSpec(client.SpecOpts{
			Rootfs: o.rootfs, Args: args, Env: o.env, Cwd: o.workdir, Terminal: o.tty,
			Hostname: rec.Name, MemoryLimit: memory, Annotations: ann,
			CgroupsPath: "/conmon-v2/" + rec.ID,
		})
	}
	src, err := filepath.Abs(o.bundle)
	if err != nil {
		return nil, err
	}
	spec, err := client.ReadSpec(src)
	if err != nil {
		return nil, err
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return nil, fmt.Errorf("bundle %s: config.json has no root.path: %w", o.bundle, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(spec.Root.Path) {
		spec.Root.Path = filepath.Join(src, spec.Root.Path)
	}
	// runc wants an absolute path without symlinks.
	if p, err := filepath.EvalSymlinks(spec.Root.Path); err == nil {
		spec.Root.Path = p
	}
	if fi, err := os.Stat(spec.Root.Path); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("bundle %s: root %s is not a directory: %w", o.bundle, spec.Root.Path, errdefs.ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("bundle %s: config.json has no process: %w", o.bundle, errdefs.ErrInvalidArgument)
	}
	if len(args) > 0 {
		spec.Process.Args = args
	}
	spec.Process.Terminal = o.tty
	for _, kv := range o.env {
		if !strings.Contains(kv, "=") {
			return nil, fmt.Errorf("--env %q is not K=V: %w", kv, errdefs.ErrInvalidArgument)
		}
		spec.Process.Env = append(spec.Process.Env, kv)
	}
	if o.workdir != "" {
		spec.Process.Cwd = o.workdir
	}
	if spec.Annotations == nil {
		spec.Annotations = map[string]string{}
	}
	for k, v := range ann {
		spec.Annotations[k] = v
	}
	if memory > 0 {
		if spec.Linux == nil {
			spec.Linux = &specs.Linux{}
		}
		if spec.Linux.Resources == nil {
			spec.Linux.Resources = &specs.LinuxResources{}
		}
		spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &memory}
	}
	rec.Terminal = spec.Process.Terminal
	return spec, nil
}

// parseLogOpts checks --log-opt K=V pairs with the logging package's own
// parser, so a bad option is refused before anything is created.
func parseLogOpts(driver string, opts []string) (map[string]string, error) {
	if driver == "" {
		return nil, usagef("--log-driver must not be empty")
	}
	cfg := logging.DefaultConfig()
	if err := cfg.Set("driver", driver); err != nil {
		return nil, fmt.Errorf("--log-driver %q: %w", driver, err)
	}
	if strings.Contains(driver, ",") {
		return nil, fmt.Errorf("--log-driver %q: give one driver: %w", driver, errdefs.ErrInvalidArgument)
	}
	// The shim builds its drivers from the same registry: refuse an
	// unknown name here, before anything is created.
	if _, ok := builtin.Registry().Resolve(driver); !ok {
		return nil, fmt.Errorf("--log-driver %q: unknown log driver (known: %s): %w", driver,
			strings.Join(builtin.Registry().Names(), ", "), errdefs.ErrInvalidArgument)
	}
	out := map[string]string{}
	for _, kv := range opts {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--log-opt %q is not K=V: %w", kv, errdefs.ErrInvalidArgument)
		}
		if k == "driver" {
			return nil, fmt.Errorf("--log-opt driver=...: use --log-driver: %w", errdefs.ErrInvalidArgument)
		}
		if err := cfg.Set(k, v); err != nil {
			return nil, fmt.Errorf("--log-opt %s: %w", kv, err)
		}
		if k == "path" {
			if v == "" {
				return nil, fmt.Errorf("--log-opt path= needs a file: %w", errdefs.ErrInvalidArgument)
			}
			abs, err := filepath.Abs(v)
			if err != nil {
				return nil, err
			}
			if fi, err := os.Stat(filepath.Dir(abs)); err != nil || !fi.IsDir() {
				return nil, fmt.Errorf("--log-opt path=%s: directory %s does not exist: %w", v, filepath.Dir(abs), errdefs.ErrInvalidArgument)
			}
			v = abs
		}
		out[k] = v
	}
	return out, nil
}

// parseBytes parses a size: a byte count or a number with k, m, g (powers
// of 1024), optionally followed by b. Empty is 0.
func parseBytes(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	t := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), "b")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "k"):
		mult, t = 1<<10, strings.TrimSuffix(t, "k")
	case strings.HasSuffix(t, "m"):
		mult, t = 1<<20, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "g"):
		mult, t = 1<<30, strings.TrimSuffix(t, "g")
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive number of bytes, optionally with k, m or g")
	}
	return n * mult, nil
}

// process is one attached or detached process (a container's init or an
// exec) and the client side of its stdio.
type process struct {
	a      *app
	shim   *client.Shim
	id     string
	execID string
	tty    bool
	stdin  bool
	detach bool

	fifos *client.FIFOSet
	io    *client.IO
	con   console.Console
}

// openIO makes the fifos and starts copying. A detached process has no
// client ends: its output goes only to its log drivers (file:///dev/null
// is the shim's destination that needs no reader), and its stdin, with
// -i, is a fifo left for attach.
func (p *process) openIO(ctx context.Context, dir, name string) error {
	var err error
	if p.detach {
		p.fifos, err = client.NewFIFOSet(dir, name, p.stdin, false, false, p.tty)
		if err != nil {
			return err
		}
		p.fifos.Stdio.Stdout = "file:///dev/null"
		// The stdin fifo stays unopened here: the shim's copy into the
		// container begins with the first attach that writes to it (and
		// ends at that attach's EOF).
		return p.fifos.Mkfifo()
	}
	p.fifos, err = client.NewFIFOSet(dir, name, p.stdin, true, true, p.tty)
	if err != nil {
		return err
	}
	streams := client.Streams{Stdout: p.a.stdout, Stderr: p.a.stderr}
	if p.stdin {
		streams.Stdin = p.a.stdin
	}
	if p.tty {
		if c, err := console.ConsoleFromFile(os.Stdin); err == nil {
			p.con = c
			streams.Stdin = nil
			if p.stdin {
				streams.Stdin = c
			}
		}
	}
	p.io, err = client.OpenIO(ctx, p.fifos, streams, func() {
		cctx, cancel := withTimeout(context.WithoutCancel(ctx))
		defer cancel()
		_ = p.shim.CloseStdin(cctx, p.id, p.execID)
	})
	return err
}

func (p *process) closeIO() {
	if p.io != nil {
		p.io.Close()
	}
	// A detached process's stdin fifo is for attach; rm removes it.
	if p.fifos != nil && !p.detach {
		p.fifos.Remove()
	}
}

// run starts the created process attached, forwards the terminal size or
// signals, waits for it and its output, and returns its exit code.
func (p *process) run(ctx context.Context) (int, error) {
	// Wait before Start: an exit that comes before Start returns is not
	// missed (the shim answers Wait for created processes).
	type result struct {
		exit client.Exit
		err  error
	}
	waitc := make(chan result, 1)
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	go func() {
		e, err := p.shim.Wait(wctx, p.id, p.execID)
		waitc <- result{e, err}
	}()
	if p.con != nil {
		if err := p.con.SetRaw(); err != nil {
			return 0, fmt.Errorf("terminal raw mode: %w", err)
		}
		defer p.con.Reset()
	}
	fwdCtx, stopFwd := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFwd()
	if p.con != nil && p.execID == "" {
		// Before Start: a container's pty exists once it is created, and
		// the process must see the right size from its first instruction.
		// (An exec's pty only exists once it is started.)
		p.shim.ForwardResize(fwdCtx, p.con, p.id, p.execID, nil)
	}
	cctx, cancel := withTimeout(ctx)
	_, err := p.shim.Start(cctx, p.id, p.execID)
	cancel()
	if err != nil {
		return 0, err
	}
	switch {
	case p.con == nil:
		p.forwardSignals(fwdCtx)
	case p.execID != "":
		p.shim.ForwardResize(fwdCtx, p.con, p.id, p.execID, nil)
	}
	r := <-waitc
	if r.err != nil {
		return 0, r.err
	}
	// The output fifos reach EOF when every holder of the process's
	// stdio is gone; do not hang on a daemon the process left behind.
	p.io.Wait(2 * time.Second)
	if p.con != nil {
		p.con.Reset()
	}
	return int(r.exit.Status), nil
}

// forwardSignals passes SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 that
// conmonctl receives to the process, as docker's sig-proxy does.
func (p *process) forwardSignals(ctx context.Context) {
	if p.a.opts.stopSignals != nil {
		p.a.opts.stopSignals()
	}
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2)
	go func() {
		defer signal.Stop(sigc)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigc:
				cctx, cancel := withTimeout(ctx)
				_ = p.shim.Kill(cctx, p.id, p.execID, uint32(s.(unix.Signal)), false)
				cancel()
			}
		}
	}()
}

// waitGone waits (bounded by ctx) for a killed task to stop.
func waitGone(ctx context.Context, s *client.Shim, id string) {
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _ = s.Wait(wctx, id, "")
}

// removeContainer deletes the task of r (which must be stopped unless
// force), asks its shim to exit if it serves nothing else, and removes the
// record. A shim that is gone is cleaned up with the shim's delete action.
func (a *app) removeContainer(ctx context.Context, r *record, s *client.Shim, force bool) error {
	if s == nil {
		var err error
		s, err = a.connect(ctx, r)
		if err != nil {
			if !gone(err) {
				return err
			}
			s = nil
		} else {
			defer s.Close()
		}
	}
	if s != nil {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		st, err := s.State(cctx, r.ID, "")
		switch {
		case err == nil:
			if st.Status != client.Stopped && st.Status != client.Created {
				if !force {
					return fmt.Errorf("container %s is %s: stop it first, or rm -f: %w", r.Name, st.Status, errdefs.ErrFailedPrecondition)
				}
				if st.Status == client.Paused {
					_ = s.Resume(cctx, r.ID)
				}
				if err := s.Kill(cctx, r.ID, "", uint32(unix.SIGKILL), true); err != nil && !gone(err) {
					return err
				}
				waitGone(cctx, s, r.ID)
			} else if st.Status == client.Created {
				_ = s.Kill(cctx, r.ID, "", uint32(unix.SIGKILL), true)
			}
			if _, err := s.Delete(cctx, r.ID, ""); err != nil && !gone(err) {
				return err
			}
			_ = s.Shutdown(cctx, r.ID, false)
		case gone(err):
		default:
			return err
		}
	} else {
		// The shim died: let its delete action kill and unmount what is left.
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		opts := a.shimOpts()
		opts.Namespace = r.Namespace // the one it was started in
		_, _ = client.DeleteShim(cctx, opts, r.ID, r.Bundle)
		// A socket nobody listens on any more is the dead shim's.
		if sock, ok := strings.CutPrefix(r.Address, "unix://"); ok && socketRefused(sock) {
			_ = os.Remove(sock)
		}
	}
	unlock, err := a.store().lock()
	if err != nil {
		return err
	}
	defer unlock()
	return a.store().remove(r.ID)
}

var _ io.Reader = (*os.File)(nil)

// socketRefused reports whether path is a unix socket that refuses
// connections: its server is gone.
func socketRefused(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return false
	}
	return errors.Is(err, unix.ECONNREFUSED)
}
