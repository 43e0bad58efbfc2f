package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"

	// Registers the containerd.events.* messages so Event.Decode finds them.
	_ "github.com/containerd/containerd/api/events"

	conmonapi "github.com/containers/conmon-v2/api/conmon/v1"
)

// ShimInfo describes a shim process.
type ShimInfo struct {
	Pid       uint32
	Group     string
	Namespace string
	Version   string
	StartedAt time.Time
	RSSKB     uint64
	PSSKB     uint64
	Tasks     uint32
	// Goroutines and FDs are the shim's goroutine and open descriptor
	// counts (for leak checks).
	Goroutines uint32
	FDs        uint32
	// ExecAt is when the running binary started serving (StartedAt until
	// a live upgrade; the pid and StartedAt survive one). Binary is its
	// path.
	ExecAt time.Time
	Binary string
	// UpgradeError is why the latest live upgrade failed, at
	// UpgradeFailedAt (zero: none failed since the binary started).
	UpgradeError    string
	UpgradeFailedAt time.Time
}

// Info asks the shim about itself.
func (s *Shim) Info(ctx context.Context) (ShimInfo, error) {
	r, err := s.monitor.Info(ctx, &conmonapi.InfoRequest{})
	if err != nil {
		return ShimInfo{}, native("info", s.address, err)
	}
	return ShimInfo{
		Pid: r.GetPid(), Group: r.GetGroup(), Namespace: r.GetNamespace(), Version: r.GetVersion(),
		StartedAt: unixNano(r.GetStartedAt()), RSSKB: r.GetRssKb(), PSSKB: r.GetPssKb(), Tasks: r.GetTasks(),
		Goroutines: r.GetGoroutines(), FDs: r.GetFds(),
		ExecAt: unixNano(r.GetExecAt()), Binary: r.GetBinary(),
		UpgradeError: r.GetUpgradeError(), UpgradeFailedAt: unixNano(r.GetUpgradeFailedAt()),
	}, nil
}

// Upgrade asks the shim to hand over, in place, to binary (an absolute
// path; "" = the shim's own binary as it is now on disk, e.g. after a
// package upgrade). It returns the path the shim will execute once it has
// checked it and started the handover; the shim keeps its pid, its
// containers and this connection. Requests sent from then on are answered
// by the new binary once it serves: WaitUpgraded tells when.
func (s *Shim) Upgrade(ctx context.Context, binary string) (string, error) {
	r, err := s.monitor.Upgrade(ctx, &conmonapi.UpgradeRequest{Binary: binary})
	if err != nil {
		return "", native("upgrade", s.address, err)
	}
	return r.GetBinary(), nil
}

// WaitUpgraded polls Info until a binary started after before.ExecAt
// answers (before is the shim's Info from before the Upgrade call), and
// returns its Info. Requests sent during the handover wait for the new
// binary; the polling only bounds each call, so that ctx decides. If the
// shim reports an upgrade failure newer than before's, the error says
// why (errdefs.ErrAborted; the shim serves on with its binary).
func (s *Shim) WaitUpgraded(ctx context.Context, before ShimInfo) (ShimInfo, error) {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := s.Info(cctx)
		cancel()
		if err == nil && info.ExecAt.After(before.ExecAt) {
			return info, nil
		}
		if err == nil && info.UpgradeFailedAt.After(before.UpgradeFailedAt) {
			return info, fmt.Errorf("upgrade %s: failed, the shim serves on with %s: %s: %w",
				s.address, info.Binary, info.UpgradeError, errdefs.ErrAborted)
		}
		if ctx.Err() != nil || (err != nil && !errors.Is(err, context.DeadlineExceeded)) {
			if err == nil {
				err = fmt.Errorf("upgrade %s: the shim still runs the binary started at %s: %w",
					s.address, before.ExecAt.Format(time.RFC3339Nano), context.Cause(ctx))
			}
			return ShimInfo{}, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TaskInfo is one task a shim serves.
type TaskInfo struct {
	ID         string
	Namespace  string
	Bundle     string
	Pid        uint32
	Status     Status
	ExitStatus uint32
	CreatedAt  time.Time
	StartedAt  time.Time
	ExitedAt   time.Time
	Terminal   bool
	Execs      uint32
}

// List returns every task the shim serves.
func (s *Shim) List(ctx context.Context) ([]TaskInfo, error) {
	r, err := s.monitor.List(ctx, &conmonapi.ListRequest{})
	if err != nil {
		return nil, native("list", s.address, err)
	}
	out := make([]TaskInfo, 0, len(r.GetTasks()))
	for _, t := range r.GetTasks() {
		out = append(out, TaskInfo{
			ID: t.GetId(), Namespace: t.GetNamespace(), Bundle: t.GetBundle(), Pid: t.GetPid(),
			Status: Status(t.GetStatus()), ExitStatus: t.GetExitStatus(),
			CreatedAt: unixNano(t.GetCreatedAt()), StartedAt: unixNano(t.GetStartedAt()),
			ExitedAt: unixNano(t.GetExitedAt()), Terminal: t.GetTerminal(), Execs: t.GetExecs(),
		})
	}
	return out, nil
}

// Event is one event of a shim.
type Event struct {
	Time      time.Time
	Namespace string
	Topic     string // e.g. "/tasks/exit"
	TypeURL   string // e.g. "containerd.events.TaskExit"
	Value     []byte
}

// Decode returns the event's message (*events.TaskExit, ...).
func (e Event) Decode() (any, error) {
	return typeurl.UnmarshalByTypeURL(e.TypeURL, e.Value)
}

// Subscribe streams the shim's events from now on, keeping those whose
// topic starts with one of topics (all when none). The events channel is
// closed when ctx ends, the shim goes away or the stream fails; the error
// channel then holds the reason (nil after ctx ended or the shim exited).
func (s *Shim) Subscribe(ctx context.Context, topics ...string) (<-chan Event, <-chan error, error) {
	stream, err := s.monitor.Subscribe(ctx, &conmonapi.SubscribeRequest{Topics: topics})
	if err != nil {
		return nil, nil, native("subscribe", s.address, err)
	}
	events := make(chan Event)
	errc := make(chan error, 1)
	go func() {
		defer close(events)
		for {
			env, err := stream.Recv()
			if err != nil {
				err = native("subscribe", s.address, err)
				if errors.Is(err, io.EOF) || ctx.Err() != nil || errdefs.IsUnavailable(err) {
					err = nil
				}
				errc <- err
				return
			}
			ev := Event{
				Time: unixNano(env.GetTimestamp()), Namespace: env.GetNamespace(), Topic: env.GetTopic(),
				TypeURL: env.GetTypeUrl(), Value: env.GetValue(),
			}
			select {
			case events <- ev:
			case <-ctx.Done():
				errc <- nil
				return
			}
		}
	}()
	return events, errc, nil
}

func unixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
