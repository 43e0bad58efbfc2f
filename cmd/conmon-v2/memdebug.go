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

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"time"
)

func init() {
	dir := os.Getenv("CONMON_V2_MEMDEBUG")
	if dir == "" {
		return
	}
	runtime.MemProfileRate = 0
	if os.Getenv("CONMON_V2_MEMPROF") != "" {
		runtime.MemProfileRate = 1
	}
	base := filepath.Join(dir, strconv.Itoa(os.Getpid()))
	names := []string{
		"/memory/classes/heap/objects:bytes",
		"/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/stacks:bytes",
		"/memory/classes/metadata/mspan/inuse:bytes",
		"/memory/classes/metadata/mcache/inuse:bytes",
		"/memory/classes/metadata/other:bytes",
		"/memory/classes/os-stacks:bytes",
		"/memory/classes/other:bytes",
		"/memory/classes/profiling/buckets:bytes",
		"/memory/classes/total:bytes",
		"/gc/cycles/total:gc-cycles",
		"/sched/gomaxprocs:threads",
		"/gc/heap/goal:bytes",
		"/sched/goroutines:goroutines",
	}
	withProfiles := os.Getenv("CONMON_V2_MEMDEBUG_PROFILES") != ""
	// Debugging only: this goroutine lives as long as the process.
	go func() {
		samples := make([]metrics.Sample, len(names))
		for i := range names {
			samples[i].Name = names[i]
		}
		for {
			time.Sleep(8 * time.Second)
			metrics.Read(samples)
			if f, err := os.Create(base + ".metrics"); err == nil {
				for _, s := range samples {
					fmt.Fprintf(f, "%s %d\n", s.Name, s.Value.Uint64())
				}
				f.Close()
			}
			if !withProfiles {
				continue
			}
			for _, p := range []struct{ name, file string }{{"heap", ".heap"}, {"goroutine", ".goroutines"}} {
				if f, err := os.Create(base + p.file); err == nil {
					debugLevel := 0
					if p.name == "goroutine" {
						debugLevel = 1
					}
					_ = pprof.Lookup(p.name).WriteTo(f, debugLevel)
					f.Close()
				}
			}
		}
	}()
}
