// Command conmon-v2 is a drop-in for conmon 2.1: Podman (--conmon,
// conmon_path) and CRI-O (monitor_path) start it per container with
// conmon's command line and pipes. See docs/conmon.md.
//
// This build links the log drivers whose packages cost little memory in
// every monitor (registry.go). A container that needs another driver
// (syslog, fluentd, plugin) is handed to conmon-v2-full, installed next to
// it, which links them all.
package main

import (
	"os"

	"github.com/containers/conmon-v2/conmon"
)

func main() {
	os.Exit(conmon.Main(conmon.Program{Registry: registry, Fallback: "conmon-v2-full"}))
}
