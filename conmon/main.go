package conmon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/version"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/reaper"
)

// Program describes one build of the drop-in: which log drivers it links
// and where to hand over when a container needs others.
type Program struct {
	// Registry returns the drivers this binary links. r (nil before the
	// monitor detaches) starts and reaps the programs of the binary and
	// plugin drivers.
	Registry func(r *reaper.Reaper) *logging.Registry
	// Fallback names a sibling executable (same directory as this one)
	// with more drivers. When the configuration names a driver Registry
	// lacks, the first process replaces itself with it (same arguments,
	// environment and fds) before doing anything else. Empty: no fallback,
	// such a driver is an error.
	Fallback string
}

// Main is the drop-in's main function: conmon's command line, pipes and
// exit code. It returns the process's exit code.
func Main(p Program) int {
	Trampoline()
	if len(os.Args) == 3 && os.Args[1] == "--exit-keeper" {
		return RunKeeper(os.Args[2])
	}
	// One monitor per container: keep it small. The detached monitor
	// starts with GOMAXPROCS=1 in its environment (Daemonize). The first
	// process, which with --sync (CRI-O's ExecSync) is the monitor, runs
	// on one P too: its work is a chain of waits, and a second P only adds
	// a spinning thread that competes with the runtime for the CPUs
	// (measured: about one thread and 0.2 ms of CPU less per exec; see
	// "Exec latency" in docs/conmon.md).
	if os.Getenv(EnvMonitor) == "" {
		runtime.GOMAXPROCS(1)
	}
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(16 << 20)
	return run(p)
}

func run(p Program) int {
	opts, err := Parse(os.Args[1:])
	if err != nil {
		// conmon 2.1.6 prints parse errors on stdout.
		fmt.Fprintln(os.Stdout, err)
		return 1
	}
	if opts.Help {
		fmt.Fprint(os.Stdout, HelpText())
		return 0
	}
	if opts.Version {
		fmt.Fprint(os.Stdout, VersionText(version.Version))
		return 0
	}
	cfg, err := Validate(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	first := os.Getenv(EnvMonitor) == ""
	keeperSock := "" // the exit keeper that started this monitor, if any
	var settings *LogSettings
	var settingsErr error
	if first {
		settings, settingsErr = ReadLogSettings(cfg)
	} else {
		settings, settingsErr = MonitorLogSettings(cfg)
	}
	if settingsErr == nil && first {
		missing := settings.MissingDrivers(p.Registry(nil))
		if len(missing) > 0 {
			if p.Fallback == "" {
				fmt.Fprintf(os.Stderr, "[conmon:e]: No such log driver %s\n", missing[0])
				return 1
			}
			handOver(p.Fallback, missing)
			fmt.Fprintf(os.Stderr, "[conmon:e]: No such log driver %s (not in this build of conmon-v2; %s, installed next to it, has every driver)\n", missing[0], p.Fallback)
			return 1
		}
	}
	if first && settingsErr == nil {
		// A bad log file fails here, synchronously, as conmon opens its
		// log file before it forks.
		if err := CheckLogFiles(context.Background(), cfg, settings, p.Registry(nil)); err != nil {
			fmt.Fprintf(os.Stderr, "[conmon:e]: Failed to open log file: %v\n", err)
			return 1
		}
	}
	boot, err := ReadBootstrap()
	if err != nil {
		fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
		return 1
	}
	if first {
		oldScore := PrepareProcess()
		if err := WaitStart(boot.StartFD); err != nil {
			fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
			return 1
		}
		if settingsErr != nil {
			// The caller has written the start byte and now reads the
			// sync pipe: it shows the message (Podman prints it as the
			// error of the create).
			fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", settingsErr)
			if boot.SyncFD >= 0 {
				_ = writeAll(boot.SyncFD, SyncMessage(SyncKey(cfg.Options), -1, settingsErr.Error()))
			}
			return 1
		}
		if !cfg.ExecAttach && boot.StartFD >= 0 {
			CloseFD(boot.StartFD)
			boot.StartFD = -1
		}
		if !cfg.Sync {
			if err := daemonize(cfg, settings, boot, oldScore); err != nil {
				fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
				return 1
			}
			return 0
		}
		boot.OOMScoreAdj = oldScore
		if !cfg.Passthru {
			if err := StdioToDevNull(); err != nil {
				fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
				return 1
			}
		}
	} else {
		keeperSock = os.Getenv(EnvKeeper)
		MonitorEnvCleanup()
	}
	diag := NewDiag(cfg.Level, os.Stderr, cfg.Syslog, cfg.CID)
	if settingsErr != nil {
		// Only the detached monitor gets here with an error: its
		// configuration file changed since the first process read it.
		diag.Errorf("%v", settingsErr)
		if boot.SyncFD >= 0 {
			_ = writeAll(boot.SyncFD, SyncMessage(SyncKey(cfg.Options), -1, settingsErr.Error()))
		}
		return 1
	}
	if err := reaper.SetSubreaper(); err != nil {
		diag.Errorf("Failed to set as subreaper: %v", err)
		return 1
	}
	r := reaper.New()
	runc.Monitor = r
	// Logger programs (binary, plugin drivers) are started and reaped
	// through the reaper, the process's one wait loop.
	reg := p.Registry(r)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = r.Run(ctx) }()
	open := func(ctx context.Context, cfg *Config, tap func(logging.Stream, []byte)) (LogPipeline, error) {
		return OpenLogs(ctx, cfg, settings, reg, tap)
	}
	mon := NewMonitor(cfg, boot, r, diag, open)
	mon.keeper = newKeeperLink(keeperSock, diag)
	mon.exitsAfterRun = true
	// The process exits with Run's code. The reaper is not stopped and
	// waited for first: its stop unregisters SIGCHLD, a round trip through
	// the runtime's signal-mask thread (thread wake-ups, sometimes a new
	// thread) between an exec's sync message and its exit, measured at
	// 0.28 ms of that interval's 1.12 (docs/conmon.md, "Exec latency").
	// The deferred cancel still tells it to stop.
	return mon.Run(ctx)
}

// daemonize detaches the monitor: by Daemonize, or, when the configuration
// names an exit keeper ([conmon] exit-keeper), by DaemonizeViaKeeper. A
// keeper that is not listening, or refuses (e.g. a rootless caller in its
// user namespace: the keeper serves its own uid only), is warned about and
// done without.
func daemonize(cfg *Config, settings *LogSettings, boot *Bootstrap, oldScore string) error {
	sock, err := KeeperSocket()
	if err != nil {
		return err
	}
	if sock == "" {
		return Daemonize(cfg, settings, boot, oldScore)
	}
	err = DaemonizeViaKeeper(sock, cfg, settings, boot, oldScore)
	if errors.Is(err, errKeeperUnreachable) || errors.Is(err, errKeeperRefused) {
		fmt.Fprintf(os.Stderr, "[conmon:w]: %v; monitoring without it\n", err)
		return Daemonize(cfg, settings, boot, oldScore)
	}
	return err
}

// handOver replaces the process with the fallback build, found next to
// this executable. It returns only if there is none (or exec failed).
func handOver(name string, missing []string) {
	self, err := os.Executable()
	if err != nil {
		return
	}
	path := filepath.Join(filepath.Dir(self), name)
	if unix.Access(path, unix.X_OK) != nil {
		return
	}
	err = unix.Exec(path, append([]string{os.Args[0]}, os.Args[1:]...), os.Environ())
	if err != nil && !errors.Is(err, unix.ENOENT) {
		fmt.Fprintf(os.Stderr, "[conmon:w]: exec %s for log driver %s: %v\n", path, missing[0], err)
	}
}
