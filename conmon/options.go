// Package conmon is the conmon 2.1 drop-in: it parses conmon's command line,
// speaks its pipe, socket, FIFO and file protocols, and supervises one
// container (or exec session) through the project's reaper, go-runc and the
// logging subsystem. cmd/conmon-v2 wires it; this package owns no process
// state of its own beyond what a Monitor holds.
//
// The wire contract it follows is the one Podman 4.3.1 and CRI-O observe of
// conmon 2.1.6; where 2.1.6 has a bug that later conmon releases fixed
// (cwd-relative oom file, ctl lines lost, symlink leaked) the fixed
// behaviour is implemented.
package conmon

import (
	"fmt"
	"strconv"
	"strings"
)

// Options is conmon's command line, one field per option of conmon 2.1.x
// plus the 2.2 additions. Zero values are conmon's defaults.
type Options struct {
	APIVersion          int
	Bundle              string
	CID                 string
	ConmonPidfile       string
	ContainerPidfile    string
	CUUID               string
	Exec                bool
	ExecAttach          bool
	ExecProcessSpec     string
	ExitCommand         string
	ExitCommandArgs     []string
	ExitDelay           int
	ExitDir             string
	LeaveStdinOpen      bool
	LogLevel            string
	LogPaths            []string
	LogSizeMax          int64
	LogGlobalSizeMax    int64
	LogTag              string
	Name                string
	NoNewKeyring        bool
	NoPivot             bool
	NoSyncLog           bool
	PersistDir          string
	ReplaceListenPid    bool
	Restore             string
	Runtime             string
	RuntimeArgs         []string
	RuntimeOpts         []string
	SdNotifySocket      string
	SocketDirPath       string
	Stdin               bool
	Sync                bool
	Syslog              bool
	SystemdCgroup       bool
	Terminal            bool
	Timeout             int
	Version             bool
	FullAttach          bool
	SeccompNotifySocket string
	SeccompPlugins      string
	Help                bool

	// conmon 2.2 additions.
	LogLabels             []string
	LogRotate             bool
	LogMaxFiles           int
	NoContainerPartialMsg bool
	LogAllowlistDirs      []string
	setSocketDirPath      bool
	positional            []string
}

// DefaultSocketDirPath is conmon's default --socket-dir-path.
const DefaultSocketDirPath = "/var/run/crio"

type argKind uint8

const (
	argNone argKind = iota
	argString
	argStrings
	argInt
	argInt64
)

// option is one entry of the option table: GLib's GOptionEntry, reduced to
// what conmon uses.
type option struct {
	long   string
	short  byte
	kind   argKind
	hidden bool
	help   string
	set    func(o *Options, v string, n int64)
}

// options lists the options in the order conmon's --help prints them.
var optionTable = []option{
	{long: "api-version", kind: argNone, help: "Conmon API version to use", set: func(o *Options, _ string, _ int64) { o.APIVersion = 1 }},
	{long: "bundle", short: 'b', kind: argString, help: "Location of the OCI Bundle path", set: func(o *Options, v string, _ int64) { o.Bundle = v }},
	{long: "cid", short: 'c', kind: argString, help: "Identification of Container", set: func(o *Options, v string, _ int64) { o.CID = v }},
	{long: "conmon-pidfile", short: 'P', kind: argString, help: "PID file for the conmon process", set: func(o *Options, v string, _ int64) { o.ConmonPidfile = v }},
	{long: "container-pidfile", short: 'p', kind: argString, help: "PID file for the initial pid inside of container", set: func(o *Options, v string, _ int64) { o.ContainerPidfile = v }},
	{long: "pidfile", kind: argString, hidden: true, set: func(o *Options, v string, _ int64) { o.ContainerPidfile = v }},
	{long: "cuuid", short: 'u', kind: argString, help: "Container UUID", set: func(o *Options, v string, _ int64) { o.CUUID = v }},
	{long: "exec", short: 'e', kind: argNone, help: "Exec a command into a running container", set: func(o *Options, _ string, _ int64) { o.Exec = true }},
	{long: "exec-attach", kind: argNone, help: "Attach to an exec session", set: func(o *Options, _ string, _ int64) { o.ExecAttach = true }},
	{long: "exec-process-spec", kind: argString, help: "Path to the process spec for execution", set: func(o *Options, v string, _ int64) { o.ExecProcessSpec = v }},
	{long: "exit-command", kind: argString, help: "Path to the program to execute when the container terminates its execution", set: func(o *Options, v string, _ int64) { o.ExitCommand = v }},
	{long: "exit-command-arg", kind: argStrings, help: "Additional arg to pass to the exit command.  Can be specified multiple times", set: func(o *Options, v string, _ int64) { o.ExitCommandArgs = append(o.ExitCommandArgs, v) }},
	{long: "exit-delay", kind: argInt, help: "Delay before invoking the exit command (in seconds)", set: func(o *Options, _ string, n int64) { o.ExitDelay = int(n) }},
	{long: "exit-dir", kind: argString, help: "Path to the directory where exit files are written", set: func(o *Options, v string, _ int64) { o.ExitDir = v }},
	{long: "leave-stdin-open", kind: argNone, help: "Leave stdin open when attached client disconnects", set: func(o *Options, _ string, _ int64) { o.LeaveStdinOpen = true }},
	{long: "log-level", kind: argString, help: "Print debug logs based on log level", set: func(o *Options, v string, _ int64) { o.LogLevel = v }},
	{long: "log-path", short: 'l', kind: argStrings, help: "Log file path", set: func(o *Options, v string, _ int64) { o.LogPaths = append(o.LogPaths, v) }},
	{long: "log-size-max", kind: argInt64, help: "Maximum size of log file", set: func(o *Options, _ string, n int64) { o.LogSizeMax = n }},
	{long: "log-global-size-max", kind: argInt64, help: "Maximum size of all log files", set: func(o *Options, _ string, n int64) { o.LogGlobalSizeMax = n }},
	{long: "log-tag", kind: argString, help: "Additional tag to use for logging", set: func(o *Options, v string, _ int64) { o.LogTag = v }},
	{long: "log-label", kind: argStrings, help: "Additional label KEY=VALUE to attach to journald entries.  Can be specified multiple times", set: func(o *Options, v string, _ int64) { o.LogLabels = append(o.LogLabels, v) }},
	{long: "log-rotate", kind: argNone, help: "Rotate the k8s log file instead of truncating it when --log-size-max is reached", set: func(o *Options, _ string, _ int64) { o.LogRotate = true }},
	{long: "log-max-files", kind: argInt, help: "Number of rotated k8s log files to keep with --log-rotate", set: func(o *Options, _ string, n int64) { o.LogMaxFiles = int(n) }},
	{long: "log-allowlist-dir", kind: argStrings, help: "Directory under which k8s log files may be created.  Can be specified multiple times", set: func(o *Options, v string, _ int64) { o.LogAllowlistDirs = append(o.LogAllowlistDirs, v) }},
	{long: "no-container-partial-message", kind: argNone, help: "Do not mark journald entries of split lines as partial", set: func(o *Options, _ string, _ int64) { o.NoContainerPartialMsg = true }},
	{long: "name", short: 'n', kind: argString, help: "Container name", set: func(o *Options, v string, _ int64) { o.Name = v }},
	{long: "no-new-keyring", kind: argNone, help: "Do not create a new session keyring for the container", set: func(o *Options, _ string, _ int64) { o.NoNewKeyring = true }},
	{long: "no-pivot", kind: argNone, help: "Do not use pivot_root", set: func(o *Options, _ string, _ int64) { o.NoPivot = true }},
	{long: "no-sync-log", kind: argNone, help: "Do not fsync the logs when the container exits", set: func(o *Options, _ string, _ int64) { o.NoSyncLog = true }},
	{long: "persist-dir", short: '0', kind: argString, help: "Persistent directory of the container, receives the exit and oom files", set: func(o *Options, v string, _ int64) { o.PersistDir = v }},
	{long: "replace-listen-pid", kind: argNone, help: "Replace listen pid if set for oci-runtime pid", set: func(o *Options, _ string, _ int64) { o.ReplaceListenPid = true }},
	{long: "restore", kind: argString, help: "Restore a container from a checkpoint", set: func(o *Options, v string, _ int64) { o.Restore = v }},
	{long: "restore-arg", kind: argStrings, hidden: true, set: func(o *Options, v string, _ int64) { o.RuntimeOpts = append(o.RuntimeOpts, v) }},
	{long: "runtime", short: 'r', kind: argString, help: "Path of the OCI runtime binary", set: func(o *Options, v string, _ int64) { o.Runtime = v }},
	{long: "runtime-arg", kind: argStrings, help: "Additional arg to pass to the runtime. Can be specified multiple times", set: func(o *Options, v string, _ int64) { o.RuntimeArgs = append(o.RuntimeArgs, v) }},
	{long: "runtime-opt", kind: argStrings, help: "Additional opts to pass to the restore or exec command. Can be specified multiple times", set: func(o *Options, v string, _ int64) { o.RuntimeOpts = append(o.RuntimeOpts, v) }},
	{long: "sdnotify-socket", kind: argString, help: "Path to the host's sd-notify socket to relay messages to", set: func(o *Options, v string, _ int64) { o.SdNotifySocket = v }},
	{long: "socket-dir-path", kind: argString, help: "Location of container attach sockets", set: func(o *Options, v string, _ int64) { o.SocketDirPath = v; o.setSocketDirPath = true }},
	{long: "stdin", short: 'i', kind: argNone, help: "Open up a pipe to pass stdin to the container", set: func(o *Options, _ string, _ int64) { o.Stdin = true }},
	{long: "sync", kind: argNone, help: "Do not daemonize: stay the caller's child and exit with the container's status", set: func(o *Options, _ string, _ int64) { o.Sync = true }},
	{long: "syslog", kind: argNone, help: "Log to syslog (use with cgroupfs cgroup manager)", set: func(o *Options, _ string, _ int64) { o.Syslog = true }},
	{long: "systemd-cgroup", short: 's', kind: argNone, help: "Enable systemd cgroup manager, rather then use the cgroupfs directly", set: func(o *Options, _ string, _ int64) { o.SystemdCgroup = true }},
	{long: "terminal", short: 't', kind: argNone, help: "Allocate a pseudo-TTY. The default is false", set: func(o *Options, _ string, _ int64) { o.Terminal = true }},
	{long: "timeout", short: 'T', kind: argInt, help: "Kill container after specified timeout in seconds.", set: func(o *Options, _ string, n int64) { o.Timeout = int(n) }},
	{long: "version", kind: argNone, help: "Print the version and exit", set: func(o *Options, _ string, _ int64) { o.Version = true }},
	{long: "full-attach", kind: argNone, help: "Put the attach socket in the bundle itself, ignoring --socket-dir-path", set: func(o *Options, _ string, _ int64) { o.FullAttach = true }},
	{long: "seccomp-notify-socket", kind: argString, help: "Path to the socket where the seccomp notification fd is received", set: func(o *Options, v string, _ int64) { o.SeccompNotifySocket = v }},
	{long: "seccomp-notify-plugins", kind: argString, help: "Plugins to use for managing the seccomp notifications", set: func(o *Options, v string, _ int64) { o.SeccompPlugins = v }},
}

// ParseError is a command-line syntax error. conmon 2.1.6 prints it on
// stdout as "conmon: option parsing failed: <msg>" and exits 1.
type ParseError struct{ Msg string }

func (e *ParseError) Error() string { return "conmon: option parsing failed: " + e.Msg }

func lookupLong(name string) *option {
	for i := range optionTable {
		if optionTable[i].long == name {
			return &optionTable[i]
		}
	}
	return nil
}

func lookupShort(c byte) *option {
	for i := range optionTable {
		if optionTable[i].short == c {
			return &optionTable[i]
		}
	}
	return nil
}

// Parse reads args (without the program name) with GLib's rules: "--opt v",
// "--opt=v", "-o v", grouped short flags ("-it"; an option of a group that
// takes a value consumes the next argument), repeatable array options, "--"
// ending the options. Arguments that are not options are kept aside and
// otherwise ignored, as conmon does (Podman's "--api-version 1" leaves "1").
func Parse(args []string) (*Options, error) {
	o := &Options{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			o.positional = append(o.positional, args[i+1:]...)
			return o, nil
		case strings.HasPrefix(a, "--"):
			name, val, hasVal := strings.Cut(a[2:], "=")
			opt := lookupLong(name)
			if opt == nil {
				if name == "help" {
					o.Help = true
					continue
				}
				return nil, &ParseError{Msg: "Unknown option " + a}
			}
			if opt.kind != argNone && !hasVal {
				if i+1 >= len(args) {
					return nil, &ParseError{Msg: "Missing argument for --" + name}
				}
				i++
				val = args[i]
			}
			if err := apply(o, opt, "--"+name, val); err != nil {
				return nil, err
			}
		case len(a) > 1 && a[0] == '-':
			for j := 1; j < len(a); j++ {
				c := a[j]
				if c == 'h' || c == '?' {
					o.Help = true
					continue
				}
				opt := lookupShort(c)
				if opt == nil {
					return nil, &ParseError{Msg: "Unknown option -" + string(c)}
				}
				var val string
				if opt.kind != argNone {
					if i+1 >= len(args) {
						return nil, &ParseError{Msg: "Missing argument for -" + string(c)}
					}
					i++
					val = args[i]
				}
				if err := apply(o, opt, "-"+string(c), val); err != nil {
					return nil, err
				}
			}
		default:
			o.positional = append(o.positional, a)
		}
	}
	return o, nil
}

func apply(o *Options, opt *option, name, val string) error {
	var n int64
	switch opt.kind {
	case argInt, argInt64:
		bits := 32
		if opt.kind == argInt64 {
			bits = 64
		}
		s := strings.TrimSpace(val)
		v, err := strconv.ParseInt(s, 0, bits)
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return &ParseError{Msg: fmt.Sprintf("Integer value \u201c%s\u201d for %s out of range", val, name)}
			}
			return &ParseError{Msg: fmt.Sprintf("Cannot parse integer value \u201c%s\u201d for %s", val, name)}
		}
		n = v
	}
	opt.set(o, val, n)
	return nil
}

// Positional returns the arguments that were not options (ignored).
func (o *Options) Positional() []string { return o.positional }

// HelpText is the --help output, in GLib's layout.
func HelpText() string {
	var b strings.Builder
	b.WriteString("Usage:\n  conmon [OPTION\u2026] - conmon utility\n\nHelp Options:\n  -h, --help                   Show help options\n\nApplication Options:\n")
	for _, opt := range optionTable {
		if opt.hidden {
			continue
		}
		var name string
		if opt.short != 0 {
			name = "-" + string(opt.short) + ", --" + opt.long
		} else {
			name = "--" + opt.long
		}
		fmt.Fprintf(&b, "  %-28s %s\n", name, opt.help)
	}
	b.WriteString("\n")
	return b.String()
}

// CompatVersion is the conmon release whose behaviour conmon-v2 provides.
// Podman needs >= 2.0.1; CRI-O passes --sync from 2.0.19 and
// --log-global-size-max from 2.1.2 on.
const CompatVersion = "2.1.6"

// VersionText is the --version output: conmon's two lines, with this
// build's description as the commit.
func VersionText(commit string) string {
	if commit == "" {
		commit = "unknown"
	}
	return "conmon version " + CompatVersion + "\ncommit: " + commit + "\n"
}
