// Command conmonctl runs containers through conmon-v2's shim without
// containerd or Podman: it starts a shim per group of containers, speaks
// the containerd task API and conmon-v2's Monitor API to it, and keeps a
// small record per container under its state root.
//
// Every command has its own flag set (the standard library's flag package);
// `conmonctl help COMMAND` prints it with an example.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	clog "github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/containers/conmon-v2/internal/version"
)

// Exit codes of conmonctl's own failures. Commands that run a process
// (run, exec, wait, attach) otherwise exit with that process's code, so
// their own failures use 125, as docker does.
const (
	exitError     = 1
	exitUsage     = 2
	exitRunFailed = 125
)

// usageError marks a bad command line: exit code 2 and a hint to help.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitCode makes a command exit with a code without an error message (a
// container's exit code).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// command is one conmonctl command.
type command struct {
	name    string
	args    string // synopsis after the name
	summary string
	example string
	// flags declares the command's own flags on fs.
	flags func(fs *flag.FlagSet)
	// run runs it with the arguments left after the flags.
	run func(ctx context.Context, a *app, args []string) error
	// stopAtArg: flags end at the first non-flag argument (run, exec: the
	// container's command follows), instead of being allowed anywhere.
	stopAtArg bool
	// runsProcess: own failures exit 125 (see exitRunFailed).
	runsProcess bool
}

// app holds what every command shares: global options and the standard
// streams. It is built in main; there is no package-level state.
type app struct {
	root      string
	json      bool
	shimBin   string
	namespace string
	debug     bool
	stdin     io.Reader
	stdout    io.Writer
	stderr    io.Writer

	// opts is the per-command options, filled by the command's flags.
	opts *options
}

func defaultRoot() string {
	if os.Geteuid() == 0 {
		return "/run/conmon-v2"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "conmon-v2")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("conmon-v2-%d", os.Geteuid()))
}

func main() {
	// ttrpc logs through containerd/log (logrus); a reply that arrives
	// after its call was cancelled (stop's bounded Wait) is normal here,
	// not worth a line on the user's terminal.
	_ = clog.SetLevel("fatal")
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, opts: &options{}}
	ctx, cancel := context.WithCancel(context.Background())
	code := a.main(ctx, os.Args[1:])
	cancel()
	os.Exit(code)
}

// globalFlags declares the options accepted before the command and by
// every command.
func (a *app) globalFlags(fs *flag.FlagSet) {
	fs.StringVar(&a.root, "root", defaultRoot(), "state directory of conmonctl")
	fs.BoolVar(&a.json, "json", false, "print JSON for scripts instead of tables")
	fs.StringVar(&a.shimBin, "shim", envOr("CONMONCTL_SHIM", ""), "shim binary (default: containerd-shim-conmon-v2 next to conmonctl, else in $PATH)")
	fs.StringVar(&a.namespace, "namespace", "conmonctl", "namespace passed to the shim")
	fs.BoolVar(&a.debug, "debug", false, "start shims with -debug")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func (a *app) main(ctx context.Context, args []string) int {
	cmds := commands(a.opts)
	global := flag.NewFlagSet("conmonctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	a.globalFlags(global)
	showVersion := global.Bool("version", false, "print the version")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.mainUsage(cmds)
			return 0
		}
		fmt.Fprintf(a.stderr, "conmonctl: %v\nRun 'conmonctl help' for usage.\n", err)
		return exitUsage
	}
	if *showVersion {
		fmt.Fprintf(a.stdout, "conmonctl %s\n", version.Version)
		return 0
	}
	rest := global.Args()
	if len(rest) == 0 {
		a.mainUsage(cmds)
		return exitUsage
	}
	name := rest[0]
	cmd, ok := cmds[name]
	if !ok {
		fmt.Fprintf(a.stderr, "conmonctl: unknown command %q\nRun 'conmonctl help' for the list of commands.\n", name)
		return exitUsage
	}
	fs := flag.NewFlagSet("conmonctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	// Global options are accepted after the command too, with the values
	// given before it as defaults.
	root, jsonOut, shim, ns, debug := a.root, a.json, a.shimBin, a.namespace, a.debug
	fs.StringVar(&a.root, "root", root, "state directory of conmonctl")
	fs.BoolVar(&a.json, "json", jsonOut, "print JSON for scripts instead of tables")
	fs.StringVar(&a.shimBin, "shim", shim, "shim binary")
	fs.StringVar(&a.namespace, "namespace", ns, "namespace passed to the shim")
	fs.BoolVar(&a.debug, "debug", debug, "start shims with -debug")
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	cmdArgs, err := parseFlags(fs, rest[1:], cmd.stopAtArg)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			a.commandUsage(cmd, fs)
			return 0
		}
		fmt.Fprintf(a.stderr, "conmonctl %s: %v\nRun 'conmonctl %s --help' for usage.\n", name, err, name)
		return exitUsage
	}
	if a.root == "" {
		fmt.Fprintf(a.stderr, "conmonctl %s: --root must not be empty\n", name)
		return exitUsage
	}
	// SIGINT and SIGTERM cancel the command's context. A command that
	// forwards signals to a container takes them over with stopSignals,
	// which stops this watch without cancelling the context (what is still
	// running on it, such as a pending fifo open, must go on).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGTERM, unix.SIGINT)
	unwatch := make(chan struct{})
	var once sync.Once
	a.opts.stopSignals = func() {
		once.Do(func() {
			signal.Stop(sigc)
			close(unwatch)
		})
	}
	defer a.opts.stopSignals()
	go func() {
		select {
		case <-sigc:
			cancel()
		case <-unwatch:
		case <-ctx.Done():
		}
	}()
	err = cmd.run(ctx, a, cmdArgs)
	return a.report(cmd, err)
}

// report prints err and returns the exit code for it.
func (a *app) report(cmd *command, err error) int {
	if err == nil {
		return 0
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code)
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(a.stderr, "conmonctl %s: %s\nRun 'conmonctl %s --help' for usage.\n", cmd.name, ue.msg, cmd.name)
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "conmonctl %s: %s\n", cmd.name, cleanError(err))
	if cmd.runsProcess {
		return exitRunFailed
	}
	return exitError
}

// cleanError drops the errdefs class words that wrapped errors end with
// (": invalid argument", ": not found"): the message already says what is
// wrong, and people read it.
func cleanError(err error) string {
	msg := err.Error()
	for _, class := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists,
		errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented, errdefs.ErrUnavailable} {
		msg = strings.TrimSuffix(msg, ": "+class.Error())
	}
	return msg
}

// parseFlags parses args with fs. Unless stopAtArg, flags may follow
// positional arguments (`logs NAME -f`), as docker allows; "--" ends flags
// in both modes.
func parseFlags(fs *flag.FlagSet, args []string, stopAtArg bool) ([]string, error) {
	args = expandShortFlags(fs, args, stopAtArg)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		// flag.Parse consumed a "--" if it met one first; detect it by
		// comparing with the input.
		consumedDash := len(args) > len(rest) && args[len(args)-len(rest)-1] == "--"
		if stopAtArg || consumedDash || len(rest) == 0 {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// expandShortFlags rewrites grouped one-letter boolean flags ("-it",
// "-dit") into separate ones, as docker users type them; the flag package
// does not group. Values of flags that take one are skipped.
func expandShortFlags(fs *flag.FlagSet, args []string, stopAtArg bool) []string {
	isBool := func(name string) (known, boolean bool) {
		f := fs.Lookup(name)
		if f == nil {
			return false, false
		}
		b, ok := f.Value.(interface{ IsBoolFlag() bool })
		return true, ok && b.IsBoolFlag()
	}
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return append(out, args[i:]...)
		}
		if len(arg) < 2 || arg[0] != '-' {
			if stopAtArg {
				return append(out, args[i:]...)
			}
			out = append(out, arg)
			continue
		}
		name := strings.TrimLeft(arg, "-")
		if strings.Contains(name, "=") {
			out = append(out, arg)
			continue
		}
		if known, boolean := isBool(name); known {
			out = append(out, arg)
			if !boolean && i+1 < len(args) {
				i++
				out = append(out, args[i])
			}
			continue
		}
		grouped := !strings.HasPrefix(arg, "--") && len(name) > 1
		for _, c := range name {
			if _, boolean := isBool(string(c)); !boolean {
				grouped = false
			}
		}
		if !grouped {
			out = append(out, arg) // the flag package reports it
			continue
		}
		for _, c := range name {
			out = append(out, "-"+string(c))
		}
	}
	return out
}

func (a *app) mainUsage(cmds map[string]*command) {
	w := a.stdout
	fmt.Fprintf(w, `conmonctl runs containers through conmon-v2, with no containerd or Podman.

Usage: conmonctl [--root DIR] [--json] COMMAND [OPTIONS] [ARGS]

Commands:
`)
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, `
Global options (also accepted after the command):
  --root DIR     state directory (default %s)
  --json         JSON output for scripts
  --shim PATH    shim binary (default: containerd-shim-conmon-v2 next to conmonctl, else in $PATH)
  --namespace NS namespace given to the shims (default conmonctl)
  --debug        start shims with -debug
  --version      print the version

Example:
  conmonctl run -d --name web --rootfs ./rootfs -- httpd -f -p 8080
  conmonctl ps

Run 'conmonctl help COMMAND' for a command's options and an example.
`, defaultRoot())
}

func (a *app) commandUsage(cmd *command, fs *flag.FlagSet) {
	w := a.stdout
	fmt.Fprintf(w, "Usage: conmonctl %s %s\n\n%s\n", cmd.name, cmd.args, cmd.summary)
	var own []string
	fs.VisitAll(func(f *flag.Flag) {
		switch f.Name {
		case "root", "json", "shim", "namespace", "debug":
			return
		}
		own = append(own, f.Name)
	})
	if len(own) > 0 {
		fmt.Fprintf(w, "\nOptions:\n")
		fs.VisitAll(func(f *flag.Flag) {
			switch f.Name {
			case "root", "json", "shim", "namespace", "debug":
				return
			}
			name, usage := flag.UnquoteUsage(f)
			dash := "--"
			if len(f.Name) == 1 {
				dash = "-"
			}
			left := dash + f.Name
			if name != "" {
				left += " " + name
			}
			def := ""
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
				def = fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(w, "  %-22s %s%s\n", left, usage, def)
		})
	}
	fmt.Fprintf(w, "\nGlobal options --root, --json, --shim, --namespace, --debug are accepted too.\n")
	fmt.Fprintf(w, "\nExample:\n%s\n", indent(cmd.example, "  "))
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}
