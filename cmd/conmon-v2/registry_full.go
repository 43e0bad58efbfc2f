//go:build !conmon_lean

package main

import (
	"github.com/containers/conmon-v2/logging"
	"github.com/containers/conmon-v2/logging/builtin"
	"github.com/containers/conmon-v2/reaper"
)

// registry returns every built-in log driver. r (nil before the monitor
// detaches) starts and reaps the programs of the binary and plugin
// drivers.
func registry(r *reaper.Reaper) *logging.Registry {
	if r == nil {
		return builtin.Registry()
	}
	return builtin.Registry(builtin.Options{Runner: r})
}
