// Command containerd-shim-conmon-v2 is conmon-v2 as a containerd shim v2
// (runtime name io.containerd.conmon.v2). It is also what CRI-O's "vm"
// runtime handler runs. See docs/containerd.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/version"
	"github.com/containers/conmon-v2/logging/builtin"
	"github.com/containers/conmon-v2/process"
	"github.com/containers/conmon-v2/reaper"
	"github.com/containers/conmon-v2/service"
	"github.com/containers/conmon-v2/service/monitor"
	"github.com/containers/conmon-v2/shim"
	"github.com/containers/conmon-v2/shim/drain"
	"github.com/containers/conmon-v2/shim/launch"
)

func main() {
	f, err := launch.ParseFlags(os.Args[1:])
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	switch {
	case f.Version:
		fmt.Printf("%s:\n  Version: %s\n  Runtime: %s\n  Go: %s\n", filepath.Base(os.Args[0]), version.Version, shim.RuntimeName, runtime.Version())
		return
	case f.Info:
		err = shim.Info(ctx, version.Version, os.Stdin, os.Stdout, f.Config)
	case f.Action == launch.ActionStart:
		var self string
		if self, err = os.Executable(); err == nil {
			err = launch.Start(ctx, f, launch.StartEnv{Stdin: os.Stdin, Stdout: os.Stdout, Self: self, Name: os.Args[0]})
		}
	case f.Action == launch.ActionDelete:
		err = shim.Delete(ctx, f, shim.DeleteEnv{Stdout: os.Stdout, Stderr: os.Stderr})
	default:
		err = daemon(f)
	}
	if err != nil {
		fail(err)
	}
}

// fail reports err on stderr (containerd shows it as the start error) and
// exits non-zero.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "containerd-shim-conmon-v2: %v\n", err)
	os.Exit(1)
}

// daemon serves the task API until the last task is gone. Until it
// serves, a failure is also written to the ready pipe, so `start` reports
// it to containerd.
func daemon(f launch.Flags) (err error) {
	var ready *os.File
	if s := os.Getenv(launch.ReadyFDEnv); s != "" {
		if fd, err := strconv.Atoi(s); err == nil && fd > 2 {
			unix.CloseOnExec(fd) // inherited without; runc must not get it
			ready = os.NewFile(uintptr(fd), "ready")
		}
		os.Unsetenv(launch.ReadyFDEnv)
	}
	serving := false
	defer func() {
		if err != nil && ready != nil && !serving {
			fmt.Fprint(ready, err.Error())
			ready.Close()
		}
	}()

	mainAt := time.Now()
	tune()
	// A live upgrade: this binary was exec'd by the previous one in the
	// same process, which described what it hands over.
	h, err := readHandover()
	if err != nil {
		return err
	}
	startedAt := time.Now()
	if h != nil && !h.StartedAt.IsZero() {
		startedAt = h.StartedAt
	}
	var cfg launch.Config
	if h != nil {
		cfg, err = launch.ParseConfig("from the previous binary (live upgrade)", []byte(h.Config))
	} else {
		cfg, err = daemonConfig(f)
	}
	if err != nil {
		return err
	}
	if cfg.Keeper && os.Getenv(keeperChildEnv) == "" && h == nil {
		// This process becomes the group's keeper and runs the daemon as
		// its child, handing it fd 3 and the ready pipe.
		return runKeeper(f, cfg, ready)
	}
	os.Unsetenv(keeperChildEnv)
	level := slog.LevelInfo
	if f.Debug || cfg.Debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).
		With("runtime", shim.RuntimeName, "namespace", f.Namespace, "pid", os.Getpid())
	// containerd reads our stderr (the bundle's log FIFO); when it goes away
	// a write must fail with EPIPE rather than kill the daemon. Notify, not
	// Ignore: an ignored SIGPIPE would be inherited by the containers.
	signal.Notify(make(chan os.Signal, 1), unix.SIGPIPE)
	// Under a keeper: descriptor custody (custody.go).
	var custody process.Custodian
	custodian := custodyFromEnv(log)
	if custodian != nil {
		custody = custodian
	}

	group := os.Getenv(launch.GroupEnv)
	os.Unsetenv(launch.ConfigEnv)
	os.Unsetenv(launch.GroupEnv)
	var (
		l        net.Listener
		sockPath string
		handed   []drain.Conn
	)
	var pendingJoins map[string]time.Time
	if h != nil {
		group, pendingJoins = h.Group, h.Joins
		l, sockPath, err = handedListener(h)
		for _, c := range h.Conns {
			handed = append(handed, drain.ConnFromFD(c.FD, c.Pending))
		}
	} else {
		l, sockPath, err = daemonListener(f)
	}
	if err != nil {
		return err
	}
	if err := reaper.SetSubreaper(); err != nil {
		l.Close()
		os.Remove(sockPath)
		return fmt.Errorf("subreaper: %w", err)
	}
	r := reaper.New()
	runc.Monitor = r // go-runc's global: every runc command goes through our wait loop

	sigCtx, stopSignals := signal.NotifyContext(context.Background(), unix.SIGTERM, unix.SIGINT)
	defer stopSignals()
	// The wait loop. After a live upgrade it starts only once the handed
	// tasks are restored: an exit during the handover waits as a zombie
	// until their pids are known.
	reaping := &reaperLoop{r: r}
	defer reaping.stop()
	if h == nil {
		reaping.start()
	}

	exchange := newEventHub(f.Namespace, os.Getenv(launch.TTRPCAddressEnv), log)
	up := &upgrader{log: log, startedAt: startedAt, version: version.Version, config: cfg.Encode(), group: group,
		sockPath: sockPath, hub: exchange, reaper: reaping}
	if custodian != nil {
		up.extraFDs = []int{custodian.fd} // the new binary keeps talking to the keeper
	}
	hupCtx, stopHup := context.WithCancel(context.Background())
	defer stopHup()
	go onSIGHUP(hupCtx, notifySIGHUP(), up, log) // registered before anything runs: upgrade.go
	var tasks *service.Service
	d := shim.Daemon{
		Log:        log,
		Listener:   l,
		SocketPath: sockPath,
		Config:     cfg.Encode(),
		Limits:     cfg.Limits,
		OnCreate:   moveLog,
		OnQuiet:    newTrimmer().trim,
		NewService: func(ctx context.Context, onEmpty func()) (shim.TaskService, error) {
			root := filepath.Join(cfg.RuntimeRoot, f.Namespace)
			if err := os.MkdirAll(root, 0o711); err != nil {
				return nil, fmt.Errorf("runtime root %q: %w", root, err)
			}
			rt := process.NewRuncRuntime(root)
			rt.Command = cfg.Runtime
			stateDir := filepath.Join(cfg.StateDir, f.Namespace)
			logDefaults, err := cfg.LoggingConfig()
			if err != nil {
				return nil, err
			}
			// Logger programs and plugins are forked through the reaper,
			// the daemon's only wait loop.
			logReg := builtin.Registry(builtin.Options{Runner: r, LoggerDirs: cfg.LoggerDirs})
			svc, err := service.New(ctx, service.Config{
				Namespace:   f.Namespace,
				StateDir:    stateDir,
				Logging:     service.AnnotationLogging(logReg, logDefaults, stateDir),
				Publisher:   exchange,
				Reaper:      r,
				Runtime:     rt,
				RuntimeRoot: root,
				LoggerDirs:  cfg.LoggerDirs,
				OnEmpty:     onEmpty,
				Log:         log,
				Custody:     custody,
			})
			if err != nil {
				return nil, err
			}
			if h != nil {
				// Before the wait loop runs (see above).
				t0 := time.Now()
				restored, err := svc.Restore(ctx, h.Tasks)
				if err != nil {
					log.Error("upgrade: tasks not restored", "error", err)
				}
				log.Info("upgrade: tasks restored", "tasks", len(restored), "took", time.Since(t0).String(),
					"since_main", time.Since(mainAt).String())
			}
			// A daemon of this group that died (kill -9, OOM) left its
			// tasks' records: take back those of our group.
			// One per container reads its own record only: its start
			// must not grow with the namespace's tasks.
			member := func(rec process.Record) bool { return launch.Member(cfg, group, rec.ID, rec.Bundle) }
			var adopted []string
			if id, ok := launch.OnlyMember(cfg, group); ok {
				adopted, err = svc.AdoptTasks(ctx, []string{id}, member)
			} else {
				adopted, err = svc.Adopt(ctx, member)
			}
			if err != nil {
				log.Warn("adopting the tasks of a previous daemon", "error", err)
			} else if len(adopted) > 0 {
				log.Info("adopted the tasks of a previous daemon", "tasks", adopted)
			}
			reaping.start() // after Restore: see above
			tasks = svc
			up.setService(svc)
			return svc, nil
		},
		Handed: handed,
		Joins:  up.setJoins,

		PendingJoins: pendingJoins,
		Upgraded:     h != nil,
		Drain: func(dl *drain.Listener) {
			up.setListener(dl)
			if custodian != nil {
				// The connections too: containerd's survives a crash.
				dl.SetCustody(custodian)
				if h != nil {
					custodian.Synced() // tasks and connections held again
				}
			}
			if h != nil {
				log.Info("upgrade: serving again", "from", h.From, "tasks", len(h.Tasks), "connections", len(h.Conns),
					"gap", time.Since(h.FrozenAt).String())
			}
		},
		Register: func(srv *ttrpc.Server, _ shim.TaskService) {
			monitor.Register(srv, monitor.New(monitor.Config{
				Events:    exchange,
				Tasks:     tasks,
				Logs:      tasks,
				Group:     group,
				Namespace: f.Namespace,
				Version:   version.Version,
				StartedAt: up.startedAt, // the daemon's, kept across upgrades
				Upgrade:   up.Upgrade,
				// A failure after the answer: Info's upgrade_error.
				UpgradeFailure: up.Failure,
			}))
		},
	}
	if ready != nil {
		d.Ready = ready // Serve reports on it from here on
		serving = true
	}
	reason, err := d.Serve(sigCtx)
	// Serve closed the service: its last events are queued. Give them a
	// few seconds to reach containerd.
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if cerr := exchange.Close(cctx); cerr != nil {
		log.Error("events", "error", cerr)
	}
	cancel()
	reaping.stop()
	if err != nil {
		log.Error("daemon", "error", err)
		return err
	}
	log.Info("exit", "reason", reason)
	return nil
}

// moveLog re-points fd 2, the daemon's log, at bundle's log FIFO when the
// current one is dead. start made fd 2 the log FIFO of the group's first
// bundle, which containerd copies into its own log; containerd stops
// reading it once that container is gone, and a shared daemon would lose
// its log from then on. Called on every Create.
func moveLog(bundle string) {
	var st unix.Stat_t
	if unix.Fstat(2, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO {
		// Reopening our own FIFO without blocking fails (ENXIO) exactly
		// when nobody reads it any more.
		fd, err := unix.Open("/proc/self/fd/2", unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
			return
		}
	}
	f := launch.OpenLogFifo(filepath.Join(bundle, "log"))
	if f == nil {
		return
	}
	defer f.Close()
	_ = unix.Dup3(int(f.Fd()), 2, 0)
}

// onSIGHUP upgrades the daemon in place, to the binary it was started
// from (replaced meanwhile by a package upgrade), on every SIGHUP, until
// ctx ends.
func onSIGHUP(ctx context.Context, hup chan os.Signal, up *upgrader, log *slog.Logger) {
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			binary, err := monitor.ResolveBinary("")
			if err == nil {
				err = up.Upgrade(ctx, binary)
			}
			if err != nil {
				log.Error("upgrade on SIGHUP", "error", err)
			}
		}
	}
}

// handedListener is the listening socket a previous binary handed over.
func handedListener(h *handover) (net.Listener, string, error) {
	lf := os.NewFile(uintptr(h.Listener), "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return nil, "", fmt.Errorf("handed listener: %w", err)
	}
	return l, h.SocketPath, nil
}

// daemonListener returns the socket inherited from start (fd 3), or, when
// the daemon is run by hand with -socket, listens there.
func daemonListener(f launch.Flags) (net.Listener, string, error) {
	if f.Socket != "" {
		p, err := launch.SocketFromAddress(f.Socket)
		if err != nil {
			p = f.Socket
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			return nil, "", err
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		return l, p, nil
	}
	lf := os.NewFile(3, "listener")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return nil, "", fmt.Errorf("daemon mode needs the listening socket as fd 3 (run by `start`) or -socket: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, "", fmt.Errorf("fd 3 is not a unix socket: %w", errdefs.ErrInvalidArgument)
	}
	return ul, ul.Addr().String(), nil
}

// daemonConfig is the configuration start resolved (passed in the
// environment), else the configuration file.
func daemonConfig(f launch.Flags) (launch.Config, error) {
	if s := os.Getenv(launch.ConfigEnv); s != "" {
		return launch.ParseConfig("from start ("+launch.ConfigEnv+")", []byte(s))
	}
	return launch.ResolveConfig(nil, f.Config)
}

// tune keeps the daemon small: it mostly sleeps in syscalls, two Ps are
// plenty, and a lower GC target trades a little CPU for resident memory.
// Explicit GOMAXPROCS/GOGC settings in the environment win.
func tune() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(2)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(64 << 20)
	}
}
