package conmon

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/containers/conmon-v2/logging"
)

// LogDriver is one driver to open: its registry name and options.
type LogDriver struct {
	Name    string
	Options map[string]string
}

// LogDrivers maps conmon's logging flags onto the logging subsystem's
// drivers and options:
//
//	-l k8s-file:PATH, -l PATH   k8s-file, option path
//	-l json-file:PATH           json-file, option path
//	-l journald[:]              journald (partial-message unless
//	                            --no-container-partial-message)
//	-l syslog[:ADDRESS]         syslog, option address (udp://h:p, ...)
//	-l fluentd[:ADDRESS]        fluentd, option address (host:port, ...)
//	-l binary:PATH              binary, option path (the logger program)
//	-l plugin:PATH              plugin, option path (the plugin program)
//	-l plugin:unix:///SOCKET    plugin, option socket (a running plugin)
//	-l none|off|null            nothing (output still reaches attach clients)
//	-l passthrough              nothing here: the runtime gets the caller's stdio
//
// --log-size-max N truncates the file drivers at N bytes as conmon does,
// or, with --log-rotate, rotates keeping --log-max-files backups;
// --log-global-size-max stops them after N bytes; --no-sync-log skips the
// fsync at exit. File options are given per driver, so drivers without
// files never see them.
func LogDrivers(c *Config) ([]LogDriver, error) {
	var out []LogDriver
	for _, s := range c.Logs {
		opts := map[string]string{}
		switch s.Driver {
		case DriverK8sFile, DriverJSONFile:
			opts[logging.OptPath] = s.Arg
			if c.LogSizeMax > 0 {
				opts[logging.OptMaxSize] = strconv.FormatInt(c.LogSizeMax, 10)
				if c.LogRotate {
					backups := c.LogMaxFiles
					if backups < 1 {
						backups = 1
					}
					opts[logging.OptMaxFiles] = strconv.Itoa(backups + 1)
				} else {
					opts[logging.OptTruncate] = "true"
				}
			}
			if c.LogGlobalSizeMax > 0 {
				opts[logging.OptGlobalSizeMax] = strconv.FormatInt(c.LogGlobalSizeMax, 10)
			}
			if c.NoSyncLog {
				opts[logging.OptFsync] = logging.FsyncNone
			} else {
				opts[logging.OptFsync] = logging.FsyncExit
			}
		case DriverJournald:
			opts["partial-message"] = strconv.FormatBool(!c.NoContainerPartialMsg)
		case DriverSyslog, DriverFluentd:
			if s.Arg != "" {
				opts["address"] = s.Arg
			}
		case DriverBinary:
			opts[logging.OptPath] = s.Arg
		case DriverPlugin:
			if sock, ok := strings.CutPrefix(s.Arg, "unix://"); ok {
				opts["socket"] = sock
			} else {
				opts[logging.OptPath] = s.Arg
			}
		case DriverPassthrough:
			continue
		}
		out = append(out, LogDriver{Name: s.Driver, Options: opts})
	}
	return out, nil
}

// LogMetadata is the container's metadata as the drivers see it: --cid,
// --name, --log-tag (already expanded by the caller) and --log-label.
func LogMetadata(c *Config) (logging.Metadata, error) {
	m := logging.Metadata{ID: c.CID, Name: c.Name, Tag: c.LogTag}
	for _, l := range c.LogLabels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return m, fmt.Errorf("--log-label %q: want KEY=VALUE: %w", l, errdefs.ErrInvalidArgument)
		}
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[k] = v
	}
	return m, nil
}
