// Package builtin assembles a logging.Registry holding every driver that
// ships with conmon-v2. It exists so that package logging need not import
// its drivers: main calls builtin.Registry() and passes the result on.
package builtin

import (
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/binary"
	"github.com/containers/conmon-v2/logging/fluentd"
	"github.com/containers/conmon-v2/logging/journald"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
	"github.com/containers/conmon-v2/logging/passthrough"
	"github.com/containers/conmon-v2/logging/plugin"
	"github.com/containers/conmon-v2/logging/syslog"
)

// Options configure the out-of-process drivers (binary loggers, log
// plugins). The zero value suits a process without a reaper.
type Options struct {
	// Runner starts and waits for logger programs: a process that runs a
	// reaper passes it (*reaper.Reaper), so no exit is stolen.
	Runner binary.Runner
	// LoggerDirs are the only directories logger programs and plugins may
	// be run from; default binary.DefaultAllowedDirs.
	LoggerDirs []string
	// PluginSocketDirs are the only directories where log plugins' sockets
	// may be dialled; default plugin.DefaultSocketDirs.
	PluginSocketDirs []string
}

// Registry returns a new registry with every built-in driver; at most one
// Options is used.
func Registry(opts ...Options) *logging.Registry {
	r := logging.NewRegistry()
	RegisterBuiltins(r, opts...)
	return r
}

// RegisterBuiltins adds every built-in driver, and conmon's aliases for
// none ("off", "null"), to r. It panics if a name is already taken: the set
// is fixed at build time and a clash is a programming error.
func RegisterBuiltins(r *logging.Registry, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	must(r.Register(k8sfile.Name, k8sfile.Factory))
	must(r.Register(jsonfile.Name, jsonfile.Factory))
	must(r.Register(passthrough.Name, passthrough.Factory))
	must(r.Register(passthrough.NoneName, passthrough.NoneFactory))
	must(r.Alias("off", passthrough.NoneName))
	must(r.Alias("null", passthrough.NoneName))
	must(r.Register(journald.Name, journald.New))
	must(r.Register(syslog.Name, syslog.New))
	must(r.Register(fluentd.Name, fluentd.New))
	must(r.Register(binary.Name, binary.NewFactory(binary.Config{Runner: o.Runner, AllowedDirs: o.LoggerDirs})))
	must(r.Register(plugin.Name, plugin.NewFactory(plugin.Config{Runner: o.Runner, AllowedDirs: o.LoggerDirs, SocketDirs: o.PluginSocketDirs})))
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
