//go:build memdebug

// A build for memory work (docs/memory.md), never part of `make build`:
//
//	go build -tags memdebug -o bin/containerd-shim-conmon-v2 ./cmd/containerd-shim-conmon-v2
//
// With CONMON_V2_SHIM_MEMDEBUG=DIR in the daemon's environment it writes,
// every 8 seconds, DIR/PID.metrics (runtime/metrics memory classes),
// DIR/PID.heap (heap profile) and DIR/PID.goroutines. Memory profiling is
// off unless CONMON_V2_SHIM_MEMPROF=1 (every allocation recorded); note that
// profiling itself costs over a MiB, so read the metrics of a run without it.
// The writing is package internal/memdebug's.

package main

import "github.com/containers/conmon-v2/internal/memdebug"

func init() {
	c := memdebug.FromEnv("CONMON_V2_SHIM_")
	c.Profiles = true // the daemon always writes its profiles
	c.Metrics = append(memdebug.MemoryClasses(), "/gc/heap/goal:bytes", "/sched/goroutines:goroutines")
	memdebug.Start(c)
}
