// Package memdebug writes a process's memory figures to files, for memory
// work on the monitors (docs/memory.md, docs/conmon.md). Only builds with
// the memdebug tag import it (cmd/conmon-v2/memdebug.go,
// cmd/containerd-shim-conmon-v2/memdebug.go); it is never part of
// `make build`.
package memdebug

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

// Interval is how often Start writes its files.
const Interval = 8 * time.Second

// Config says where Start writes and what.
type Config struct {
	// Dir receives DIR/PID.metrics and, with Profiles, DIR/PID.heap and
	// DIR/PID.goroutines. Empty: Start does nothing.
	Dir string
	// MemProf records every allocation (runtime.MemProfileRate = 1);
	// otherwise memory profiling is off (rate 0). Profiling itself costs
	// over a MiB, so read the metrics of a run without it.
	MemProf bool
	// Profiles writes the heap profile and the goroutine profile (debug
	// level 1) along with the metrics; profiles cost memory themselves.
	Profiles bool
	// Metrics names the runtime/metrics samples written, one
	// "NAME VALUE" line each, in this order. Every one must be a Uint64
	// metric.
	Metrics []string
}

// FromEnv reads a Config from the environment variables named by prefix:
// Dir from prefix+"MEMDEBUG", MemProf from prefix+"MEMPROF" and Profiles
// from prefix+"MEMDEBUG_PROFILES" (each set when not empty). Metrics is
// left for the caller.
func FromEnv(prefix string) Config {
	return Config{
		Dir:      os.Getenv(prefix + "MEMDEBUG"),
		MemProf:  os.Getenv(prefix+"MEMPROF") != "",
		Profiles: os.Getenv(prefix+"MEMDEBUG_PROFILES") != "",
	}
}

// MemoryClasses returns the names of runtime/metrics' memory classes that
// both monitors write, a new slice on every call so that callers may append.
func MemoryClasses() []string {
	return []string{
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
	}
}

// Start sets the memory profile rate and starts a goroutine that, every
// Interval, rewrites the files Config describes, named by this process's
// PID. Files that cannot be created are skipped. Debugging only: the
// goroutine lives as long as the process and has no stop.
func Start(c Config) {
	if c.Dir == "" {
		return
	}
	runtime.MemProfileRate = 0
	if c.MemProf {
		runtime.MemProfileRate = 1
	}
	base := filepath.Join(c.Dir, strconv.Itoa(os.Getpid()))
	samples := make([]metrics.Sample, len(c.Metrics))
	for i, name := range c.Metrics {
		samples[i].Name = name
	}
	go func() {
		for {
			time.Sleep(Interval)
			write(base, samples, c.Profiles)
		}
	}()
}

// write writes one round of files to base+".metrics" and, with profiles,
// base+".heap" and base+".goroutines".
func write(base string, samples []metrics.Sample, profiles bool) {
	metrics.Read(samples)
	if f, err := os.Create(base + ".metrics"); err == nil {
		for _, s := range samples {
			fmt.Fprintf(f, "%s %d\n", s.Name, s.Value.Uint64())
		}
		f.Close()
	}
	if !profiles {
		return
	}
	for _, p := range []struct {
		name, file string
		debug      int
	}{{"heap", ".heap", 0}, {"goroutine", ".goroutines", 1}} {
		if f, err := os.Create(base + p.file); err == nil {
			_ = pprof.Lookup(p.name).WriteTo(f, p.debug)
			f.Close()
		}
	}
}
