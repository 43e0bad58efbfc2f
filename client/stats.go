package client

import (
	"context"
	"fmt"
	"time"

	stats1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	stats2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Stats is the summary of a task's cgroup metrics that `docker stats`
// shows, for either cgroup version.
type Stats struct {
	// Time is when the sample was taken (by the client, on arrival).
	Time time.Time
	// CPUNanos is the CPU time the container used so far, in nanoseconds.
	CPUNanos uint64
	// MemoryBytes is the memory in use without the inactive page cache
	// (what docker stats calls MEM USAGE).
	MemoryBytes uint64
	// MemoryLimit is the cgroup's limit; a huge value means none.
	MemoryLimit uint64
	Pids        uint64
	PidsLimit   uint64
}

// Type URLs of the metrics the shim sends.
const (
	cgroupsV1Metrics = "io.containerd.cgroups.v1.Metrics"
	cgroupsV2Metrics = "io.containerd.cgroups.v2.Metrics"
)

// Stats samples the task's cgroup metrics.
func (s *Shim) Stats(ctx context.Context, id string) (Stats, error) {
	a, err := s.RawStats(ctx, id)
	if err != nil {
		return Stats{}, err
	}
	st, err := DecodeStats(a)
	if err != nil {
		return Stats{}, fmt.Errorf("stats %s: %w", id, err)
	}
	st.Time = time.Now()
	return st, nil
}

// DecodeStats summarises cgroup v1 or v2 metrics. The type URL may carry a
// "type.googleapis.com/" style prefix.
func DecodeStats(a *anypb.Any) (Stats, error) {
	if a == nil {
		return Stats{}, fmt.Errorf("no metrics: %w", errdefs.ErrNotFound)
	}
	url := a.GetTypeUrl()
	if i := lastSlash(url); i >= 0 {
		url = url[i+1:]
	}
	var st Stats
	switch url {
	case cgroupsV1Metrics:
		var m stats1.Metrics
		if err := proto.Unmarshal(a.GetValue(), &m); err != nil {
			return st, fmt.Errorf("decode %s: %w", url, err)
		}
		st.CPUNanos = m.GetCPU().GetUsage().GetTotal()
		mem := m.GetMemory()
		st.MemoryBytes = sub(mem.GetUsage().GetUsage(), mem.GetTotalInactiveFile())
		st.MemoryLimit = mem.GetUsage().GetLimit()
		st.Pids, st.PidsLimit = m.GetPids().GetCurrent(), m.GetPids().GetLimit()
	case cgroupsV2Metrics:
		var m stats2.Metrics
		if err := proto.Unmarshal(a.GetValue(), &m); err != nil {
			return st, fmt.Errorf("decode %s: %w", url, err)
		}
		st.CPUNanos = m.GetCPU().GetUsageUsec() * 1000
		mem := m.GetMemory()
		st.MemoryBytes = sub(mem.GetUsage(), mem.GetInactiveFile())
		st.MemoryLimit = mem.GetUsageLimit()
		st.Pids, st.PidsLimit = m.GetPids().GetCurrent(), m.GetPids().GetLimit()
	default:
		return st, fmt.Errorf("unknown metrics type %q: %w", a.GetTypeUrl(), errdefs.ErrNotImplemented)
	}
	return st, nil
}

// CPUPercent is the CPU use between two samples, in percent of one CPU
// (200% = two CPUs busy), as docker stats shows it.
func CPUPercent(prev, cur Stats) float64 {
	dt := cur.Time.Sub(prev.Time)
	if dt <= 0 || cur.CPUNanos < prev.CPUNanos {
		return 0
	}
	return float64(cur.CPUNanos-prev.CPUNanos) / float64(dt.Nanoseconds()) * 100
}

func sub(a, b uint64) uint64 {
	if b > a {
		return 0
	}
	return a - b
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}
