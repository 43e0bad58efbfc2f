package conmon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// UsageError is a validation failure of the command line. conmon prints it
// on stderr as "[conmon:e] <msg>" (or "[conmon:e]: <msg>" for the messages
// it raises through its errno-style helper) and exits 1.
type UsageError struct {
	Msg   string
	Colon bool // "[conmon:e]: " rather than "[conmon:e] "
}

func (e *UsageError) Error() string {
	if e.Colon {
		return "[conmon:e]: " + e.Msg
	}
	return "[conmon:e] " + e.Msg
}

// Unwrap classifies every usage error as an invalid argument.
func (e *UsageError) Unwrap() error { return errdefs.ErrInvalidArgument }

func usage(msg string) error          { return &UsageError{Msg: msg} }
func usageColon(msg string) error     { return &UsageError{Msg: msg, Colon: true} }
func usagef(f string, a ...any) error { return usage(fmt.Sprintf(f, a...)) }

// LogSpec is one --log-path value: a driver name and its argument (a file
// path for k8s-file and json-file, an address for syslog and fluentd).
type LogSpec struct {
	Driver string
	Arg    string
}

// Log driver names accepted in --log-path. The first four are conmon's;
// the others are the logging subsystem's drivers with a documented syntax.
const (
	DriverK8sFile     = "k8s-file"
	DriverJournald    = "journald"
	DriverPassthrough = "passthrough"
	DriverNone        = "none"
	DriverJSONFile    = "json-file"
	DriverSyslog      = "syslog"
	DriverFluentd     = "fluentd"
	DriverBinary      = "binary"
	DriverPlugin      = "plugin"
)

// Config is a validated command line with conmon's defaults applied.
type Config struct {
	*Options
	Level    Level
	Logs     []LogSpec // every driver, k8s-file at most once (the last one given)
	K8sFile  string    // path of the k8s-file log, "" if none
	Journald bool
	Passthru bool
}

// Exec reports whether this is an exec session (legacy or API v1).
func (c *Config) ExecMode() bool { return c.Options.Exec }

// Validate checks o in conmon's order and with its messages, and applies
// the defaults (bundle and container pidfile relative to the working
// directory, the socket directory).
func Validate(o *Options) (*Config, error) {
	if o.CID == "" {
		return nil, usage("Container ID not provided. Use --cid")
	}
	c := &Config{Options: o, Level: LevelWarn}
	if o.LogLevel != "" {
		lvl, ok := ParseLevel(o.LogLevel)
		if !ok {
			return nil, usageColon("No such log level " + o.LogLevel)
		}
		c.Level = lvl
	}
	if o.Exec && o.Restore != "" {
		return nil, usage("Cannot use 'exec' and 'restore' at the same time")
	}
	if o.ExecAttach && !o.Exec {
		return nil, usage("Attach can only be specified with exec")
	}
	if o.ExecAttach && o.APIVersion < 1 {
		return nil, usage("Attach can only be specified for a non-legacy exec session")
	}
	if o.CUUID == "" && (!o.Exec || o.APIVersion > 0) {
		return nil, usage("Container UUID not provided. Use --cuuid")
	}
	if o.Runtime == "" {
		return nil, usage("Runtime path not provided. Use --runtime")
	}
	if err := unix.Access(o.Runtime, unix.X_OK); err != nil {
		return nil, usageColon(fmt.Sprintf("Runtime path %s is not valid %s", o.Runtime, strerror(err)))
	}
	if o.Exec && o.ExecProcessSpec == "" {
		return nil, usage("Exec process spec path not provided. Use --exec-process-spec")
	}
	if o.ExitDelay < 0 {
		return nil, usage("Delay before invoking exit command must be greater than or equal to 0")
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, usageColon("Failed to get working directory " + strerror(err))
	}
	if o.Bundle == "" && !o.Exec {
		o.Bundle = cwd
	}
	if o.ContainerPidfile == "" {
		o.ContainerPidfile = filepath.Join(cwd, "pidfile-"+o.CID)
	}
	if !o.setSocketDirPath {
		o.SocketDirPath = DefaultSocketDirPath
	}
	if err := c.parseLogs(); err != nil {
		return nil, err
	}
	return c, nil
}

// parseLogs maps the --log-path values onto LogSpecs with conmon's rules:
// "DRIVER:ARG" or a bare path (k8s-file); "none", "off" and "null" add
// nothing; only the last k8s-file counts. Unlike conmon, a k8s-file path
// keeps any further ':' (conmon cut it there, a known limitation).
func (c *Config) parseLogs() error {
	if len(c.LogPaths) == 0 {
		return usage("Log driver not provided. Use --log-path")
	}
	var specs []LogSpec
	k8s := -1
	for _, v := range c.LogPaths {
		driver, arg, hasColon := strings.Cut(v, ":")
		if !hasColon {
			switch v {
			case "k8s-file", "journald", "passthrough", "none", "off", "null",
				DriverJSONFile, DriverSyslog, DriverFluentd, DriverBinary, DriverPlugin:
				driver, arg = v, ""
			default:
				driver, arg = DriverK8sFile, v
			}
		} else if driver == "" {
			driver = DriverK8sFile
		}
		switch driver {
		case "none", "off", "null":
			continue
		case DriverK8sFile:
			if arg == "" {
				return usageColon("k8s-file requires a filename")
			}
			if k8s >= 0 {
				specs[k8s].Arg = arg
				continue
			}
			k8s = len(specs)
		case DriverJSONFile:
			if arg == "" {
				return usageColon("json-file requires a filename")
			}
		case DriverJournald:
			arg = ""
			c.Journald = true
		case DriverPassthrough:
			c.Passthru = true
		case DriverSyslog, DriverFluentd:
		case DriverBinary, DriverPlugin:
			if arg == "" {
				return usageColon(driver + " requires a program path")
			}
		default:
			return usageColon("No such log driver " + driver)
		}
		specs = append(specs, LogSpec{Driver: driver, Arg: arg})
	}
	if k8s >= 0 {
		c.K8sFile = specs[k8s].Arg
	}
	if c.Journald && len(c.CID) <= 12 {
		return usage("Container ID must be longer than 12 characters")
	}
	if c.LogTag != "" && c.K8sFile != "" && !c.Journald {
		return usage("k8s-file doesn't support --log-tag")
	}
	c.Logs = specs
	return nil
}

// strerror renders an errno like C's strerror (capitalised).
func strerror(err error) string {
	var en syscall.Errno
	var s string
	if errors.As(err, &en) {
		s = en.Error()
	} else {
		s = err.Error()
	}
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}
