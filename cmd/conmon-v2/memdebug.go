//go:build memdebug

// A build for memory work (docs/conmon.md), never part of `make build`:
//
//	go build -tags memdebug -o bin/conmon-v2 ./cmd/conmon-v2
//
// With CONMON_V2_MEMDEBUG=DIR in the detached monitor's environment it writes,
// every 8 seconds, DIR/PID.metrics (runtime/metrics memory classes),
// and, with CONMON_V2_MEMDEBUG_PROFILES=1, DIR/PID.heap (heap profile) and
// DIR/PID.goroutines (profiles cost memory themselves). Memory profiling is
// off unless CONMON_V2_MEMPROF=1 (every allocation recorded); note that
// profiling itself costs over a MiB, so read the metrics of a run without it.
// The writing is package internal/memdebug's.

package main

import "github.com/containers/conmon-v2/internal/memdebug"

func init() {
	c := memdebug.FromEnv("CONMON_V2_")
	c.Metrics = append(memdebug.MemoryClasses(), "/gc/cycles/total:gc-cycles",
		"/sched/gomaxprocs:threads", "/gc/heap/goal:bytes", "/sched/goroutines:goroutines")
	memdebug.Start(c)
}
