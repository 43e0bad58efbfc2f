// Command conmon-v2-full is conmon-v2 (the drop-in for conmon 2.1, see
// docs/conmon.md) with every log driver, syslog, fluentd and plugin
// included. conmon-v2 hands a container over to it, by exec, when the
// container's logging needs one of those; it may also be used directly as
// the monitor (Podman's conmon_path), at the price of about 170 KiB more
// memory per container.
package main

import (
	"os"

	"github.com/containers/conmon-v2/conmon"
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
	"github.com/containers/conmon-v2/reaper"
)

func main() {
	os.Exit(conmon.Main(conmon.Program{Registry: registry}))
}

// registry returns every built-in log driver. r (nil before the monitor
// detaches) starts and reaps the programs of the binary and plugin
// drivers.
func registry(r *reaper.Reaper) *logging.Registry {
	if r == nil {
		return builtin.Registry()
	}
	return builtin.Registry(builtin.Options{Runner: r})
}
