// Command conmon-v2 is a drop-in for conmon 2.1: Podman (--conmon,
// conmon_path) and CRI-O (monitor_path) start it per container with
// conmon's command line and pipes. See docs/conmon.md.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	runc "github.com/containerd/go-runc"

	"github.com/containers/conmon-v2/conmon"
	"github.com/containers/conmon-v2/internal/version"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/reaper"
)

func main() {
	conmon.Trampoline()
	// One monitor per container: keep it small. The detached monitor
	// starts with GOMAXPROCS=1 in its environment (conmon.Daemonize); a
	// --sync monitor (CRI-O's ExecSync) is short-lived and keeps two.
	if os.Getenv(conmon.EnvMonitor) == "" {
		runtime.GOMAXPROCS(2)
	}
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(16 << 20)
	os.Exit(run())
}

func run() int {
	opts, err := conmon.Parse(os.Args[1:])
	if err != nil {
		// conmon 2.1.6 prints parse errors on stdout.
		fmt.Fprintln(os.Stdout, err)
		return 1
	}
	if opts.Help {
		fmt.Fprint(os.Stdout, conmon.HelpText())
		return 0
	}
	if opts.Version {
		fmt.Fprint(os.Stdout, conmon.VersionText(version.Version))
		return 0
	}
	cfg, err := conmon.Validate(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if os.Getenv(conmon.EnvMonitor) == "" {
		// A bad log file fails here, synchronously, as conmon opens its
		// log file before it forks.
		if err := conmon.CheckLogFiles(context.Background(), cfg, registry(nil)); err != nil {
			fmt.Fprintf(os.Stderr, "[conmon:e]: Failed to open log file: %v\n", err)
			return 1
		}
	}
	boot, err := conmon.ReadBootstrap()
	if err != nil {
		fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
		return 1
	}
	if os.Getenv(conmon.EnvMonitor) == "" {
		oldScore := conmon.PrepareProcess()
		if err := conmon.WaitStart(boot.StartFD); err != nil {
			fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
			return 1
		}
		if !cfg.ExecAttach && boot.StartFD >= 0 {
			conmon.CloseFD(boot.StartFD)
			boot.StartFD = -1
		}
		if !cfg.Sync {
			if err := conmon.Daemonize(cfg, boot, oldScore); err != nil {
				fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
				return 1
			}
			return 0
		}
		boot.OOMScoreAdj = oldScore
		if !cfg.Passthru {
			if err := conmon.StdioToDevNull(); err != nil {
				fmt.Fprintf(os.Stderr, "[conmon:e]: %v\n", err)
				return 1
			}
		}
	} else {
		conmon.MonitorEnvCleanup()
	}
	diag := conmon.NewDiag(cfg.Level, os.Stderr, cfg.Syslog, cfg.CID)
	if err := reaper.SetSubreaper(); err != nil {
		diag.Errorf("Failed to set as subreaper: %v", err)
		return 1
	}
	r := reaper.New()
	runc.Monitor = r
	// Logger programs (binary, plugin drivers) are started and reaped
	// through the reaper, the process's one wait loop.
	reg := registry(r)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = r.Run(ctx) }()
	code := conmon.NewMonitor(cfg, boot, r, diag, openLogs(reg)).Run(ctx)
	cancel()
	<-done
	return code
}

func openLogs(reg *logging.Registry) conmon.LogOpener {
	return func(ctx context.Context, cfg *conmon.Config, tap func(logging.Stream, []byte)) (conmon.LogPipeline, error) {
		return conmon.OpenLogs(ctx, cfg, reg, tap)
	}
}
