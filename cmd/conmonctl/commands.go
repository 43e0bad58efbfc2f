package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/client"
)

// options are the targets of every command's flags.
type options struct {
	detach, interactive, tty, rm, force, noStream, follow bool
	timestamps, logStats                                  bool
	name, group, rootfs, bundle, logDriver, signal        string
	since, memory, user, workdir                          string
	binary                                                string // shims upgrade --binary
	all                                                   bool   // shims upgrade --all
	env, logOpts                                          listFlag
	tail                                                  int
	timeout                                               int
	// stopSignals stops SIGINT/SIGTERM from cancelling the command's
	// context (without cancelling it), for commands that forward them to a
	// container.
	stopSignals func()
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func commands(o *options) map[string]*command {
	list := []*command{
		{
			name: "run", args: "[OPTIONS] (--rootfs DIR | --bundle DIR) [--] CMD [ARG...]",
			summary: "create and start a container; attached runs stream its output and exit with its code",
			example: `conmonctl run --rm --rootfs ./rootfs -- echo hello
conmonctl run -d --name web --group pod1 --memory 64m --rootfs ./rootfs \
    --log-opt max-size=1m --log-opt max-files=3 -- sh -c 'while :; do date; sleep 1; done'
conmonctl run -it --rootfs ./rootfs -- sh`,
			stopAtArg: true, runsProcess: true,
			run: cmdRun,
		},
		{name: "ps", args: "[--json]", summary: "list containers: name, group, status, pid, exit code, uptime, shim pid",
			example: "conmonctl ps\nconmonctl ps --json | jq -r '.[] | select(.status==\"running\") | .name'", run: cmdPs},
		{name: "logs", args: "[-f] [-t] [--since T] [--tail N] NAME | --stats NAME",
			summary: "print a container's logs (its k8s-file or json-file, else the shim's log cache); --stats: what its logging read, wrote and lost, and each driver's last error",
			example: "conmonctl logs --tail 10 web\nconmonctl logs -f --since 5m web\nconmonctl logs --stats web", run: cmdLogs},
		{name: "exec", args: "[-i] [-t] NAME [--] CMD [ARG...]", summary: "run a command in a running container; exits with its code",
			example: "conmonctl exec web -- cat /etc/hostname\nconmonctl exec -it web -- sh", stopAtArg: true, runsProcess: true, run: cmdExec},
		{name: "attach", args: "NAME", summary: "follow a running container's output, forward your input (run with -d -i) and terminal size (-t); ^P^Q detaches",
			example: "conmonctl attach web", runsProcess: true, run: cmdAttach},
		{name: "kill", args: "[-s SIGNAL] NAME...", summary: "send a signal (default KILL) to a container's processes",
			example: "conmonctl kill -s HUP web", run: cmdKill},
		{name: "stop", args: "[-t SECONDS] NAME...", summary: "stop a container: TERM, then KILL after the timeout (default 10s)",
			example: "conmonctl stop -t 2 web", run: cmdStop},
		{name: "wait", args: "NAME", summary: "wait for a container to exit, print its exit code and exit with it",
			example: "conmonctl wait web; echo $?", runsProcess: true, run: cmdWait},
		{name: "rm", args: "[-f] NAME...", summary: "remove stopped containers (-f: kill running ones first)",
			example: "conmonctl rm web\nconmonctl rm -f $(conmonctl ps --json | jq -r '.[].name')", run: cmdRm},
		{name: "top", args: "NAME", summary: "list the processes of a container (pids, as the host sees them, and their commands)",
			example: "conmonctl top web", run: cmdTop},
		{name: "update", args: "--memory BYTES NAME...", summary: "change the resources of running containers",
			example: "conmonctl update --memory 128m web", run: cmdUpdate},
		{name: "pause", args: "NAME...", summary: "freeze every process of a container", example: "conmonctl pause web", run: cmdPause},
		{name: "resume", args: "NAME...", summary: "thaw a paused container", example: "conmonctl resume web", run: cmdResume},
		{name: "stats", args: "[--no-stream] [NAME...]", summary: "live CPU, memory and pids of containers (all running ones by default)",
			example: "conmonctl stats --no-stream\nconmonctl stats web", run: cmdStats},
		{name: "events", args: "[--json]", summary: "stream the task events of every shim (create, start, exit, oom, ...)",
			example: "conmonctl events &\nconmonctl run --rm --rootfs ./rootfs -- true", run: cmdEvents},
		{name: "shims", args: "[--json] | upgrade [--binary PATH] (GROUP...|--all)",
			summary: "list shim processes: pid, group, containers served, RSS and PSS; upgrade: hand shims over to a new binary in place (same pid, containers and connections kept)",
			example: "conmonctl shims\nconmonctl shims --json\nconmonctl shims upgrade --all\nconmonctl shims upgrade --binary /usr/local/bin/containerd-shim-conmon-v2 pod1", run: cmdShims},
		{name: "completion", args: "bash", summary: "print a shell completion script",
			example: "conmonctl completion bash > /etc/bash_completion.d/conmonctl\nsource <(conmonctl completion bash)", run: cmdCompletion},
		{name: "help", args: "[COMMAND]", summary: "print help for conmonctl or a command", example: "conmonctl help run", run: nil},
	}
	m := map[string]*command{}
	for _, c := range list {
		m[c.name] = c
	}
	bindFlags(m, o)
	m["help"].run = func(ctx context.Context, a *app, args []string) error {
		if len(args) == 0 {
			a.mainUsage(m)
			return nil
		}
		c, ok := m[args[0]]
		if !ok {
			return usagef("unknown command %q", args[0])
		}
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		if c.flags != nil {
			c.flags(fs)
		}
		a.commandUsage(c, fs)
		return nil
	}
	return m
}

// bindFlags declares each command's flags on the app's options. It is
// separate from the table so that `help` can show them too.
func bindFlags(m map[string]*command, o *options) {
	m["run"].flags = func(fs *flag.FlagSet) {
		fs.BoolVar(&o.detach, "d", false, "detach: print the container ID and leave it running")
		fs.BoolVar(&o.interactive, "i", false, "keep standard input open and connect it")
		fs.BoolVar(&o.tty, "t", false, "allocate a terminal")
		fs.BoolVar(&o.rm, "rm", false, "remove the container when it exits")
		fs.StringVar(&o.name, "name", "", "`NAME` of the container (default: the short ID)")
		fs.StringVar(&o.group, "group", "", "`GROUP` of containers served by one shim process (default: its own)")
		fs.StringVar(&o.rootfs, "rootfs", "", "root filesystem `DIR`; conmonctl writes the OCI spec")
		fs.StringVar(&o.bundle, "bundle", "", "OCI bundle `DIR` with a config.json to use instead of --rootfs")
		fs.Var(&o.env, "env", "environment variable `K=V` (repeatable)")
		fs.StringVar(&o.memory, "memory", "", "memory limit in `BYTES` (k, m, g suffixes accepted)")
		fs.StringVar(&o.logDriver, "log-driver", "k8s-file", "log `DRIVER`: k8s-file, json-file, journald, syslog, fluentd, passthrough, none, ...")
		fs.Var(&o.logOpts, "log-opt", "log option `K=V` (repeatable): path, max-size, max-files, ... (docs/logging.md)")
		fs.StringVar(&o.workdir, "workdir", "", "working `DIR` inside the container")
	}
	m["ps"].flags = nil
	m["logs"].flags = func(fs *flag.FlagSet) {
		fs.BoolVar(&o.follow, "f", false, "follow: keep printing new lines until the container exits")
		fs.StringVar(&o.since, "since", "", "only lines since `T` (RFC 3339 time, or a duration like 10m)")
		fs.IntVar(&o.tail, "tail", -1, "only the last `N` lines")
		fs.BoolVar(&o.timestamps, "t", false, "prefix each line with its time (RFC 3339, UTC)")
		fs.BoolVar(&o.logStats, "stats", false, "print the counters of the container's logging instead: lines read, written, dropped and lost, per driver failures and the last error")
	}
	m["update"].flags = func(fs *flag.FlagSet) {
		fs.StringVar(&o.memory, "memory", "", "new memory limit in `BYTES` (k, m, g suffixes accepted)")
	}
	m["exec"].flags = func(fs *flag.FlagSet) {
		fs.BoolVar(&o.interactive, "i", false, "connect standard input")
		fs.BoolVar(&o.tty, "t", false, "allocate a terminal")
		fs.Var(&o.env, "env", "environment variable `K=V` (repeatable)")
		fs.StringVar(&o.workdir, "workdir", "", "working `DIR` inside the container")
	}
	m["kill"].flags = func(fs *flag.FlagSet) {
		fs.StringVar(&o.signal, "s", "KILL", "`SIGNAL` name or number")
	}
	m["stop"].flags = func(fs *flag.FlagSet) {
		fs.IntVar(&o.timeout, "t", 10, "`SECONDS` to wait after TERM before KILL")
	}
	m["rm"].flags = func(fs *flag.FlagSet) {
		fs.BoolVar(&o.force, "f", false, "kill the container first if it runs")
	}
	m["shims"].flags = func(fs *flag.FlagSet) {
		fs.StringVar(&o.binary, "binary", "", "with upgrade: the new shim binary `PATH` (default: each shim's own binary, as it is now on disk)")
		fs.BoolVar(&o.all, "all", false, "with upgrade: every shim")
	}
	m["stats"].flags = func(fs *flag.FlagSet) {
		fs.BoolVar(&o.noStream, "no-stream", false, "print one sample and exit")
	}
}

func (a *app) store() store { return store{root: a.root} }

func (a *app) shimOpts() client.ShimOpts {
	bin := a.shimBin
	if bin == "" {
		// The shim built next to conmonctl (bin/ of the repository, or the
		// install directory) wins over $PATH.
		if self, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(self), client.DefaultShimBinary)
			if _, err := os.Stat(p); err == nil {
				bin = p
			}
		}
	}
	return client.ShimOpts{Binary: bin, Namespace: a.namespace, Debug: a.debug}
}

// connect dials the shim of r.
// connectOne is the start of a command on exactly one container: it checks
// that args name one, finds its record and connects to its shim. The
// caller closes the shim.
func (a *app) connectOne(ctx context.Context, args []string) (*record, *client.Shim, error) {
	if err := needArgs(args, 1, 1, "container NAME"); err != nil {
		return nil, nil, err
	}
	r, err := a.store().find(args[0])
	if err != nil {
		return nil, nil, err
	}
	s, err := a.connect(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	return r, s, nil
}

func (a *app) connect(ctx context.Context, r *record) (*client.Shim, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := client.Connect(cctx, r.Address)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", r.Name, err)
	}
	return s, nil
}

// needArgs checks the number of positional arguments.
func needArgs(args []string, min, max int, what string) error {
	if len(args) < min {
		return usagef("missing %s", what)
	}
	if max >= 0 && len(args) > max {
		return usagef("too many arguments: %s", strings.Join(args[max:], " "))
	}
	return nil
}

// callTimeout bounds one short RPC; slowCallTimeout a shim start or a
// create.
const (
	callTimeout     = 10 * time.Second
	slowCallTimeout = 60 * time.Second
)

func withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, callTimeout)
}

// forEach runs f for every named container, reporting each failure and
// returning an error if any failed.
func (a *app) forEach(ctx context.Context, names []string, f func(ctx context.Context, r *record) error) error {
	failed := 0
	for _, n := range names {
		r, err := a.store().find(n)
		if err == nil {
			err = f(ctx, r)
		}
		if err != nil {
			failed++
			fmt.Fprintf(a.stderr, "conmonctl: %s\n", cleanError(err))
		}
	}
	if failed > 0 {
		return exitCode(exitError)
	}
	return nil
}

// forEachShim is forEach for commands that act through a container's
// shim: call gets a connection of its own to r's shim, closed after it,
// and the name of every container call succeeded on is printed.
func (a *app) forEachShim(ctx context.Context, names []string, call func(ctx context.Context, s *client.Shim, r *record) error) error {
	return a.forEach(ctx, names, func(ctx context.Context, r *record) error {
		s, err := a.connect(ctx, r)
		if err != nil {
			return err
		}
		defer s.Close()
		if err := call(ctx, s, r); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout, r.Name)
		return nil
	})
}

// gone reports whether err says the shim or task no longer exists.
func gone(err error) bool {
	return errdefs.IsNotFound(err) || errdefs.IsUnavailable(err)
}
