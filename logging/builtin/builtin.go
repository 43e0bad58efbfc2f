// Package builtin assembles a logging.Registry holding every driver that
// ships with conmon-v2. It exists so that package logging need not import
// its drivers: main calls builtin.Registry() and passes the result on.
package builtin

import (
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/fluentd"
	"github.com/containers/conmon-v2/logging/journald"
	"github.com/containers/conmon-v2/logging/jsonfile"
	"github.com/containers/conmon-v2/logging/k8sfile"
	"github.com/containers/conmon-v2/logging/passthrough"
	"github.com/containers/conmon-v2/logging/syslog"
)

// Registry returns a new registry with every built-in driver.
func Registry() *logging.Registry {
	r := logging.NewRegistry()
	RegisterBuiltins(r)
	return r
}

// RegisterBuiltins adds every built-in driver, and conmon's aliases for
// none ("off", "null"), to r. It panics if a name is already taken: the set
// is fixed at build time and a clash is a programming error.
func RegisterBuiltins(r *logging.Registry) {
	must(r.Register(k8sfile.Name, k8sfile.Factory))
	must(r.Register(jsonfile.Name, jsonfile.Factory))
	must(r.Register(passthrough.Name, passthrough.Factory))
	must(r.Register(passthrough.NoneName, passthrough.NoneFactory))
	must(r.Alias("off", passthrough.NoneName))
	must(r.Alias("null", passthrough.NoneName))
	must(r.Register(journald.Name, journald.New))
	must(r.Register(syslog.Name, syslog.New))
	must(r.Register(fluentd.Name, fluentd.New))
	// Out-of-process drivers (binary, plugin) register here too.
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
